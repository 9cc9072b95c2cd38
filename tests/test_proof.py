"""The proof before renting: five broken models each refused with the spec field, their
file:line and the exception's text; a good one passes, with its timings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.broken_models import BROKEN, GOOD, net_spec, write_net
from tests.helpers import make_dataset, spec_dict
from trainer.data.plan import preflight
from trainer.data.synth import SynthConfig
from trainer.errors import SpecError
from trainer.model.checks import check_model
from trainer.model.code import importable, pack
from trainer.model.proof import ProofChild, ProofResult, prove
from trainer.store import ObjectStore
from trainer.store.layout import Layout

ROWS = np.random.default_rng(0).standard_normal((256, 12)).astype(np.float32)
LABELS = (0.3 * ROWS[:, 0] + np.random.default_rng(1).standard_normal(256)).astype(np.float32)


def checked(code_dir: Path, loss: str) -> ProofResult:
    spec = net_spec(spec_dict(), code_dir, loss)
    assert spec.code is not None
    with importable(spec.code, pack(code_dir, code_dir.parent / "code.tar.gz")) as code:
        return check_model(spec, ROWS, LABELS, code)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_model_is_refused_naming_its_line(tmp_path: Path, name: str) -> None:
    source, expected, loss = BROKEN[name]
    code_dir = write_net(tmp_path / "models", source)
    with pytest.raises(SpecError) as info:
        checked(code_dir, loss)
    assert info.value.problems[0].startswith(expected.format(code=code_dir))


def test_a_good_model_passes_and_says_how_long_each_phase_took(tmp_path: Path) -> None:
    result = checked(write_net(tmp_path / "models", GOOD), "net:loss")
    assert result.ok and result.rows == 256 and result.features == 12
    assert result.parameters == 12 * 8 + 8 + 8 + 1
    assert set(result.seconds) == {"build", "step", "export"}


WINDOWED = """\
import math
from torch import nn


class Flat(nn.Module):
    def __init__(self, n_features, input_shape):
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), 1)

    def forward(self, x):
        return self.head(x.flatten(1)).squeeze(-1)
"""


def test_a_window_is_proven_as_training_serves_it(tmp_path: Path) -> None:
    windows = np.lib.stride_tricks.sliding_window_view(ROWS, 8, axis=0).transpose(0, 2, 1)
    x, y = np.ascontiguousarray(windows), LABELS[7:]
    code_dir = write_net(tmp_path / "models", GOOD + "\n\n" + WINDOWED)
    spec = net_spec(spec_dict(data={"window": 8}), code_dir)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"type": "net:Flat"})})
    assert spec.code is not None
    with importable(spec.code, pack(code_dir, tmp_path / "code.tar.gz")) as code:
        result = check_model(spec, x, y, code)
        assert result.features == 12 and result.parameters == 8 * 12 + 1
        # a model written for rows maps each of a window's rows: the shape says so
        per_row = spec.model_copy(
            update={"model": spec.model.model_copy(update={"type": "net:Net"})}
        )
        with pytest.raises(SpecError) as info:
            check_model(per_row, x, y, code)
    assert info.value.problems[0].startswith(
        f"model.type: {code_dir}/net.py:10: forward returned shape [249, 8] for 249 rows"
    )


@pytest.mark.slow
def test_a_windowed_model_is_proven_on_real_windows(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    code_dir = write_net(tmp_path / "models", WINDOWED)
    raw = spec_dict(job={"id": "windowed-proof"}, data={"window": 16})
    spec = net_spec(raw, code_dir)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"type": "net:Flat"})})
    make_dataset(local_store, spec, SynthConfig(rows_per_day=2_000, row_group_size=500))
    result = prove(spec, preflight(spec.data, local_store, layout), local_store)
    assert result is not None and result.rows == 256 and result.parameters == 16 * 12 + 1


@pytest.mark.slow
def test_a_model_that_never_finishes_building_is_stopped_at_the_time_limit(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    code_dir = write_net(tmp_path / "models", GOOD.replace("super().__init__()", "time.sleep(600)"))
    (code_dir / "net.py").write_text("import time\n" + (code_dir / "net.py").read_text())
    spec = net_spec(spec_dict(job={"id": "slow-build"}), code_dir)
    make_dataset(local_store, spec, SynthConfig(rows_per_day=2_000, row_group_size=500))
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        prove(spec, preflight(spec.data, local_store, layout), local_store, timeout_s=8)
    assert time.monotonic() - started < 60
    assert info.value.problems == [
        "model.type: building net:Net, one training step and the export on 256 rows took over "
        "8 s; look for a loop that never ends or a model far too big for its data"
    ]


@pytest.mark.slow
def test_a_proof_process_started_ahead_proves_the_same_and_one_left_unused_is_gone(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    code_dir = write_net(tmp_path / "models", GOOD)
    spec = net_spec(spec_dict(job={"id": "ahead"}), code_dir)
    make_dataset(local_store, spec, SynthConfig(rows_per_day=2_000, row_group_size=500))
    plan = preflight(spec.data, local_store, layout)
    fresh = prove(spec, plan, local_store)
    child = ProofChild.start()
    assert child is not None
    ahead = prove(spec, plan, local_store, child=child)
    assert fresh is not None and ahead is not None
    assert (ahead.ok, ahead.rows, ahead.parameters, ahead.loss) == (
        fresh.ok,
        fresh.rows,
        fresh.parameters,
        fresh.loss,
    )
    assert child.take() is None  # used once
    child.close()
    source, expected, loss = BROKEN[sorted(BROKEN)[0]]
    broken = net_spec(spec_dict(job={"id": "ahead"}), write_net(tmp_path / "bad", source), loss)
    child = ProofChild.start()
    with pytest.raises(SpecError) as info:
        prove(broken, plan, local_store, child=child)
    assert info.value.problems[0].startswith(expected.format(code=tmp_path / "bad"))
    unused = ProofChild.start()
    assert unused is not None
    process = unused.take()
    assert process is not None and process.poll() is None  # waiting for its folder
    unused._process = process
    unused.close()
    assert process.poll() is not None
