"""The object store interface every backend implements: locations, object records, writes
guarded against read-only buckets."""

from __future__ import annotations

import abc
import errno
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import ObjectNotFound, StorageError

READ_WORKERS = 16
"""Concurrent reads of `get_many`: small objects cost a round trip each, not bandwidth."""

if TYPE_CHECKING:
    import pyarrow.fs


@dataclass(frozen=True, order=True)
class Loc:
    """One object (or prefix) in a bucket. `str()` is its canonical `s3://` URI."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> Loc:
        return Loc(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ObjectInfo:
    loc: Loc
    size: int
    etag: str
    """Changes whenever the object is rewritten; the token conditional writes compare."""


class ObjectStore(abc.ABC):
    """Whole-object reads and writes, listings, conditional puts, and an Arrow filesystem."""

    def __init__(self, read_only_buckets: frozenset[str] = frozenset()) -> None:
        self.read_only_buckets = read_only_buckets

    @property
    @abc.abstractmethod
    def root(self) -> str:
        """The root URI this store was opened with."""

    @abc.abstractmethod
    def uri(self, loc: Loc) -> str:
        """Where the object really is, for messages: `s3://b/k` or `file:///dir/b/k`."""

    def get(self, loc: Loc) -> bytes:
        """The object's bytes; ObjectNotFound when absent."""
        got = self.read(loc)
        if got is None:
            raise ObjectNotFound(f"{self.uri(loc)} does not exist")
        return got[0]

    @abc.abstractmethod
    def head(self, loc: Loc) -> ObjectInfo | None:
        """Size and etag, or None when absent."""

    @abc.abstractmethod
    def read(self, loc: Loc) -> tuple[bytes, ObjectInfo] | None:
        """The bytes and the etag of the very version they are, from one read; None when
        absent. What a read-modify-write or a watcher of a changing object needs: a head
        before and after a get can disagree forever while a writer keeps rewriting."""

    @abc.abstractmethod
    def _put(self, loc: Loc, data: bytes, if_absent: bool, if_match: str | None) -> ObjectInfo: ...

    @abc.abstractmethod
    def _upload(self, loc: Loc, path: Path) -> None: ...

    def get_small(self, loc: Loc) -> bytes:
        """A small object read through the Arrow filesystem, as the Parquet footers are read
        next: over S3 a third of boto3's CPU per request, most of it outside the GIL, which
        the pre-flight's threads share with every other partition's. When Arrow fails, `get`
        says why (no credentials, say, where Arrow only says "access denied")."""
        try:
            with self.arrow_fs().open_input_stream(self.arrow_path(loc)) as f:
                data: bytes = f.readall()
                return data
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(loc)} does not exist") from None
        except OSError:
            return self.get(loc)

    def get_many(self, locs: Sequence[Loc]) -> list[bytes | None]:
        """The bytes of each object, read concurrently, in order; None for an absent one."""

        def one(loc: Loc) -> bytes | None:
            try:
                return self.get(loc)
            except ObjectNotFound:
                return None

        if len(locs) <= 1:
            return [one(loc) for loc in locs]
        with ThreadPoolExecutor(min(READ_WORKERS, len(locs))) as pool:
            return [*pool.map(one, locs)]

    @abc.abstractmethod
    def children(self, prefix: Loc) -> list[str]:
        """The names of the "folders" right under `prefix` (keys `prefix/<name>/…`), sorted:
        one listing request per thousand, however many objects each holds."""

    @abc.abstractmethod
    def list(self, prefix: Loc) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix.key`, sorted by key."""

    @abc.abstractmethod
    def _delete(self, loc: Loc) -> None: ...

    @abc.abstractmethod
    def download(self, loc: Loc, path: Path) -> None:
        """Copy an object to a local file."""

    @abc.abstractmethod
    def arrow_fs(self) -> pyarrow.fs.FileSystem:
        """A pyarrow filesystem reading this store; paths come from `arrow_path`."""

    @abc.abstractmethod
    def arrow_path(self, loc: Loc) -> str: ...

    # -- writes go through the raw-bucket guard -----------------------------------------
    def put(
        self, loc: Loc, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        """Write an object atomically. `if_absent`: fail with PreconditionFailed when it
        exists. `if_match`: fail unless its etag is still this one. A conditional write is
        refused (ConditionalWritesIgnored) on a store that would not honour the condition."""
        self._guard(loc)
        if if_absent or if_match is not None:
            self.require_conditional_writes(loc.bucket)
        return self._put(loc, data, if_absent, if_match)

    @abc.abstractmethod
    def require_conditional_writes(self, bucket: str) -> None:
        """Raise ConditionalWritesIgnored unless writes to `bucket` honour `if_absent` and
        `if_match`. Call it before work whose result must be committed or promoted there, so
        a store that would lose a write is refused before anything is spent."""

    def upload(self, loc: Loc, path: Path) -> None:
        """Copy a local file to an object (streamed, multipart when large)."""
        self._guard(loc)
        self._upload(loc, path)

    def delete(self, loc: Loc) -> None:
        """Delete an object; deleting an absent object is not an error."""
        self._guard(loc)
        self._delete(loc)

    def exists(self, loc: Loc) -> bool:
        return self.head(loc) is not None

    def _guard(self, loc: Loc) -> None:
        if loc.bucket in self.read_only_buckets:
            raise StorageError(
                f"refusing to write {self.uri(loc)}: bucket {loc.bucket} is read-only"
            )


_STORE_WORDS = ("AWS Error", "ACCESS_DENIED", "Access Denied", "NETWORK_CONNECTION", "curl",
                "Connection refused", "timed out", "Could not resolve")  # fmt: skip
"""What pyarrow's S3 filesystem says when the store, not the file, failed."""


def store_failure(exc: BaseException, where: str) -> StorageError | None:
    """A reading error as what it is: a StorageError (exit 8, infrastructure) when the store
    failed (S3 unreachable or refusing, a local permission error, a full disk), None when the
    bytes themselves are the problem (a damaged file: the caller's DataError). `where`: the
    URI or local path read."""
    if isinstance(exc, ObjectNotFound):
        return None
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot use {where}: permission denied; check who may use it")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageError(f"cannot write {where}: no space left on the device; free some")
    if isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and any(w in str(exc) for w in _STORE_WORDS)
    ):
        detail = " ".join(str(exc).split())[:300]
        return StorageError(
            f"cannot read {where}: the store failed ({detail}); check the network, the "
            "endpoint and the credentials, then retry"
        )
    return None
