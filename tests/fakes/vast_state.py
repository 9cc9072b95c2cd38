"""One fake Vast.ai instance: the lifecycle state machine, its container log, its job and its bill.

Time is the monotonic clock. Nothing ticks in the background: `advance(now)` is called before
every read and replays whatever transitions are due, stamping each at the moment it was due,
so billing is exact however rarely the server is asked.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

SCENARIOS = ("ok", "pull_fail", "oci_fail", "stuck_loading", "unschedulable", "bid_too_low")
SECONDS_PER_MONTH = 30 * 24 * 3600
GPU_PHASES = frozenset({"running", "stopping"})
DEAD_PHASES = frozenset({"stopped", "lost", "exited", "destroyed", "created_failed"})


@dataclass(frozen=True)
class Timings:
    """Phase durations in seconds, compressed from the real minutes."""

    t_sched: float = 0.05
    t_pull: float = 0.2
    t_stop: float = 0.05
    logs_delay: float = 0.4

    def scaled(self, speed: float) -> Timings:
        """Every duration divided by `speed` (2.0 runs twice as fast)."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        return replace(
            self,
            t_sched=self.t_sched / speed,
            t_pull=self.t_pull / speed,
            t_stop=self.t_stop / speed,
            logs_delay=self.logs_delay / speed,
        )


@dataclass(frozen=True)
class InstanceView:
    """What a job sees from inside its container; `log` appends container output lines.

    `env` is the create env plus CONTAINER_ID and CONTAINER_API_KEY, as Vast.ai injects them;
    `api_url` is the fake server's base URL; `killed` is set once the container is stopped,
    destroyed, outbid or cut off, after which `log` is ignored. With the `args` runtype,
    `onstart` is the entrypoint executable and `args` its arguments, as Vast.ai runs them.
    """

    id: int
    api_url: str
    env: dict[str, str]
    args: list[str]
    onstart: str | None
    runtype: str
    image: str
    label: str | None
    log: Callable[[str], None]
    killed: threading.Event


JobCallback = Callable[[InstanceView], None]
ScriptLine = tuple[float, str]
DEFAULT_SCRIPT: tuple[ScriptLine, ...] = ((0.0, "job started"), (0.05, "job finished"))


@dataclass(frozen=True)
class Job:
    """What the container does once running: a callback, or else timed lines then exit."""

    callback: JobCallback | None = None
    script: Sequence[ScriptLine] = DEFAULT_SCRIPT
    exits: bool = True


