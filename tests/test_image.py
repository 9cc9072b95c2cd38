"""The built training image itself, run by a real Docker engine: what a Vast.ai host would
start. Only CUDA is out of reach: these run the CPU test image (tests/image_env.py)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_dataset, make_spec
from tests.image_env import Engine
from trainer.data.synth import SynthConfig
from trainer.job.artifacts import verify
from trainer.launcher.payload import ENTRYPOINT
from trainer.spec import dump_spec
from trainer.store import open_store
from trainer.store.layout import Layout
from trainer.store.records import SENTINEL

pytestmark = pytest.mark.slow  # containers: the slow tier

RUNTIME_UID = 10001
TOOLS = ("pytest", "moto", "ruff", "mypy", "hadolint", "importlinter", "vastai")
"""What the test and launch extras bring; none of it may ship in the training image."""
LOCK = Path(__file__).resolve().parent.parent / "docker" / "requirements.lock"


def sentinel(stdout: str) -> dict[str, Any]:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(SENTINEL + " "), last
    result: dict[str, Any] = json.loads(last.removeprefix(SENTINEL + " "))
    return result


def python_in(engine: Engine, code: str) -> Any:
    """Run `code` with the image's Python as its runtime user; it prints one JSON value."""
    proc = engine.docker(
        "run", "--rm", "--network=none", "--entrypoint", "python", engine.image, "-c", code
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def locked_torch() -> str:
    found = re.search(r"^# torch==(\S+)$", LOCK.read_text(), re.M)
    assert found is not None
    return found.group(1)


def test_without_environment_exits_2_naming_what_is_missing(engine: Engine) -> None:
    proc = engine.docker("run", "--rm", "--network=none", engine.image)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the container environment is incomplete" in proc.stderr
    assert "QUANTLAB_JOBSPEC: required" in proc.stderr
    result = sentinel(proc.stdout)
    assert result["exit_code"] == 2 and result["outcome"] == "failed"


def test_file_job_commits_a_verified_manifest_with_no_network(
    engine: Engine, tmp_path: Path
) -> None:
    # The store is mounted at its own path, so file:// URIs mean the same inside and out.
    root = tmp_path / "store"
    store = open_store(f"file://{root}")
    spec = make_spec(job={"id": "img-file"}, train={"epochs": 1, "eval_every_steps": 5})
    make_dataset(store, spec, SynthConfig(rows_per_day=1_000, row_group_size=500))
    spec_path = root / "img-file.yaml"
    spec_path.write_text(dump_spec(spec))
    for path in (root, *root.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o644)  # the job runs as its own user
    env = {
        "QUANTLAB_JOBSPEC": f"file://{spec_path}",
        "QUANTLAB_STORE": f"file://{root}",
        "QUANTLAB_DEVICE": "cpu",
    }
    name = f"quantlab-test-{uuid.uuid4().hex[:8]}"
    proc = engine.docker(
        "run", "--rm", "--name", name, "--network=none", "--volume", f"{root}:{root}",
        *[arg for key in env for arg in ("--env", key)], engine.image,
        env=env, timeout=300,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sentinel(proc.stdout) == {
        "job_id": "img-file",
        "outcome": "succeeded",
        "exit_code": 0,
        "artifacts": f"file://{root}/quantlab-artifacts/ml-artifacts/img-file/",
    }
    paths = Layout().job("img-file")
    (tmp_path / "check").mkdir()
    manifest = verify(store, paths, tmp_path / "check")
    names = {entry.name for entry in manifest.files}
    assert {"model.bin", "metrics.json", "jobspec.yaml", "train.log"} <= names
    written = root / "quantlab-artifacts" / "ml-artifacts" / "img-file" / "manifest.json"
    assert written.stat().st_uid == RUNTIME_UID  # written by the image's user, not root
    assert engine.docker("container", "inspect", name).returncode != 0  # --rm: gone


def test_runs_as_the_non_root_user_who_cannot_change_the_install(engine: Engine) -> None:
    config = engine.inspect()["Config"]
    assert config["User"] == str(RUNTIME_UID)
    assert config["Entrypoint"] == [ENTRYPOINT]  # what the launcher asks Vast.ai to run
    proc = engine.docker("run", "--rm", "--network=none", "--entrypoint", "id", engine.image)
    assert proc.returncode == 0 and re.match(rf"uid={RUNTIME_UID}\(trainer\)", proc.stdout)
    writable = python_in(
        engine,
        "import json, os, sys, trainer;"
        "print(json.dumps([os.access(p, os.W_OK) for p in (sys.prefix, trainer.__path__[0])]))",
    )
    assert writable == [False, False]


def test_holds_exactly_the_locked_libraries_and_no_test_tools(engine: Engine) -> None:
    found = python_in(
        engine,
        "import importlib.metadata as m, importlib.util as u, json, shutil;"
        f"tools = {TOOLS!r};"
        "print(json.dumps({"
        "'dists': {d.metadata['Name'].lower().replace('_', '-'): d.version"
        "          for d in m.distributions()},"
        "'modules': [t for t in tools if u.find_spec(t)],"
        "'commands': [t for t in tools if shutil.which(t)],"
        "'tests': bool(u.find_spec('tests'))}))",
    )
    assert found["modules"] == [] and found["commands"] == [] and not found["tests"]
    locked = dict(re.findall(r"^([a-z0-9-]+)==(\S+) ", LOCK.read_text(), re.M))
    dists = found["dists"]
    assert dists.pop("quantlab-trainer") == "0.1.0"
    assert dists.pop("torch").startswith(locked_torch())
    dists.pop("pip")  # the venv's own
    assert dists == locked
