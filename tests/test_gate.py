"""The promotion gate on plain values: a candidate's metrics against what production holds."""

from __future__ import annotations

import math

import pytest

from trainer.errors import EXIT_REFUSED, exit_code_of
from trainer.promotion.gate import GateRefused, check_gate
from trainer.spec.sections import PromotionSpec
from trainer.store.records import EvalMetrics, ProductionManifest, ProductionModel


def metrics(ic: float) -> EvalMetrics:
    return EvalMetrics(val_loss=1.0, ic=ic, rank_ic=ic, hit_rate=0.5, rows=100)


def live(ic: float | None, version: int = 3) -> ProductionManifest:
    return ProductionManifest(
        symbol="btcusdt",
        version=version,
        action="promote",
        source_job="job-live",
        metrics=metrics(ic) if ic is not None else None,
        model=ProductionModel(sha256="0" * 64, size=1),
    )


def test_an_empty_production_takes_any_finite_candidate() -> None:
    decision = check_gate("job-new", metrics(0.01), None, PromotionSpec())
    assert decision == "passed: candidate job-new validation IC 0.0100 against no production model"


def test_the_candidate_may_trail_production_by_at_most_max_ic_drop() -> None:
    rule = PromotionSpec(max_ic_drop=0.02)
    assert check_gate("job-new", metrics(0.29), live(0.30), rule).startswith("passed: ")
    with pytest.raises(GateRefused) as err:
        check_gate("job-new", metrics(0.27), live(0.30), rule)
    message = str(err.value)
    assert "candidate job-new validation IC 0.2700 is more than max_ic_drop 0.0200 below" in message
    assert "production v3 (job-live) validation IC 0.3000" in message
    assert message.endswith("Use --force to promote anyway")
    assert exit_code_of(err.value) == EXIT_REFUSED


def test_min_ic_is_a_floor_even_without_production() -> None:
    with pytest.raises(GateRefused, match=r"below min_ic 0\.1000; no production model"):
        check_gate("job-new", metrics(0.05), None, PromotionSpec(min_ic=0.1))
    assert check_gate("job-new", metrics(0.10), None, PromotionSpec(min_ic=0.1))


def test_a_candidate_without_a_number_never_passes() -> None:
    with pytest.raises(GateRefused, match="is not a number"):
        check_gate("job-new", metrics(math.nan), None, PromotionSpec())


def test_production_without_a_recorded_ic_does_not_block() -> None:
    decision = check_gate("job-new", metrics(0.2), live(None), PromotionSpec())
    assert "production v3 (job-live) with no recorded IC" in decision
    assert check_gate("job-new", metrics(0.2), live(math.nan), PromotionSpec())
