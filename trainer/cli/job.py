"""The job subcommands: validate, schema, generate, run, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.cli.options import add_json, add_spec, add_store, int_in, open_context
from trainer.cli.output import metrics_line
from trainer.data.synth import SynthConfig, generate_for_spec
from trainer.errors import TrainerError, exit_code_of, outcome_of, problems_of
from trainer.spec.docs import json_schema, markdown_reference, sweep_reference

if TYPE_CHECKING:
    from trainer.job.run import JobResult


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check a JobSpec, with --check-data its dataset, with --check-model its model",
    )
    _spec_args(p)
    p.add_argument("--check-data", action="store_true", help="run the dataset pre-flight")
    p.add_argument(
        "--check-model",
        action="store_true",
        help="prove the model on real rows: build, one training step, export (as `launch` "
        "does before renting); implies --check-data",
    )
    p.set_defaults(handler=_validate)

    p = sub.add_parser("schema", help="print the JobSpec JSON Schema (for editors)")
    p.add_argument("--markdown", action="store_true", help="the README reference instead")
    p.add_argument("--sweep", action="store_true", help="the sweep spec's, not the JobSpec's")
    p.set_defaults(handler=_schema)

    p = sub.add_parser("generate", help="write synthetic feature partitions a spec names")
    _spec_args(p)
    p.add_argument("--rows-per-day", type=int_in(1, 10_000_000), default=20_000)
    p.add_argument("--features", type=int_in(1, 1024), default=12)
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
    add_json(p, "machine-readable result on stdout")
    p.set_defaults(handler=_demo)


def _spec_args(p: argparse.ArgumentParser) -> None:
    add_spec(p)
    add_store(p)
    add_json(p)


def _validate(args: argparse.Namespace) -> int:
    from trainer.data.plan import summary
    from trainer.job.identity import resolve

    try:
        ctx = open_context(args.spec, args.overrides, args.store)
        job_id = ctx.spec.job.id
        data = proof = None
        if args.check_data or args.check_model:
            resolved = resolve(ctx.spec, ctx.store)
            job_id, data = resolved.job_id, summary(resolved.plan)
            # what `run` needs before it trains: a bucket to commit to, honouring the lease
            ctx.store.require_conditional_writes(ctx.layout.artifacts_bucket)
        if args.check_model:
            from trainer.model.proof import prove

            proof = prove(resolved.spec, resolved.plan, ctx.store)
    except TrainerError as exc:
        if args.json:  # the verdict on stdout carries every problem, as the message does
            verdict = {
                "outcome": outcome_of(exc),
                "exit_code": exit_code_of(exc),
                "error": exc.headline,
                "problems": problems_of(exc),
            }
            print(json.dumps(verdict, indent=2))
        raise
    result: dict[str, object] = {"job_id": job_id, "spec": "ok"}
    if data is not None:
        result["data"] = data
    if args.check_model:
        result["model"] = proof.model_dump(mode="json") if proof else "skipped: no torch here"
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    named = f"job id {job_id}" if job_id else "job id from the spec and its data: --check-data"
    print(f"spec ok: {args.spec} ({named})")
    if data is not None:
        print(
            f"data ok: {data['partitions']} partitions, {data['rows']:,} rows, "
            f"{data['bytes'] / 1e6:.1f} MB, dates {data['date_span']}, "
            f"{data['features']} features\n"
            f"  expected rows: train ≈ {data['train_rows_expected']:,}, "
            f"validation ≈ {data['val_rows_expected']:,} "
            f"(label horizon {data['label_horizon_sec']} s, config {data['config_hash']})"
        )
    if proof is not None:
        print(proof.sentence(ctx.spec.model.type))
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        print(sweep_reference() if args.sweep else markdown_reference())
    else:
        print(json_schema(sweep=args.sweep))
    return 0


def _generate(args: argparse.Namespace) -> int:
    ctx = open_context(args.spec, args.overrides, args.store)
    cfg = SynthConfig(rows_per_day=args.rows_per_day, n_features=args.features, seed=args.seed)
    n = len(generate_for_spec(ctx.store, ctx.layout, ctx.spec.data, cfg))
    print(f"wrote {n} synthetic partitions under {ctx.store.root}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from trainer.job.run import run_job  # torch loads only for the commands that train

    ctx = open_context(args.spec, args.overrides, args.store)
    result = run_job(ctx.spec, ctx.store, device=args.device, dry_run=args.dry_run)
    _print_result(result, args.json)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from trainer.job.demo import demo_spec, run_demo
    from trainer.job.summary import report_command

    root = Path(args.store_dir)
    result, manifest = run_demo(root)
    _print_result(result, args.json)
    if not args.json:
        store = f"file://{root}"
        print(f"manifest verified: {len(manifest.files)} files, sha256 ok")
        print(f"history: quantlab-train jobs --store {store}")
        bucket = demo_spec().storage.artifacts_bucket
        print(f"report: {report_command(result.job_id, store, bucket)}")
    return 0


def _print_result(result: JobResult, as_json: bool) -> None:
    if as_json:
        out = {
            "job_id": result.job_id,
            "outcome": result.outcome,
            "artifacts": result.artifacts,
            "metrics": result.metrics.model_dump(mode="json") if result.metrics else None,
            "manifest": result.manifest.model_dump(mode="json") if result.manifest else None,
        }
        print(json.dumps(out, indent=2))
        return
    print(f"job {result.job_id}: {result.outcome}")
    print(f"artifacts: {result.artifacts}")
    if result.final is not None:
        print(metrics_line(result.final))
