"""Launcher test kit: the real container run inside fake Vast.ai instances, tiny jobs, the CLI.

`container_job` is the fake's `on_running` callback: it starts `docker/entrypoint.sh` with
exactly the instance's environment (what the launcher sent plus CONTAINER_ID and
CONTAINER_API_KEY) and PATH/HOME, relays its output into the instance log, and terminates it
when the instance is stopped or destroyed.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.vast_server import FakeVast, Timings, running_fake_vast
from tests.fakes.vast_state import InstanceView
from tests.helpers import make_dataset, make_spec
from trainer.data.synth import SynthConfig
from trainer.launcher.launch import JobHandle, LaunchOptions
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
    """Every container process the fake started, with its output."""

    outputs: dict[int, list[str]] = field(default_factory=dict)
    fake: FakeVast | None = None
    codes: dict[int, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def all_output(self) -> str:
        with self.lock:
            return "\n".join(line for lines in self.outputs.values() for line in lines)


def container_job(containers: Containers) -> Callable[[InstanceView], None]:
    def run(view: InstanceView) -> None:
        env = {
            **view.env,
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"),
        }
        proc = subprocess.Popen(
            [str(ENTRYPOINT)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
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
                proc.kill() if lost else proc.terminate()
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
        proc.wait()
        reader.join(5)
        with containers.lock:
            containers.codes[view.id] = proc.returncode

    return run


@contextlib.contextmanager
def fake_vast_with_containers(**options: Any) -> Iterator[tuple[FakeVast, Containers]]:
    containers = Containers()
    options.setdefault("timings", FAST)
    with running_fake_vast(on_running=container_job(containers), **options) as fake:
        containers.fake = fake
        yield fake, containers


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

    def launch(self, spec: JobSpec, **overrides: Any) -> JobHandle:
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
def lab(store: ObjectStore, tmp: Path, **fake_options: Any) -> Iterator[Lab]:
    with contextlib.ExitStack() as stack:
        fake, containers = stack.enter_context(fake_vast_with_containers(**fake_options))
        stack.enter_context(env_var("VAST_API_KEY", fake.api_key))
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
