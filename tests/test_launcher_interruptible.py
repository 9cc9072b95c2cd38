"""Interruptible instances end to end: outbid mid-training, a new instance resumes from the
last checkpoint, the job completes, and nothing is left billing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.vast_offers import make_offer
from tests.helpers import make_dataset
from tests.launcher_env import Lab, lab, tiny_spec, wait_for
from trainer.data.synth import SynthConfig
from trainer.errors import ObjectNotFound
from trainer.store import ObjectStore
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier

MARKET = [make_offer(9_100_001 + i, "RTX 4090", dph_base=0.30 + i / 100) for i in range(4)]


@pytest.fixture
def market(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    with lab(s3_store, tmp_path, offers=MARKET) as found:
        yield found


def _json(store: ObjectStore, key: str) -> dict[str, object] | None:
    try:
        return json.loads(store.get(Layout().job("lt-spot").file(key)))  # type: ignore[no-any-return]
    except (ObjectNotFound, ValueError):
        return None


def test_outbid_instance_is_replaced_and_the_job_resumes(market: Lab) -> None:
    spec = tiny_spec(
        "lt-spot",
        resources={"interruptible": True},
        limits={"max_attempts": 3},
        train={
            "epochs": 15,
            "batch_size": 64,
            "eval_every_steps": 10_000,
            "checkpoint": {"every_steps": 20, "every_minutes": None},
        },
    )
    make_dataset(market.store, spec, SynthConfig(rows_per_day=3_000, row_group_size=1_000))
    handle = market.launch(spec)

    def outbid_after_a_checkpoint() -> None:
        first = min(wait_for(lambda: market.fake.ledger().entries or None, timeout=60))
        wait_for(
            lambda: (_json(market.store, "checkpoints/latest.json") or {}).get("step"), timeout=60
        )
        market.fake.outbid(first)

    thread = threading.Thread(target=outbid_after_a_checkpoint, daemon=True)
    thread.start()
    result = handle.wait()
    thread.join(10)

    assert result.outcome == "succeeded", result.reason
    assert len(result.attempts) == 2
    first, second = result.attempts
    assert first["outcome"] == "retry" and second["outcome"] == "succeeded"
    assert first["instance_id"] != second["instance_id"]
    assert result.cost_usd == pytest.approx(first["cost_usd"] + second["cost_usd"], abs=1e-5)
    assert len(result.recovery_s) == 1 and result.recovery_s[0] >= 0
    metrics = _json(market.store, "metrics.json")
    assert metrics is not None and metrics["resumed_from_step"] is not None
    assert "artifacts" in result.to_json() and result.artifacts["model.bin"]
    market.assert_clean()


def test_auto_promotion_after_a_successful_launch(market: Lab) -> None:
    spec = tiny_spec("lt-auto", promotion={"auto": True})
    make_dataset(market.store, spec, SynthConfig(rows_per_day=2_000, row_group_size=1_000))
    result = market.launch(spec).wait()

    assert result.outcome == "succeeded"
    assert result.promotion is not None and result.promotion["promoted"] is True
    assert result.to_json()["promotion"]["promoted"] is True
    live = json.loads(market.store.get(Layout().production("btcusdt").manifest))
    assert live["source_job"] == "lt-auto"
    market.assert_clean()
