"""docker/requirements.lock still covers what the image needs: a dependency added to
pyproject.toml, or a torch bump in docker/Dockerfile, without `python docker/lock.py` fails here
rather than in the image build."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK_TEXT = (ROOT / "docker" / "requirements.lock").read_text()
ENTRIES = re.findall(r"^(\S+)==(\S+)((?: \\\n    --hash=sha256:[0-9a-f]{64})+)", LOCK_TEXT, re.M)
LOCKED = {canonicalize_name(name): Version(version) for name, version, _ in ENTRIES}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RELOCK = "run `python docker/lock.py`"


def test_every_lock_line_is_an_exact_pin_with_hashes() -> None:
    requirements = [line for line in LOCK_TEXT.splitlines() if line and line[0].isalnum()]
    assert len(ENTRIES) == len(requirements) > 10


TRAIN = PYPROJECT["project"]["optional-dependencies"]["train"]
IMAGE_REQUIREMENTS = [
    *PYPROJECT["project"]["dependencies"],
    *[line for line in TRAIN if canonicalize_name(Requirement(line).name) != "torch"],
    *PYPROJECT["build-system"]["requires"],
]
"""What the image installs from the lock: the project's dependencies, its `train` extra but
torch (installed from TORCH_INDEX on its own), and its build backend."""


@pytest.mark.parametrize("line", IMAGE_REQUIREMENTS)
def test_project_dependency_is_locked(line: str) -> None:
    req = Requirement(line)
    name = canonicalize_name(req.name)
    assert name in LOCKED, f"{req.name} is not in docker/requirements.lock: {RELOCK}"
    assert LOCKED[name] in req.specifier, f"locked {name}=={LOCKED[name]} not {req}: {RELOCK}"


def test_torch_is_the_dockerfile_one_and_its_loose_requirements_are_locked() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    wanted = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    assert wanted is not None
    assert f"# torch=={wanted.group(1)}\n" in LOCK_TEXT, f"torch {wanted.group(1)}: {RELOCK}"
    if Version(importlib.metadata.version("torch")).base_version != wanted.group(1):
        pytest.skip("the torch installed here is another version than the image's")
    for line in importlib.metadata.requires("torch") or []:
        req = Requirement(line)
        if req.marker is None and not any(s.operator == "==" for s in req.specifier):
            name = canonicalize_name(req.name)
            assert name in LOCKED and LOCKED[name] in req.specifier, f"{req}: {RELOCK}"
