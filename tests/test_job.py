"""The training job end to end: real trainer on CPU, real stores, generated data."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import (
    commit_without_training,
    cpu_run_args,
    job_predictions,
    make_dataset,
    make_spec,
    nan_rows,
    predict_in_bare_python,
    recount,
    spec_dict,
    write_day,
    write_spec,
)
from trainer.data.loader import read_split_arrays
from trainer.data.passes import read_split
from trainer.data.plan import preflight
from trainer.data.synth import SIGNAL_FEATURE, SynthConfig
from trainer.errors import (
    EXIT_CONFLICT,
    EXIT_DATA,
    EXIT_JOB_FAILED,
    DataError,
    Diverged,
    exit_code_of,
)
from trainer.job.artifacts import SAMPLE_ROWS, read_manifest, verify, write_failure
from trainer.job.identity import resolve
from trainer.job.prepare import prepare
from trainer.job.run import run_job
from trainer.promotion.candidate import check_sample
from trainer.spec import spec_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout, Partition
from trainer.store.records import FailureRecord, JobMetrics, read_record
from trainer.train.distributed import Ranks
from trainer.train.loop import TrainState
from trainer.train.metrics import pearson

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED_FILES = {
    "model.bin",
    "jobspec.yaml",
    "metrics.json",
    "metrics.jsonl",
    "train.log",
    "dataset.json",
    "val_predictions.parquet",
    "val_sample.parquet",
    "importance.json",
}


@pytest.mark.slow
def test_job_on_loopback_s3_commits_at_the_seed_path(
    s3_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    spec = make_spec(job={"id": "job-8271"})
    cfg = make_dataset(s3_store, spec)
    result = run_job(spec, s3_store, device="cpu")

    assert result.outcome == "succeeded"
    assert result.artifacts == "s3://quantlab-artifacts/ml-artifacts/job-8271/"
    paths = layout.job("job-8271")
    keys = {o.loc.key for o in s3_store.list(paths.dir)}
    # the summary is the history's and the lease says which run held the job: neither listed
    indexes = {paths.MANIFEST, paths.SUMMARY, paths.LEASE}
    assert keys == {f"ml-artifacts/job-8271/{n}" for n in EXPECTED_FILES | indexes}
    manifest = verify(s3_store, paths, tmp_path)
    assert {f.name for f in manifest.files} == EXPECTED_FILES
    assert manifest.job_id == "job-8271" and manifest.started_at <= manifest.ended_at
    assert manifest.code_version

    # model.bin loads where only torch is available and reproduces the job's predictions
    plan = preflight(spec.data, s3_store, layout)
    x_val, _, ts_val = read_split_arrays(plan, s3_store, "val")
    meta, pred = predict_in_bare_python(tmp_path / "model.bin", x_val, tmp_path)
    assert meta["features"] == list(cfg.feature_names)
    assert meta["config_hash"] == cfg.config_hash and meta["label"] == "label"
    ts, job_pred = job_predictions(tmp_path)
    assert np.array_equal(ts, ts_val)
    np.testing.assert_allclose(pred, job_pred, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "train"),
    [
        ({}, {}),
        ({}, {"loss": "huber", "huber_delta": 2.0}),
        ({}, {"loss": "ic", "early_stopping": {"metric": "ic", "patience": 3}}),
        ({"type": "linear", "hidden": [256, 128]}, {}),
        (
            {"type": "gated_residual:GatedResidual", "hidden": [256, 128], "params": {"width": 32}},
            {"loss": "gated_residual:log_cosh"},
        ),
    ],
    ids=["mlp-mse", "mlp-huber", "mlp-ic", "linear-mse", "own-model-own-loss"],
)
def test_validation_ic_reaches_the_true_signal(
    local_store: ObjectStore, layout: Layout, model: dict[str, Any], train: dict[str, Any]
) -> None:
    raw = spec_dict(
        dates=("20251201", "20251204"), train={"epochs": 3, "eval_every_steps": 40, **train}
    )
    raw["model"] = model
    if "params" in model:  # the researcher's own, from the shipped example
        raw["code"] = {"path": str(EXAMPLES)}
    spec = spec_from_dict(raw)
    make_dataset(local_store, spec, SynthConfig(rows_per_day=20_000, row_group_size=5_000))
    result = run_job(spec, local_store, device="cpu")
    plan = preflight(spec.data, local_store, layout)
    x_val, y_val, _ = read_split_arrays(plan, local_store, "val")
    signal_ic = pearson(x_val[:, plan.features.index(SIGNAL_FEATURE)], y_val)
    assert result.final is not None and result.final.loss is not None
    model_ic = result.final.ic
    assert signal_ic > 0.3
    assert model_ic >= 0.8 * signal_ic, (model_ic, signal_ic)
    if spec.train.loss == "ic":  # the reported loss is the objective: minus the batch IC
        assert result.final.loss == pytest.approx(-model_ic, abs=0.05)
    if spec.train.loss == "mse":
        assert result.final.loss == pytest.approx(result.final.val_loss, rel=1e-4)


def test_two_cpu_runs_give_identical_weights(local_store: ObjectStore, tmp_path: Path) -> None:
    spec_a = make_spec(job={"id": "run-a"})
    spec_b = make_spec(job={"id": "run-b"})
    make_dataset(local_store, spec_a)
    run_job(spec_a, local_store, device="cpu", workdir=tmp_path / "a")
    run_job(spec_b, local_store, device="cpu", workdir=tmp_path / "b")
    import torch

    def weights(path: Path) -> dict[str, torch.Tensor]:
        with open(path, "rb") as f:
            return dict(torch.export.load(f).state_dict)

    wa, wb = weights(tmp_path / "a" / "model.bin"), weights(tmp_path / "b" / "model.bin")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["final"] == mb["final"]


def test_a_committed_job_is_not_run_again(local_store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(job={"id": "once"})
    make_dataset(local_store, spec)
    first = run_job(spec, local_store, device="cpu")
    manifest = local_store.get(layout.job("once").manifest)
    again = run_job(spec, local_store, device="cpu")
    assert (first.outcome, again.outcome) == ("succeeded", "already_done")
    assert local_store.get(layout.job("once").manifest) == manifest


def test_dry_run_uploads_nothing(local_store: ObjectStore, layout: Layout) -> None:
    spec = make_spec(job={"id": "dry"})
    make_dataset(local_store, spec)
    result = run_job(spec, local_store, device="cpu", dry_run=True)
    assert result.outcome == "dry_run"
    assert result.metrics is not None and result.metrics.steps <= 5
    assert local_store.list(layout.job("dry").dir) == []
    assert (Path(result.artifacts) / "model.bin").exists()


def _corrupt_data_pages(path: Path) -> None:
    """Scramble the middle of the file, keeping the footer readable."""
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    lo, hi = 64, len(raw) - footer - 64
    rng = np.random.default_rng(0)
    raw[lo:hi] = rng.integers(0, 256, size=hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_corrupt_partition_fails_with_a_record_and_no_manifest(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path / "spec.yaml", spec_dict(job={"id": "broken"}))
    spec = make_spec(job={"id": "broken"})
    make_dataset(local_store, spec)
    part = Partition("binance", "bbo", "btcusdt", "20251202")
    _corrupt_data_pages(local_store.path(layout.feature_data(part)))  # type: ignore[attr-defined]

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            *cpu_run_args(spec_path, local_store.root),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_DATA, proc.stderr
    assert "date=20251202" in proc.stderr
    assert read_manifest(local_store, layout.job("broken")) is None
    failure = json.loads(local_store.get(layout.job("broken").failure))
    assert "date=20251202" in failure["reason"] and failure["error"] == "DataError"


def test_nothing_to_train_on_is_a_data_error(local_store: ObjectStore) -> None:
    spec = make_spec(
        dates=("20251201", "20251202"),
        data={"split": {"validation_days": 1}},
        train={"batch_size": 64},
    )
    make_dataset(
        local_store,
        spec,
        SynthConfig(rows_per_day=200, row_group_size=100, label_horizon_sec=86_400),
    )
    with pytest.raises(DataError):
        run_job(spec, local_store, device="cpu", dry_run=True)


LAG = 4


@pytest.mark.slow
def test_a_window_reaches_a_signal_that_no_single_row_carries(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    def spec_for(model: dict[str, Any], window: int, job: str) -> Any:
        raw = spec_dict(
            dates=("20251201", "20251203"),
            job={"id": job},
            data={"window": window},
            train={"epochs": 2, "eval_every_steps": 40},
        )
        raw["model"] = model
        return spec_from_dict(raw)

    windowed = spec_for({"type": "tcn", "channels": 16}, 8, "tcn-8")
    cfg = SynthConfig(rows_per_day=20_000, row_group_size=5_000, signal_lag=LAG)
    make_dataset(local_store, windowed, cfg)
    plan = preflight(windowed.data, local_store, layout)
    # the oracle: the label's own driver, the signal feature LAG rows back in the same day
    val = read_split(plan, local_store, "val", window=LAG + 1)
    signal = plan.features.index(SIGNAL_FEATURE)
    oracle = pearson(val.inputs(slice(None))[:, 0, signal].astype(np.float64), val.y)
    assert oracle > 0.3

    tcn = run_job(windowed, local_store, device="cpu", workdir=tmp_path / "tcn")
    per_row = run_job(spec_for({}, 1, "mlp-1"), local_store, device="cpu")
    assert tcn.final is not None and per_row.final is not None
    print(f"oracle IC {oracle:.4f}, tcn {tcn.final.ic:.4f}, mlp per row {per_row.final.ic:.4f}")
    assert tcn.final.ic >= 0.8 * oracle, (tcn.final.ic, oracle)
    assert abs(per_row.final.ic) < 0.25 * oracle, (per_row.final.ic, oracle)

    # model.bin takes [batch, 8, features] with its window in the metadata, and the
    # validation sample lets promotion reproduce the job's predictions
    meta, sample_ic, samples = check_sample(
        tmp_path / "tcn" / "model.bin", tmp_path / "tcn" / "val_sample.parquet", "model", "sample"
    )
    assert meta.window == 8 and samples == SAMPLE_ROWS and sample_ic > 0.7 * oracle
    sample = pq.read_table(tmp_path / "tcn" / "val_sample.parquet")
    assert sample.num_rows == 8 * SAMPLE_ROWS
    assert sample.column("__prediction").null_count == 7 * SAMPLE_ROWS
    metrics = json.loads((tmp_path / "tcn" / "metrics.json").read_text())
    assert metrics["rows_dropped_short_window"] == 2 * 7  # two training days


def test_row_groups_without_usable_rows_are_counted_and_every_pass_covers_the_rest(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(dates=("20251201", "20251204"), job={"id": "holes"})
    cfg = make_dataset(local_store, spec)
    rg = cfg.row_group_size
    for date, group in (("20251201", 0), ("20251203", 3), ("20251204", 0)):
        part = Partition("binance", "bbo", "btcusdt", date)
        write_day(
            local_store,
            layout,
            part,
            cfg,
            lambda t, g=group: nan_rows(t, "label", g * rg, (g + 1) * rg),
        )
    result = run_job(spec, local_store, device="cpu")
    want = recount(local_store, preflight(spec.data, local_store, layout))
    stored = read_record(local_store, layout.job("holes").metrics, JobMetrics)
    assert stored is not None and stored.rows is not None and stored == result.metrics
    rows = stored.rows
    assert rows.validation.used == stored.final.rows == want["val"]
    assert rows.train.used == rows.statistics.used == want["train"]
    for counted in (rows.train, rows.validation, rows.statistics):
        assert counted.read == counted.planned
        assert counted.read == counted.outside + counted.dropped + counted.short + counted.used
    assert rows.train.dropped >= 2 * rg and rows.validation.dropped >= rg
    assert rows.epochs_read == spec.train.epochs
    assert stored.rows_seen == spec.train.epochs * want["train"]


def test_a_diverged_run_fails_with_its_own_cause_and_step(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(job={"id": "diverged"})
    cfg = make_dataset(local_store, spec)
    for date in spec.data.dates.resolve():
        part = Partition("binance", "bbo", "btcusdt", date)
        write_day(local_store, layout, part, cfg, lambda t: {"label": huge_labels(t)})
    with pytest.raises(Diverged, match=r"the mse loss was not finite at step 1 \(learning rate"):
        run_job(spec, local_store, device="cpu")
    assert read_manifest(local_store, layout.job("diverged")) is None
    failure = read_record(local_store, layout.job("diverged").failure, FailureRecord)
    assert failure is not None and failure.error == "Diverged"
    assert exit_code_of(Diverged("x")) == EXIT_JOB_FAILED


def huge_labels(table: pa.Table) -> np.ndarray:
    """Finite float32 labels whose square is not: the loss overflows on the first step."""
    return table.column("label").to_numpy(zero_copy_only=False) * np.float32(1e25)


@pytest.mark.slow
def test_two_runs_of_one_job_leave_one_committed_job_and_nothing_else(
    store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    raw = spec_dict(job={"id": "twice"})
    spec_path = write_spec(tmp_path / "spec.yaml", raw)
    make_dataset(store, spec_from_dict(raw))
    args = [sys.executable, "-m", *cpu_run_args(spec_path, store.root)]
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in outs)
    assert codes[0] == 0 and codes[1] in (0, EXIT_CONFLICT), outs
    paths = layout.job("twice")
    (tmp_path / "verify").mkdir()
    manifest = verify(store, paths, tmp_path / "verify")
    assert {f.name for f in manifest.files} == EXPECTED_FILES
    names = {o.loc.key.removeprefix(paths.dir.key) for o in store.list(paths.dir)}
    assert names == EXPECTED_FILES | {paths.MANIFEST, paths.SUMMARY, paths.LEASE}
    assert not store.exists(paths.failure)


def test_a_failure_is_never_recorded_beside_a_manifest(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(job={"id": "kept"})
    manifest = commit_without_training(local_store, spec, ic=0.1)
    paths = layout.job(spec.job_id)
    before = {o.loc.key: o.etag for o in local_store.list(paths.dir)}
    assert write_failure(local_store, paths, "a late loser", "AlreadyCommitted") is None
    assert {o.loc.key: o.etag for o in local_store.list(paths.dir)} == before
    assert read_manifest(local_store, paths) == manifest


def test_a_later_commit_removes_an_earlier_failure(
    local_store: ObjectStore, layout: Layout
) -> None:
    spec = make_spec(job={"id": "again"})
    make_dataset(local_store, spec)
    paths = layout.job("again")
    write_failure(local_store, paths, "interrupted", "Stopped", "signal")
    result = run_job(spec, local_store, device="cpu")
    assert result.outcome == "succeeded" and not local_store.exists(paths.failure)
    assert not list(Path(tempfile.gettempdir()).glob("again-*"))  # its working folder is gone


def test_each_progress_line_is_logged_once_on_the_terminal_and_in_train_log(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    from tests.helpers import cli

    raw = spec_dict(job={"id": "once"})
    make_dataset(local_store, spec_from_dict(raw), SynthConfig(rows_per_day=600, n_features=3))
    path = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli("run", str(path), "--store", local_store.root, "--device", "cpu")
    assert code == 0, text
    log = local_store.get(layout.job("once").file("train.log")).decode()
    for shown in (text, log):
        lines = [line for line in shown.splitlines() if "samples: train" in line]
        assert len(lines) == 1, shown  # not echoed back as if the job had printed it
    assert "quantlab.user" not in log


def test_a_resumed_job_reads_ahead_where_it_resumes(local_store: ObjectStore) -> None:
    """The head start a job gives its first buffer goes to the buffer a checkpoint resumes
    in, not to the epoch's first one, which it would read only to drop; the statistics'
    sample is still the one the interrupted run took."""
    train = {"epochs": 1, "batch_size": 256, "shuffle_buffer_row_groups": 2}
    raw = spec_dict(job={"id": "resumes"}, train=train)
    raw["data"]["cache_gb"] = 0  # no cache: the head start is a read of the whole buffer
    spec = spec_from_dict(raw)
    make_dataset(local_store, spec)
    resolved = resolve(spec, local_store)
    cpu = torch.device("cpu")
    fresh = prepare(resolved.spec, local_store, resolved.plan, cpu, Ranks(), dry_run=False)
    start = fresh.loader.first_buffer()
    batches = iter(fresh.loader.epoch(0))
    while fresh.loader.state_dict()["chunk"] == 0:
        next(batches)
    assert fresh.checkpointer is not None and fresh.loader.reader.early_dropped == 0
    optimizer = torch.optim.SGD(fresh.model.parameters(), lr=0.1)
    fresh.checkpointer.save(TrainState(step=7), fresh.model, optimizer)
    fresh.loader.close(wait=True)

    resumed = prepare(resolved.spec, local_store, resolved.plan, cpu, Ranks(), dry_run=False)
    try:
        assert resumed.restored is not None and resumed.restored.step == 7
        assert resumed.loader.first_buffer() != start  # the second buffer
        rest = sum(len(y) for _, y in resumed.loader.epoch(0))
        assert rest > 0 and resumed.loader.reader.early_dropped == 0  # taken up, none dropped
        assert resumed.stats_rows == fresh.stats_rows
    finally:
        resumed.loader.close(wait=True)
