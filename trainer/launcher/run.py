"""One launch from start to result: checks, rent (or attach), watch, retry, clean up, report.

The invariant: every instance id a create returns is recorded before anything else happens,
and `_cleanup` (on every way out of `prepare` and `wait`, Ctrl-C included, with a second
Ctrl-C ignored meanwhile) destroys each recorded instance that is not deliberately kept
(detached). A destroy that fails is reported with the command that finishes it by hand.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from trainer.data.plan import DatasetPlan
from trainer.errors import (
    EXIT_CANCELLED,
    EXIT_OK,
    Cancelled,
    InfraError,
    JobFailed,
    LimitExceeded,
    NoOfferError,
    ProvisioningError,
    TrainerError,
    exit_code_of,
    outcome_of,
    problems_of,
)
from trainer.job.artifacts import read_manifest
from trainer.job.identity import Resolved, check_committed
from trainer.job.summary import record_launch, report_command
from trainer.launcher.attempt import Attempt, Ending, Verdict
from trainer.launcher.events import Reporter
from trainer.launcher.hosts import BadHosts
from trainer.launcher.offers import Candidate
from trainer.launcher.prefix import check_spec_matches, write_heartbeat
from trainer.launcher.proofs import Proven, proofs
from trainer.launcher.rent import Renter, UnsureCreate, live_instances
from trainer.launcher.result import LaunchOptions, LaunchResult, rows_used
from trainer.launcher.session import Session
from trainer.launcher.vast import VastApiError, VastAuthError, VastClient
from trainer.launcher.watch import WatchConfig, Watcher
from trainer.model.code import ship
from trainer.model.proof import ProofChild
from trainer.spec import JobSpec, dump_spec
from trainer.spec.sweep import SweepSpec
from trainer.store.base import ObjectStore
from trainer.store.layout import Layout
from trainer.store.records import AttemptRecord, JobManifest, SweepRecord, update_record
from trainer.sweep.book import keep_spec, read_sweep

log = logging.getLogger("quantlab.launcher")


@contextmanager
def shielded() -> Iterator[None]:
    """Ignore Ctrl-C (main thread only) so a second one cannot cut a destroy short."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class Run:
    def __init__(
        self,
        resolved: Resolved,
        session: Session,
        options: LaunchOptions,
        reporter: Reporter,
        sweep: SweepSpec | None = None,
        proof_child: ProofChild | None = None,
    ) -> None:
        spec = resolved.spec
        self.proof_child = proof_child
        """The model proof's process, started ahead by `launch`, which closes it."""
        self.sweep = sweep
        """A sweep's instance: the job id is the sweep's, the success its `sweep.json`."""
        self.spec, self.plan, self.job_id, self.session = spec, resolved.plan, spec.job_id, session
        self.store, self.layout = session.store, Layout.of(spec.storage)
        self.paths = self.layout.job(self.job_id)
        self.options, self.reporter = options, reporter
        self.bad = BadHosts(options.bad_hosts_file)
        self.renter = Renter(
            spec,
            session,
            reporter,
            self.bad,
            credentials=options.credentials,
            role_arn=options.role_arn,
            extra_env=dict(options.container_env),
            sweep=sweep is not None,
        )
        self.attempts: list[Attempt] = []
        self.created: set[int] = set()  # rented here, not destroyed yet
        self.attached: set[int] = set()  # found live for this job, not destroyed yet
        self.kept: set[int] = set()  # left running on purpose (detach)
        self.estimate_usd: float | None = None
        self.result: LaunchResult | None = None
        self.shared_budget: Callable[[float], str | None] | None = None
        self.t0 = time.monotonic()
        config = WatchConfig(
            poll_s=options.poll_s, logs_every_s=options.logs_every_s, detach=options.detach
        )
        self.watcher = Watcher(
            paths=self.paths,
            limits=spec.limits,
            session=session,
            reporter=reporter,
            config=config,
            spent=self._spent,
            over_budget=self._over_budget,
            sweep=sweep is not None,
        )

    @property
    def vast(self) -> VastClient:
        return self.session.vast

    # -- before the watch -----------------------------------------------------------------
    def prepare(self) -> None:
        """Everything up to the first rental, or to the result when nothing needs renting."""
        try:
            self._prepare()
        except TrainerError as exc:
            with shielded():
                self._cleanup(job_ending=False)
            self._finish(
                outcome_of(exc), exit_code_of(exc), exc.headline, problems=problems_of(exc)
            )
            raise
        except KeyboardInterrupt:
            with shielded():
                self._cleanup(job_ending=False)
            self._finish("cancelled", EXIT_CANCELLED, "interrupted before the watch began")
            raise Cancelled("interrupted; anything rented was destroyed") from None

    def _prepare(self) -> None:
        r, spec, store = self.reporter, self.spec, self.store
        r.emit("validated", say=f"spec ok: job {self.job_id}")
        plan = self.plan
        swept = read_sweep(store, self.paths) if self.sweep is not None else None
        if swept is not None and swept.state == "committed":
            self._end_job()
            self._finish("already_done", EXIT_OK, "the sweep is already committed")
            return
        if (manifest := read_manifest(store, self.paths)) is not None:
            check_committed(store, self.paths, manifest, plan)
            check_spec_matches(spec, store, self.paths)
            self._end_job()
            self._finish("already_done", EXIT_OK, "the job is already committed on this data")
            return
        store.require_conditional_writes(self.paths.bucket)  # before anything is rented
        r.emit(
            "preflight",
            partitions=len(plan.partitions),
            rows=plan.rows,
            bytes=plan.bytes,
            say=f"data ok: {len(plan.partitions)} partitions, {plan.rows:,} rows",
        )
        try:
            live = live_instances(self.vast, self.job_id)
        except VastAuthError as exc:
            if not self.options.dry_run:
                raise
            # local work: a dry run without a key still proves the model and trains here
            self._dry_run_without_vast(exc, self._prove_and_try(plan, run_locally=True))
            return
        if live and self.options.dry_run:
            ids = ", ".join(str(i.id) for i in live)
            self._finish("dry_run", EXIT_OK, f"the job is already running on instance(s) {ids}")
            return
        if live:
            check_spec_matches(spec, store, self.paths)
            self.attempts.append(self.renter.attach(live))
            self.attached.add(self.attempts[0].instance_id)
            return
        run_locally = self.options.dry_run or self.options.local_dry_run
        ran = self._prove_and_try(plan, run_locally)
        if run_locally:
            r.emit("local_dry_run", skipped=ran is None, **(ran or {}))
        self.estimate_usd = self.renter.survey(self.options.shown_offers)["estimate_usd"]
        if self.options.dry_run:
            self._finish("dry_run", EXIT_OK, "dry run: nothing was rented")
            return
        if self.sweep is not None:
            keep_spec(self.sweep, store)  # what the instance runs: QUANTLAB_SWEEP
        if spec.code is not None:
            packed = ship(spec.code, store, self.paths.code)
            r.emit(
                "code",
                files=len(packed.files),
                sha256=packed.sha256,
                say=f"code shipped: {len(packed.files)} file(s), sha256 {packed.sha256[:12]}",
            )
        store.put(self.paths.jobspec, dump_spec(spec).encode())
        write_heartbeat(store, self.paths, False, [])
        self._rent()

    def _prove_and_try(self, plan: DatasetPlan, run_locally: bool) -> dict[str, Any] | None:
        """The model built, stepped and exported on real rows here, before anything is rented
        (for a sweep, every model its space can make; a broken one is a SpecError naming its
        file:line), and with `run_locally` a few training steps on this CPU meanwhile: the
        proof is mostly a child process starting Python and torch, so the two overlap on a
        machine with more than one core. Events keep their order, the proofs before the local
        run, and a failed proof is the error said, whatever the local run did."""
        if not run_locally:
            self._said_proofs(
                list(proofs(self.spec, plan, self.store, self.sweep, self.proof_child))
            )
            return None
        found: dict[str, Any] = {}

        def prove_all() -> None:
            try:
                found["proofs"] = list(
                    proofs(self.spec, plan, self.store, self.sweep, self.proof_child)
                )
            except Exception as exc:  # handed to the launching thread below
                found["error"] = exc

        worker = threading.Thread(target=prove_all, name="model-proof", daemon=True)
        worker.start()
        try:
            ran = local_dry_run(self.spec, self.store)
        except Exception:
            worker.join()
            if "error" in found:
                raise found["error"] from None
            raise
        worker.join()
        if "error" in found:
            raise found["error"]
        self._said_proofs(found["proofs"])
        return ran

    def _said_proofs(self, proven_models: list[Proven]) -> None:
        for proven in proven_models:
            proof, values = proven.result, proven.values
            if proof is None:
                say = "model proof skipped: no torch"
                self.reporter.emit("model_proof", skipped=True, say=say)
                continue
            fields: dict[str, Any] = proof.model_dump(
                include={"rows", "parameters", "wall_s", "seconds"}
            )
            if proven.point:
                fields["space"] = proven.point
            say = proof.sentence(proven.spec.model.type) + (f" ({values})" if values else "")
            self.reporter.emit("model_proof", say=say, **fields)

    def _dry_run_without_vast(self, why: VastAuthError, ran: dict[str, Any] | None) -> None:
        """A dry run with no Vast.ai key: the local checks and CPU steps still ran (`ran`),
        and the result says what was skipped."""
        self.reporter.emit("local_dry_run", skipped=ran is None, **(ran or {}))
        skipped = "the live-instance check, the offer search and the cost estimate"
        self.reporter.emit(
            "vast_skipped",
            why.headline,
            skipped=skipped,
            say=f"skipped {skipped}: {why.headline}",
        )
        self._finish(
            "dry_run", EXIT_OK, f"dry run without Vast.ai: nothing was rented; skipped {skipped}"
        )

    def _rent(self) -> None:
        while len(self.attempts) < self.spec.limits.max_attempts and self._in_retry_window():
            cand = self.renter.next_candidate()
            if cand is None:
                break
            number = len(self.attempts) + 1
            try:
                found = self.renter.create(cand, number, self.created.add)
            except UnsureCreate as unsure:
                found = self._find_unsure(unsure, cand, number)
            if found is not None:
                self.attempts.append(found)
                return
        raise self._give_up()

    def _in_retry_window(self) -> bool:
        """Replacement instances are rented only within `limits.retry_window_minutes` of the
        first attempt's end, so a flapping market cannot keep a job renting forever."""
        ended = [a.ended_at for a in self.attempts if a.ended_at is not None]
        window_s = self.spec.limits.retry_window_minutes * 60
        return not ended or time.monotonic() - min(ended) <= window_s

    def _find_unsure(self, unsure: UnsureCreate, cand: Candidate, number: int) -> Attempt | None:
        """After a create without a clear answer: the instance it made, when one appears
        under the job's label in time (any other newcomer is destroyed); None when none did,
        so the next offer may be tried."""
        strays = self.renter.find_unsure(self.created | self.attached | self.kept)
        self.created.update(i.id for i in strays)
        if not strays:
            self.reporter.emit(
                "create_not_found",
                offer_id=cand.offer.id,
                say=f"no instance appeared for the create on offer {cand.offer.id}; "
                "taking the next offer",
            )
            return None
        on_machine = [i for i in strays if i.machine_id == cand.offer.machine_id]
        keep = max(on_machine or strays, key=lambda i: i.id)
        for other in strays:
            if other is not keep and not self._destroy(other.id, "a second rental of the job"):
                raise InfraError(_undestroyed([other.id], "so no other offer is rented"))
        return self.renter.adopt(keep, cand, number, unsure.sent_at)

    def _give_up(self) -> TrainerError:
        reasons = "; ".join(f"#{a.number} {a.verdict.reason}" for a in self.attempts if a.verdict)
        if not self.attempts:
            return NoOfferError(
                f"no offer could be rented ({len(self.renter.tried)} tried, each gone or "
                "refused); try again later or widen `resources`"
            )
        if self.attempts[-1].job_started is not None:
            return InfraError(f"the job lost its host on every attempt: {reasons}")
        return ProvisioningError(
            f"no instance started the job in {len(self.attempts)} attempt(s) "
            f"(limits.max_attempts={self.spec.limits.max_attempts}): {reasons}"
        )

    # -- the watch ------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.watcher.stop.set()

    def wait(self) -> LaunchResult:
        if self.result is not None:
            return self.result
        try:
            try:
                return self._watch_all()
            except KeyboardInterrupt:
                ids = sorted((self.created | self.attached) - self.kept)
                raise Cancelled(f"interrupted; destroying instance(s) {ids}") from None
        except TrainerError as exc:
            with shielded():
                self._cleanup(job_ending=not isinstance(exc, Cancelled))
            self._finish(
                outcome_of(exc), exit_code_of(exc), exc.headline, problems=problems_of(exc)
            )
            raise
        finally:
            with shielded():
                self._cleanup(job_ending=False)

    def _watch_all(self) -> LaunchResult:
        while True:
            a = self.attempts[-1]
            try:
                verdict = self.watcher.watch(a)
            except KeyboardInterrupt:
                if not (self.options.detach and a.job_started is not None):
                    raise
                verdict = Verdict(Ending.DETACHED, "interrupted; the job keeps running")
            if self.watcher.stop.is_set() and verdict.ending is not Ending.SUCCEEDED:
                verdict = Verdict(Ending.CANCELLED, "stop requested")
            a.verdict = verdict
            a.end()
            self.reporter.emit(
                "attempt_ended",
                verdict.reason,
                instance_id=a.instance_id,
                ending=verdict.ending.value,
                say=f"instance {a.instance_id}: {verdict.ending.value}: {verdict.reason}",
            )
            if verdict.ending is Ending.DETACHED:
                self.kept.add(a.instance_id)
                write_heartbeat(self.store, self.paths, True, [a.instance_id])
                return self._finish("detached", EXIT_OK, verdict.reason)
            if verdict.ending is Ending.SUCCEEDED:
                left = self._cleanup(job_ending=True)
                if left:
                    raise InfraError(_undestroyed(left, "although the job succeeded"))
                result = self._finish(
                    "succeeded", EXIT_OK, verdict.reason, verdict.manifest, promote=True
                )
                return result
            if verdict.ending is Ending.JOB_FAILED:
                raise JobFailed(f"job {self.job_id} failed: {verdict.reason}")
            if verdict.ending is Ending.LIMIT:
                raise LimitExceeded(f"job {self.job_id} stopped: {verdict.reason}")
            if verdict.ending is Ending.CANCELLED:
                raise Cancelled(f"job {self.job_id} stopped on request ({verdict.reason})")
            if verdict.bad_host:
                self.bad.add(a.machine_id, verdict.reason)
            if not self._destroy(a.instance_id, verdict.reason):
                raise InfraError(_undestroyed([a.instance_id], "so no other offer is rented"))
            if verdict.ending is Ending.ELSEWHERE and self._follow(verdict.holder):
                continue
            self._rent()

    def _follow(self, holder: int | None) -> bool:
        """Watch the instance that holds the job's lease, if it is live: it runs the job."""
        live = [i for i in live_instances(self.vast, self.job_id) if i.id == holder]
        if not live:
            return False
        self.attempts.append(self.renter.attach(live, number=len(self.attempts) + 1))
        self.attached.add(live[0].id)
        return True

    def spent_so_far(self) -> float:
        """Dollars every attempt of this launch has cost so far."""
        return sum(a.cost() for a in list(self.attempts))

    def _spent(self, current: Attempt) -> float:
        return sum(a.cost() for a in self.attempts if a is not current) + current.cost()

    def _over_budget(self, spent: float) -> str | None:
        cap = self.spec.limits.max_cost_usd
        if spent >= cap:
            return f"max_cost_usd reached: ${spent:.4f} spent of ${cap:g}"
        return self.shared_budget(spent) if self.shared_budget else None

    # -- cleaning up and reporting --------------------------------------------------------
    def _destroy(self, instance_id: int, reason: str) -> bool:
        try:
            self.vast.destroy_instance(instance_id)
        except VastApiError as exc:
            self.reporter.emit(
                "destroy_failed",
                exc.headline,
                instance_id=instance_id,
                say=f"COULD NOT DESTROY instance {instance_id} ({exc.headline}); "
                + _undestroyed([instance_id], ""),
            )
            return False
        self.created.discard(instance_id)
        self.attached.discard(instance_id)
        for a in self.attempts:
            if a.instance_id == instance_id:
                a.end()
        self.reporter.emit(
            "destroyed", reason, instance_id=instance_id, say=f"instance {instance_id} destroyed"
        )
        return True

    def _end_job(self) -> None:
        """The job is over: nothing labelled for it should still run."""
        try:
            self.attached |= {i.id for i in live_instances(self.vast, self.job_id)} - self.kept
        except VastApiError as exc:
            log.warning("could not list the instances of job %s: %s", self.job_id, exc)
        for instance_id in sorted((self.created | self.attached) - self.kept):
            self._destroy(instance_id, "the job ended")

    def _sweep_late_creates(self) -> None:
        """A create that got no clear answer may still make an instance later, even after
        `find_unsure` stopped looking and another offer was rented: once its window has
        passed, the job's label is looked for once more and every instance of the job that
        nobody here watches or keeps is this launch's, destroyed with the rest."""
        deadline = self.renter.late_until
        if deadline is None:
            return
        wait = deadline - time.monotonic()
        if wait > 0:
            self.reporter.emit(
                "sweep_wait",
                wait_s=round(wait, 1),
                say=f"waiting {wait:.0f} s for any late instance of an unanswered create",
            )
            time.sleep(wait)
        try:
            live = live_instances(self.vast, self.job_id)
        except VastApiError as exc:
            self.reporter.emit(
                "sweep_failed",
                exc.headline,
                say=f"could not look for late instances ({exc.headline}); run "
                "`quantlab-train reap` to be sure none is left",
            )
            return
        self.renter.late_until = self.renter.unsure_until = None
        self.created.update(i.id for i in live if i.id not in self.kept | self.attached)

    def _cleanup(self, job_ending: bool) -> list[int]:
        """Destroy what this launch rented (and, when the job is over, whatever else runs
        for it); the ids that could not be destroyed."""
        if job_ending:
            self._end_job()
        self._sweep_late_creates()
        for instance_id in sorted(self.created - self.kept):
            self._destroy(instance_id, "cleanup: this launch rented it")
        return sorted(self.created - self.kept)

    def _auto_promote(self) -> dict[str, Any] | None:
        """With `promotion.auto`: promote the fresh model through the spec's gate."""
        if not self.spec.promotion.auto:
            return None
        from trainer.promotion.promote import maybe_auto_promote  # torch loads only here

        decision = maybe_auto_promote(self.spec.promotion, self.store, self.layout, self.job_id)
        verb = "promoted" if decision.get("promoted") else "not promoted"
        self.reporter.emit(
            "promotion",
            str(decision.get("reason", "")),
            say=f"job {self.job_id}: {verb}: {decision.get('reason', '')}",
            **{k: v for k, v in decision.items() if k != "reason"},
        )
        return decision

    def _finish(
        self,
        outcome: str,
        code: int,
        reason: str,
        manifest: JobManifest | None = None,
        promote: bool = False,
        problems: list[str] | None = None,
    ) -> LaunchResult:
        if self.result is not None:
            return self.result
        # A sweep's best trial is promoted by `sweep --promote-best`, not by the instance's spec.
        promotion = self._auto_promote() if promote and self.sweep is None else None
        artifacts: dict[str, str] = {}
        if self.sweep is not None and outcome in ("succeeded", "already_done"):
            for name in (self.paths.SWEEP, self.paths.SWEEP_SPEC):
                artifacts[name] = self.store.uri(self.paths.file(name))
            manifest = self._best_trial_manifest()
        elif outcome in ("succeeded", "already_done"):
            manifest = manifest or read_manifest(self.store, self.paths)
            names = [f.name for f in manifest.files] if manifest is not None else []
            for name in [self.paths.MANIFEST, *names]:
                artifacts[name] = self.store.uri(self.paths.file(name))
        summaries = [a.summary() for a in self.attempts]
        cost = sum(a.cost() for a in self.attempts)
        if self.sweep is not None and self.attempts:  # the sweep's record learns its cost
            with contextlib.suppress(TrainerError):
                if read_sweep(self.store, self.paths) is not None:
                    records = [AttemptRecord.model_validate(s) for s in summaries]
                    update_record(
                        self.store, self.paths.sweep, SweepRecord, _sweep_launch(records, cost)
                    )
        elif self.attempts:  # something was rented or attached to: the history learns its cost
            record_launch(
                self.store,
                self.paths,
                self.spec,
                manifest,
                outcome=outcome,
                reason=reason,
                attempts=[AttemptRecord.model_validate(s) for s in summaries],
            )
        self.result = LaunchResult(
            job_id=self.job_id,
            outcome=outcome,
            exit_code=code,
            reason=reason,
            artifacts=artifacts,
            cost_usd=cost,
            estimate_usd=self.estimate_usd,
            attempts=summaries,
            durations={
                "total_s": round(time.monotonic() - self.t0, 3),
                "provisioning_s": round(sum(s["provisioning_s"] for s in summaries), 3),
                "running_s": round(sum(s["running_s"] for s in summaries), 3),
            },
            recovery_s=_recoveries(self.attempts),
            promotion=promotion,
            metrics=manifest.metrics.final if manifest else None,
            rows=rows_used(manifest.metrics) if manifest else None,
            report=report_command(manifest.job_id, self.store.root, self.paths.bucket)
            if manifest
            else None,
            problems=problems or [],
        )
        fields = {k: v for k, v in self.result.to_json().items() if k not in ("job_id", "reason")}
        # No human line here: the caller prints the summary once (the CLI on stdout).
        self.reporter.emit("result", reason, **fields)
        return self.result

    def _best_trial_manifest(self) -> JobManifest | None:
        """For a sweep: the manifest of its best trial, whose metrics the result reports."""
        record = read_sweep(self.store, self.paths)
        best = record.best_trial if record is not None else None
        if best is None:
            return None
        return read_manifest(self.store, self.layout.job(best.job_id))


