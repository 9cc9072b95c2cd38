"""The researcher's code (`code.path`): packed deterministically, hashed, shipped, checked,
unpacked outside the package, and put on the import path for the job.

The archive is a gzip'd tar of the tree's files in sorted order with fixed metadata (no
times, owners or modes), without hidden entries (`.git`, `.env`, caches), `__pycache__` or
virtualenvs. Its identity, `code.sha256`,
is the sha256 of the tar stream before compression, so the zlib on the machine that packs
cannot change it; the same files give the same hash and therefore the same job id."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import io
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trainer.errors import ObjectNotFound, SpecError, VerificationError
from trainer.spec import JobSpec
from trainer.spec.sections import CodeSpec
from trainer.store.base import Loc, ObjectStore
from trainer.store.layout import JobPaths

log = logging.getLogger("quantlab.job")

MAX_BYTES = 16 << 20
"""Files packed at most, before compression: model code is small; data and weights are not."""
MAX_FILES = 2_000
SKIPPED_DIRS = frozenset({"__pycache__", "venv", "node_modules"})
"""Never packed, besides hidden entries (`.git`, `.venv`, `.env`, caches) and virtualenvs."""
SKIPPED_SUFFIXES = (".pyc", ".pyo")
RESERVED = frozenset({"trainer", "torch", "numpy"})
"""Top-level names the code may not define: it would shadow what the runner imports."""


@dataclass(frozen=True)
class Packed:
    """A packed tree: the archive file and its identity."""

    archive: Path
    sha256: str
    files: tuple[str, ...]
    """Names inside the archive, POSIX, sorted."""


@dataclass(frozen=True)
class StagedCode:
    """Code unpacked for a job and importable from `root`."""

    root: Path
    """The folder on `sys.path`; it holds exactly the archive's files."""
    spec: CodeSpec
    packed: Packed

    def display(self, filename: str) -> str | None:
        """`filename` as the researcher knows it (`models/gated.py`), None when the file is
        not part of the code."""
        try:
            rel = Path(filename).resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        if self.spec.path.endswith(".py"):
            return self.spec.path
        return str(PurePosixPath(self.spec.path.rstrip("/")) / rel.as_posix())


# -- packing ---------------------------------------------------------------------------------
def collect(source: Path) -> list[tuple[str, Path]]:
    """The files to pack as `(name in the archive, file on disk)`, sorted by name; SpecError
    naming `code.path` for what cannot be packed."""
    if not source.exists():
        raise _problem(f"{source} does not exist (paths are relative to the current folder)")
    if source.is_file():
        if source.suffix != ".py":
            raise _problem(f"{source} is neither a folder nor a .py file")
        return [(source.name, source)]
    found: list[tuple[str, Path]] = []
    _walk(source.resolve(), PurePosixPath(), source.resolve(), found)
    found.sort()
    total = sum(p.stat().st_size for _, p in found)
    if len(found) > MAX_FILES or total > MAX_BYTES:
        biggest = sorted(found, key=lambda f: -f[1].stat().st_size)[:3]
        listed = ", ".join(f"{n} ({p.stat().st_size / 1e6:.1f} MB)" for n, p in biggest)
        raise _problem(
            f"{source} holds {len(found)} files, {total / 1e6:.1f} MB; the limits are "
            f"{MAX_FILES} files and {MAX_BYTES / 1e6:.0f} MB (largest: {listed}). Ship model "
            "code only: data belongs in the feature store, dependencies in the image"
        )
    tops = {PurePosixPath(n).parts[0].removesuffix(".py") for n, _ in found}
    if tops & RESERVED:
        raise _problem(f"{source} defines {', '.join(sorted(tops & RESERVED))}: rename it")
    return found


def _walk(folder: Path, rel: PurePosixPath, top: Path, found: list[tuple[str, Path]]) -> None:
    if (folder / "pyvenv.cfg").exists():
        return  # a virtualenv, whatever its name
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # .git, .venv, caches, and an .env file with keys in it
        name = rel / entry.name
        path = Path(entry.path)
        if entry.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(top):
                raise _problem(
                    f"{name} is a symlink to {target}, outside the code folder; copy it in"
                )
            if target.is_dir() and folder.resolve().is_relative_to(target):
                raise _problem(f"{name} is a symlink to a folder that contains it")
            path = target
        if path.is_dir():
            if entry.name not in SKIPPED_DIRS:
                _walk(path, name, top, found)
        elif path.is_file() and not entry.name.endswith(SKIPPED_SUFFIXES):
            found.append((str(name), path))


