"""A local folder standing in for the buckets: `<root>/<bucket>/<key>`, the embedded default."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow.fs

from trainer.errors import ObjectNotFound, PreconditionFailed, StorageError
from trainer.store.base import Loc, ObjectInfo, ObjectStore

_LOCKS = ".locks"


class LocalStore(ObjectStore):
    """Every write lands in a temporary file first and is renamed into place, so a reader
    never sees half an object; conditional writes hold a per-object lock file."""

    def __init__(self, root: str | Path, read_only_buckets: frozenset[str] = frozenset()) -> None:
        super().__init__(read_only_buckets)
        self._root = Path(root).expanduser().resolve()

    @property
    def root(self) -> str:
        return f"file://{self._root}"

    def path(self, loc: Loc) -> Path:
        if ".." in loc.key.split("/") or loc.key.startswith("/"):
            raise StorageError(
                f"{self._root / loc.bucket}: key {loc.key!r} must be relative and stay inside "
                "its bucket"
            )
        return self._root / loc.bucket / loc.key

    def uri(self, loc: Loc) -> str:
        # Not Path.as_uri(): it would percent-encode the `=` of the Hive partitions.
        tail = "/" if loc.key.endswith("/") else ""
        return f"file://{self.path(loc)}{tail}"

    def read(self, loc: Loc) -> tuple[bytes, ObjectInfo] | None:
        # One open file: every write renames a new file into place, so what the descriptor
        # reads is the very version its fstat names.
        try:
            with open(self.path(loc), "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(loc)}: {exc.strerror}") from None
        return data, ObjectInfo(loc, st.st_size, _etag(st))

    def head(self, loc: Loc) -> ObjectInfo | None:
        try:
            st = self.path(loc).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self.path(loc)):
            return None
        return ObjectInfo(loc, st.st_size, _etag(st))

    def require_conditional_writes(self, bucket: str) -> None:
        """Nothing to check: conditional writes hold a lock file here, by construction."""

    def _put(self, loc: Loc, data: bytes, if_absent: bool, if_match: str | None) -> ObjectInfo:
        target = self.path(loc)
        with _io("write", target), self._locked(loc) if (if_absent or if_match) else _nothing():
            current = self.head(loc)
            if if_absent and current is not None:
                raise PreconditionFailed(f"{self.uri(loc)} already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{self.uri(loc)} changed since it was read")
            self._replace(target, lambda f: f.write(data))
        info = self.head(loc)
        if info is None:  # pragma: no cover - the rename above just succeeded
            raise StorageError(f"{self.uri(loc)} vanished right after it was written")
        return info

    def _upload(self, loc: Loc, path: Path) -> None:
        with _io("write", self.path(loc)), open(path, "rb") as src:
            self._replace(self.path(loc), lambda f: shutil.copyfileobj(src, f, 8 << 20))

    def children(self, prefix: Loc) -> list[str]:
        try:
            entries = list(os.scandir(self.path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    def list(self, prefix: Loc) -> list[ObjectInfo]:
        bucket_dir = self._root / prefix.bucket
        if not bucket_dir.is_dir():
            return []
        found = []
        for dirpath, _dirs, files in os.walk(bucket_dir):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(bucket_dir).as_posix()
                if key.startswith(prefix.key):
                    found.append(ObjectInfo(Loc(prefix.bucket, key), *_size_etag(full)))
        return sorted(found, key=lambda o: o.loc.key)

    def _delete(self, loc: Loc) -> None:
        with _io("delete", self.path(loc)), suppress(FileNotFoundError):
            self.path(loc).unlink()

    def download(self, loc: Loc, path: Path) -> None:
        try:
            with _io("copy", self.path(loc)):
                shutil.copyfile(self.path(loc), path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(loc)} does not exist") from None

    def arrow_fs(self) -> pyarrow.fs.FileSystem:
        return pyarrow.fs.LocalFileSystem()

    def arrow_path(self, loc: Loc) -> str:
        return str(self.path(loc))

    # -- helpers -------------------------------------------------------------------------
    def _replace(self, target: Path, write: object) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)  # type: ignore[operator]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self, loc: Loc) -> Iterator[None]:
        lock_dir = self._root / _LOCKS
        lock_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(str(loc).encode()).hexdigest()[:32]
        with open(lock_dir / name, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _io(action: str, path: Path) -> Iterator[None]:
    """A local file system failure as a StorageError naming the local path and what to do:
    a permission error, a full disk, a read-only file system (a missing file stays itself,
    for the callers that turn it into ObjectNotFound)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            hint = "no space left on the device: free some, or point --store at another disk"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = f"{exc.strerror}: check who may write the folder, or use another --store"
        else:
            hint = exc.strerror or str(exc)
        raise StorageError(f"cannot {action} {path}: {hint}") from None


def _etag(st: os.stat_result) -> str:
    # Every write renames a new file into place, so inode + mtime + size change on rewrite.
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _size_etag(path: Path) -> tuple[int, str]:
    st = path.stat()
    return st.st_size, _etag(st)