def _sweep_launch(
    attempts: list[AttemptRecord], cost: float
) -> Callable[[SweepRecord | None], SweepRecord]:
    """Adds what one launch of a sweep spent to its record."""

    def change(current: SweepRecord | None) -> SweepRecord:
        if current is None:  # pragma: no cover - only called when the record exists
            raise ValueError("no sweep record")
        every = (*current.attempts, *attempts)
        return current.model_copy(
            update={"attempts": every, "cost_usd": round(current.cost_usd + cost, 6)}
        )

    return change


def _recoveries(attempts: list[Attempt]) -> list[float]:
    """For each attempt that replaced an interrupted one: seconds from the interruption being
    detected to the new instance's first training progress."""
    out = []
    for before, after in itertools.pairwise(attempts):
        if before.ended_at is not None and after.first_step_at is not None:
            out.append(round(after.first_step_at - before.ended_at, 3))
    return out


def _undestroyed(ids: list[int], why: str) -> str:
    joined = ", ".join(str(i) for i in ids)
    return (
        f"instance(s) {joined} could not be destroyed {why} and may still bill: run "
        f"`vastai destroy instance {ids[0]}` (each id) or `quantlab-train reap`"
    ).replace("  ", " ")


def local_dry_run(spec: JobSpec, store: ObjectStore) -> dict[str, Any] | None:
    """A few training steps on this CPU; None when torch is not installed here."""
    try:
        import torch  # noqa: F401
    except ImportError:
        log.warning("skipping the local dry run: torch is not installed (pip install '.[train]')")
        return None
    from trainer.job.run import run_job

    result = run_job(spec, store, device="cpu", dry_run=True)
    steps = result.metrics.steps if result.metrics is not None else None
    return {"steps": steps, "artifacts": result.artifacts}
