"""Resumable checkpoints in the store: written whole, then pointed to, the last K kept.

`ml-artifacts/<jobId>/checkpoints/step-00001234.pt` holds the model, the optimizer, the
training state, the loader's position and every RNG state. `checkpoints/latest.json` is
rewritten only after that object is complete, so a reader never follows it to half a file;
a job that finds the pointer resumes exactly where the checkpoint was taken."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.errors import ObjectNotFound, StorageError
from trainer.spec.sections import CheckpointSpec
from trainer.store.base import Loc, ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.records import CheckpointPointer, read_record, write_record
from trainer.train.loop import BatchSource, Restored, TrainState

log = logging.getLogger("quantlab.checkpoint")

MAX_FAILED_SAVES = 3
"""Checkpoint writes that may fail in a row before the job stops: one missed checkpoint costs
progress on a later interruption, but a store that refuses every write will refuse the
commit too, and training on to the end would only spend the money."""


class Checkpointer:
    """Called by the loop after every step; saves when `every_steps` or `every_minutes` says
    so (or when asked to). Before training, `find` reads the latest checkpoint and
    `restore` loads it."""

    def __init__(
        self,
        store: ObjectStore,
        paths: JobPaths,
        spec: CheckpointSpec,
        loader: BatchSource,
        epoch_boundaries_only: bool = False,
    ) -> None:
        self.store, self.paths, self.spec = store, paths, spec
        self.loader = loader
        self.epoch_boundaries_only = epoch_boundaries_only
        self._last_save = time.monotonic()
        self.saved: list[int] = []
        self.failed_in_a_row = 0

    # -- saving --------------------------------------------------------------------------
    def __call__(
        self, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer, force: bool
    ) -> None:
        if force or self._due(state):
            self.save(state, model, optimizer)

    def _due(self, state: TrainState) -> bool:
        if self.epoch_boundaries_only:
            return False  # the loop forces one at the end of every epoch
        if self.spec.every_steps and state.step % self.spec.every_steps == 0:
            return True
        minutes = self.spec.every_minutes
        return minutes is not None and time.monotonic() - self._last_save >= minutes * 60

    def save(self, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        buffer = io.BytesIO()
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "train_state": asdict(state),
                # Several ranks each hold their own position; their checkpoints are taken
                # at epoch boundaries, where the position is the next epoch's start.
                "loader": None if self.epoch_boundaries_only else self.loader.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
            },
            buffer,
        )
        data = buffer.getvalue()
        name = JobPaths.checkpoint_name(state.step)
        try:
            self.store.put(self.paths.file(name), data)
            pointer = CheckpointPointer(
                step=state.step,
                epoch=state.epoch,
                object=name,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                saved_at=time.time(),
            )
            write_record(self.store, self.paths.checkpoint_pointer, pointer)
        except StorageError as exc:
            self._last_save = time.monotonic()  # the next try waits the interval again
            self.failed_in_a_row += 1
            if self.failed_in_a_row >= MAX_FAILED_SAVES:
                raise StorageError(
                    f"{self.failed_in_a_row} checkpoint writes in a row failed, the last at "
                    f"step {state.step}: {exc}; the store refuses writes, so the job stops "
                    "here instead of training to a commit that cannot land"
                ) from None
            # A missed checkpoint costs progress on a later interruption, not the run.
            log.warning("checkpoint at step %d not saved: %s", state.step, exc)
            return
        self.failed_in_a_row = 0
        self._last_save = time.monotonic()
        self.saved.append(state.step)
        log.info("checkpoint saved at step %d (%.1f MB)", state.step, len(data) / 1e6)
        self._prune()

    def _prune(self) -> None:
        prefix = self.paths.file("checkpoints/step-")
        try:
            objects = sorted(o.loc.key for o in self.store.list(prefix))
            for key in objects[: -self.spec.keep]:
                self.store.delete(Loc(prefix.bucket, key))
        except StorageError as exc:  # old checkpoints only cost storage
            log.warning("old checkpoints not deleted: %s", exc)

    # -- restoring -----------------------------------------------------------------------
    def find(self) -> Found | None:
        """The latest checkpoint, read and verified; None when there is none (or it does not
        match its pointer). Read before the model exists, so that the loader can read ahead
        where the job resumes; `restore` applies the rest."""
        pointer = read_record(self.store, self.paths.checkpoint_pointer, CheckpointPointer)
        if pointer is None:
            return None
        loc = self.paths.file(pointer.object)
        try:
            data = self.store.get(loc)
        except ObjectNotFound:
            return None
        if hashlib.sha256(data).hexdigest() != pointer.sha256:
            log.warning(
                "checkpoint %s does not match its pointer; starting fresh", self.store.uri(loc)
            )
            return None
        return Found(torch.load(io.BytesIO(data), map_location="cpu", weights_only=False))

    def restore(self, model: nn.Module, found: Found | None) -> Restored | None:
        """Load `found` into `model` and every RNG (the loader's position is
        `Found.position`, set before its reads ahead); None for a fresh start. The
        checkpoint interval counts from here, the start of training."""
        self._last_save = time.monotonic()
        if found is None:
            return None
        blob = found.blob
        model.load_state_dict(blob["model"])
        rng = blob["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        state = TrainState(**blob["train_state"])
        log.info("resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch)
        return Restored(state, blob["optimizer"])


@dataclass(frozen=True)
class Found:
    """A checkpoint read back whole: the model, the optimizer, the training state, the
    loader's position and every RNG state."""

    blob: dict[str, Any]

    def position(self, loader: BatchSource) -> None:
        """Move `loader` to where the checkpoint was taken: its next epoch yields what the
        interrupted run would have yielded next."""
        if self.blob["loader"] is not None:
            loader.load_state_dict(self.blob["loader"])
