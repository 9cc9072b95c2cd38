"""The researcher's code: packed deterministically, hashed into the job id, shipped, checked,
imported in isolation, and errors from it told by `file:line`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_dataset, spec_dict
from trainer.data.synth import SynthConfig
from trainer.errors import SpecError, VerificationError
from trainer.job.identity import resolve
from trainer.model.code import (
    MAX_BYTES,
    Packed,
    StagedCode,
    collect,
    fetch,
    importable,
    pack,
    pack_for_job,
    resolve_code,
    ship,
)
from trainer.model.entry import load_entry
from trainer.spec import JobSpec, spec_from_dict
from trainer.spec.sections import CodeSpec, UnresolvedSpec
from trainer.store import ObjectStore
from trainer.store.layout import Layout

ROOT = Path(__file__).resolve().parent.parent


def tree(base: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return base


def code_spec(path: Path) -> JobSpec:
    raw = spec_dict(code={"path": str(path)})
    raw["model"] = {"type": "net:build", "params": {"width": 8}}
    return spec_from_dict(raw)


def problems(exc: pytest.ExceptionInfo[SpecError]) -> str:
    return "\n".join(exc.value.problems)


# -- packing ---------------------------------------------------------------------------------
def test_the_same_files_pack_to_the_same_bytes_whatever_their_times(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {"net.py": "x = 1\n", "pkg/__init__.py": "", "pkg/m.py": "y = 2\n"})
    b = tree(tmp_path / "b", {"pkg/m.py": "y = 2\n", "pkg/__init__.py": "", "net.py": "x = 1\n"})
    os.utime(b / "net.py", (time.time() - 86_400, time.time() - 86_400))
    (b / "pkg" / "m.py").chmod(0o600)
    pa, pb = pack(a, tmp_path / "a.tar.gz"), pack(b, tmp_path / "b.tar.gz")
    assert pa.sha256 == pb.sha256
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert pa.files == ("net.py", "pkg/__init__.py", "pkg/m.py")


def test_hidden_entries_caches_and_virtualenvs_are_not_packed(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {
            "net.py": "",
            ".env": "AWS_SECRET_ACCESS_KEY=abc",
            ".git/HEAD": "ref",
            "__pycache__/net.cpython-311.pyc": "",
            "stale.pyc": "",
            "env/pyvenv.cfg": "home = /usr",
            "env/lib/site.py": "",
            "venv/x.py": "",
        },
    )
    assert [name for name, _ in collect(src)] == ["net.py"]


def test_a_symlink_out_of_the_tree_is_refused_and_one_inside_is_followed(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"net.py": "x = 1\n", "real/m.py": ""})
    (src / "alias.py").symlink_to(src / "net.py")
    (src / "linked").symlink_to(src / "real")
    assert [n for n, _ in collect(src)] == ["alias.py", "linked/m.py", "net.py", "real/m.py"]
    (tmp_path / "secret.txt").write_text("key")
    (src / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SpecError) as info:
        collect(src)
    assert problems(info) == (
        f"code.path: leak.txt is a symlink to {tmp_path / 'secret.txt'}, outside the code "
        "folder; copy it in"
    )


def test_a_tree_over_the_size_cap_is_refused_naming_its_largest_files(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"net.py": ""})
    (src / "prices.parquet").write_bytes(b"\0" * (MAX_BYTES + 1))
    with pytest.raises(SpecError) as info:
        collect(src)
    text = problems(info)
    assert text.startswith(f"code.path: {src} holds 2 files, 16.8 MB; the limits are 2000 files")
    assert "largest: prices.parquet (16.8 MB), net.py (0.0 MB)" in text


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "does not exist (paths are relative to the current folder)"),
        ({"trainer/__init__.py": ""}, "defines trainer: rename it"),
    ],
)
def test_trees_that_cannot_ship_are_refused(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    src = tree(tmp_path / "src", files) if files else tmp_path / "missing"
    with pytest.raises(SpecError) as info:
        collect(src)
    assert expected in problems(info)


def test_one_py_file_packs_alone(tmp_path: Path) -> None:
    src = tree(tmp_path, {"net.py": "x = 1\n", "other.py": ""})
    assert [n for n, _ in collect(src / "net.py")] == ["net.py"]


# -- identity --------------------------------------------------------------------------------
def test_the_same_code_gives_the_same_job_id_and_one_changed_byte_a_new_one(
    tmp_path: Path, local_store: ObjectStore
) -> None:
    src = tree(tmp_path / "src", {"net.py": "WIDTH = 8\n"})
    spec = code_spec(src)
    make_dataset(local_store, spec, SynthConfig(rows_per_day=400, row_group_size=200))
    with pytest.raises(UnresolvedSpec):
        _ = resolve_code(spec).job_id  # the data is part of the identity too
    first = resolve(spec, local_store)
    assert first.spec.code is not None and first.spec.code.sha256 is not None
    assert resolve(spec, local_store).job_id == first.job_id
    (src / "net.py").write_text("WIDTH = 9\n")
    assert resolve(spec, local_store).job_id != first.job_id
    (src / "net.py").write_text("WIDTH = 8\n")
    assert resolve(spec, local_store).job_id == first.job_id


def test_code_that_changed_since_the_spec_was_hashed_is_refused(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"net.py": "WIDTH = 8\n"})
    resolved = resolve_code(code_spec(src))
    (src / "net.py").write_text("WIDTH = 9\n")
    assert resolved.code is not None
    with pytest.raises(SpecError) as info:
        pack_for_job(resolved.code, tmp_path / "code.tar.gz")
    assert problems(info).startswith(f"code.sha256: {src} now packs to ")


# -- shipping --------------------------------------------------------------------------------
def test_the_shipped_archive_is_checked_on_arrival(
    tmp_path: Path, local_store: ObjectStore
) -> None:
    src = tree(tmp_path / "src", {"net.py": "WIDTH = 8\n"})
    spec = resolve_code(code_spec(src))
    assert spec.code is not None
    loc = Layout().job("shipped").code
    shipped = ship(spec.code, local_store, loc)
    got = fetch(spec.code, local_store, loc, tmp_path / "got.tar.gz")
    assert got.sha256 == shipped.sha256 == spec.code.sha256 and got.files == ("net.py",)

    other = pack(tree(tmp_path / "other", {"net.py": "WIDTH = 666\n"}), tmp_path / "o.tar.gz")
    local_store.upload(loc, other.archive)
    with pytest.raises(VerificationError, match="the archive was replaced or damaged"):
        fetch(spec.code, local_store, loc, tmp_path / "again.tar.gz")
    local_store.delete(loc)
    with pytest.raises(VerificationError, match="the job's code was not uploaded"):
        fetch(spec.code, local_store, loc, tmp_path / "gone.tar.gz")


# -- importing -------------------------------------------------------------------------------
def staged(tmp_path: Path, files: dict[str, str], name: str = "src") -> tuple[CodeSpec, Packed]:
    src = tree(tmp_path / name, files)
    code = CodeSpec(path=str(src))
    return code, pack(src, tmp_path / f"{name}.tar.gz")


def test_two_versions_of_a_module_each_import_their_own(tmp_path: Path) -> None:
    one = staged(tmp_path, {"net.py": "width = 1\n"}, "one")
    two = staged(tmp_path, {"net.py": "width = 2\n"}, "two")
    for version, expected in ((one, 1), (two, 2)):
        with importable(*version) as code:
            import net  # type: ignore[import-not-found]

            assert net.width == expected
            assert not code.root.is_relative_to(ROOT / "trainer")
    assert "net" not in sys.modules


@pytest.mark.parametrize(
    ("files", "ref", "expected"),
    [
        ({"net.py": ""}, "nets:build", "model.type: no module `nets` in code.path {src} (net.py)"),
        (
            {"net.py": "import os\nimport lightgbm\n"},
            "net:build",
            "model.type: {src}/net.py:2: ModuleNotFoundError: No module named 'lightgbm' (the "
            "training image has torch, numpy and the standard library; for other packages, "
            "build your own image FROM ours and name it in `resources.image`)",
        ),
        (
            {"net.py": "def build(n_features):\n    return 1 +\n"},
            "net:build",
            "model.type: {src}/net.py:2: SyntaxError: invalid syntax",
        ),
        ({"net.py": "WIDTH = 3\n"}, "net:build", "model.type: {src}/net.py has no `build`"),
        ({"net.py": "build = 3\n"}, "net:build", "model.type: {src}/net.py: `build` is a int"),
        (
            {"pkg/__init__.py": "", "pkg/net.py": "raise RuntimeError('boom')\n"},
            "pkg.net:build",
            "model.type: {src}/pkg/net.py:1: RuntimeError: boom",
        ),
        ({"net.py": ""}, "json:loads", "model.type: `json` is not in code.path {src}"),
    ],
)
def test_an_entry_point_that_cannot_load_names_the_field_and_the_file(
    tmp_path: Path, files: dict[str, str], ref: str, expected: str
) -> None:
    spec, packed = staged(tmp_path, files)
    with importable(spec, packed) as code, pytest.raises(SpecError) as info:
        load_entry(ref, "model.type", code)
    assert problems(info).startswith(expected.format(src=spec.path))


def test_a_single_file_is_named_as_the_researcher_wrote_it(tmp_path: Path) -> None:
    src = tree(tmp_path, {"net.py": "def build(n_features):\n    raise ValueError('no')\n"})
    code = CodeSpec(path=str(src / "net.py"))
    with importable(code, pack(src / "net.py", tmp_path / "c.tar.gz")) as staged_code:
        assert isinstance(staged_code, StagedCode)
        assert staged_code.display(str(staged_code.root / "net.py")) == str(src / "net.py")
