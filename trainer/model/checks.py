"""The checks of the proof before renting, run in its child process: the spec's model and
loss built from the code archive, one training step, the export, each failure told as the
spec field and the researcher's `file:line`.

    python -m trainer.model.checks FOLDER    (FOLDER: spec.yaml, rows.npz, code.tar.gz)
    python -m trainer.model.checks --wait    (started ahead: FOLDER comes on stdin)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from trainer.errors import SpecError
from trainer.model.code import StagedCode, importable, verify_archive
from trainer.model.entry import problem_at, user_error
from trainer.model.export import export_program
from trainer.model.proof import RESULT_FILE, ROWS_FILE, SPEC_FILE, ProofResult
from trainer.model.registry import build_loss, build_model
from trainer.spec import JobSpec, parse_spec
from trainer.store.layout import JobPaths
from trainer.train.losses import prediction_shape_problem

EXPORT_HINT = (
    "torch.export traces forward once for every batch size: Python `if`, `while` or `for` "
    "on tensor values or on the batch size cannot be traced; use tensor ops such as "
    "torch.where"
)


def check_model(
    spec: JobSpec, x: np.ndarray, y: np.ndarray, code: StagedCode | None
) -> ProofResult:
    """Build, step and export the spec's model on `x` (`[N, features]`, or `[N, window,
    features]`), `y`; SpecError at the first problem."""
    t0 = time.perf_counter()
    loss_fn = build_loss(spec.train, code)
    rows = x.reshape(-1, x.shape[-1])  # a window's rows are rows: statistics per feature
    mean, std = rows.mean(axis=0), np.maximum(rows.std(axis=0), 1e-6)
    sample = tuple(x.shape[1:])
    model = build_model(
        spec.model, x.shape[-1], mean, std, spec.train.seed, code=code, input_shape=sample
    )
    site = (type(model.model).forward, type(model.model))  # where a problem is reported
    t1 = time.perf_counter()

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    try:
        pred = model(xt)
    except Exception as exc:
        raise user_error("model.type", exc, code, at=site) from None
    _check_output(pred, len(x), site, code)
    try:
        loss = loss_fn(pred.float(), yt)
    except Exception as exc:
        raise user_error("train.loss", exc, code, at=(loss_fn,)) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        kind = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise problem_at("train.loss", (loss_fn,), code, f"returned {kind}, not a scalar tensor")
    if not torch.isfinite(loss):
        value = float(loss.detach())
        raise problem_at(
            "train.loss", (loss_fn,), code,
            f"the loss is {value} on {len(x)} real rows, with finite predictions and labels",
        )  # fmt: skip
    if not loss.requires_grad:
        raise problem_at("train.loss", (loss_fn,), code, "the loss has no gradient to follow")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)
    optimizer.zero_grad()
    try:
        loss.backward()
    except Exception as exc:
        raise user_error("model.type", exc, code, at=site) from None
    _check_gradients(model, site, code)
    optimizer.step()
    t2 = time.perf_counter()

    try:
        program = export_program(model, sample)
        exported = program.module()(xt)
    except Exception as exc:
        raise user_error("model.type", exc, code, at=site, hint=EXPORT_HINT) from None
    with torch.no_grad():
        expected = model(xt)
    if exported.shape != expected.shape or not torch.allclose(
        exported, expected, rtol=1e-3, atol=1e-4
    ):
        raise problem_at(
            "model.type", site, code,
            "the exported graph does not compute what forward computes in eval mode: forward "
            "may depend on state torch.export cannot see",
        )  # fmt: skip
    t3 = time.perf_counter()
    return ProofResult(
        ok=True,
        rows=len(x),
        features=x.shape[-1],
        parameters=sum(p.numel() for p in model.parameters()),
        loss=float(loss.detach()),
        seconds={
            "build": round(t1 - t0, 3),
            "step": round(t2 - t1, 3),
            "export": round(t3 - t2, 3),
        },
    )


def _check_output(
    pred: object, rows: int, site: tuple[object, ...], code: StagedCode | None
) -> None:
    if not isinstance(pred, torch.Tensor):
        raise problem_at(
            "model.type", site, code, f"forward returned a {type(pred).__name__}, not a tensor"
        )
    if (wrong := prediction_shape_problem(pred.shape, rows)) is not None:
        raise problem_at("model.type", site, code, wrong)
    if not pred.is_floating_point():
        raise problem_at("model.type", site, code, f"forward returned {pred.dtype}, not floats")
    bad = int((~torch.isfinite(pred)).sum())
    if bad:
        raise problem_at(
            "model.type", site, code,
            f"forward returned NaN or infinite predictions for {bad} of {rows} real rows",
        )  # fmt: skip


def _check_gradients(
    model: torch.nn.Module, site: tuple[object, ...], code: StagedCode | None
) -> None:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not any(p.grad is not None for _, p in named):
        raise problem_at("model.type", site, code, "no parameter received a gradient")
    bad = [n for n, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise problem_at(
            "model.type", site, code, f"NaN or infinite gradients in {', '.join(bad[:3])}"
        )


@contextlib.contextmanager
def _staged(spec: JobSpec, folder: Path) -> Iterator[StagedCode | None]:
    if spec.code is None:
        yield None
        return
    packed = verify_archive(spec.code, folder / JobPaths.CODE)
    with importable(spec.code, packed) as code:
        yield code


def main(folder: Path) -> int:
    spec = parse_spec((folder / SPEC_FILE).read_text(encoding="utf-8"))
    with np.load(folder / ROWS_FILE) as rows:
        x, y = rows["x"], rows["y"]
    try:
        with _staged(spec, folder) as code:
            result = check_model(spec, x, y, code)
    except SpecError as exc:
        result = ProofResult(ok=False, headline=exc.headline, problems=tuple(exc.problems))
    (folder / RESULT_FILE).write_text(result.model_dump_json(), encoding="utf-8")
    return 0 if result.ok else 2


def wait_for_folder() -> int:
    """Started ahead (`--wait`): the folder comes on stdin, once the launcher has it; an
    empty stdin (the launcher needed no proof after all) ends the process. Meanwhile it
    pays what the proof's first step and export pay once per process: the optimizer's
    first construction imports torch's compiler, and `torch.export` its tracer."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    importlib.import_module("torch.export")
    line = sys.stdin.readline().strip()
    if not line:
        return 0
    os.chdir(line)  # as a child started for this folder runs in it
    return main(Path(line))


if __name__ == "__main__":
    raise SystemExit(wait_for_folder() if sys.argv[1:] == ["--wait"] else main(Path(sys.argv[1])))
