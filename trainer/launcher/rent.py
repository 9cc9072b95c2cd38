"""Renting for one launch: offer search and estimate, the create call and how it fails, attach.

A create is sent once and never repeated. It can end four ways besides success: the offer is
gone (404/410, or rented between search and create) → the next offer; Vast.ai refused it but
left an instance (`new_contract`) that the adapter destroyed → the next offer, or an
InfraError when that destroy failed (never retry then); no answer, a read timeout or a 5xx,
so an instance may exist or still appear → UnsureCreate, and `find_unsure` looks for it under
the job's label for the client's `create_settle_s` before anything else is rented; anything
else → raised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from trainer.errors import InfraError, NoOfferError
from trainer.launcher.attempt import Attempt
from trainer.launcher.credentials import Mode, job_credentials
from trainer.launcher.events import Reporter
from trainer.launcher.hosts import BadHosts
from trainer.launcher.offers import Candidate, candidates, estimate, offer_type, search_filters
from trainer.launcher.payload import container_env, create_request, label_for
from trainer.launcher.session import Session
from trainer.launcher.states import InstanceState
from trainer.launcher.vast import (
    CreateRejected,
    Instance,
    OfferGone,
    VastApiError,
    VastAuthError,
    VastClient,
)
from trainer.spec import JobSpec
from trainer.store.layout import Layout

SEARCH_LIMIT = 64


class UnsureCreate(Exception):
    """The create got no clear answer: an instance may exist under the job's label."""

    def __init__(self, message: str, sent_at: float) -> None:
        super().__init__(message)
        self.sent_at = sent_at
        """time.monotonic() when the create was sent."""


def live_instances(vast: VastClient, job_id: str) -> list[Instance]:
    return [i for i in vast.list_instances(label_for(job_id)) if i.state is not InstanceState.GONE]


