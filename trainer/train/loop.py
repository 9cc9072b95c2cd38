"""The training loop: one function, read top to bottom, plus the state it can resume from."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from trainer.errors import Diverged, SpecError
from trainer.spec.sections import TrainSpec
from trainer.train.distributed import Ranks
from trainer.train.losses import LossFn, mse, prediction_shape_problem, validation_scores
from trainer.train.lr import lr_at
from trainer.train.metrics import improved

SINGLE = Ranks()
"""One process: rank 0 of 1."""


class BatchSource(Protocol):
    """What the loop needs of a loader: the batches of one epoch, and its position."""

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ProgressSink(Protocol):
    """Where progress goes: a human line, a metrics record, a heartbeat."""

    def on_step(self, record: dict[str, float]) -> None: ...
    def on_eval(self, record: dict[str, float]) -> None: ...


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    rows_seen: int = 0
    best: dict[str, float] | None = None
    best_step: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    evals_without_gain: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back: the training state and the optimizer's."""

    state: TrainState
    optimizer: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state.step


@dataclass(frozen=True)
class FitResult:
    state: TrainState
    stopped_early: bool
    wall_s: float
    pruned: bool = False
    """Stopped by `prune` (a sweep's pruning rule), not by early stopping."""


Prune = Callable[[dict[str, float]], bool]
"""Called with each evaluation record; True stops the run there (a sweep prunes the trial)."""


class Samples(Protocol):
    """Model inputs that slice like a tensor: a tensor `[N, ...]`, or `data.windows.Windows`,
    which gathers each slice's windows from the rows when it is taken."""

    def __len__(self) -> int: ...
    def __getitem__(self, at: slice) -> torch.Tensor: ...


@dataclass(frozen=True)
class Validation:
    """The validation samples, in time order, already on the training device."""

    x: Samples
    y: np.ndarray


Checkpoint = Callable[[TrainState, nn.Module, torch.optim.Optimizer, bool], None]
"""Called after every step with (state, model, optimizer, must_save); it decides when to save."""


def step_budget(train: TrainSpec, steps_per_epoch: int) -> int:
    """Optimizer steps the run takes at most: its epochs, capped by `max_steps`."""
    by_epochs = steps_per_epoch * train.epochs if train.epochs else None
    caps = [n for n in (by_epochs, train.max_steps) if n is not None]
    return max(min(caps), 1)


