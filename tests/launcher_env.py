"""Launcher test kit: the real container run inside fake Vast.ai instances, tiny jobs, the CLI.

`container_job` is the fake's `on_running` callback: it starts the instance's container with
exactly the instance's environment (what the launcher sent plus CONTAINER_ID and
CONTAINER_API_KEY), relays its output into the instance log, and stops it when the instance is
stopped or destroyed. The container is `docker/entrypoint.sh` run as a local process (with
PATH and HOME), or, given a Docker engine, the rented image itself (`lab(..., engine=...)`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.vast_server import FakeVast, Timings, running_fake_vast
from tests.fakes.vast_state import InstanceView
from tests.helpers import make_dataset, make_spec
from tests.image_env import Engine
from trainer.data.synth import SynthConfig
from trainer.launcher.launch import JobHandle, LaunchOptions
from trainer.launcher.reach import ALLOW_LOCAL_STORE
from trainer.spec import JobSpec
from trainer.store import ObjectStore

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
FAST = Timings(t_sched=0.05, t_pull=0.15, t_stop=0.05, logs_delay=0.05)
FAST_CLIENT: dict[str, Any] = {
    "retries": 3,
    "backoff_s": 0.05,
    "max_backoff_s": 0.5,
    "logs_wait_s": 0.5,
    "logs_poll_s": 0.05,
    "timeout_s": 10,
    "create_settle_s": 1.0,
}
CONTAINER_ENV = {"QUANTLAB_STATUS_EVERY_SEC": "0.3", "QUANTLAB_DEVICE": "cpu"}
POLL_S = 0.2
TINY_DATA = SynthConfig(rows_per_day=400, row_group_size=200)
STOP_GRACE_S = 2.0
"""Seconds a stopped container gets to exit before it is killed, like `docker stop -t`."""


@dataclass
class Containers:
    """Every container the fake started, with its output."""

    outputs: dict[int, list[str]] = field(default_factory=dict)
    fake: FakeVast | None = None
    codes: dict[int, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    label: str = field(default_factory=lambda: f"quantlab-fake-vast-{uuid.uuid4().hex[:8]}")
    """The Docker label (and name prefix) of every container this fake started."""

    def all_output(self) -> str:
        with self.lock:
            return "\n".join(line for lines in self.outputs.values() for line in lines)


@dataclass(frozen=True)
class Started:
    """One started container: the process whose output is the container's, and how to stop
    it (`lost=True`: at once, as a host that drops off the network takes its processes)."""

    proc: subprocess.Popen[str]
    stop: Callable[[bool], None]
    exit_s: float
    """How long the process gets to exit after `stop` before it is killed."""


Starter = Callable[[InstanceView], Started]


def local_process(view: InstanceView) -> Started:
    """The entrypoint script as a local process, with exactly the instance's environment."""
    env = {
        **view.env,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    proc = _popen([str(ENTRYPOINT)], env)
    return Started(proc, lambda lost: proc.kill() if lost else proc.terminate(), STOP_GRACE_S)


def in_docker(engine: Engine, label: str) -> Starter:
    """The rented image under Docker, run the way Vast.ai runs the `args` runtype: `onstart`
    as the entrypoint, `args` after the image. The instance's environment is passed by name
    (`--env NAME`, values from the client's environment, never on a command line); host
    networking reaches the loopback S3 and fake Vast.ai servers. `docker stop` sends SIGTERM,
    then SIGKILL after STOP_GRACE_S; a lost host is `docker kill`."""

    def start(view: InstanceView) -> Started:
        if "args" not in view.runtype.split():
            raise ValueError(f"only the args runtype runs in Docker here, not {view.runtype!r}")
        name = f"{label}-{view.id}-{uuid.uuid4().hex[:6]}"
        entrypoint = ["--entrypoint", view.onstart] if view.onstart else []
        command = [engine.client, "run", "--rm", "--name", name, "--label", label]
        command += ["--network=host", "--pull=never", *entrypoint]
        command += [arg for key in view.env for arg in ("--env", key)]
        proc = _popen([*command, view.image, *view.args], {**os.environ, **view.env})

        def stop(lost: bool) -> None:
            how = ["kill"] if lost else ["stop", "--time", str(round(STOP_GRACE_S))]
            engine.docker(*how, name, timeout=60)

        return Started(proc, stop, exit_s=10)  # `docker stop` itself waits out the grace

    return start


def _popen(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )


def container_job(
    containers: Containers, start: Starter = local_process
) -> Callable[[InstanceView], None]:
    """The fake's `on_running`: start the instance's container, relay its output into the
    instance log, stop it when the instance is stopped or destroyed."""

    def run(view: InstanceView) -> None:
        started = start(view)
        proc = started.proc
        with containers.lock:
            containers.outputs[view.id] = lines = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                view.log(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        while proc.poll() is None:
            if view.killed.wait(0.05):
                # Docker stops a container with SIGTERM; a host that drops off the network
                # takes its processes with it, without a word.
                row = containers.fake.instance(view.id) if containers.fake else None
                lost = row is not None and row["actual_status"] in ("offline", "unknown")
                started.stop(lost)
                try:
                    proc.wait(started.exit_s)
                except subprocess.TimeoutExpired:
                    started.stop(True)
                    proc.kill()
                break
        proc.wait()
        reader.join(5)
        with containers.lock:
            containers.codes[view.id] = proc.returncode

    return run


@contextlib.contextmanager
def fake_vast_with_containers(
    engine: Engine | None = None, **options: Any
) -> Iterator[tuple[FakeVast, Containers]]:
    """A fake Vast.ai whose instances run the container: the entrypoint script as a local
    process, or with `engine` the rented image itself under Docker. Every Docker container
    it started is gone when the block ends."""
    containers = Containers()
    start = local_process if engine is None else in_docker(engine, containers.label)
    options.setdefault("timings", FAST)
    try:
        with running_fake_vast(on_running=container_job(containers, start), **options) as fake:
            containers.fake = fake
            yield fake, containers
    finally:
        if engine is not None:
            left = leftover_containers(engine, containers.label)
            if left:
                engine.docker("rm", "--force", *left, timeout=60)


def leftover_containers(engine: Engine, label: str) -> list[str]:
    listed = engine.docker("ps", "--all", "--quiet", "--filter", f"label={label}", check=True)
    return listed.stdout.split()


def tiny_spec(job_id: str, **sections: dict[str, Any]) -> JobSpec:
    train = {"epochs": 1, "log_every_steps": 1, "eval_every_steps": 2, "warmup_steps": 1}
    train.update(sections.pop("train", {}))
    limits = {"provision_timeout_minutes": 1, "max_runtime_minutes": 5, "max_cost_usd": 5}
    limits.update(sections.pop("limits", {}))
    return make_spec(job={"id": job_id}, train=train, limits=limits, **sections)


def with_data(store: ObjectStore, spec: JobSpec) -> JobSpec:
    make_dataset(store, spec, TINY_DATA)
    return spec


def options(**overrides: Any) -> LaunchOptions:
    settings: dict[str, Any] = {
        "poll_s": POLL_S,
        "logs_every_s": 0.4,
        "container_env": dict(CONTAINER_ENV),
    }
    settings.update(overrides)
    return LaunchOptions(**settings)


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def result(self) -> dict[str, Any]:
        return self.events()[-1]


def run_cli(argv: list[str]) -> CliRun:
    """`quantlab-train ARGV` in this process, its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return CliRun(code, out.getvalue(), err.getvalue())


def cli_main(argv: list[str]) -> int:
    from trainer.cli import main

    return main(argv)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError("condition not met in time")


@dataclass
class Lab:
    """A fake Vast.ai with real containers, the loopback S3 store and a launch() for both."""

    fake: FakeVast
    containers: Containers
    store: ObjectStore
    tmp: Path
    human: io.StringIO = field(default_factory=io.StringIO)
    reporter: Any = None
    """The last launch's Reporter (its events so far, also while `launch()` still runs)."""

    def launch(self, spec: JobSpec, sweep: Any = None, **overrides: Any) -> JobHandle:
        """`spec` launched (a sweep's base with `sweep`), `overrides` as LaunchOptions."""
        from trainer.launcher.events import Reporter
        from trainer.launcher.launch import launch

        overrides.setdefault("bad_hosts_file", self.tmp / "bad-hosts.json")
        client = {**FAST_CLIENT, **overrides.pop("client", {})}
        self.reporter = Reporter(human=self.human, line_every_s=0)
        return launch(
            spec,
            options=options(**overrides),
            store=self.store,
            vast_url=self.fake.url,
            client_options=client,
            reporter=self.reporter,
            sweep=sweep,
        )

    def creates(self) -> int:
        return self.fake.calls("create")

    def ever_created(self) -> list[int]:
        """Every instance the fake ever made, destroyed or not."""
        return sorted(self.fake.ledger().entries)

    def destroyed_by_account(self) -> set[int]:
        """Instances destroyed with the account key (the launcher), not the instance's own."""
        return {
            int(r.path.rstrip("/").rsplit("/", 1)[-1])
            for r in self.fake.requests_to("destroy")
            if r.headers.get("Authorization") == f"Bearer {self.fake.api_key}"
        }

    def assert_clean(self) -> None:
        """Nothing live, nothing billing."""
        assert self.fake.live_instances() == []
        assert self.fake.ledger().still_billing == []


@contextlib.contextmanager
def lab(
    store: ObjectStore, tmp: Path, engine: Engine | None = None, **fake_options: Any
) -> Iterator[Lab]:
    with contextlib.ExitStack() as stack:
        fake, containers = stack.enter_context(fake_vast_with_containers(engine, **fake_options))
        stack.enter_context(env_var("VAST_API_KEY", fake.api_key))
        # The containers run here, so the loopback store is theirs to reach: local testing only.
        stack.enter_context(env_var(ALLOW_LOCAL_STORE, "1"))
        yield Lab(fake, containers, store, tmp)


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