def tar_stream(files: list[tuple[str, Path]]) -> bytes:
    """The uncompressed tar of `files`, byte for byte the same for the same files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pack(source: Path, dest: Path) -> Packed:
    """Pack `source` (a folder or one .py file) into the archive `dest`."""
    files = collect(source)
    raw = tar_stream(files)
    with open(dest, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(raw)
    return Packed(dest, hashlib.sha256(raw).hexdigest(), tuple(n for n, _ in files))


def resolve_code(spec: JobSpec) -> JobSpec:
    """The spec with `code.sha256` filled in from the tree at `code.path`, part of resolving
    it (`trainer.job.identity.resolve`); unchanged without `code` or when the hash is given
    (it is checked wherever the code is packed to be used)."""
    if spec.code is None or spec.code.sha256 is not None:
        return spec
    with tempfile.TemporaryDirectory(prefix="quantlab-code-") as tmp:
        packed = pack(Path(spec.code.path), Path(tmp) / JobPaths.CODE)
    code = spec.code.model_copy(update={"sha256": packed.sha256})
    return spec.model_copy(update={"code": code})


def pack_for_job(code: CodeSpec, dest: Path) -> Packed:
    """Pack `code.path` into `dest`, refusing a tree that is not the one the spec names."""
    packed = pack(Path(code.path), dest)
    if code.sha256 is not None and packed.sha256 != code.sha256:
        raise SpecError(
            "the code changed",
            [
                f"code.sha256: {code.path} now packs to {packed.sha256[:12]}…, the spec names "
                f"{code.sha256[:12]}… (pinned, or hashed when the spec was loaded); load the "
                "spec again for a new job, or restore the code"
            ],
        )
    return packed


# -- shipping --------------------------------------------------------------------------------
def ship(code: CodeSpec, store: ObjectStore, loc: Loc) -> Packed:
    """Pack `code.path` (checked against the spec) and upload it to `loc`."""
    with tempfile.TemporaryDirectory(prefix="quantlab-code-") as tmp:
        packed = pack_for_job(code, Path(tmp) / JobPaths.CODE)
        store.upload(loc, packed.archive)
    return packed


def fetch(code: CodeSpec, store: ObjectStore, loc: Loc, dest: Path) -> Packed:
    """Download the job's archive to `dest` and check it is the code the spec names."""
    try:
        store.download(loc, dest)
    except ObjectNotFound:
        raise VerificationError(
            f"{store.uri(loc)} does not exist: the job's code was not uploaded (launch it "
            "again with `quantlab-train launch`)"
        ) from None
    return verify_archive(code, dest, store.uri(loc))


def verify_archive(code: CodeSpec, archive: Path, where: str = "") -> Packed:
    """The archive, checked to hold the code the spec names (`code.sha256`)."""
    try:
        raw = gzip.decompress(archive.read_bytes())
    except (OSError, EOFError) as exc:
        raise VerificationError(f"{where or archive} is not a readable archive: {exc}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != code.sha256:
        raise VerificationError(
            f"{where or archive} holds code {digest[:12]}…, the spec names "
            f"{(code.sha256 or '')[:12]}…: the archive was replaced or damaged"
        )
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tuple(sorted(m.name for m in tar.getmembers()))
    return Packed(archive, digest, names)


def unpack(packed: Packed, dest: Path) -> Path:
    """Extract the archive into `dest`, regular files only, nothing outside it."""
    with tarfile.open(packed.archive, mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise VerificationError(f"{packed.archive}: {member.name} is not a plain file")
        tar.extractall(dest, filter="data")
    return dest


# -- importing -------------------------------------------------------------------------------
@contextlib.contextmanager
def importable(code: CodeSpec, packed: Packed) -> Iterator[StagedCode]:
    """The archive unpacked into a fresh folder outside the package and put first on
    `sys.path` for the duration; its modules are forgotten again afterwards, so another job
    in the same process imports its own."""
    root = Path(tempfile.mkdtemp(prefix="quantlab-code-"))
    tops = {PurePosixPath(n).parts[0].removesuffix(".py") for n in packed.files}
    try:
        unpack(packed, root)
        _forget(tops)
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        yield StagedCode(root, code, packed)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
        _forget(tops)
        shutil.rmtree(root, ignore_errors=True)


def _forget(tops: set[str]) -> None:
    for name in list(sys.modules):
        if name.split(".", 1)[0] in tops:
            del sys.modules[name]


def _problem(text: str) -> SpecError:
    return SpecError("the model code cannot be packed", [f"code.path: {text}"])


@contextlib.contextmanager
def stage(
    code: CodeSpec | None,
    workdir: Path,
    *,
    store: ObjectStore | None = None,
    loc: Loc | None = None,
) -> Iterator[StagedCode | None]:
    """The job's code, importable for the duration, its archive left in `workdir` (where it
    becomes one of the job's artifacts): fetched from `loc` in `store` and checked (the
    container), else packed from `code.path` (this machine). None without `code`."""
    if code is None:
        yield None
        return
    archive = workdir / JobPaths.CODE
    if store is not None and loc is not None:
        packed = fetch(code, store, loc, archive)
        log.info("code: %s from %s, sha256 %s", code.path, store.uri(loc), packed.sha256)
    else:
        packed = pack_for_job(code, archive)
        log.info("code: %s, %d file(s), sha256 %s", code.path, len(packed.files), packed.sha256)
    with importable(code, packed) as staged:
        yield staged
