"""The pure helpers beside the loop and the loader, tested on plain values: the learning-rate
schedule, the step budget, the split bounds, the row order, the early-stopping comparison and
the loop's rule for the shape of a batch's predictions."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import Quiet
from trainer.data.blocks import Unit
from trainer.data.order import rank_units, row_order
from trainer.data.split import split_bounds
from trainer.errors import SpecError
from trainer.spec.dates import day_bounds_ms
from trainer.spec.sections import SplitSpec, TrainSpec
from trainer.train.loop import Validation, fit, step_budget
from trainer.train.lr import lr_at
from trainer.train.metrics import improved

DAYS = ("20251201", "20251202", "20251203", "20251204")


# -- learning rate ---------------------------------------------------------------------------
def test_warmup_climbs_linearly_to_the_peak() -> None:
    train = TrainSpec(lr=0.01, warmup_steps=4)
    assert [lr_at(s, 100, train) for s in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])


@pytest.mark.parametrize(
    ("schedule", "at_half", "at_end"),
    [("cosine", 0.005, 0.0), ("linear", 0.005, 0.0), ("constant", 0.01, 0.01)],
)
def test_decay_after_warmup(schedule: str, at_half: float, at_end: float) -> None:
    train = TrainSpec(lr=0.01, warmup_steps=10, schedule=schedule)  # type: ignore[arg-type]
    assert lr_at(10, 110, train) == pytest.approx(0.01)
    assert lr_at(60, 110, train) == pytest.approx(at_half)
    assert lr_at(110, 110, train) == pytest.approx(at_end, abs=1e-12)
    assert lr_at(500, 110, train) == pytest.approx(at_end, abs=1e-12)  # past the end: held


def test_no_warmup_starts_at_the_peak_and_never_divides_by_zero() -> None:
    train = TrainSpec(lr=0.02, warmup_steps=0)
    assert lr_at(0, 1, train) == pytest.approx(0.02)
    assert math.isfinite(lr_at(0, 0, TrainSpec(warmup_steps=0)))


def test_step_budget_takes_whichever_ends_first() -> None:
    assert step_budget(TrainSpec(epochs=3), 10) == 30
    assert step_budget(TrainSpec(epochs=3, max_steps=12), 10) == 12
    assert step_budget(TrainSpec(epochs=None, max_steps=7), 10) == 7
    assert step_budget(TrainSpec(epochs=2), 0) == 1  # an empty epoch still takes one step


# -- split ------------------------------------------------------------------------------------
def test_validation_days_hold_out_the_last_days_and_purge_the_horizon() -> None:
    ts_min, ts_max = day_bounds_ms(DAYS[0])[0], day_bounds_ms(DAYS[-1])[1]
    bounds = split_bounds(SplitSpec(validation_days=1), DAYS, ts_min, ts_max, 10)
    assert bounds.val_start_ms == day_bounds_ms("20251204")[0]
    assert bounds.train_end_ms == bounds.val_start_ms - 10_000
    assert bounds.in_train(bounds.train_end_ms - 1) and not bounds.in_train(bounds.train_end_ms)
    assert bounds.in_val(bounds.val_start_ms) and not bounds.in_val(bounds.val_start_ms - 1)
    # a purge between them belongs to neither
    assert not bounds.in_train(bounds.val_start_ms - 1) and not bounds.in_val(bounds.train_end_ms)


def test_a_fraction_cuts_the_time_span_and_an_explicit_purge_wins() -> None:
    bounds = split_bounds(SplitSpec(validation_fraction=0.25, purge_sec=0), DAYS, 0, 399, 10)
    assert (bounds.val_start_ms, bounds.train_end_ms) == (300, 300)
    default = split_bounds(SplitSpec(), DAYS, 0, 999, 1)
    assert default.val_start_ms == 800 and default.train_end_ms == 800 - 1000


def test_holding_out_every_day_leaves_no_training_day() -> None:
    with pytest.raises(ValueError, match="leaves no training day out of 4"):
        split_bounds(SplitSpec(validation_days=4), DAYS, 0, 1, 0)


# -- row order ------------------------------------------------------------------------------
UNITS = [Unit(p, g, 100, None, None) for p in range(3) for g in range(4)]


def test_every_row_group_goes_to_exactly_one_rank_each_epoch() -> None:
    for epoch in range(3):
        shards = [rank_units(UNITS, 7, epoch, r, 3, shuffle=True) for r in range(3)]
        seen = [u for shard in shards for u in shard]
        assert sorted(seen, key=lambda u: (u.part, u.group)) == UNITS
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_the_shuffle_is_a_function_of_seed_and_epoch_alone() -> None:
    a = rank_units(UNITS, 7, 0, 0, 1, shuffle=True)
    assert a == rank_units(UNITS, 7, 0, 0, 1, shuffle=True)
    assert a != rank_units(UNITS, 7, 1, 0, 1, shuffle=True)
    assert a != rank_units(UNITS, 8, 0, 0, 1, shuffle=True)
    assert rank_units(UNITS, 7, 0, 0, 1, shuffle=False) == UNITS  # validation keeps file order


def test_row_order_is_a_permutation_fixed_by_its_coordinates() -> None:
    order = row_order(1000, 7, 0, 0, 3)
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, row_order(1000, 7, 0, 0, 3))
    for other in (row_order(1000, 8, 0, 0, 3), row_order(1000, 7, 1, 0, 3),
                  row_order(1000, 7, 0, 1, 3), row_order(1000, 7, 0, 0, 4)):  # fmt: skip
        assert not np.array_equal(order, other)


# -- early stopping ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("metric", "value", "best", "min_delta", "expected"),
    [
        ("val_loss", 1.0, None, 0.0, True),
        ("val_loss", 0.9, 1.0, 0.0, True),
        ("val_loss", 1.0, 1.0, 0.0, False),
        ("val_loss", 0.95, 1.0, 0.1, False),
        ("ic", 0.31, 0.30, 0.0, True),
        ("ic", 0.30, 0.30, 0.0, False),
        ("ic", 0.305, 0.30, 0.01, False),
        ("ic", 0.32, 0.30, 0.01, True),
    ],
)
def test_improvement_is_lower_loss_or_higher_ic_by_more_than_min_delta(
    metric: str, value: float, best: float | None, min_delta: float, expected: bool
) -> None:
    assert improved(metric, value, best, min_delta) is expected


# -- the shape of a batch's predictions ------------------------------------------------------
class _Batches:
    """Batches of 4, 4 and 1 rows of 3 features, the label their sum."""

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch)
        for n in (4, 4, 1):
            x = torch.randn(n, 3, generator=g)
            yield x, x.sum(1)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _Linear(nn.Module):
    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.body, self.squeeze = nn.Linear(3, 1), squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out.squeeze() if self.squeeze else out  # squeeze(): a batch of one is a scalar


def test_a_batch_of_one_squeezed_to_a_scalar_trains_and_a_column_of_predictions_is_refused() -> (
    None
):
    train = TrainSpec(epochs=1, batch_size=4, eval_every_steps=100, warmup_steps=0)
    val = Validation(torch.randn(8, 3), np.zeros(8, np.float32))
    cpu = torch.device("cpu")
    result = fit(_Linear(squeeze=True), _Batches(), val, train, cpu, 3, Quiet())
    assert result.state.step == 3 and result.state.rows_seen == 9
    # [4, 1] against [4] would broadcast to [4, 4]: a loss that is silently wrong
    with pytest.raises(SpecError, match=r"forward returned shape \[4, 1\] for 4 rows") as err:
        fit(_Linear(squeeze=False), _Batches(), val, train, cpu, 3, Quiet())
    assert err.value.problems[0].startswith("model.type: ")
    assert err.value.problems[0].endswith("[batch] (squeeze the last dimension)")


def test_leave_finishes_what_an_exit_finishes_then_skips_the_teardown(tmp_path: Path) -> None:
    program = textwrap.dedent(
        f"""
        import atexit, logging, tempfile, threading, time
        from pathlib import Path
        from trainer.train.leave import leave

        out = Path({str(tmp_path)!r})
        log = logging.getLogger("quantlab.leave-test")
        log.addHandler(logging.FileHandler(out / "log.txt"))
        log.warning("logged before leaving")
        folder = tempfile.TemporaryDirectory(dir=out)  # cleaned by its finalizer at exit
        (Path(folder.name) / "x").write_text("x")

        def late() -> None:
            time.sleep(0.3)
            (out / "thread.txt").write_text("the thread finished")

        threading.Thread(target=late).start()
        atexit.register(lambda: (out / "atexit.txt").write_text("ran"))

        class Teardown:
            def __del__(self) -> None:  # module teardown: skipped
                (out / "teardown.txt").write_text("ran")

        keep = Teardown()
        print("on stdout", end="")
        leave(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "on stdout"
    assert (tmp_path / "thread.txt").read_text() == "the thread finished"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "logged before leaving" in (tmp_path / "log.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit.txt", "log.txt", "thread.txt"]