class Renter:
    """Offers for one job, tried once each, cheapest first, bad hosts skipped."""

    def __init__(
        self,
        spec: JobSpec,
        session: Session,
        reporter: Reporter,
        bad: BadHosts,
        *,
        credentials: Mode = "auto",
        role_arn: str | None = None,
        extra_env: dict[str, str] | None = None,
        sweep: bool = False,
    ) -> None:
        self.spec, self.session, self.reporter, self.bad = spec, session, reporter, bad
        self.credentials, self.role_arn, self.extra_env = credentials, role_arn, extra_env or {}
        self.sweep = sweep
        """The job is a sweep's instance: it runs `sweep.yaml`, its trials write their own
        job folders."""
        self.tried: set[int] = set()
        self.queue: list[Candidate] = []
        self.env: dict[str, str] | None = None
        self.creates = 0
        self.unsure_until: float | None = None
        """time.monotonic() until which `find_unsure` looks for the instance of the last
        unanswered create; None once it was found or its window has passed."""
        self.late_until: float | None = None
        """time.monotonic() until which any unanswered create of this launch may still make
        an instance: the final cleanup looks for the job's label once more after it."""

    def search(self) -> list[Candidate]:
        resources = self.spec.resources
        found = self.session.vast.search_offers(
            search_filters(resources),
            offer_type=offer_type(resources),
            limit=SEARCH_LIMIT,
            storage_gb=resources.disk_gb,
        )
        return candidates(found, resources, self.bad.machines(), self.tried)

    def survey(self, shown: int) -> dict[str, Any]:
        """The first search: best candidates and the estimate, or NoOfferError."""
        self.queue = self.search()
        res = self.spec.resources
        if not self.queue:
            raise NoOfferError(
                f"no Vast.ai offer matches: {res.num_gpus}× {' / '.join(res.gpu_names)}, "
                f"≥{res.min_gpu_ram_gb:g} GB, CUDA ≥{res.min_cuda:g}, "
                f"≤${res.max_price_per_hour:g}/h{' (interruptible)' if res.interruptible else ''}"
                "; widen `resources` (gpu_names, max_price_per_hour, min_reliability) or try "
                "again later"
            )
        best = estimate(self.queue[0], self.spec.limits)
        info: dict[str, Any] = {
            "candidates": [_candidate_json(c) for c in self.queue[:shown]],
            "estimate_usd": round(min(best.total_usd, self.spec.limits.max_cost_usd), 4),
            "estimate_uncapped_usd": round(best.total_usd, 4),
            "hours": round(best.hours, 3),
        }
        lines = ["best offers:", *(f"  {c.describe()}" for c in self.queue[:shown])]
        lines.append(
            f"estimated cost: up to ${info['estimate_usd']:.2f} ({best.hours:g} h at "
            f"${best.dph:.4f}/h, capped by limits.max_cost_usd)"
        )
        self.reporter.emit("offers", say="\n".join(lines), **info)
        return info

    def next_candidate(self) -> Candidate | None:
        """The cheapest offer not tried yet (searching again when the queue is empty); None
        when the market has nothing left, or after too many creates for one launch."""
        self.creates += 1
        if self.creates > 4 * self.spec.limits.max_attempts + 4:
            return None
        if not self.queue:
            self.queue = self.search()
        return self.queue.pop(0) if self.queue else None

    def create(self, cand: Candidate, number: int, record: Callable[[int], None]) -> Attempt | None:
        """Rent `cand`; `record(instance_id)` runs first thing once an id exists. None when
        this offer did not work out and the next one should be tried."""
        self.tried.add(cand.offer.id)
        req = create_request(self.spec, cand, self._env())
        self.reporter.emit(
            "creating",
            offer_id=cand.offer.id,
            dph=round(cand.dph, 6),
            bid=cand.bid,
            say=f"renting {cand.describe()}",
        )
        sent_at = time.monotonic()
        try:
            created = self.session.vast.create_instance(
                req.offer_id,
                image=req.image,
                disk_gb=req.disk_gb,
                env=req.env,
                label=req.label,
                args=list(req.args),
                onstart=req.onstart,
                bid_price=req.bid_price,
                cancel_unavail=req.cancel_unavail,
            )
        except OfferGone as exc:
            self.reporter.emit(
                "offer_gone",
                exc.headline,
                offer_id=cand.offer.id,
                say=f"offer {cand.offer.id} is gone; taking the next one",
            )
            return None
        except CreateRejected as exc:
            if not exc.cleaned_up:
                raise InfraError(str(exc)) from None
            self.reporter.emit(
                "create_rejected",
                exc.headline,
                instance_id=exc.instance_id,
                say=f"create refused; instance {exc.instance_id} destroyed",
            )
            return None
        except VastAuthError:
            raise
        except VastApiError as exc:
            if exc.status is not None and exc.status < 500:
                raise
            self.unsure_until = self._unanswered()
            self.reporter.emit(
                "create_unsure",
                exc.headline,
                offer_id=cand.offer.id,
                say=f"the create on offer {cand.offer.id} got no clear answer "
                f"({exc.headline}); looking for its instance by label, not creating again",
            )
            raise UnsureCreate(str(exc), sent_at) from None
        except KeyboardInterrupt:  # the request is out: Vast.ai may carry it out regardless
            self._unanswered()
            raise
        record(created.instance_id)
        self.session.secrets.add(created.instance_api_key)
        return self._attempt(
            "created", "rented", number, created.instance_id, cand, time.monotonic(), time.time()
        )

    def _unanswered(self) -> float:
        """A create just went unanswered: until when its instance may still appear."""
        until = time.monotonic() + self.session.vast.create_settle_s
        self.late_until = max(until, self.late_until or until)
        return until

    def find_unsure(self, known: set[int]) -> list[Instance]:
        """The job's live instances not in `known`, looked for until one shows up or the
        client's `create_settle_s` has passed since the unsure create failed."""
        vast = self.session.vast
        deadline = self.unsure_until or time.monotonic()
        every = min(2.0, max(0.05, vast.create_settle_s / 10))
        while True:
            strays = [i for i in live_instances(vast, self.spec.job_id) if i.id not in known]
            if strays or time.monotonic() >= deadline:
                self.unsure_until = None
                return strays
            time.sleep(every)

    def adopt(self, inst: Instance, cand: Candidate, number: int, sent_at: float) -> Attempt:
        """Watch `inst`, made by the unsure create of `cand`, as attempt `number`."""
        how = f"appeared under the job's label: the rental of offer {cand.offer.id}"
        wall = inst.start_date or time.time()
        return self._attempt("create_found", how, number, inst.id, cand, sent_at, wall)

    def _attempt(
        self,
        event: str,
        how: str,
        number: int,
        instance_id: int,
        cand: Candidate,
        created_at: float,
        wall: float,
    ) -> Attempt:
        """The attempt on a new instance, announced as `event`: `instance N <how> (attempt
        n of max)`."""
        self.reporter.emit(
            event,
            instance_id=instance_id,
            offer_id=cand.offer.id,
            attempt=number,
            say=f"instance {instance_id} {how} (attempt {number} of "
            f"{self.spec.limits.max_attempts})",
        )
        offer = cand.offer
        return Attempt(
            number=number,
            instance_id=instance_id,
            candidate=cand,
            attached=False,
            created_at=created_at,
            created_wall=wall,
            dph=cand.dph,
            storage_per_hour=cand.storage_per_hour,
            machine_id=offer.machine_id,
            gpu=f"{offer.num_gpus}× {offer.gpu_name}",
        )

    def attach(self, live: list[Instance], number: int = 1) -> Attempt:
        """Watch the newest live instance of the job instead of renting."""
        inst = max(live, key=lambda i: i.id)
        age = max(0.0, time.time() - inst.start_date) if inst.start_date else 0.0
        a = Attempt(
            number=number,
            instance_id=inst.id,
            candidate=None,
            attached=True,
            created_at=time.monotonic() - age,
            created_wall=inst.start_date or time.time(),
            dph=inst.dph_total,
            storage_per_hour=0.0,
            machine_id=inst.machine_id,
            gpu=f"{inst.num_gpus}× {inst.gpu_name}",
        )
        if inst.state is InstanceState.RUNNING:
            a.running_since = a.created_at  # unknown: count it all as running
        others = sorted(i.id for i in live if i.id != inst.id)
        self.reporter.emit(
            "attached",
            instance_id=inst.id,
            others=others,
            say=f"job {self.spec.job_id} is already running on instance "
            f"{inst.id}: watching it instead of renting",
        )
        return a

    def _env(self) -> dict[str, str]:
        """The container env, with job credentials minted on first use."""
        if self.env is None:
            creds = job_credentials(
                self.spec, mode=self.credentials, role_arn=self.role_arn, any_job=self.sweep
            )
            self.session.secrets.add(*creds.secrets())
            self.reporter.emit("credentials", creds.note, mode=creds.mode)
            paths = Layout.of(self.spec.storage).job(self.spec.job_id)
            self.env = container_env(
                jobspec_uri=str(paths.jobspec),
                sweep_uri=str(paths.sweep_spec) if self.sweep else None,
                num_gpus=self.spec.resources.num_gpus,
                aws=creds.env,
                launcher_env=os.environ,
                store_root=self.session.store.root,
                vast_url=self.session.vast_url,
                extra=self.extra_env,
            )
        return self.env


def _candidate_json(c: Candidate) -> dict[str, Any]:
    return {
        "offer_id": c.offer.id,
        "gpu": f"{c.offer.num_gpus}× {c.offer.gpu_name}",
        "dph": round(c.dph, 6),
        "bid": c.bid,
        "machine_id": c.offer.machine_id,
        "reliability": c.offer.reliability,
        "geolocation": c.offer.geolocation,
    }
