"""The fake Vast.ai account: what each endpoint does to offers, instances and logs, minus HTTP.

Every public method expects the caller to hold `lock` and returns a JSON-ready value, or
raises ApiError carrying the status and body the real API sends for that failure.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .vast_faults import Fault
from .vast_ledger import Ledger, ledger_entry
from .vast_offers import SearchError, row_matches, search, sort_rows
from .vast_rules import ApiError, invalid_args, validate_create
from .vast_state import SCENARIOS, Instance, Job, Timings

LIST_FILTERABLE = frozenset(
    {
        "id",
        "label",
        "actual_status",
        "intended_status",
        "cur_state",
        "next_state",
        "gpu_name",
        "verification",
        "machine_id",
        "host_id",
        "image_uuid",
        "geolocation",
        "is_bid",
    }
)
LIST_MAX_LIMIT = 25
LOG_TAIL_DEFAULT = 1000


@dataclass
class LogFile:
    """A log snapshot uploaded behind a result_url, readable once `ready_at` has passed."""

    ready_at: float
    text: str


class VastAccount:
    """Offers, instances, instance keys, uploaded logs and the balance of one account."""

    def __init__(
        self,
        *,
        offers: Iterable[Mapping[str, Any]],
        timings: Timings,
        job: Job,
        balance: float,
        scenario: str,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}")
        self.lock = threading.RLock()
        self.offers: dict[int, dict[str, Any]] = {int(o["id"]): dict(o) for o in offers}
        self.instances: dict[int, Instance] = {}
        self.instance_keys: dict[str, int] = {}
        self.log_files: dict[str, LogFile] = {}
        self.timings = timings
        self.job = job
        self.balance = balance
        self.scenario = scenario
        self.base_url = ""
        self._ids = itertools.count(31_000_001)

    # -- clock ---------------------------------------------------------------------------
    def tick(self) -> float:
        """Bring every instance up to now; stop them all once the balance is spent."""
        now = time.monotonic()
        for inst in self.instances.values():
            inst.advance(now)
        if self.balance - self.ledger(now, tick=False).total_cost <= 0:
            for inst in self.live():
                if inst.phase not in ("stopped", "exited"):
                    inst.stop(now, "stopped: account balance is below zero", at_once=True)
        return now

    def live(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.destroyed_at is None]

    def ledger(self, now: float | None = None, tick: bool = True) -> Ledger:
        when = self.tick() if tick else (now if now is not None else time.monotonic())
        return Ledger({i.id: ledger_entry(i, when) for i in self.instances.values()})

    def _instance(self, instance_id: int) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed_at is not None:
            raise ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return inst

    # -- offers --------------------------------------------------------------------------
    def search(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid_args("search body must be a JSON object")
        try:
            return {"offers": search(self.offers.values(), body)}
        except SearchError as exc:
            raise invalid_args(str(exc)) from None

    def take_offer(self, offer_id: int) -> None:
        """Someone else rents this offer."""
        offer = self.offers.get(offer_id)
        if offer is not None:
            offer["rented"], offer["rentable"] = True, False

    # -- create --------------------------------------------------------------------------
    def create(self, offer_id: int, body: Any, fault: Fault | None) -> dict[str, Any]:
        env, runtype = validate_create(body)
        cancel_unavail = bool(body.get("cancel_unavail"))
        offer = self.offers.get(offer_id)
        if offer is None or offer.get("rented") or not offer.get("rentable", True):
            if cancel_unavail:
                raise ApiError(
                    410,
                    "no_such_ask",
                    f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available.",
                    ask_id=offer_id,
                )
            raise ApiError(
                404,
                "invalid_args",
                f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                ask_id=offer_id,
            )
        if self.balance - self.ledger().total_cost <= 0:
            raise ApiError(400, "insufficient_credit", "Your account balance is too low.")
        scenario = fault.scenario if fault and fault.scenario else self.scenario
        price = body.get("price")
        if price is not None and price < float(offer["min_bid"]):
            scenario = "bid_too_low"
        if scenario == "unschedulable" and cancel_unavail:
            raise ApiError(
                410,
                "no_such_ask",
                f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available.",
                ask_id=offer_id,
            )
        now = time.monotonic()
        inst = Instance(
            instance_id=next(self._ids),
            offer=offer,
            api_key=secrets.token_hex(24),
            body=body,
            env=env,
            runtype=runtype,
            scenario=scenario,
            timings=self.timings,
            job=self.job,
            lock=self.lock,
            api_url=self.base_url,
            now=now,
        )
        self.instances[inst.id] = inst
        self.instance_keys[inst.api_key] = inst.id
        offer["rented"], offer["rentable"] = True, False
        if scenario == "bid_too_low":
            inst.stop(now, "bid price is below the current min_bid", at_once=True)
            raise ApiError(
                400,
                "invalid_price",
                f"error 400/3467: Invalid args: bid price {price} "
                f"is below the minimum bid {offer['min_bid']}",
                ask_id=offer_id,
                new_contract=inst.id,
            )
        if scenario == "unschedulable":
            inst.enter("unscheduled", now)
        return {"success": True, "new_contract": inst.id, "instance_api_key": inst.api_key}

    # -- read ----------------------------------------------------------------------------
    def show(self, instance_id: int) -> dict[str, Any]:
        now = self.tick()
        inst = self.instances.get(instance_id)
        alive = inst is not None and inst.destroyed_at is None
        return {"instances": inst.row(now) if inst is not None and alive else None}

    def list(self, query: Mapping[str, str]) -> dict[str, Any]:
        def decode(name: str, default: Any) -> Any:
            try:
                return json.loads(query[name]) if name in query else default
            except ValueError:
                raise ApiError(
                    400, "invalid_request", f"Error in query parameters: {name} is not valid JSON"
                ) from None

        filters, order_by = decode("select_filters", {}), decode("order_by", [])
        limit, cols = decode("limit", LIST_MAX_LIMIT), decode("select_cols", None)
        if not isinstance(filters, dict) or not isinstance(order_by, list):
            raise ApiError(400, "invalid_request", "Error in query parameters: bad shape")
        for column in filters:
            if column not in LIST_FILTERABLE:
                raise ApiError(
                    400,
                    "invalid_request",
                    f"Error in query parameters: {column} is not a valid search key",
                )
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise ApiError(400, "invalid_request", "Error in query parameters: limit")
        limit = 5 if limit <= 0 else min(limit, LIST_MAX_LIMIT)
        now = self.tick()
        rows = [i.row(now) for i in self.live()]
        try:
            order = [(str(o["col"]), str(o.get("dir", "asc"))) for o in order_by] + [("id", "asc")]
            selected = sort_rows([r for r in rows if row_matches(r, filters)], order)
        except (SearchError, KeyError, TypeError) as exc:
            raise ApiError(400, "invalid_request", f"Error in query parameters: {exc}") from None
        fingerprint = hashlib.sha256(json.dumps([filters, order_by], sort_keys=True).encode())
        offset = self._page_offset(query.get("after_token"), fingerprint.hexdigest()[:16])
        page = selected[offset : offset + limit]
        more = offset + limit < len(selected)
        token = self._page_token(offset + limit, fingerprint.hexdigest()[:16]) if more else None
        if isinstance(cols, list) and cols != ["*"]:
            page = [{c: r.get(c) for c in cols} for r in page]
        labels: dict[str, int] = {}
        for r in rows:
            labels[r["label"] or ""] = labels.get(r["label"] or "", 0) + 1
        return {
            "success": True,
            "instances_found": len(page),
            "total_instances": len(selected),
            "label_counts": labels,
            "next_token": token,
            "instances": page,
        }

    @staticmethod
    def _page_token(offset: int, fingerprint: str) -> str:
        raw = json.dumps({"o": offset, "q": fingerprint}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _page_offset(token: str | None, fingerprint: str) -> int:
        if not token:
            return 0
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if data["q"] != fingerprint or not isinstance(data["o"], int) or data["o"] < 0:
                raise ValueError(token)
            return int(data["o"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "invalid_request", "Invalid after_token") from None

    # -- change --------------------------------------------------------------------------
    def destroy(self, instance_id: int) -> dict[str, Any]:
        now = self.tick()
        inst = self._instance(instance_id)
        inst.destroy(now)
        inst.offer["rented"], inst.offer["rentable"] = False, True
        return {"success": True, "msg": f"Instance {instance_id} destroyed."}

    def outbid(self, instance_id: int, min_bid: float | None) -> None:
        """A competing bid wins: min_bid rises above this bid and the instance stops at once."""
        now = self.tick()
        inst = self._instance(instance_id)
        bid = inst.price if inst.price is not None else float(inst.offer["dph_base"])
        inst.offer["min_bid"] = min_bid if min_bid is not None else round(bid * 1.25 + 0.01, 4)
        inst.stop(now, "outbid: a higher bid took this machine", at_once=True)

    def host_lost(self, instance_id: int, status: str) -> None:
        now = self.tick()
        inst = self._instance(instance_id)
        inst.lost_status = status
        inst.enter("lost", now)

    # -- logs ----------------------------------------------------------------------------
    def request_logs(self, instance_id: int, body: Any, fault: Fault | None) -> dict[str, Any]:
        self.tick()
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed_at is not None:
            raise ApiError(404, "invalid_id", "Invalid instance id.")
        body = body if isinstance(body, dict) else {}
        lines = inst.daemon_logs if body.get("daemon_logs") == "true" else inst.logs
        pattern = body.get("filter")
        if pattern:
            try:
                regex = re.compile(str(pattern))
                lines = [line for line in lines if regex.search(line)]
            except re.error:
                lines = [line for line in lines if str(pattern) in line]
        try:
            tail = int(body.get("tail") or LOG_TAIL_DEFAULT)
        except (TypeError, ValueError):
            raise invalid_args("tail must be a number of lines") from None
        text = "".join(f"{line}\n" for line in (lines[-tail:] if tail > 0 else []))
        delay = fault.log_delay_s if fault and fault.log_delay_s is not None else None
        ready_at = time.monotonic() + (self.timings.logs_delay if delay is None else delay)
        token = secrets.token_hex(16)
        self.log_files[token] = LogFile(ready_at=ready_at, text=text)
        return {
            "success": True,
            "result_url": f"{self.base_url}/instance_logs/{token}.log",
            "msg": "Log upload requested; the file will be available shortly.",
        }

    def log_file(self, token: str) -> str | None:
        """The uploaded text, or None while it is not there yet (or never was)."""
        found = self.log_files.get(token)
        if found is None or time.monotonic() < found.ready_at:
            return None
        return found.text
