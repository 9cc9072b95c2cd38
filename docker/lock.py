"""Regenerate docker/requirements.lock: every library the image installs besides torch, pinned
by version and sha256, for the Pythons of both image bases.

    python docker/lock.py

The image installs torch first from `TORCH_INDEX`, together with what that torch build pins
exactly (its CUDA libraries, triton); then everything in the lock with `--require-hashes`;
then the project itself with `--no-deps`. So the lock holds the project's own dependencies,
its `train` extra but torch, the setuptools that builds it, and torch's loose,
platform-neutral requirements (filelock, sympy, jinja2...), resolved once here from PyPI for
CPython 3.11 (the Debian test base) and 3.12 (the Ubuntu CUDA base) at the same versions. Run
it after changing the dependencies in pyproject.toml or `TORCH_VERSION` in docker/Dockerfile;
tests/test_image_lock.py says when.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "docker" / "requirements.lock"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PYTHONS = ("3.11", "3.12")
GLIBC = 28
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
"""Wheels for glibc 2.28 and older run on both bases (Debian 12: 2.36, Ubuntu 24.04: 2.39);
pip given one `--platform` takes that tag only, so every older one is named."""


def torch_version() -> str:
    found = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    if found is None:
        raise SystemExit(f"{DOCKERFILE}: no 'ARG TORCH_VERSION=' line")
    return found.group(1)


def resolve(requirements: list[str], python: str, *extra: str) -> list[dict[str, Any]]:
    """What pip would install for `python` on Linux x86_64, from PyPI alone (no local wheel
    caches or constraints from this machine's pip configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run"]
        command += ["--ignore-installed", "--only-binary=:all:", "--implementation", "cp"]
        command += ["--python-version", python]
        command += [arg for tag in PLATFORMS for arg in ("--platform", tag)]
        command += ["--target", str(Path(tmp) / "target"), "--report", str(report)]
        subprocess.run([*command, *extra, *requirements], check=True, env=env)
        installed: list[dict[str, Any]] = json.loads(report.read_text())["install"]
        return installed


def torch_loose_requirements(version: str) -> list[str]:
    """torch's requirements with neither a marker nor an exact pin: the ones every torch
    build shares. The rest belong to the build TORCH_INDEX serves."""
    (torch,) = resolve([f"torch=={version}"], PYTHONS[-1], "--no-deps")
    loose = []
    for line in torch["metadata"].get("requires_dist") or []:
        req = Requirement(line)
        if req.marker is None and not any(s.operator == "==" for s in req.specifier):
            loose.append(str(req))
    return loose


def project_roots() -> list[str]:
    """The project's dependencies, its `train` extra but torch (the image installs torch on
    its own), and its build backend."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    train = pyproject["project"]["optional-dependencies"]["train"]
    extra = [line for line in train if canonicalize_name(Requirement(line).name) != "torch"]
    return [*pyproject["project"]["dependencies"], *extra, *pyproject["build-system"]["requires"]]


def locked(roots: list[str]) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, sha256 of every wheel): one resolution per Python, the later ones
    held to the first one's versions."""
    pins: dict[str, tuple[str, set[str]]] = {}
    for python in PYTHONS:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
            constraints.write("".join(f"{n}=={v}\n" for n, (v, _) in pins.items()))
            constraints.flush()
            chosen = resolve(roots, python, "--constraint", constraints.name)
        for item in chosen:
            metadata = item["metadata"]
            name = canonicalize_name(metadata["name"])
            digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
            version, hashes = pins.setdefault(name, (metadata["version"], set()))
            if version != metadata["version"]:
                other = metadata["version"]
                raise SystemExit(f"{name}: {version} for one Python, {other} for another")
            hashes.add(digest)
    return pins


def render(pins: dict[str, tuple[str, set[str]]], torch: str) -> str:
    lines = [
        "# Generated by docker/lock.py; do not edit. Everything the training image installs",
        f"# besides torch {torch} (and what that torch build pins) and the project itself,",
        f"# for CPython {' and '.join(PYTHONS)} on Linux x86_64 (wheels for glibc 2.{GLIBC} or",
        "# older). Install with --require-hashes.",
        f"# torch=={torch}",
    ]
    for name in sorted(pins):
        version, hashes = pins[name]
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h} \\" for h in sorted(hashes)]
        lines[-1] = lines[-1].removesuffix(" \\")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch = torch_version()
    roots = project_roots() + torch_loose_requirements(torch)
    LOCK.write_text(render(locked(roots), torch))
    print(f"wrote {LOCK.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
