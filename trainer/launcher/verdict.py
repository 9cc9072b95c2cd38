"""The watch's rules, pure: one observation of an instance in, a verdict (or none yet) out.

`decide` applies the rules in this order and stops at the first that holds:

1. the manifest is committed: its hashes verify → SUCCEEDED, else JOB_FAILED; for a sweep's
   instance, `sweep.json` says committed → SUCCEEDED;
2. the host is broken: the price or rental type read back unlike the offer → RETRY; a pull or
   OCI failure (FAILED) or a host offline (LOST) → RETRY, the host marked bad; outbid
   (STOPPED_OUTBID) → RETRY;
3. the job ended: a stop request → CANCELLED; otherwise this container's sentinel with a
   non-zero exit code, its `status.json` saying failed or stopped, or its own `failure.json`,
   judged by the typed cause: another container holds the job's lease → ELSEWHERE (watch
   that one); outside the job (signal, outbid, host offline) → RETRY, but a signal while
   the instance still looks up waits two polls for the provider's state to say why (rule 2
   then records `outbid` or `host_offline`, not the signal); its limit or the heartbeat →
   LIMIT; anything else → JOB_FAILED;
4. with `detach`, a job that has started → DETACHED;
5. the container EXITED or the instance is GONE with none of the above: nothing on the first
   such poll (the container writes its records before it ends), then RETRY (host marked bad)
   when the job never started or the instance vanished, JOB_FAILED when it exited;
6. the limits: no status within `limits.provision_timeout_minutes` of create → RETRY, host
   marked bad; `limits.max_runtime_minutes` since the job started, or the money limit → LIMIT.

No rule reads the wording of a message: causes, exit codes and states decide.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import EXIT_CANCELLED, EXIT_LIMIT
from trainer.launcher.attempt import Attempt, Ending, Verdict
from trainer.launcher.offers import price_mismatch
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import Instance
from trainer.spec.sections import LimitsSpec
from trainer.store.records import (
    OUTSIDE_CAUSES,
    Cause,
    FailureRecord,
    JobManifest,
    ResultSentinel,
    StatusDoc,
)


@dataclass(frozen=True)
class Observation:
    """Everything one poll saw; the watch gathers it, `decide` judges it."""

    now: float
    """time.monotonic() of the poll."""
    row: Instance | None
    """The instance as Vast.ai shows it; None once it is gone."""
    status: StatusDoc | None = None
    """`status.json`, when THIS container wrote it."""
    sentinel: ResultSentinel | None = None
    """The container's last-line report, once it appeared in the log."""
    failure: FailureRecord | None = None
    """`failure.json`, when written after this container started."""
    stop_requested: bool = False
    """`stop-requested.json` written after this instance was created."""
    manifest: JobManifest | None = None
    """The committed manifest, when there is one."""
    manifest_problem: str | None = None
    """Why the committed artifacts do not verify; None when they do (or there are none)."""
    sweep_committed: bool = False
    """A sweep's instance: its `sweep.json` is committed, every trial accounted for."""
    check_price: bool = False
    """The first poll with a row: compare what was rented with the offer."""
    spent_usd: float = 0.0
    over_budget: str | None = None
    """Why the money limit is reached (this job's or a shared budget), or None."""

    @property
    def state(self) -> InstanceState:
        return self.row.state if self.row is not None else InstanceState.GONE


@dataclass(frozen=True)
class Rules:
    job_id: str
    limits: LimitsSpec
    detach: bool = False


def decide(obs: Observation, a: Attempt, rules: Rules) -> Verdict | None:
    """The verdict on attempt `a` (read, never changed) given `obs`, or None: keep watching."""
    return (
        _committed(obs)
        or _broken(obs, a)
        or _job_ended(obs, a)
        or _detached(a, rules)
        or _container_gone(obs, a, rules)
        or _limits(obs, a, rules)
    )


OUTSIDE_STOP_POLLS = 2
"""Polls a container's report of a stop from outside waits for the provider to say why."""
_UP = frozenset({InstanceState.RUNNING, InstanceState.PENDING})


def _where(a: Attempt) -> str:
    return f"instance {a.instance_id} on machine {a.machine_id}"


def _committed(obs: Observation) -> Verdict | None:
    if obs.sweep_committed:
        return Verdict(Ending.SUCCEEDED, "sweep committed: every trial accounted for")
    if obs.manifest is None:
        return None
    if obs.manifest_problem is not None:
        return Verdict(
            Ending.JOB_FAILED, f"the committed artifacts do not verify: {obs.manifest_problem}"
        )
    return Verdict(Ending.SUCCEEDED, "manifest committed and verified", manifest=obs.manifest)