class Instance:
    """Mutable record of one rented instance. Callers hold `lock` except where noted."""

    def __init__(
        self,
        *,
        instance_id: int,
        offer: dict[str, Any],
        api_key: str,
        body: dict[str, Any],
        env: dict[str, str],
        runtype: str,
        scenario: str,
        timings: Timings,
        job: Job,
        lock: threading.RLock,
        api_url: str,
        now: float,
    ) -> None:
        self.id = instance_id
        self.offer = offer
        self.api_key = api_key
        self.image = str(body.get("image") or "")
        self.env = env
        self.runtype = runtype
        self.args = [str(a) for a in body.get("args") or []]
        self.onstart = body.get("onstart")
        self.label: str | None = body.get("label")
        self.disk_gb = float(body.get("disk") or 8)
        self.price: float | None = None if body.get("price") is None else float(body["price"])
        self.scenario = scenario
        self.timings = timings
        self.job = job
        self.lock = lock
        self.api_url = api_url
        self.start_date = time.time()
        self.created_at = now
        self.destroyed_at: float | None = None
        self.phase = "provisioning"
        self.phase_at = now
        self.phases: list[tuple[str, float]] = [(self.phase, now)]
        """Every phase entered, with the moment it was due: what a test checks the lifecycle
        against, however late it looks (a poll under load can miss a short phase)."""
        self.stop_reason = ""
        self.lost_status = "offline"
        self.run_started: float | None = None
        self.gpu_seconds = 0.0
        self.logs: list[str] = []
        self.daemon_logs: list[str] = [f"Creating container for {self.image}"]
        self.generation = 0
        self.killed = threading.Event()
        self.threads: list[threading.Thread] = []
        self.job_errors: list[str] = []
        self._script_index = 0
        self._script_clock = 0.0
        self._job_done = False

    # -- transitions ---------------------------------------------------------------------
    def enter(self, phase: str, at: float) -> None:
        """Move to `phase` as of time `at`, keeping the GPU meter and the job in step."""
        was_gpu = self.phase in GPU_PHASES
        if was_gpu and phase not in GPU_PHASES and self.run_started is not None:
            self.gpu_seconds += max(0.0, at - self.run_started)
            self.run_started = None
        if phase in GPU_PHASES and not was_gpu:
            self.run_started = at
        previous, self.phase, self.phase_at = self.phase, phase, at
        self.phases.append((phase, at))
        if phase == "running" and previous not in GPU_PHASES:
            self._start_job(at)
        if phase in DEAD_PHASES:
            self.killed.set()

    def advance(self, now: float) -> None:
        """Replay every transition due by `now`."""
        t = self.timings
        while True:
            due = self.phase_at
            if self.phase == "provisioning" and now >= due + t.t_sched:
                self.daemon_logs.append(f"Pulling image {self.image}")
                self.enter("loading", due + t.t_sched)
            elif (
                self.phase == "loading"
                and now >= due + t.t_pull
                and self.scenario != "stuck_loading"
            ):
                self.enter(self._after_pull(), due + t.t_pull)
            elif self.phase == "stopping" and now >= due + t.t_stop:
                self.enter("stopped", due + t.t_stop)
            elif self.phase == "running" and self.job.callback is None and self._script_due(now):
                continue
            else:
                return

    def _after_pull(self) -> str:
        if self.scenario == "pull_fail":
            self.daemon_logs.append(self._pull_error())
            return "pull_failed"
        if self.scenario == "oci_fail":
            self.daemon_logs.append(self._oci_error())
            return "created_failed"
        self.daemon_logs.append(f"Status: Downloaded newer image for {self.image}")
        return "running"

    def _script_due(self, now: float) -> bool:
        """Emit the next due script line (or the exit); False when nothing is due yet."""
        script = self.job.script
        if self._script_index < len(script):
            delay, line = script[self._script_index]
            if now < self._script_clock + delay:
                return False
            self._script_clock += delay
            self._script_index += 1
            self.logs.append(line)
            return True
        if self.job.exits and not self._job_done:
            self._job_done = True
            self.enter("exited", self._script_clock)
            return True
        return False

    def _start_job(self, at: float) -> None:
        self.generation += 1
        self.killed = threading.Event()
        self._script_index, self._script_clock, self._job_done = 0, at, False
        self.daemon_logs.append("Container started")
        if self.job.callback is None:
            return
        view = InstanceView(
            id=self.id,
            api_url=self.api_url,
            env={**self.env, "CONTAINER_ID": str(self.id), "CONTAINER_API_KEY": self.api_key},
            args=list(self.args),
            onstart=self.onstart,
            runtype=self.runtype,
            image=self.image,
            label=self.label,
            log=self._logger(self.generation),
            killed=self.killed,
        )
        thread = threading.Thread(
            target=self._run_job,
            args=(view, self.generation),
            name=f"fake-vast-job-{self.id}",
            daemon=True,
        )
        self.threads.append(thread)
        thread.start()

    def _logger(self, generation: int) -> Callable[[str], None]:
        def log(line: str) -> None:
            with self.lock:
                if generation == self.generation and self.phase in GPU_PHASES:
                    self.logs.extend(str(line).splitlines() or [""])

        return log

    def _run_job(self, view: InstanceView, generation: int) -> None:
        """Thread body (takes the lock itself): run the callback, then let the container exit."""
        callback = self.job.callback
        try:
            if callback is not None:
                callback(view)
        except BaseException:
            text = traceback.format_exc()
            with self.lock:
                self.job_errors.append(text)
                if generation == self.generation and self.phase in GPU_PHASES:
                    self.logs.extend(text.splitlines())
        finally:
            with self.lock:
                if generation == self.generation and self.phase == "running":
                    self.enter("exited", time.monotonic())

    # -- requests from outside -----------------------------------------------------------
    def stop(self, now: float, reason: str, at_once: bool = False) -> None:
        """Stop the instance: gracefully (after t_stop) or at once (outbid, no balance)."""
        self.stop_reason = reason
        if self.phase in GPU_PHASES and not at_once:
            self.enter("stopping", now)
        elif self.phase not in ("stopped", "destroyed"):
            self.enter("stopped", now)

    def start(self, now: float) -> None:
        """Ask for the instance to run again; a bid under the current min_bid waits for a GPU."""
        if self.phase in GPU_PHASES:
            self.phase = "running"
        elif self.price is not None and self.price < float(self.offer["min_bid"]):
            self.enter("scheduling", now)
        else:
            self.enter("provisioning", now)

    def destroy(self, now: float) -> None:
        """Release the machine; storage and GPU meters stop here."""
        self.enter("destroyed", now)
        self.destroyed_at = now

    # -- views ---------------------------------------------------------------------------
    def status(self) -> tuple[str | None, str, str, str, str | None]:
        """(actual_status, intended_status, cur_state, next_state, status_msg)."""
        run, stop = "running", "stopped"
        table: dict[str, tuple[str | None, str, str, str, str | None]] = {
            "provisioning": (None, run, run, run, None),
            "loading": ("loading", run, run, run, f"Pulling image {self.image}"),
            "pull_failed": ("loading", run, run, run, self._pull_error()),
            "created_failed": ("created", run, run, run, self._oci_error()),
            "running": (run, run, run, run, f"success, running {self.image}"),
            "exited": ("exited", run, run, run, "container exited"),
            "stopping": (run, stop, run, stop, "stopping"),
            "stopped": (stop, stop, stop, stop, self.stop_reason or None),
            "unscheduled": (None, run, stop, stop, "no GPU available on this machine"),
            "scheduling": ("scheduling", run, stop, run, "waiting for the GPU to be free"),
            "lost": (self.lost_status, run, run, run, "host is not responding"),
            "destroyed": (None, stop, "unloaded", "unloaded", "destroyed"),
        }
        return table[self.phase]

    def _pull_error(self) -> str:
        return (
            f"Error response from daemon: pull access denied for {self.image}, repository "
            "does not exist or may require 'docker login'"
        )

    def _oci_error(self) -> str:
        entry = self.onstart or "/bin/sh"
        return (
            "Error response from daemon: failed to create task for container: failed to "
            "create shim task: OCI runtime create failed: runc create failed: unable to "
            f'start container process: exec: "{entry}": executable file not found in $PATH'
        )

    def gpu_rate(self) -> float:
        """Dollars per hour for the GPUs: the bid when interruptible, else the offer's base."""
        return self.price if self.price is not None else float(self.offer["dph_base"])

    def storage_rate(self) -> float:
        """Dollars per hour for the disk."""
        return float(self.offer.get("storage_cost") or 0.0) * self.disk_gb / (30 * 24)

    def meters(self, now: float) -> tuple[float, float]:
        """(gpu_seconds, storage_seconds) billed up to `now`."""
        gpu = self.gpu_seconds
        if self.run_started is not None:
            gpu += max(0.0, now - self.run_started)
        end = self.destroyed_at if self.destroyed_at is not None else now
        return gpu, max(0.0, end - self.created_at)

    def row(self, now: float) -> dict[str, Any]:
        """The instance as `GET /instances/{id}/` returns it."""
        actual, intended, cur, nxt, msg = self.status()
        offer = self.offer
        ssh_port = 20_000 + self.id % 40_000
        running = self.phase in GPU_PHASES
        uptime = (now - self.run_started) / 60 if self.run_started is not None else 0.0
        return {
            "id": self.id,
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "label": self.label,
            "image_uuid": self.image,
            "image_runtype": self.runtype,
            "image_args": list(self.args),
            "onstart": self.onstart,
            "extra_env": [[k, v] for k, v in self.env.items() if not k.startswith("-")],
            "template_id": None,
            "template_hash_id": None,
            "template_name": None,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": cur,
            "next_state": nxt,
            "status_msg": msg,
            "start_date": self.start_date,
            "end_date": self.start_date + float(offer.get("duration") or 0.0),
            "uptime_mins": round(uptime, 3),
            "ssh_host": f"ssh{offer['machine_id'] % 9 + 1}.vast.ai",
            "ssh_port": ssh_port,
            "ssh_idx": str(offer["machine_id"] % 9 + 1),
            "public_ipaddr": offer.get("public_ipaddr"),
            "local_ipaddrs": "172.17.0.2 10.0.0.5\n",
            "direct_port_start": 40_000,
            "direct_port_end": 40_099,
            "jupyter_token": None,
            "ports": (
                {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(ssh_port + 20_000)}]}
                if running
                else {}
            ),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_util": 87.5 if running else 0.0,
            "gpu_temp": 61.0 if running else 30.0,
            "cpu_util": 0.4 if running else 0.0,
            "disk_space": self.disk_gb,
            "disk_usage": 1.2,
            "disk_util": 1.2 / self.disk_gb,
            "mem_usage": 1.5,
            "mem_limit": float(offer.get("cpu_ram") or 0) / 1000,
            "dph_total": round(self.gpu_rate() + self.storage_rate(), 6),
            "dph_base": offer["dph_base"],
            "storage_cost": offer.get("storage_cost"),
            "is_bid": self.price is not None,
            "min_bid": offer["min_bid"],
            "reliability2": offer.get("reliability2"),
            "geolocation": offer.get("geolocation"),
            "verification": offer.get("verification"),
            "cuda_max_good": offer.get("cuda_max_good"),
            "driver_version": offer.get("driver_version"),
            "inet_up": offer.get("inet_up"),
            "inet_down": offer.get("inet_down"),
        }
