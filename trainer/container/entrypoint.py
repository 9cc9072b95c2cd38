"""The container's entrypoint: run one job from the environment, report, then end the instance.

Vast.ai bills until the instance is destroyed and reports no exit code, so the container
reports for itself (`status.json`, the shipped log, a last-line sentinel) and destroys its
own instance when the job ends, when `limits.max_runtime_minutes` passes, or when the
launcher's heartbeat goes stale. Before it writes anything it takes the job's lease: a
container that finds another one running the job writes nothing and destroys itself."""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from trainer.container.env import ContainerEnv, read_env
from trainer.container.selfdestroy import destroy_self
from trainer.container.status import StatusWriter
from trainer.container.watchdog import StopReason, Watchdog, take_lease
from trainer.errors import (
    EXIT_CANCELLED,
    EXIT_CONFLICT,
    EXIT_INTERNAL,
    EXIT_LIMIT,
    SpecError,
    TrainerError,
    exit_code_of,
)
from trainer.job.artifacts import write_failure
from trainer.redact import Secrets, install
from trainer.spec import JobSpec, parse_spec
from trainer.spec.sweep import parse_sweep
from trainer.store import ObjectStore, open_store
from trainer.store.base import Loc
from trainer.store.layout import Layout
from trainer.store.lease import LeaseHeld
from trainer.store.records import ResultSentinel

log = logging.getLogger("quantlab.container")
HARD_STOP_GRACE_S = 120.0


class _Stop:
    """Why the main thread was interrupted (a limit, the heartbeat, or a signal)."""

    why: StopReason | None = None


_STOP = _Stop()


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="quantlab-"))
    log_path = workdir / "container.log"
    _setup_logging(log_path)
    result = ResultSentinel(job_id=None, outcome="failed", exit_code=EXIT_INTERNAL)
    env: ContainerEnv | None = None
    _install_signal_handlers(_STOP)
    try:
        env = read_env()
        install(Secrets(), [logging.getLogger("quantlab")])
        result = _run(env, workdir, log_path)
    except TrainerError as exc:
        log.error("%s", exc)
        result = result.model_copy(update={"reason": exc.headline, "exit_code": exit_code_of(exc)})
    except KeyboardInterrupt:  # a signal before the job started
        why = _STOP.why or StopReason("signal", "interrupted")
        log.error("stopped before the job started: %s", why.reason)
        result = result.model_copy(
            update={
                "outcome": "stopped",
                "reason": why.reason,
                "cause": why.cause,
                "exit_code": EXIT_CANCELLED,
            }
        )
    except BaseException as exc:  # the sentinel and the destroy must happen whatever broke
        log.exception("unexpected error")
        result = result.model_copy(update={"reason": f"{type(exc).__name__}: {exc}"})
    finally:
        # From here on a SIGTERM (the host stopping us as we destroy ourselves) must not
        # interrupt the destroy request or leave a traceback as the log's last words.
        _disarm_signal_handlers()
        print(result.line(), flush=True)
        if env is not None and env.can_self_destroy:
            destroy_self(env.vast_url, env.container_id or "", env.container_api_key or "")
    return result.exit_code


def _run(env: ContainerEnv, workdir: Path, log_path: Path) -> ResultSentinel:
    store = open_store(env.store_root)
    spec = _load_spec(env.jobspec_uri, store)
    store = open_store(env.store_root, read_only_buckets=[spec.storage.raw_bucket])
    paths = Layout.of(spec.storage).job(spec.job_id)
    job_id = paths.job_id
    if store.exists(paths.manifest):  # a committed job's prefix is never written again
        log.info("job %s is already committed; nothing to do", job_id)
        return ResultSentinel(
            job_id=job_id, outcome="already_done", exit_code=0, artifacts=store.uri(paths.dir)
        )
    try:  # before anything is written: is this container the one that runs the job?
        lease = (
            take_lease(store, paths, env.container_id, env.status_every_s)
            if os.environ.get("RANK", "0") == "0"  # torchrun's other ranks share rank 0's
            else None
        )
    except LeaseHeld as exc:
        return _not_ours(job_id, exc)
    status = StatusWriter(store, paths, env.container_id, log_path)
    status.set_state("starting")
    watchdog = Watchdog(spec.limits, store, paths, started=time.time(), lease=lease)
    done = threading.Event()
    ticker = threading.Thread(
        target=_tick, args=(status, watchdog, _STOP, done, env, job_id), daemon=True
    )
    ticker.start()
    result = ResultSentinel(job_id=job_id, outcome="failed", exit_code=EXIT_INTERNAL)
    try:
        if env.sweep_uri is not None:
            return _run_sweep(env, store, status, workdir, job_id)
        from trainer.job.run import run_job  # torch loads after the environment checked out

        job = run_job(
            spec,
            store,
            device=env.device,
            dry_run=env.dry_run,
            workdir=workdir / "job",
            listener=status.on_progress,
            code_from_store=True,
            leased=True,
        )
        status.set_state(job.outcome, metrics=job.final, artifacts=job.artifacts)  # type: ignore[arg-type]
        result = ResultSentinel(
            job_id=job_id, outcome=job.outcome, exit_code=0, artifacts=job.artifacts
        )
    except KeyboardInterrupt:
        why = _STOP.why or StopReason("signal", "interrupted")
        code = {"signal": EXIT_CANCELLED, "lease": EXIT_CONFLICT}.get(why.cause, EXIT_LIMIT)
        if why.cause != "lease":  # the job is another container's now: write nothing more
            write_failure(store, paths, why.reason, "Stopped", why.cause)
            status.set_state("stopped", reason=why.reason, cause=why.cause)
        result = ResultSentinel(
            job_id=job_id, outcome="stopped", exit_code=code, reason=why.reason, cause=why.cause
        )
    except TrainerError as exc:
        status.set_state("failed", reason=exc.headline, cause="error")
        result = ResultSentinel(
            job_id=job_id,
            outcome="failed",
            exit_code=exit_code_of(exc),
            reason=exc.headline,
            cause="error",
        )
    finally:
        done.set()
        if lease is not None and result.outcome in ("failed", "stopped", "dry_run"):
            lease.release()  # nothing committed: the next container may start at once
    return result


