"""CUDA checks, run with `python -m pytest -m gpu` on a GPU machine; skipped elsewhere.

They read local Parquet files only (no S3 server), so a bare GPU box with torch, pyarrow,
pyyaml and pydantic can run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import make_dataset, make_spec, spec_dict, write_spec
from trainer.data.synth import SynthConfig
from trainer.job.run import run_job
from trainer.store import ObjectStore
from trainer.store.records import SENTINEL
from trainer.train.loop import autocast_dtype

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parent.parent


def test_bf16_autocast_trains_and_learns(local_store: ObjectStore) -> None:
    spec = make_spec(
        dates=("20251201", "20251204"), train={"precision": "bf16", "epochs": 3, "batch_size": 2048}
    )
    make_dataset(local_store, spec, SynthConfig(rows_per_day=40_000, row_group_size=10_000))
    device = torch.device("cuda")
    assert autocast_dtype("bf16", device) is (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    )
    result = run_job(spec, local_store, device="cuda")
    assert result.metrics is not None
    assert result.metrics.final.ic > 0.25
    assert all(h.val_loss == h.val_loss for h in result.metrics.history)  # no NaN


def test_loader_delivers_cuda_batches_through_pinned_memory(local_store: ObjectStore) -> None:
    from trainer.data.loader import StreamingLoader
    from trainer.data.plan import preflight
    from trainer.store.layout import Layout

    spec = make_spec()
    make_dataset(local_store, spec)
    plan = preflight(spec.data, local_store, Layout.of(spec.storage))
    loader = StreamingLoader(plan, local_store, split="train", batch_size=1024, device="cuda")
    rows = 0
    for x, y in loader.epoch(0):
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
        rows += len(y)
    assert rows == loader.stats.rows > 0


def test_container_entrypoint_on_one_gpu_with_local_files(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    raw = spec_dict(job={"id": "gpu-box"}, train={"precision": "bf16"})
    spec_path = write_spec(tmp_path / "spec.yaml", raw)
    make_dataset(local_store, make_spec(job={"id": "gpu-box"}))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "QUANTLAB_JOBSPEC": f"file://{spec_path}",
        "QUANTLAB_STORE": local_store.root,
        "QUANTLAB_DEVICE": "cuda",
        "QUANTLAB_STATUS_EVERY_SEC": "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [str(ROOT / "docker" / "entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last.removeprefix(SENTINEL + " "))
    assert result["outcome"] == "succeeded"
    status = json.loads(
        Path(
            local_store.root.removeprefix("file://"),
            "quantlab-artifacts",
            "ml-artifacts",
            "gpu-box",
            "status.json",
        ).read_text()
    )
    assert status["host"]["gpu"]["name"]
    assert "cuda" in proc.stderr
