"""`launch()`: a JobSpec to a watched Vast.ai job, and the JobHandle pipelines hold.

Before any money is spent: the store is checked to be one a rented host can reach
(`reach`), the spec is validated, the dataset is pre-flighted and
fingerprinted (which fixes a derived job id), a job committed on the same data is reported
"already done" (one committed on other data is refused), an optional CPU dry run trains a
few steps locally, and the offers are searched and priced. Then the resolved spec is
uploaded, the launcher heartbeat written, job credentials minted, and an instance rented,
unless one labelled for the job is already live: then the launch attaches to it instead.
`JobHandle.wait()` watches (see watch), rents the next offer after infrastructure failures
(at most `limits.max_attempts` instances), and always destroys what this launch rented, plus
an attached instance once its job ends. Ctrl-C destroys too, except with `detach` once the
job has started.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.job.identity import Resolved, resolve
from trainer.launcher.budget import SharedBudget
from trainer.launcher.events import Reporter
from trainer.launcher.ops import JobStatus, job_logs, job_status, stop_job
from trainer.launcher.prefix import JobConflict
from trainer.launcher.reach import check_reachable
from trainer.launcher.result import LaunchOptions, LaunchResult
from trainer.launcher.run import Run
from trainer.launcher.session import open_session
from trainer.launcher.vast import VastClient
from trainer.model.proof import ProofChild
from trainer.redact import Secrets
from trainer.spec import JobSpec, load_spec
from trainer.spec.sweep import SweepSpec, instance_spec, load_sweep
from trainer.store.base import ObjectStore

__all__ = ["JobConflict", "JobHandle", "LaunchOptions", "LaunchResult", "launch", "launch_sweep"]


def launch(
    spec: JobSpec | Resolved | str | Path,
    *,
    options: LaunchOptions | None = None,
    store: ObjectStore | str | None = None,
    vast: VastClient | None = None,
    vast_url: str | None = None,
    vast_key_file: str | Path | None = None,
    reporter: Reporter | None = None,
    client_options: Mapping[str, Any] | None = None,
    budget: SharedBudget | None = None,
    sweep: SweepSpec | None = None,
) -> JobHandle:
    """Check, price and start a job (see the module docstring) and return its handle; the
    typed error (SpecError, DataError, DatasetChanged, NoOfferError, JobConflict, InfraError,
    ...) when it cannot start. `spec`: a JobSpec, a YAML path, or a spec already resolved
    against its dataset (`trainer.job.identity.resolve`). `store`: an ObjectStore or a root
    (default $QUANTLAB_STORE, else s3://). `vast`: a ready VastClient, else one from
    `vast_key_file` or $VAST_API_KEY and `vast_url` or $VAST_URL (pass `vast_url` with a
    custom client too: the container gets it). `reporter`: where events and human lines go
    (default: kept in `handle.events` only). `budget`: shared with other launches.

    `sweep`: launch that sweep on one instance instead (`spec` is its base): the instance
    runs every trial, the sweep's `limits` bound the whole of it, and the launch succeeds
    when its `sweep.json` is committed (see `launch_sweep`)."""
    options = options or LaunchOptions()
    # The model proof's process starts Python and torch while the pre-flight runs here.
    child = ProofChild.start()
    try:
        secrets = reporter.secrets if reporter else Secrets()
        if isinstance(spec, Resolved):
            resolved: Resolved | None = spec
            spec = spec.spec
        else:
            resolved = None
            spec = spec if isinstance(spec, JobSpec) else load_spec(spec)
        session = open_session(
            store=store,
            vast=vast,
            key_file=vast_key_file,
            url=vast_url,
            secrets=secrets,
            client_options=client_options,
            read_only_buckets=(spec.storage.raw_bucket,),
        )
        check_reachable(session.store.root, os.environ)  # before the pre-flight and any rental
        resolved = resolved or resolve(spec, session.store)  # the pre-flight: DataError here
        if sweep is not None:  # the base resolved fixes the sweep's id, the instance's job id
            sweep = sweep.model_copy(update={"base": resolved.spec})
            resolved = Resolved(instance_spec(sweep), resolved.plan)
        job_id = resolved.job_id
        reporter = reporter.for_job(job_id) if reporter else Reporter(job_id, secrets=secrets)
        run = Run(resolved, session, options, reporter, sweep=sweep, proof_child=child)
        if budget is not None:
            budget.add(run.spent_so_far)
            run.shared_budget = budget.check
        run.prepare()
        return JobHandle(run)
    finally:
        if child is not None:
            child.close()


def launch_sweep(sweep: SweepSpec | str | Path, **kwargs: Any) -> JobHandle:
    """Check, price and start a sweep on one rented instance; its handle's `wait()` ends
    when `sweep.json` is committed (or the sweep's limits end it). `sweep`: a SweepSpec or
    a sweep file; `kwargs` as for `launch`."""
    sweep = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    return launch(sweep.base, sweep=sweep, **kwargs)


class JobHandle:
    """A launched job. `wait()` watches it to the end; `status()`, `logs()` and `stop()` work
    from any thread. As a context manager, a block that raises stops the job."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.spec, self.job_id = run.spec, run.job_id
        self._bucket = run.spec.storage.artifacts_bucket
        self._lock = threading.Lock()

    @property
    def result(self) -> LaunchResult | None:
        """Set once the launch ended, whichever way."""
        return self._run.result

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event so far, as the NDJSON stream carries them."""
        return list(self._run.reporter.events)

    def wait(self) -> LaunchResult:
        """Watch until the job ends: its result, or the typed error of the outcome (with
        `result` set either way). Nothing this launch rented is left running."""
        with self._lock:
            return self._run.wait()

    def status(self) -> JobStatus:
        return job_status(self._run.session, self._bucket, self.job_id)

    def logs(self, tail: int = 200) -> list[str]:
        return job_logs(self._run.session, self._bucket, self.job_id, tail)

    def interrupt(self) -> None:
        """End the watch as Ctrl-C would: `wait()` raises Cancelled after destroying what
        this launch rented (an instance it attached to keeps running)."""
        self._run.request_stop()

    def stop(self) -> None:
        """End the job now: the watch stops and every instance of the job is destroyed."""
        self._run.request_stop()
        stop_job(self._run.session, self._bucket, self.job_id, self._run.reporter)

    def __enter__(self) -> JobHandle:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None and (self.result is None or self.result.outcome == "detached"):
            self.stop()
