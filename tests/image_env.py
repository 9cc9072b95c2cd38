"""The training image under test and the Docker engine that runs it, or why there is none.

`QUANTLAB_TEST_IMAGE` names the image (default `quantlab/trainer:test`, the tag
docker/build-test-image.sh gives the image it builds); `DOCKER_HOST` and the `docker` client
on PATH say which engine. Where nobody asked for the image, a missing engine or image skips
the tests that need it, with the reason; where `QUANTLAB_TEST_IMAGE` is set, as
docker/build-test-image.sh sets it for the command it runs, the same absence fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_IMAGE = "quantlab/trainer:test"
HOW_TO_BUILD = "to build it and run these: docker/build-test-image.sh -- python -m pytest -m slow"


@dataclass(frozen=True)
class Engine:
    """A reachable Docker engine that holds `image`."""

    client: str
    image: str

    def docker(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`; `env` is added to the client's environment, so that `-e NAME`
        passes a value without it ever appearing on a command line."""
        return subprocess.run(
            [self.client, *args],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def inspect(self) -> dict[str, Any]:
        out = self.docker("image", "inspect", self.image, check=True).stdout
        found: list[dict[str, Any]] = json.loads(out)
        return found[0]


def find_engine() -> Engine | str:
    """The engine and image, or the reason they cannot be used."""
    image = os.environ.get("QUANTLAB_TEST_IMAGE") or DEFAULT_IMAGE
    client = shutil.which("docker")
    if client is None:
        return f"no docker client on PATH; {HOW_TO_BUILD}"
    try:
        info = subprocess.run(
            [client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return f"the Docker engine did not answer in 30 s; {HOW_TO_BUILD}"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine reachable ({reason}); {HOW_TO_BUILD}"
    found = subprocess.run(
        [client, "image", "inspect", image], capture_output=True, text=True, timeout=30
    )
    if found.returncode != 0:
        return f"the engine has no image {image}; {HOW_TO_BUILD}"
    return Engine(client, image)


def require_engine() -> Engine:
    """The engine, or skip (nothing asked for it) or fail (QUANTLAB_TEST_IMAGE was set)."""
    found = find_engine()
    if isinstance(found, Engine):
        return found
    if os.environ.get("QUANTLAB_TEST_IMAGE"):
        pytest.fail(f"QUANTLAB_TEST_IMAGE is set but unusable: {found}", pytrace=False)
    pytest.skip(found)
