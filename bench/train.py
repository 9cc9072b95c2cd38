"""Does the data path starve the model? Training rows/s through the loader against the same
loop fed tensors already in memory, epoch 1 (read and decoded from the files) apart from a
cached epoch (served from the block cache).

The three runs use the same `fit()` loop, model, batch size and step count, and alternate
within each round; each ratio is the median of the ratios paired within a round, beside the
ratio of the best rounds, with the load average and the CPU seconds per million rows of each
run (the figure load barely moves). `ratio` near 1 means the loader keeps up.

    python bench/train.py [--json] [--days 4] [--rows-per-day 200000] [--device auto]
                          [--window 32 [--channels 64]] [--user-model]

With `--window L` above 1 the model is the sequence model (`model.type: tcn`) on windows of
`L` rows: the loader's `[B, L, F]` batches against windows gathered by index from rows already
in memory (`data.windows.Windows`, the same index arithmetic without the reading), so both
sides hold the rows once and count samples, not rows.

With `--user-model` the model is a researcher's own, shipped as code: the gated residual network
of `examples/gated_residual.py` (width 256, two blocks), packed and imported the way a job
does it (`trainer.model.code.stage`).
"""

from __future__ import annotations

import argparse
import contextlib
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
USER_MODEL = HERE.parent / "examples" / "gated_residual.py"
sys.path[:0] = [str(HERE), str(HERE.parent)]

from dataset import dates, ensure_dataset, spec_dict  # noqa: E402
from measure import cpu_s, load_average, paired  # noqa: E402

from trainer.data.loader import BlockCache, StreamingLoader, compute_feature_stats  # noqa: E402
from trainer.data.plan import preflight  # noqa: E402
from trainer.data.windows import Windows  # noqa: E402
from trainer.model.code import StagedCode, stage  # noqa: E402
from trainer.model.registry import build_model  # noqa: E402
from trainer.spec import spec_from_dict  # noqa: E402
from trainer.store import open_store  # noqa: E402
from trainer.store.layout import Layout  # noqa: E402
from trainer.train.loop import Validation, fit  # noqa: E402


class InMemory:
    """Batches sliced from tensors already on the device: the loader taken out of the loop."""

    def __init__(self, x: Windows, y: torch.Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch, self.seed = x, y, batch, seed

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator(device="cpu").manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.y), generator=g).to(self.y.device)
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data or tempfile.mkdtemp(prefix="bench-train-"))
    store_root = ensure_dataset(root, args.days + 1, args.rows_per_day)
    window = args.window
    spec = spec_from_dict(
        spec_dict(
            dates(args.days + 1),
            data={"window": window},
            model=model_section(args),
            **({"code": {"path": str(USER_MODEL)}} if args.user_model else {}),
            train={
                "epochs": 1,
                "batch_size": args.batch,
                "warmup_steps": 10,
                "precision": "bf16",
                "eval_every_steps": 10**9,
                "log_every_steps": 10**9,
            },
        )
    )
    with contextlib.ExitStack() as stack:
        code = stack.enter_context(
            stage(spec.code, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        )
        return measure(args, spec, store_root, code)


def model_section(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's model: the MLP, the tcn on windows, or the researcher's own."""
    if args.user_model:
        return {"type": "gated_residual:GatedResidual", "params": {"width": 256, "blocks": 2}}
    if args.window > 1:
        return {"type": "tcn", "channels": args.channels}
    return {"hidden": [256, 128]}


def measure(
    args: argparse.Namespace, spec: Any, store_root: Path, code: StagedCode | None
) -> dict[str, Any]:
    device, window = pick_device(args.device), args.window
    store = open_store(f"file://{store_root}")
    plan = preflight(spec.data, store, Layout.of(spec.storage))
    stats = compute_feature_stats(plan, store, sample_rows=10**12)  # every row: exact count
    nf = len(plan.features)
    n_train = stats.rows
    if window > 1:  # fewer samples than rows (short history, non-finite values): count them
        counting = StreamingLoader(plan, store, split="train", batch_size=args.batch, window=window)
        n_train = sum(len(y) for _, y in counting.epoch(0))
    steps = math.ceil(n_train / args.batch)
    sample = (nf,) if window == 1 else (window, nf)
    val = Validation(torch.zeros(1, *sample, device=device), np.zeros(1))
    rows = torch.randn(stats.rows, nf, device=device)
    ends = None if window == 1 else torch.arange(window - 1, stats.rows, device=device)
    x = Windows(rows, ends, window)
    y = torch.randn(len(x), device=device)

    def timed(source: Any) -> dict[str, float]:
        model = build_model(
            spec.model, nf, stats.mean, stats.std, seed=0, code=code, input_shape=sample
        ).to(device)
        cpu0, t0 = cpu_s(), time.perf_counter()
        result = fit(model, source, val, spec.train, device, steps, Quiet())
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
            plan,
            store,
            split="train",
            batch_size=args.batch,
            device=device,
            cache=cache,
            window=window,
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
        "window": window,
        "model": spec.model.type,
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
    p.add_argument("--window", type=int, default=1, help="rows per sample; above 1: tcn")
    p.add_argument("--channels", type=int, default=64, help="the tcn's channels")
    p.add_argument(
        "--user-model", action="store_true", help="the gated residual of examples/, as code"
    )
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--data", default=None, help="folder to keep the generated dataset in")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rps, cpu = result["rows_per_s"], result["cpu_s_per_m_rows"]
    print("| device | run | rows/s (median) | CPU-s per M rows | vs model-only (median; best) |")
    print("|---|---|---:|---:|---:|")
    for name, ratio in (("epoch1", "ratio_epoch1"), ("cached", "ratio_cached"), ("model_only", "")):
        r = result[ratio] if ratio else {"median": 1.0, "best": 1.0}
        print(
            f"| {result['device']} | {name} | {rps[name]:,.0f} | {cpu[name]:.2f} | "
            f"{r['median']:.2f}; {r['best']:.2f} |"
        )
    loads = ", ".join(str(la[0]) for la in result["load_average"])
    print(
        f"\n{result['model']} on windows of {result['window']}: "
        f"{result['rows_train']:,} training samples, {result['steps']} steps of "
        f"{result['batch_size']}, {result['torch_threads']} torch threads; load average {loads}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
