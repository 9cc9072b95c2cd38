"""A lease on one object through conditional writes: at most one live holder, renewed while it
lives, taken over only once it has gone quiet.

The lease is a `LeaseRecord` written only if absent, then rewritten only if unchanged since
its holder last wrote it (`If-Match` on the etag). Whether another holder is alive is judged
by watching its record change, never by comparing clocks across machines: a record that
stays the same for `stale_after` of its holder's renewal periods (plus a grace) belongs to a
holder that is gone, and is taken over with a conditional write on exactly the version seen;
one that changes meanwhile has a live holder, and `acquire` raises LeaseHeld. A record
released by its holder, or left by an earlier process on the same instance, is free at once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from trainer.errors import PreconditionFailed, TrainerError
from trainer.store.base import Loc, ObjectStore
from trainer.store.records import LeaseRecord, parse_record, utc_now

log = logging.getLogger("quantlab.lease")

STALE_RENEWALS = 3
"""Renewal periods without a change after which a holder counts as gone."""
STALE_GRACE_S = 5.0
"""Added to that, for a slow store write or a busy host."""


class LeaseHeld(TrainerError):
    """Another holder is alive and keeps renewing the lease."""

    def __init__(self, message: str, holder: LeaseRecord) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(TrainerError):
    """The lease was taken over by another holder while this one thought it held it."""


def stale_after_s(record: LeaseRecord) -> float:
    """How long a holder's record may stay unchanged before the holder counts as gone."""
    return STALE_RENEWALS * record.renew_every_s + STALE_GRACE_S


class Lease:
    """One holder's side of the lease at `loc`. `instance` names where it runs (a Vast.ai
    instance id), so a restarted container on the same instance takes its lease back."""

    def __init__(
        self,
        store: ObjectStore,
        loc: Loc,
        *,
        instance: str | None,
        renew_every_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.loc = store, loc
        self.instance = instance
        self.renew_every_s = renew_every_s
        self.holder = f"{instance or 'local'}/{secrets.token_hex(6)}"
        self._clock, self._sleep = clock, sleep
        self._etag: str | None = None
        self._record: LeaseRecord | None = None

    @property
    def held(self) -> bool:
        return self._etag is not None

    def acquire(self) -> None:
        """Take the lease, waiting out a quiet holder; LeaseHeld when a live one has it."""
        watched: tuple[str, float] | None = None  # another holder's etag, and when first seen
        while True:
            current = self._read()
            try:
                if current is None:
                    self._write(self._fresh(), if_absent=True)
                    return
                record, etag = current
                if self._free(record) or self._gone(record, etag, watched):
                    self._write(self._fresh(), if_match=etag)
                    return
            except PreconditionFailed:
                watched = None  # another writer got there first: look again
                continue
            if watched is not None and watched[0] != etag:
                raise LeaseHeld(self._held_message(record), record)  # renewed as we watched
            watched = watched or (etag, self._clock())
            self._sleep(min(record.renew_every_s, 1.0) / 2)

    def renew(self) -> None:
        """Rewrite the record if it is still ours; LeaseLost when another holder took it."""
        if self._record is None or self._etag is None:
            raise LeaseLost(f"{self.store.uri(self.loc)}: the lease is not held")
        record = self._record.model_copy(
            update={"renewals": self._record.renewals + 1, "renewed_at": utc_now()}
        )
        try:
            self._write(record, if_match=self._etag)
        except PreconditionFailed:
            self._etag = self._record = None
            raise LeaseLost(
                f"{self.store.uri(self.loc)}: another holder took the lease over"
            ) from None

    def release(self) -> None:
        """Mark the lease free for the next holder, if it is still ours (best effort)."""
        if self._record is None or self._etag is None:
            return
        record = self._record.model_copy(update={"released": True, "renewed_at": utc_now()})
        try:
            self._write(record, if_match=self._etag)
        except TrainerError as exc:
            log.warning("could not release the lease %s: %s", self.store.uri(self.loc), exc)
        self._etag = self._record = None

    # -- plumbing ------------------------------------------------------------------------
    def _fresh(self) -> LeaseRecord:
        now = utc_now()
        return LeaseRecord(
            holder=self.holder,
            instance=self.instance,
            renew_every_s=self.renew_every_s,
            taken_at=now,
            renewed_at=now,
        )

    def _free(self, record: LeaseRecord) -> bool:
        """Released by its holder, or left by an earlier process on this very instance."""
        return record.released or (self.instance is not None and record.instance == self.instance)

    def _gone(self, record: LeaseRecord, etag: str, watched: tuple[str, float] | None) -> bool:
        """The record has not changed for longer than its holder's renewals allow."""
        if watched is None or watched[0] != etag:
            return False
        quiet = self._clock() - watched[1]
        if quiet < stale_after_s(record):
            return False
        log.warning(
            "taking over the lease %s: holder %s has not renewed it for %.0f s",
            self.store.uri(self.loc),
            record.holder,
            quiet,
        )
        return True

    def _read(self) -> tuple[LeaseRecord, str] | None:
        got = self.store.read(self.loc)
        if got is None:
            return None
        raw, info = got
        return parse_record(LeaseRecord, raw, self.store.uri(self.loc)), info.etag

    def _write(
        self, record: LeaseRecord, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        info = self.store.put(self.loc, record.to_json(), if_absent=if_absent, if_match=if_match)
        self._etag, self._record = info.etag, record

    def _held_message(self, record: LeaseRecord) -> str:
        where = f"instance {record.instance}" if record.instance else record.holder
        return (
            f"{self.store.uri(self.loc)} is held by {where}, which renewed it while this one "
            f"waited: that container is running the job"
        )