def _not_ours(job_id: str, exc: LeaseHeld) -> ResultSentinel:
    """Another container holds the job: this one has written nothing and ends here."""
    log.error(
        "job %s is not this container's to run: %s. Nothing was written; this instance "
        "destroys itself",
        job_id,
        exc,
    )
    return ResultSentinel(
        job_id=job_id,
        outcome="stopped",
        exit_code=EXIT_CONFLICT,
        reason=f"another container runs the job ({exc.headline})",
        cause="lease",
        holder=exc.holder.instance,
    )


def _run_sweep(
    env: ContainerEnv, store: ObjectStore, status: StatusWriter, workdir: Path, sweep_id: str
) -> ResultSentinel:
    """The sweep's trials on this instance, one after another or several at once; the
    instance's limits are the sweep's (the JobSpec this container was given)."""
    from trainer.sweep.run import run_sweep  # torch and optuna load after the env checked out

    sweep = parse_sweep(
        _read_text(env.sweep_uri or "", store, "QUANTLAB_SWEEP"), env.sweep_uri or ""
    )
    if sweep.sweep_id != sweep_id:
        raise SpecError(
            "the sweep does not belong to this instance",
            [f"QUANTLAB_SWEEP names sweep {sweep.sweep_id}, QUANTLAB_JOBSPEC job {sweep_id}"],
        )
    done = run_sweep(
        sweep, store, device=env.device, workdir=workdir / "sweep", listener=status.on_progress
    )
    status.set_state(done.outcome, artifacts=done.uri)  # type: ignore[arg-type]
    return ResultSentinel(job_id=sweep_id, outcome=done.outcome, exit_code=0, artifacts=done.uri)


def _tick(
    status: StatusWriter,
    watchdog: Watchdog,
    stop: _Stop,
    done: threading.Event,
    env: ContainerEnv,
    job_id: str,
) -> None:
    """Every `status_every_s`: heartbeat, then the dead-man switch."""
    interrupted_at: float | None = None
    while not done.wait(env.status_every_s):
        if stop.why is None or stop.why.cause != "lease":  # a lost lease: write nothing more
            status.write()
        if interrupted_at is None:
            why = watchdog.check()
            if why is not None:
                log.error("stopping job %s: %s", job_id, why.reason)
                stop.why = why
                interrupted_at = time.monotonic()
                _thread.interrupt_main()  # KeyboardInterrupt in the training thread
        elif time.monotonic() - interrupted_at > HARD_STOP_GRACE_S:
            # The main thread did not unwind (stuck in I/O or a kernel): end it all here.
            log.error("job %s did not stop within %.0f s; exiting hard", job_id, HARD_STOP_GRACE_S)
            why = stop.why or StopReason("limit", "stopped")
            sentinel = ResultSentinel(
                job_id=job_id,
                outcome="stopped",
                exit_code=EXIT_LIMIT,
                reason=why.reason,
                cause=why.cause,
            )
            print(sentinel.line(), flush=True)
            if env.can_self_destroy:
                destroy_self(env.vast_url, env.container_id or "", env.container_api_key or "")
            os._exit(EXIT_LIMIT)


def _install_signal_handlers(stop: _Stop) -> None:
    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.why = stop.why or StopReason("signal", f"signal {signal.Signals(signum).name}")
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
        # The dead-man switch stops training with `_thread.interrupt_main()`, which does
        # nothing while SIGINT is ignored, as it is for a process a shell starts in the
        # background (an `onstart` line ending in `&`, `nohup`): the job would then run
        # past its limits. Take SIGINT back, whatever the process inherited.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _disarm_signal_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _load_spec(uri: str, store: ObjectStore) -> JobSpec:
    return parse_spec(_read_text(uri, store, "QUANTLAB_JOBSPEC"), source=uri)


def _read_text(uri: str, store: ObjectStore, variable: str) -> str:
    """The document an environment variable points at: an object URI or a local file."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise SpecError(f"{variable} is not an object URI", [uri])
        return store.get(Loc(bucket, key)).decode("utf-8")
    path = Path(uri.removeprefix("file://"))
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read {variable} at {uri}", [str(exc)]) from None


def _setup_logging(log_path: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger("quantlab")
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(log_path)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


if __name__ == "__main__":
    raise SystemExit(main())
