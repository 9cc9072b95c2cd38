"""`quantlab-train`: argument parsing, output, and errors turned into exit codes. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import __version__, commands, promotion_cli
from trainer.cli_args import add_overrides, add_store
from trainer.errors import EXIT_INTERNAL, TrainerError
from trainer.launcher import cli as launcher_cli
from trainer.spec.docs import json_schema, markdown_reference
from trainer.synth import SynthConfig

if TYPE_CHECKING:
    from trainer.job import JobResult

Handler = Callable[[argparse.Namespace], int]


def setup_logging() -> None:
    """Human progress on stderr; stdout stays for results."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("quantlab")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to a JobSpec YAML file")
    add_overrides(p)
    add_store(p)
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _validate(args: argparse.Namespace) -> int:
    ctx = commands.open_context(args.spec, args.overrides, args.store)
    result = commands.validate(ctx, args.check_data)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"spec ok: {args.spec} (job id {result['job_id']})")
    data = result.get("data")
    if isinstance(data, dict):
        print(
            f"data ok: {data['partitions']} partitions, {data['rows']:,} rows, "
            f"{data['bytes'] / 1e6:.1f} MB, dates {data['date_span']}, "
            f"{data['features']} features\n"
            f"  expected rows: train ≈ {data['train_rows_expected']:,}, "
            f"validation ≈ {data['val_rows_expected']:,} "
            f"(label horizon {data['label_horizon_sec']} s, config {data['config_hash']})"
        )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(markdown_reference() if args.markdown else json_schema())
    return 0


def _generate(args: argparse.Namespace) -> int:
    ctx = commands.open_context(args.spec, args.overrides, args.store)
    cfg = SynthConfig(rows_per_day=args.rows_per_day, n_features=args.features, seed=args.seed)
    n = commands.generate_for_spec(ctx, cfg)
    print(f"wrote {n} synthetic partitions under {ctx.store.root}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from trainer.job import run_job  # torch loads only for the commands that train

    ctx = commands.open_context(args.spec, args.overrides, args.store)
    result = run_job(ctx.spec, ctx.store, device=args.device, dry_run=args.dry_run)
    _print_result(result, args.json)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from trainer.demo import run_demo

    result, manifest = run_demo(Path(args.store_dir))
    _print_result(result, args.json)
    if not args.json:
        print(f"manifest verified: {len(manifest['files'])} files, sha256 ok")  # type: ignore[arg-type]
    return 0


def _print_result(result: JobResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
        return
    final = result.metrics.get("final", {})
    print(f"job {result.job_id}: {result.outcome}")
    print(f"artifacts: {result.artifacts}")
    if final:
        print(
            f"validation: ic {final['ic']:.4f}  rank_ic {final['rank_ic']:.4f}  "
            f"hit_rate {final['hit_rate']:.3f}  loss {final['val_loss']:.4f}  "
            f"({final['rows']:,} rows)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantlab-train",
        description="Train QuantLab models on Vast.ai GPUs from a JobSpec, or locally on CPU.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a JobSpec, and with --check-data its dataset")
    _spec_args(p)
    p.add_argument("--check-data", action="store_true", help="run the dataset pre-flight")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("schema", help="print the JobSpec JSON Schema (for editors)")
    p.add_argument("--markdown", action="store_true", help="the README reference instead")
    p.set_defaults(handler=_schema)

    p = sub.add_parser("generate", help="write synthetic feature partitions a spec names")
    _spec_args(p)
    p.add_argument("--rows-per-day", type=int, default=20_000)
    p.add_argument("--features", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("run", help="run the training job here (inside the container, or on CPU)")
    _spec_args(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the same path on a tiny slice (a few steps); nothing is uploaded",
    )
    p.set_defaults(handler=_run)

    p = sub.add_parser("demo", help="generate data, train on CPU and commit, all locally")
    p.add_argument("--store-dir", default=".quantlab/store", help="local store folder")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(handler=_demo)

    promotion_cli.register(sub)
    launcher_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    handler: Handler = args.handler
    try:
        return handler(args)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: a one-line message, not a traceback
        if os.environ.get("QUANTLAB_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (QUANTLAB_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
