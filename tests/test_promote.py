"""Promotion to production: verified candidates, the gate, one-winner commits, history, rollback.

Three jobs are trained once for the module (real trainer on CPU, local store) and copied into
each test's store; S3 tests run against the loopback S3 server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import BUCKETS
from tests.helpers import make_dataset, make_spec
from trainer.errors import (
    EXIT_CONFLICT,
    EXIT_INFRA,
    EXIT_REFUSED,
    EXIT_SPEC,
    ConditionalWritesIgnored,
    exit_code_of,
)
from trainer.job.run import JobResult, run_job
from trainer.model.export import load_model
from trainer.promotion.candidate import CandidateInvalid, check_sample
from trainer.promotion.gate import GateRefused, resolve_symbol
from trainer.promotion.production import (
    NoProduction,
    ProductionCorrupt,
    PromotionConflict,
    SymbolError,
    production_status,
    read_history,
    read_production,
    sha256_bytes,
    sync_seed_copy,
)
from trainer.promotion.promote import NothingToRollBack, maybe_auto_promote, promote, rollback
from trainer.spec.sections import PromotionSpec
from trainer.store import ObjectStore, open_store
from trainer.store.layout import Layout
from trainer.store.records import ProductionManifest

SYMBOL = "btcusdt"
BY = "tester@ci"


@dataclass(frozen=True)
class Jobs:
    source: ObjectStore
    strong: str
    """The job with the higher validation IC."""
    weak: str
    other: str
    ic: dict[str, float]

    def model(self, job_id: str) -> bytes:
        return self.source.get(BUCKETS.job(job_id).model)


def _final_ic(result: JobResult) -> float:
    assert result.final is not None
    return result.final.ic


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """Three committed jobs on one dataset: two epochs, and two 3-step runs, the last one
    with a `promotion.min_ic` floor no model reaches."""
    source = open_store(f"file://{tmp_path_factory.mktemp('jobs')}")
    few = {"epochs": None, "max_steps": 3}
    specs = [
        make_spec(job={"id": "job-full"}),
        make_spec(job={"id": "job-short"}, train=few),
        make_spec(job={"id": "job-other"}, train={**few, "seed": 1}, promotion={"min_ic": 0.99}),
    ]
    make_dataset(source, specs[0])
    ic = {s.job_id: _final_ic(run_job(s, source, device="cpu")) for s in specs}
    strong, weak = sorted(["job-full", "job-short"], key=lambda j: -ic[j])
    return Jobs(source, strong, weak, "job-other", ic)


def install(jobs: Jobs, store: ObjectStore, *job_ids: str) -> None:
    """Copy committed jobs, manifest included, into the store a test uses."""
    layout = BUCKETS
    for job_id in job_ids:
        for info in jobs.source.list(layout.job(job_id).dir):
            store.put(info.loc, jobs.source.get(info.loc))


def snapshot(store: ObjectStore, layout: Layout) -> dict[str, bytes]:
    return {i.loc.key: store.get(i.loc) for i in store.list(layout.production(SYMBOL).dir)}


def assert_consistent(store: ObjectStore, layout: Layout, expected: bytes) -> ProductionManifest:
    """The live manifest, its object and the seed copy all agree on `expected`."""
    live = read_production(store, layout, SYMBOL)
    sha = live.manifest.model.sha256
    assert live.data == expected and sha == sha256_bytes(expected)
    assert store.get(layout.production(SYMBOL).object(sha)) == expected
    assert store.get(layout.production(SYMBOL).model) == expected
    return live.manifest


def test_promotion_publishes_through_the_manifest(
    s3_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, s3_store, jobs.strong)
    result = promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)

    assert (result.outcome, result.version, result.previous_version) == ("promoted", 1, None)
    assert result.manifest_uri == "s3://quantlab-artifacts/models/production/btcusdt/manifest.json"
    assert result.model_uri == "s3://quantlab-artifacts/models/production/btcusdt/model.bin"
    assert result.seed_copy_current
    manifest = assert_consistent(s3_store, layout, jobs.model(jobs.strong))
    assert manifest.source_job == jobs.strong and manifest.action == "promote"
    assert manifest.metrics.ic == pytest.approx(jobs.ic[jobs.strong])
    assert manifest.promoted_by == BY and manifest.forced is False
    assert manifest.gate.startswith("passed: ") and "no production model" in manifest.gate
    assert manifest.model.features and manifest.model.size > 0
    assert -1 <= manifest.sample.ic <= 1 and manifest.sample.rows > 0
    (tmp_path / "live.bin").write_bytes(read_production(s3_store, layout, SYMBOL).data)
    _, meta = load_model(tmp_path / "live.bin")
    assert meta.job_id == jobs.strong

    again = promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    assert (again.outcome, again.version) == ("already_live", 1)


def test_a_tampered_model_is_refused_naming_the_file(
    s3_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, s3_store, jobs.strong, jobs.weak)
    promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path / "a")
    before = snapshot(s3_store, layout)
    loc = layout.job(jobs.weak).model
    data = bytearray(s3_store.get(loc))
    data[len(data) // 2] ^= 0xFF
    s3_store.put(loc, bytes(data))

    with pytest.raises(CandidateInvalid, match="does not match the manifest") as err:
        promote(s3_store, layout, jobs.weak, force=True, promoted_by=BY, workdir=tmp_path / "b")
    assert f"s3://quantlab-artifacts/ml-artifacts/{jobs.weak}/model.bin" in str(err.value)
    assert snapshot(s3_store, layout) == before


def test_the_gate_refuses_a_weaker_candidate_showing_both_metrics(
    s3_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, s3_store, jobs.strong, jobs.weak)
    promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    before = snapshot(s3_store, layout)
    gate = PromotionSpec(max_ic_drop=(jobs.ic[jobs.strong] - jobs.ic[jobs.weak]) / 2)

    with pytest.raises(GateRefused) as err:
        promote(s3_store, layout, jobs.weak, gate=gate, promoted_by=BY, workdir=tmp_path)
    message = str(err.value)
    assert f"candidate {jobs.weak} validation IC {jobs.ic[jobs.weak]:.4f}" in message
    assert f"production v1 ({jobs.strong}) validation IC {jobs.ic[jobs.strong]:.4f}" in message
    assert f"max_ic_drop {gate.max_ic_drop:.4f}" in message and "--force" in message
    assert exit_code_of(err.value) == EXIT_REFUSED
    assert snapshot(s3_store, layout) == before


def test_force_promotes_records_it_and_keeps_the_replaced_model(
    s3_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, s3_store, jobs.strong, jobs.weak)
    first = promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    v1 = s3_store.get(layout.production(SYMBOL).manifest)

    result = promote(s3_store, layout, jobs.weak, force=True, promoted_by=BY, workdir=tmp_path)
    assert (result.version, result.previous_version, result.forced) == (2, 1, True)
    manifest = assert_consistent(s3_store, layout, jobs.model(jobs.weak))
    assert manifest.forced is True and manifest.gate.startswith("forced: gate refused")
    assert manifest.rollback_to == 1
    old, data = read_history(s3_store, layout.production(SYMBOL), 1)
    assert data == jobs.model(jobs.strong) and old == first.manifest
    assert s3_store.get(layout.production(SYMBOL).history(1, "manifest.json")) == v1


@dataclass(frozen=True)
class Race:
    setup: list[str]
    """Jobs promoted (forced) before the race."""
    contenders: list[str]
    """Jobs promoted concurrently; `rollback` races a rollback instead."""


RACES = {
    "empty-production": Race([], ["weak", "other"]),
    "live-production": Race(["strong"], ["weak", "other"]),
    "rollback-vs-promotion": Race(["strong", "weak"], ["rollback", "other"]),
}


@pytest.mark.parametrize("race", list(RACES))
def test_concurrent_changes_have_exactly_one_winner(
    race: str,
    s3_store: ObjectStore,
    layout: Layout,
    jobs: Jobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = RACES[race]
    names = {"strong": jobs.strong, "weak": jobs.weak, "other": jobs.other}
    install(jobs, s3_store, *names.values())
    for name in spec.setup:
        promote(s3_store, layout, names[name], force=True, promoted_by=BY, workdir=tmp_path)
    base = len(spec.setup)

    # Hold both commits until both have read production and are about to write the manifest.
    barrier = threading.Barrier(2, timeout=30)
    real_put = s3_store._put
    manifest = layout.production(SYMBOL).manifest

    def held_put(loc: Any, data: bytes, if_absent: bool, if_match: str | None) -> Any:
        if loc == manifest and (if_absent or if_match):
            barrier.wait()
        return real_put(loc, data, if_absent, if_match)

    monkeypatch.setattr(s3_store, "_put", held_put)

    def action(i: int, name: str) -> Callable[[], Any]:
        work = tmp_path / f"contender-{i}"

        def run() -> Any:
            try:
                if name == "rollback":
                    return rollback(s3_store, layout, SYMBOL, promoted_by=BY, workdir=work)
                return promote(
                    s3_store, layout, names[name], force=True, promoted_by=BY, workdir=work
                )
            except Exception:
                barrier.abort()  # the other contender must not wait for one that failed
                raise

        return run

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(action(i, n)) for i, n in enumerate(spec.contenders)]
    outcomes = [f.exception() or f.result() for f in futures]

    conflicts = [o for o in outcomes if isinstance(o, PromotionConflict)]
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(conflicts) == 1 and len(wins) == 1, outcomes
    assert exit_code_of(conflicts[0]) == EXIT_CONFLICT
    assert "changed nothing live" in str(conflicts[0])
    winner = wins[0]
    assert winner.version == base + 1 and winner.previous_version == (base or None)
    expected = jobs.model(winner.source_job)
    live = assert_consistent(s3_store, layout, expected)
    assert live == winner.manifest
    if base:
        _, replaced = read_history(s3_store, layout.production(SYMBOL), base)
        assert replaced == jobs.model(names[spec.setup[-1]])


@pytest.mark.slow  # s3rver runs as a subprocess
def test_concurrent_promotions_on_a_store_that_ignores_the_swap_both_refuse(
    s3rver_store: ObjectStore, s3rver_endpoint: str, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    """s3rver lets both compare-and-swaps through, so one of two racing promotions would be
    lost while both printed `promoted`: both are refused before production is touched."""
    install(jobs, s3rver_store, jobs.strong, jobs.other)
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                promote,
                s3rver_store,
                layout,
                job,
                force=True,
                promoted_by=BY,
                workdir=tmp_path / job,
            )
            for job in (jobs.strong, jobs.other)
        ]
    refused = [f.exception() for f in futures]
    assert all(isinstance(e, ConditionalWritesIgnored) for e in refused), refused
    assert all(f"endpoint {s3rver_endpoint} ignores" in str(e) for e in refused)
    assert [exit_code_of(e) for e in refused if e is not None] == [EXIT_INFRA, EXIT_INFRA]
    assert s3rver_store.list(layout.production(SYMBOL).dir) == []


def test_rollback_restores_the_previous_model_byte_for_byte(
    s3_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, s3_store, jobs.strong, jobs.weak)
    promote(s3_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    promote(s3_store, layout, jobs.weak, force=True, promoted_by=BY, workdir=tmp_path)

    result = rollback(s3_store, layout, SYMBOL, promoted_by="oncall", workdir=tmp_path)
    assert (result.outcome, result.action, result.version) == ("rolled_back", "rollback", 3)
    manifest = assert_consistent(s3_store, layout, jobs.model(jobs.strong))
    assert manifest.rolled_back_from == 2 and manifest.restored_version == 1
    assert manifest.source_job == jobs.strong and manifest.promoted_by == "oncall"
    assert manifest.metrics.ic == pytest.approx(jobs.ic[jobs.strong])
    _, replaced = read_history(s3_store, layout.production(SYMBOL), 2)
    assert replaced == jobs.model(jobs.weak)

    with pytest.raises(NothingToRollBack, match="v3 has no earlier version") as err:
        rollback(s3_store, layout, SYMBOL, promoted_by="oncall", workdir=tmp_path)
    assert exit_code_of(err.value) == EXIT_REFUSED


def test_status_lists_what_is_live_and_the_history(
    local_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    assert production_status(local_store, layout) == []
    install(jobs, local_store, jobs.strong, jobs.weak)
    promote(local_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    promote(local_store, layout, jobs.weak, force=True, promoted_by=BY, workdir=tmp_path)
    rollback(local_store, layout, SYMBOL, promoted_by=BY, workdir=tmp_path)

    [status] = production_status(local_store, layout)
    assert production_status(local_store, layout, SYMBOL) == [status]
    assert status.symbol == SYMBOL and status.managed and status.seed_copy == "current"
    live = status.live
    assert (live.version, live.action, live.source_job) == (3, "rollback", jobs.strong)
    assert live.restored_version == 1 and live.metrics.ic > 0
    assert [(h.version, h.source_job, h.forced) for h in status.history] == [
        (2, jobs.weak, True),
        (1, jobs.strong, False),
    ]


def test_a_stale_seed_copy_is_never_served(
    local_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, local_store, jobs.strong)
    with pytest.raises(NoProduction, match="promote a job first"):
        read_production(local_store, layout, SYMBOL)
    promote(local_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    local_store.put(layout.production(SYMBOL).model, b"left over by a writer that died")

    live = read_production(local_store, layout, SYMBOL)
    assert live.data == jobs.model(jobs.strong) and "/objects/" in live.source
    assert production_status(local_store, layout)[0].seed_copy == "stale"
    assert sync_seed_copy(local_store, layout.production(SYMBOL))
    assert_consistent(local_store, layout, jobs.model(jobs.strong))

    local_store.put(layout.production(SYMBOL).model, b"stale again")
    local_store.delete(layout.production(SYMBOL).object(sha256_bytes(jobs.model(jobs.strong))))
    with pytest.raises(ProductionCorrupt, match="does not match the sha256"):
        read_production(local_store, layout, SYMBOL)


def test_a_bare_seed_model_is_adopted_as_version_0(
    local_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, local_store, jobs.strong)
    local_store.put(layout.production(SYMBOL).model, b"model deployed by hand")
    assert production_status(local_store, layout)[0].managed is False

    result = promote(local_store, layout, jobs.strong, promoted_by=BY, workdir=tmp_path)
    assert (result.version, result.previous_version) == (1, 0)
    old, data = read_history(local_store, layout.production(SYMBOL), 0)
    assert data == b"model deployed by hand" and old.action == "legacy"

    back = rollback(local_store, layout, SYMBOL, promoted_by=BY, workdir=tmp_path)
    assert (back.version, back.manifest.restored_version) == (2, 0)
    assert_consistent(local_store, layout, b"model deployed by hand")


def test_the_gate_defaults_to_the_jobs_own_promotion_rule(
    local_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, local_store, jobs.other)
    with pytest.raises(GateRefused, match=r"below min_ic 0\.9900; no production model"):
        promote(local_store, layout, jobs.other, workdir=tmp_path)
    assert snapshot(local_store, layout) == {}

    result = promote(local_store, layout, jobs.other, gate=PromotionSpec(), workdir=tmp_path)
    assert result.manifest.gate_rule is not None
    assert result.manifest.gate_rule.model_dump() == {"max_ic_drop": 0.0, "min_ic": None}


def test_auto_promotion_after_a_job(
    local_store: ObjectStore, layout: Layout, jobs: Jobs, tmp_path: Path
) -> None:
    install(jobs, local_store, jobs.strong, jobs.weak)
    off = maybe_auto_promote(PromotionSpec(), local_store, layout, jobs.strong)
    assert off["promoted"] is False and off["reason"] == "promotion.auto is off"

    on = PromotionSpec(auto=True)
    done = maybe_auto_promote(on, local_store, layout, jobs.strong, workdir=tmp_path)
    assert done["promoted"] is True and done["symbols"][0]["version"] == 1
    assert done["symbols"][0]["manifest"]["promoted_by"] == "auto"

    refused = maybe_auto_promote(on, local_store, layout, jobs.weak, workdir=tmp_path)
    assert refused["promoted"] is False and "gate refused" in refused["reason"]
    assert refused["symbols"][0]["exit_code"] == EXIT_REFUSED
    assert read_production(local_store, layout, SYMBOL).manifest.source_job == jobs.strong

    missing = maybe_auto_promote(on, local_store, layout, "job-never-ran", workdir=tmp_path)
    assert missing["promoted"] is False and "job-never-ran/manifest.json" in missing["reason"]


def test_the_symbol_comes_from_the_job(local_store: ObjectStore, layout: Layout) -> None:
    assert resolve_symbol(None, ("btcusdt",), "job-1") == "btcusdt"
    assert resolve_symbol("ethusdt", ("btcusdt", "ethusdt"), "job-1") == "ethusdt"
    with pytest.raises(SymbolError, match="choose one with --symbol") as err:
        resolve_symbol(None, ("btcusdt", "ethusdt"), "job-1")
    assert exit_code_of(err.value) == EXIT_SPEC
    with pytest.raises(SymbolError, match="did not train on 'solusdt'"):
        resolve_symbol("solusdt", ("btcusdt", "ethusdt"), "job-1")
    with pytest.raises(SymbolError, match="must be lower case"):
        rollback(local_store, layout, "BTCUSDT")


def test_a_model_that_does_not_reproduce_its_sample_is_refused(
    jobs: Jobs, layout: Layout, tmp_path: Path
) -> None:
    model, sample = tmp_path / "model.bin", tmp_path / "sample.parquet"
    jobs.source.download(layout.job(jobs.strong).model, model)
    jobs.source.download(layout.job(jobs.strong).val_sample, sample)
    meta, ic, rows = check_sample(model, sample, "MODEL", "SAMPLE")
    assert meta.job_id == jobs.strong and rows > 0 and -1 <= ic <= 1

    table = pq.read_table(sample)
    shifted = pc.add(table["__prediction"], 0.01)
    pq.write_table(
        table.set_column(table.schema.get_field_index("__prediction"), "__prediction", shifted),
        sample,
    )
    with pytest.raises(
        CandidateInvalid, match="MODEL does not reproduce the predictions recorded in SAMPLE"
    ):
        check_sample(model, sample, "MODEL", "SAMPLE")

    pq.write_table(table.drop_columns([meta.features[0]]), sample)
    with pytest.raises(CandidateInvalid, match=f"missing columns \\['{meta.features[0]}'\\]"):
        check_sample(model, sample, "MODEL", "SAMPLE")