def _broken(obs: Observation, a: Attempt) -> Verdict | None:
    """The host is not what was rented, or failed the container: it will not recover."""
    row = obs.row
    if row is not None and a.candidate is not None and obs.check_price:
        mismatch = price_mismatch(a.candidate, row.dph_total, row.is_bid)
        if mismatch:
            return Verdict(Ending.RETRY, f"{_where(a)} {mismatch}")
    if obs.state is InstanceState.FAILED:
        message = (row.status_msg if row is not None else None) or "?"
        return Verdict(Ending.RETRY, f"{_where(a)} could not start the container: {message}", True)
    if obs.state is InstanceState.LOST:
        status = row.actual_status if row is not None else "?"
        return Verdict(
            Ending.RETRY,
            f"{_where(a)}: host {status}, it stopped reporting",
            True,
            cause="host_offline",
        )
    if obs.state is InstanceState.STOPPED_OUTBID:
        return Verdict(
            Ending.RETRY,
            f"{_where(a)} was outbid: a higher bid took the machine (or the credit ran out)",
            cause="outbid",
        )
    return None


def _job_ended(obs: Observation, a: Attempt) -> Verdict | None:
    """What `stop` or the container reported: a stop, a failure, a limit, an outside stop."""
    if obs.stop_requested:
        return Verdict(Ending.CANCELLED, "stopped by `quantlab-train stop`")
    cause: Cause | None
    if obs.sentinel is not None and obs.sentinel.exit_code != 0:
        s = obs.sentinel
        reason = s.reason or s.outcome
        cause = s.cause or _cause_of_code(s.exit_code)
    elif obs.status is not None and obs.status.state in ("failed", "stopped"):
        reason = obs.status.reason or obs.status.state
        cause = obs.status.cause or ("signal" if obs.status.state == "stopped" else "error")
    elif obs.failure is not None:
        reason, cause = obs.failure.reason, obs.failure.cause
    else:
        return None
    if cause == "lease":
        holder = obs.sentinel.holder if obs.sentinel is not None else None
        return Verdict(
            Ending.ELSEWHERE,
            f"{_where(a)}: another instance runs the job ({reason})",
            holder=int(holder) if holder is not None and holder.isdigit() else None,
        )
    if cause in OUTSIDE_CAUSES:
        if cause == "signal" and a.polls_stopped < OUTSIDE_STOP_POLLS and obs.state in _UP:
            return None  # the signal comes first; the provider's state says why on a later poll
        return Verdict(
            Ending.RETRY,
            f"{_where(a)}: the container was stopped from outside ({reason})",
            cause=cause,
        )
    if cause in ("limit", "heartbeat"):
        return Verdict(Ending.LIMIT, f"the job reported: {reason}")
    return Verdict(Ending.JOB_FAILED, f"the job reported: {reason}")


def stopped_from_outside(obs: Observation) -> bool:
    """Whether the container reported a stop from outside the job (a signal): the watch
    counts such polls, so the cause the provider shows a little later (outbid, a host gone
    offline) is the one recorded, not the signal."""
    if obs.sentinel is not None and obs.sentinel.exit_code != 0:
        cause = obs.sentinel.cause or _cause_of_code(obs.sentinel.exit_code)
    elif obs.status is not None and obs.status.state == "stopped":
        cause = obs.status.cause or "signal"
    elif obs.failure is not None:
        cause = obs.failure.cause
    else:
        return False
    return cause == "signal"


def _cause_of_code(code: int) -> Cause:
    """For a sentinel without a cause: the exit code says as much."""
    if code == EXIT_CANCELLED:
        return "signal"
    return "limit" if code == EXIT_LIMIT else "error"


def _detached(a: Attempt, rules: Rules) -> Verdict | None:
    if rules.detach and a.job_started is not None:
        return Verdict(Ending.DETACHED, "the job is running; the launcher detached")
    return None


def _container_gone(obs: Observation, a: Attempt, rules: Rules) -> Verdict | None:
    """The container ended, or the instance vanished, without a manifest or a failure."""
    if obs.state not in (InstanceState.EXITED, InstanceState.GONE):
        return None
    if a.polls_gone < 2:  # the container writes its records before it ends: look once more
        return None
    exited = obs.state is InstanceState.EXITED
    what = "exited" if exited else "disappeared"
    if a.job_started is None:
        return Verdict(Ending.RETRY, f"{_where(a)} {what} before the job started", True)
    if exited:
        return Verdict(
            Ending.JOB_FAILED,
            f"{_where(a)}: the container exited without committing or reporting a failure "
            f"(killed, out of memory?); see `quantlab-train logs {rules.job_id}`",
        )
    return Verdict(Ending.RETRY, f"{_where(a)} disappeared while the job ran", True)


def _limits(obs: Observation, a: Attempt, rules: Rules) -> Verdict | None:
    limits = rules.limits
    if a.job_started is None and obs.now - a.created_at > limits.provision_timeout_minutes * 60:
        return Verdict(
            Ending.RETRY,
            f"{_where(a)}: no status from the container within "
            f"{limits.provision_timeout_minutes:g} min (state {obs.state})",
            bad_host=True,
        )
    if a.job_started is not None and obs.now - a.job_started > limits.max_runtime_minutes * 60:
        return Verdict(Ending.LIMIT, f"max_runtime reached ({limits.max_runtime_minutes:g} min)")
    if obs.over_budget is not None:
        return Verdict(Ending.LIMIT, obs.over_budget)
    return None