def fit(
    model: nn.Module,
    loader: BatchSource,
    val: Validation,
    train: TrainSpec,
    device: torch.device,
    max_steps: int,
    progress: ProgressSink,
    ranks: Ranks = SINGLE,
    resume: Restored | None = None,
    checkpoint: Checkpoint | None = None,
    loss_fn: LossFn = mse,
    prune: Prune | None = None,
) -> FitResult:
    """Train `model` on `loader` for at most `max_steps` (see `step_budget`); evaluate, stop
        early, keep the best weights. `loss_fn` is the objective (`train.loss`, resolved by the
        model stage). With `resume` (from a checkpoint) it continues that run exactly. `prune`
    judges each evaluation (main rank) and may stop the run there.

        Several ranks: the model is DDP-wrapped and ranks may hold unequal batch counts, so the
        epoch runs under DDP's `join()`, and evaluation (rank 0, the verdict broadcast) happens at
        epoch ends, where no rank is inside the join."""
    started = time.monotonic()
    raw = cast(nn.Module, model.module) if ranks.distributed else model  # outside DDP
    state = resume.state if resume else TrainState()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
    amp_dtype = autocast_dtype(train.precision, device)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    epochs = train.epochs if train.epochs is not None else 1 << 30  # max_steps ends it
    stop_early = pruned = False
    window_rows, window_start = 0, time.monotonic()
    # the first step whose loss was not finite (0: none), kept on the device: no sync a step
    diverged_at = torch.zeros((), dtype=torch.int64, device=device)

    def evaluate() -> bool:
        nonlocal pruned
        stop = _evaluate(raw, val, train, state, progress, ranks.is_main, loss_fn)
        # Judged at every evaluation, the last one too; it stops only a run with steps left.
        verdict = prune(state.history[-1]) if prune is not None else False
        pruned = verdict and state.step < max_steps
        return stop or pruned

    while state.epoch < epochs and state.step < max_steps and not stop_early:
        # Ranks may hold unequal batch counts: join() lets the short ones shadow the rest.
        with model.join() if ranks.distributed else contextlib.nullcontext():  # type: ignore[operator]
            # The loader reads ahead on its own threads (`files_in_flight`), so the next
            # blocks are being fetched and decoded while this step computes.
            for x, y in loader.epoch(state.epoch):
                # 1. learning rate for this step
                lr = lr_at(state.step, max_steps, train)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # 2. forward and backward, under autocast when asked
                model.train()
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    pred = model(x)
                if pred.shape != y.shape:
                    pred = _one_per_sample(pred, y)
                loss = loss_fn(pred.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()

                # 3. clip and step
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(
                    model.parameters(), train.grad_clip if train.grad_clip else float("inf")
                )
                scaler.step(optimizer)
                scaler.update()
                state.step += 1
                state.rows_seen += len(y)
                window_rows += len(y)
                first_bad = (diverged_at == 0) & ~torch.isfinite(loss.detach())
                diverged_at = torch.where(first_bad, state.step, diverged_at)

                # 4. log: `.item()` waits for the GPU, so only on log steps
                if state.step % train.log_every_steps == 0:
                    check_finite(diverged_at, train)
                if ranks.is_main and state.step % train.log_every_steps == 0:
                    now = time.monotonic()
                    rate = window_rows / max(now - window_start, 1e-9)
                    progress.on_step(
                        {
                            "step": state.step,
                            "epoch": state.epoch,
                            "loss": loss.item(),
                            "grad_norm": float(grad_norm),
                            "lr": lr,
                            "rows_per_s": rate,
                            "rows_seen": state.rows_seen,
                            "total_steps": max_steps,
                            "eta_s": (max_steps - state.step) * len(y) / max(rate, 1e-9),
                            **memory_stats(device),
                        }
                    )
                    window_rows, window_start = 0, now

                # 5. evaluate, keep the best weights, stop early (several ranks: per epoch)
                if not ranks.distributed and state.step % train.eval_every_steps == 0:
                    stop_early = evaluate()

                # 6. checkpoint (the callee decides whether one is due)
                if checkpoint is not None:
                    checkpoint(state, raw, optimizer, False)
                if stop_early or state.step >= max_steps:
                    break
        if ranks.distributed:  # outside join(): every rank is here, so a collective is safe
            verdict = [evaluate() if ranks.is_main else False]
            torch.distributed.broadcast_object_list(verdict, src=0)
            stop_early = bool(verdict[0])
        if not stop_early and state.step < max_steps:
            state.epoch += 1
            if checkpoint is not None and state.epoch < epochs:
                checkpoint(state, raw, optimizer, True)  # an epoch boundary

    check_finite(diverged_at, train)
    # Final evaluation, unless the last step just evaluated; then the best weights win.
    if ranks.is_main and (not state.history or state.history[-1]["step"] != state.step):
        evaluate()
    if state.best_weights is not None:
        raw.load_state_dict(state.best_weights)
    return FitResult(state, stop_early and not pruned, time.monotonic() - started, pruned)


def check_finite(diverged_at: torch.Tensor, train: TrainSpec) -> None:
    """Stop a run whose loss went NaN or infinite, naming the first such step: its weights
    are no model, and nothing after it would be one either."""
    step = int(diverged_at)
    if step:
        raise Diverged(
            f"training diverged: the {train.loss} loss was not finite at step {step} "
            f"(learning rate {train.lr:g}); lower train.lr, set train.grad_clip, or check "
            "the labels' scale"
        )


def _evaluate(
    model: nn.Module,
    val: Validation,
    train: TrainSpec,
    state: TrainState,
    progress: ProgressSink,
    is_main: bool,
    loss_fn: LossFn,
) -> bool:
    """One evaluation; returns whether early stopping says to stop."""
    metrics = validation_scores(predict(model, val.x), val.y, loss_fn, train.batch_size)
    record = {"step": state.step, "epoch": state.epoch, **metrics}
    state.history.append(record)
    if is_main:
        progress.on_eval(record)
    es = train.early_stopping
    metric = es.metric if es else "val_loss"
    value = metrics[metric]
    if math.isfinite(value) and improved(
        metric, value, state.best[metric] if state.best else None, es.min_delta if es else 0.0
    ):
        state.best, state.best_step, state.evals_without_gain = record, state.step, 0
        state.best_weights = copy.deepcopy(model.state_dict())
        return False
    state.evals_without_gain += 1
    return es is not None and state.evals_without_gain >= es.patience


@torch.no_grad()
def predict(model: nn.Module, x: Samples, rows: int = 65_536) -> np.ndarray:
    """Predictions for every sample of `x`, in order, as float64 numpy (`model` unwrapped),
    about `rows` rows at a time (windows of L rows: `rows / L` samples)."""
    was_training = model.training
    model.eval()
    first = x[0:1]
    batch = max(rows // (first.shape[1] if first.dim() > 2 else 1), 1)
    out = [model(x[i : i + batch]).float() for i in range(0, len(x), batch)]
    model.train(was_training)
    if not out:
        return np.zeros(0)
    return torch.cat(out).cpu().numpy().astype(np.float64)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA; fp32 elsewhere and where the card lacks bf16."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.float16


def memory_stats(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9}


def _one_per_sample(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`pred` as `[batch]`. A `squeeze()` that also dropped the batch dimension of a batch of
    one is taken as that one prediction; any other shape (`[batch, 1]`, which the loss would
    broadcast to `[batch, batch]` and silently get wrong) is refused. The model proof refuses
    such a model before any rental; this catches what only some batches show."""
    if pred.numel() == 1 == y.numel():
        return pred.reshape(y.shape)
    wrong = prediction_shape_problem(pred.shape, len(y))
    raise SpecError("the model's predictions do not match the batch", [f"model.type: {wrong}"])
