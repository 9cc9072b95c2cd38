"""Does the data path starve the model? Training rows/s through the loader against the same
loop fed tensors already in memory, epoch 1 (read and decoded from the files) apart from a
cached epoch (served from the block cache).

The three runs use the same `fit()` loop, model, batch size and step count, and alternate
within each round; each ratio is the median of the ratios paired within a round, beside the
ratio of the best rounds, with the load average and the CPU seconds per million rows of each
run (the figure load barely moves). `ratio` near 1 means the loader keeps up. Measured for
the built-in MLP and for a researcher's own model and loss (`examples/gated_residual.py`,
packed, unpacked and imported as a job's code is).

    python bench/train.py [--json] [--days 4] [--rows-per-day 200000] [--device auto]
        [--models mlp,gated_residual]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from dataset import dates, ensure_dataset, spec_dict  # noqa: E402
from measure import cpu_s, load_average, paired  # noqa: E402

from trainer.data.loader import BlockCache, StreamingLoader, compute_feature_stats  # noqa: E402
from trainer.data.plan import preflight  # noqa: E402
from trainer.model.code import StagedCode, resolve_code, stage  # noqa: E402
from trainer.model.registry import build_loss, build_model  # noqa: E402
from trainer.spec import JobSpec, spec_from_dict  # noqa: E402
from trainer.store import open_store  # noqa: E402
from trainer.store.layout import Layout  # noqa: E402
from trainer.train.loop import Validation, fit  # noqa: E402


class InMemory:
    """Batches sliced from tensors already on the device: the loader taken out of the loop."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch, self.seed = x, y, batch, seed

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator(device="cpu").manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.y), generator=g).to(self.x.device)
        for i in range(0, len(order), self.batch):
            idx = order[i : i + self.batch]
            yield self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Quiet:
    def on_step(self, record: dict[str, float]) -> None:
        pass

    def on_eval(self, record: dict[str, float]) -> None:
        pass


MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"model": {"hidden": [256, 128]}},
    "gated_residual": {
        "code": {"path": str(HERE.parent / "examples")},
        "model": {"type": "gated_residual:GatedResidual", "params": {"width": 128, "blocks": 2}},
        "train": {"loss": "gated_residual:log_cosh"},
    },
}
"""The models measured: the built-in baseline, and a researcher's own with its own loss."""


def bench_spec(args: argparse.Namespace, model: str) -> JobSpec:
    """The benchmark's spec over its dataset for one of MODELS, its code hashed."""
    chosen = MODELS[model]
    spec = spec_from_dict(
        spec_dict(
            dates(args.days + 1),
            **{k: v for k, v in chosen.items() if k != "train"},
            train={
                **chosen.get("train", {}),
                "epochs": 1,
                "batch_size": args.batch,
                "warmup_steps": 10,
                "precision": "bf16",
                "eval_every_steps": 10**9,
                "log_every_steps": 10**9,
            },
        )
    )
    return resolve_code(spec)


def run(args: argparse.Namespace, spec: JobSpec, code: StagedCode | None) -> dict[str, Any]:
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    store_root = ensure_dataset(Path(args.data), args.days + 1, args.rows_per_day)
    store = open_store(f"file://{store_root}")
    plan = preflight(spec.data, store, Layout.of(spec.storage))
    stats = compute_feature_stats(plan, store, sample_rows=10**12)  # every row: exact count
    n_train, steps = stats.rows, math.ceil(stats.rows / args.batch)
    val = Validation(torch.zeros(1, len(plan.features), device=device), np.zeros(1))
    x = torch.randn(n_train, len(plan.features), device=device)
    y = torch.randn(n_train, device=device)

    loss_fn = build_loss(spec.train, code)

    def timed(source: Any) -> dict[str, float]:
        net = build_model(spec.model, len(plan.features), stats.mean, stats.std, 0, code=code)
        net = net.to(device)
        cpu0, t0 = cpu_s(), time.perf_counter()
        result = fit(net, source, val, spec.train, device, steps, Quiet(), loss_fn=loss_fn)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        return {"rows": result.state.rows_seen, "seconds": seconds, "cpu_s": cpu_s() - cpu0}

    rounds: dict[str, list[dict[str, float]]] = {"epoch1": [], "cached": [], "model_only": []}
    loads = []
    for r in range(args.rounds):
        loads.append(load_average())
        # a fresh cache that holds the whole split: epoch 1 reads and decodes every row group,
        # the second pass over the same loader is served from the cache alone
        cache = BlockCache(10**12, device=device)
        loader = StreamingLoader(
            plan, store, split="train", batch_size=args.batch, device=device, cache=cache
        )
        order = ["epoch1", "cached", "model_only"] if r % 2 == 0 else ["model_only", "epoch1"]
        for name in order:
            if name == "model_only":
                rounds[name].append(timed(InMemory(x, y, args.batch, 0)))
            else:
                rounds[name].append(timed(loader))
        if r % 2:
            rounds["cached"].append(timed(loader))
        loader.close(wait=True)
    loads.append(load_average())

    def rate(run: dict[str, float]) -> float:
        return run["rows"] / run["seconds"]

    only = rounds["model_only"]
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "rows_train": n_train,
        "batch_size": args.batch,
        "steps": steps,
        "rounds": args.rounds,
        "load_average": loads,
        "rows_per_s": {k: statistics.median(rate(r) for r in v) for k, v in rounds.items()},
        "cpu_s_per_m_rows": {
            k: statistics.median(1e6 * r["cpu_s"] / r["rows"] for r in v) for k, v in rounds.items()
        },
        "ratio_epoch1": paired(rounds["epoch1"], only, rate),
        "ratio_cached": paired(rounds["cached"], only, rate),
        "runs": rounds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--days", type=int, default=4, help="training days (one more is validation)")
    p.add_argument("--rows-per-day", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--data", default=None, help="folder to keep the generated dataset in")
    p.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    args = p.parse_args()
    args.data = args.data or tempfile.mkdtemp(prefix="bench-train-")  # one dataset for all
    results = []
    for model in args.models.split(","):
        spec = bench_spec(args, model)
        with tempfile.TemporaryDirectory() as tmp, stage(spec.code, Path(tmp)) as code:
            results.append({"model": model, **run(args, spec, code)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        "| device | model | run | rows/s (median) | CPU-s per M rows "
        "| vs model-only (median; best) |"
    )
    print("|---|---|---|---:|---:|---:|")
    for result in results:
        rps, cpu = result["rows_per_s"], result["cpu_s_per_m_rows"]
        runs = (("epoch1", "ratio_epoch1"), ("cached", "ratio_cached"), ("model_only", ""))
        for name, ratio in runs:
            r = result[ratio] if ratio else {"median": 1.0, "best": 1.0}
            print(
                f"| {result['device']} | {result['model']} | {name} | {rps[name]:,.0f} | "
                f"{cpu[name]:.2f} | {r['median']:.2f}; {r['best']:.2f} |"
            )
    for result in results:
        loads = ", ".join(str(la[0]) for la in result["load_average"])
        print(
            f"\n{result['model']}: {result['rows_train']:,} training rows, {result['steps']} "
            f"steps of {result['batch_size']}, {result['torch_threads']} torch threads; load "
            f"average {loads}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
