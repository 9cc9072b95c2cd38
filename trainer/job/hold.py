"""The job's lease for a run that no container leases for (`quantlab-train run`, the demo):
taken before anything is written to the job's prefix, renewed on a thread while the job
runs, released when it ends. A run that does not get it writes nothing there."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from trainer.errors import JobBusy, TrainerError
from trainer.store.base import ObjectStore
from trainer.store.layout import JobPaths
from trainer.store.lease import Lease, LeaseHeld, LeaseLost

log = logging.getLogger("quantlab.job")

RENEW_EVERY_S = 10.0
"""How often a local run renews its lease; it counts as gone after three quiet periods."""


class _Committed(Exception):
    """The job was committed while this run waited for its lease."""


class Hold:
    """Whether this run still holds its job's lease."""

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease
        self.lost: str | None = None
        self.committed = False
        """Set once the job is committed: its lease then stays as the record of who ran it."""

    def check(self) -> None:
        """Raise JobBusy when the lease went to another run: this one must write nothing."""
        if self.lost is not None:
            raise JobBusy(self.lost)

    @property
    def ours(self) -> bool:
        return self.lost is None


@contextmanager
def hold_job(
    store: ObjectStore, paths: JobPaths, take: bool, renew_every_s: float = RENEW_EVERY_S
) -> Iterator[Hold]:
    """The job's lease for the duration of the block (`take` False: the caller holds it, as
    a container does). JobBusy when another run holds it and keeps renewing it."""
    if not take:
        yield Hold(None)
        return

    def wait(seconds: float) -> None:
        # A holder that committed goes quiet: taking its lease over would write into a
        # committed prefix, so the wait ends as soon as the manifest is there.
        if store.exists(paths.manifest):
            raise _Committed
        time.sleep(seconds)

    lease = Lease(store, paths.lease, instance=None, renew_every_s=renew_every_s, sleep=wait)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        raise JobBusy(f"job {paths.job_id} is running elsewhere: {exc}") from None
    except _Committed:
        done = Hold(None)
        done.committed = True
        yield done  # the caller finds the manifest and writes nothing
        return
    hold = Hold(lease)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_every_s):
            try:
                lease.renew()
            except LeaseLost as exc:
                hold.lost = f"job {paths.job_id}: {exc}; this run writes nothing more"
                log.error("%s", hold.lost)
                return
            except TrainerError as exc:  # a store hiccup: the next renewal tries again
                log.warning("could not renew the lease of job %s: %s", paths.job_id, exc)

    thread = threading.Thread(target=renew, name="job-lease", daemon=True)
    thread.start()
    try:
        yield hold
    finally:
        stop.set()
        thread.join()
        if hold.ours and not hold.committed:
            lease.release()  # nothing committed: the next run may start at once
