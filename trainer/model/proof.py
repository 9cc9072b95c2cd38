"""The proof before renting: the spec's model and loss built, stepped and exported on a few
hundred real rows, in a child process with a time limit, so a broken model fails on this
machine (exit 2, naming its `file:line`) and never on a rented GPU.

The samples come from the first training partition through the loader's own reading code,
shaped as training serves them (`[N, features]`, or `[N, window, features]`).
The child (`trainer.model.checks`) gets the resolved spec, the rows and exactly the code
archive that would be shipped; it writes its verdict to `result.json`."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from trainer.data.plan import DatasetPlan
from trainer.errors import DataError, SpecError
from trainer.model.code import pack_for_job
from trainer.redact import Secrets
from trainer.spec import JobSpec, dump_spec
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths

log = logging.getLogger("quantlab.model")

PROOF_ROWS = 256
TIMEOUT_S = 180.0
SPEC_FILE, ROWS_FILE, RESULT_FILE = "spec.yaml", "rows.npz", "result.json"


class ProofResult(BaseModel):
    """What the child found: a pass with its timings, or the problems of a SpecError."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    headline: str = ""
    problems: tuple[str, ...] = ()
    rows: int = 0
    features: int = 0
    parameters: int = 0
    loss: float | None = None
    seconds: dict[str, float] = {}
    """Phases inside the child: `build`, `step` (forward, loss, backward, optimizer step),
    `export` (torch.export and a run of the exported program)."""
    wall_s: float = 0.0
    """The whole proof as this machine waited for it once its rows were ready: what is left
    of the interpreter's and torch's start included."""

    def sentence(self, model: str) -> str:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return (
            f"model ok: {model}, {self.parameters:,} parameters, built, stepped and exported "
            f"on {self.rows} real rows in {self.wall_s:.1f} s ({phases})"
        )


class ProofChild:
    """The proof's process started ahead: it starts Python and imports torch and the checks
    while the launcher does its own work (the pre-flight, above all), then waits for its
    folder on stdin. On a slow machine that start is most of the proof (4 s of 8 on 2
    cores). Used once; closed unused, it is killed, having done nothing."""

    def __init__(self) -> None:
        self._home = tempfile.TemporaryDirectory(prefix="quantlab-proof-")
        argv = [sys.executable, "-P", "-m", "trainer.model.checks", "--wait"]
        self._process: subprocess.Popen[str] | None = subprocess.Popen(
            argv,
            cwd=self._home.name,  # a folder of its own until it gets the proof's
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    @staticmethod
    def start() -> ProofChild | None:
        """A child ahead, or None where torch is not installed (then nothing is proven)."""
        return ProofChild() if importlib.util.find_spec("torch") is not None else None

    def take(self) -> subprocess.Popen[str] | None:
        """The waiting process, once; None when it was taken already or has died."""
        process, self._process = self._process, None
        if process is not None and process.poll() is not None:
            process.communicate()
            return None
        return process

    def close(self) -> None:
        process = self.take()
        if process is not None:
            process.kill()
            process.communicate()
        self._home.cleanup()


def prove(
    spec: JobSpec,
    plan: DatasetPlan,
    store: ObjectStore,
    timeout_s: float = TIMEOUT_S,
    child: ProofChild | None = None,
) -> ProofResult | None:
    """Prove the spec's model (see the module docstring); SpecError for a model that fails.
    None, with a warning, when torch is not installed here and the model is a built-in one;
    the researcher's own code is never shipped unproven. `child`: a process started ahead,
    used if it still waits."""
    try:
        from trainer.data.passes import read_split
    except ImportError:
        if spec.code is None:
            log.warning("skipping the model proof: torch is not installed (pip install '.[train]')")
            return None
        raise SpecError(
            "the model cannot be proven here",
            [f"model.type: proving {spec.model.type} needs torch: pip install '.[train]'"],
        ) from None
    # finite rows whatever `data.non_finite` says: this proves the model, not the data
    # samples shaped as training serves them: `[N, F]`, or `[N, window, F]`
    window = spec.data.window
    found = read_split(plan, store, "train", window=window, non_finite="drop", max_rows=PROOF_ROWS)
    x, y = found.inputs(slice(None)), found.y
    if len(y) < 2:
        raise DataError(
            "no rows to prove the model on",
            [f"{len(y)} training samples were read (data.window {window})"],
        )
    with tempfile.TemporaryDirectory(prefix="quantlab-proof-") as tmp:
        folder = Path(tmp)
        (folder / SPEC_FILE).write_text(dump_spec(spec), encoding="utf-8")
        np.savez(folder / ROWS_FILE, x=x, y=y)
        if spec.code is not None:
            pack_for_job(spec.code, folder / JobPaths.CODE)
        started = time.monotonic()
        _run_child(spec, folder, timeout_s, len(y), child.take() if child else None)
        wall = time.monotonic() - started
        result = ProofResult.model_validate_json((folder / RESULT_FILE).read_bytes())
    if not result.ok:
        raise SpecError(result.headline, result.problems)
    return result.model_copy(update={"wall_s": round(wall, 3)})


def _run_child(
    spec: JobSpec,
    folder: Path,
    timeout_s: float,
    rows: int,
    waiting: subprocess.Popen[str] | None = None,
) -> None:
    # -P and a cwd of its own: the child imports the code from the archive, never from here
    argv = [sys.executable, "-P", "-m", "trainer.model.checks", str(folder)]
    process = waiting or subprocess.Popen(
        argv,
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _, stderr = process.communicate(f"{folder}\n" if waiting else None, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise SpecError(
            "the model proof timed out",
            [
                f"model.type: building {spec.model.type}, one training step and the export "
                f"on {rows} rows took over {timeout_s:.0f} s; look for a loop that never ends "
                "or a model far too big for its data"
            ],
        ) from None
    if not (folder / RESULT_FILE).exists():
        tail = Secrets().redact(" | ".join(stderr.strip().splitlines()[-3:]))
        raise SpecError(
            "the model proof crashed",
            [f"model.type: the proof process ended with exit code {process.returncode}: {tail}"],
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    return env | {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
