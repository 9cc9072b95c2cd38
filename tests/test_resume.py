"""Interruption and scale-out on CPU: SIGKILL then exact resume; two ranks under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import cpu_run_args, make_dataset, make_spec, spec_dict, write_spec
from trainer.data.loader import StreamingLoader
from trainer.data.plan import preflight
from trainer.data.synth import SynthConfig
from trainer.job.artifacts import read_manifest
from trainer.job.run import run_job
from trainer.spec import spec_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # subprocesses and end-to-end launches: the slow tier

TRAIN = {
    "epochs": 2,
    "batch_size": 256,
    "eval_every_steps": 40,
    "log_every_steps": 20,
    "checkpoint": {"every_steps": 5, "every_minutes": None, "keep": 2},
}
DATA = SynthConfig(rows_per_day=12_000, row_group_size=3_000)
SHAPES = [
    pytest.param({}, {"hidden": [32, 16]}, id="rows"),
    pytest.param({"window": 32}, {"type": "tcn", "channels": 8}, id="window-32"),
]
"""One row per sample, and windows of 32 rows into the sequence model."""


def _raw(job: str, data: dict[str, Any], model: dict[str, Any], **train: Any) -> dict[str, Any]:
    raw = spec_dict(job={"id": job}, data=data, train={**TRAIN, **train})
    raw["model"] = model
    return raw


def _weights(path: Path) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        return dict(torch.export.load(f).state_dict)


@pytest.mark.parametrize(("data", "model"), SHAPES)
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
    local_store: ObjectStore,
    layout: Layout,
    tmp_path: Path,
    data: dict[str, Any],
    model: dict[str, Any],
) -> None:
    make_dataset(local_store, make_spec(train=TRAIN), DATA)
    spec_path = write_spec(tmp_path / "spec.yaml", _raw("killed", data, model))
    pointer = layout.job("killed").checkpoint_pointer

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *cpu_run_args(spec_path, local_store.root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as many torch threads as the runs below: another count sums in another order
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if local_store.exists(pointer) and json.loads(local_store.get(pointer))["step"] >= 15:
                break
            if proc.poll() is not None:
                pytest.fail(f"the job ended before it could be killed: {proc.stderr.read()}")
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup, no failure record
    finally:
        proc.wait(30)
    killed_at = json.loads(local_store.get(pointer))["step"]
    assert read_manifest(local_store, layout.job("killed")) is None

    resumed = run_job(
        spec_from_dict(_raw("killed", data, model)),
        local_store,
        device="cpu",
        workdir=tmp_path / "resumed",
    )
    straight = run_job(
        spec_from_dict(_raw("straight", data, model)),
        local_store,
        device="cpu",
        workdir=tmp_path / "straight",
    )

    assert resumed.metrics is not None and straight.metrics is not None
    assert resumed.metrics.resumed_from_step is not None
    assert resumed.metrics.resumed_from_step >= killed_at >= 15
    assert straight.metrics.resumed_from_step is None
    assert resumed.metrics.steps == straight.metrics.steps
    wa, wb = (
        _weights(tmp_path / "resumed" / "model.bin"),
        _weights(tmp_path / "straight" / "model.bin"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.metrics.final == straight.metrics.final
    assert local_store.list(layout.job("killed").checkpoints) == []  # cleaned up


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun is not installed",
)
@pytest.mark.parametrize(("data", "model"), SHAPES)
def test_two_ranks_under_torchrun_share_each_epoch_and_commit_once(
    local_store: ObjectStore,
    layout: Layout,
    tmp_path: Path,
    data: dict[str, Any],
    model: dict[str, Any],
) -> None:
    raw = _raw("ddp", data, model, checkpoint={"every_minutes": None})
    spec = spec_from_dict(raw)
    make_dataset(local_store, spec, DATA)
    spec_path = write_spec(tmp_path / "spec.yaml", raw)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            *cpu_run_args(spec_path, local_store.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = read_manifest(local_store, layout.job("ddp"))
    assert manifest is not None
    metrics = json.loads(local_store.get(layout.job("ddp").metrics))
    plan = preflight(spec.data, local_store, layout)
    one_rank = StreamingLoader(
        plan, local_store, split="train", batch_size=256, window=spec.data.window
    )
    n_train = sum(len(y) for _, y in one_rank.epoch(0))  # every sample, on one rank
    assert metrics["world_size"] == 2
    assert metrics["rows_seen_all_ranks"] == n_train * spec.train.epochs  # type: ignore[operator]
    # one set of artifacts: exactly one manifest and one model under the job
    keys = [o.loc.key for o in local_store.list(layout.job("ddp").dir)]
    assert keys.count("ml-artifacts/ddp/model.bin") == 1
    assert '"outcome": "succeeded"' in proc.stdout
