"""Scripted faults of the fake Vast.ai server: what goes wrong, on which call of which endpoint."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

ENDPOINTS = frozenset(
    {
        "search",
        "create",
        "list",
        "show",
        "manage",
        "destroy",
        "logs",
        "log_file",
        "bid",
        "user",
        "gpu_names",
        "deprecated_list",
        "not_found",
    }
)
RATE_LIMIT_STYLES = ("detail", "text", "json", "search_quota")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. With `status` set the server answers that instead of doing the work.

    `take_offer` (create only) lets another customer rent the offer just before this call;
    `scenario` (create only) makes the new instance follow a failure scenario of the state
    machine; `log_delay_s` (logs only) keeps the returned result_url answering 404 that long.
    `delay_s` holds the request that long before the server acts on it (past the client's
    timeout, the work is done with nobody waiting for the answer). `after_work` makes
    `status` or `drop` replace the answer once the work is done: the request succeeded and
    only its answer is lost, the case a client must never "retry".
    In bodies, the string "{id}" becomes the integer id from the path and "{id}" inside
    longer strings is replaced by it.
    """

    status: int | None = None
    body: dict[str, Any] | str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    take_offer: bool = False
    scenario: str | None = None
    log_delay_s: float | None = None
    delay_s: float = 0.0
    after_work: bool = False

    def render_body(self, ident: int | None) -> dict[str, Any] | str | None:
        """The body with "{id}" placeholders filled from the request path."""
        if not isinstance(self.body, dict):
            return self.body
        rendered: dict[str, Any] = {}
        for key, value in self.body.items():
            if value == "{id}":
                rendered[key] = ident
            elif isinstance(value, str):
                rendered[key] = value.replace("{id}", str(ident))
            else:
                rendered[key] = value
        return rendered


def _error(status: int, error: str, msg: str, **extra: Any) -> Fault:
    return Fault(status=status, body={"success": False, "error": error, "msg": msg, **extra})


def rate_limited(
    style: str = "detail", retry_after: float | None = None, threshold: float = 2.0
) -> Fault:
    """A 429 in one of the four body styles Vast.ai is known to send."""
    headers: list[tuple[str, str]] = []
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    if style == "detail":
        body: dict[str, Any] | str = {
            "detail": f"API requests too frequent endpoint threshold={threshold}"
        }
    elif style == "text":
        body = "API requests too frequent"
    elif style == "json":
        body = {
            "success": False,
            "error": "rate_limit_exceeded",
            "msg": "API requests too frequent, slow down",
        }
    elif style == "search_quota":
        body = {
            "success": False,
            "error": "search_quota_exceeded",
            "msg": "Daily search quota exceeded",
        }
        headers.append(("X-RateLimit-Reset", str(int(time.time()) + 3600)))
    else:
        raise ValueError(f"style must be one of {RATE_LIMIT_STYLES}")
    return Fault(status=429, body=body, headers=tuple(headers))


def server_error(status: int = 502) -> Fault:
    """A gateway error page as a proxy in front of the API would send it."""
    return Fault(status=status, body=f"<html><body><h1>{status}</h1>upstream error</body></html>")


def lost_answer(status: int | None = 502) -> Fault:
    """The server did the work, then the answer was lost: a gateway error page in its place
    (`status`), or with None the connection dropped without a word."""
    if status is None:
        return Fault(drop=True, after_work=True)
    return replace(server_error(status), after_work=True)


def late(delay_s: float) -> Fault:
    """The server acts on the request only after `delay_s` seconds, and answers then."""
    return Fault(delay_s=delay_s)


def slow_logs(delay_s: float) -> Fault:
    """The log file behind result_url appears only after `delay_s` seconds."""
    return Fault(log_delay_s=delay_s)


NAMED_FAULTS = {
    "offer_gone_404": lambda: Fault(
        take_offer=True,
        status=404,
        body={
            "success": False,
            "error": "invalid_args",
            "ask_id": "{id}",
            "msg": "error 404/3603: no_such_ask Instance type by id {id} is not available.",
        },
    ),
    "offer_gone_410": lambda: Fault(
        take_offer=True,
        status=410,
        body={
            "success": False,
            "error": "no_such_ask",
            "ask_id": "{id}",
            "msg": "error 410/3907: no_such_ask Instance type {id} is no longer available.",
        },
    ),
    "offer_race": lambda: Fault(take_offer=True),
    "bid_too_low": lambda: Fault(scenario="bid_too_low"),
    "unschedulable": lambda: Fault(scenario="unschedulable"),
    "pull_fail": lambda: Fault(scenario="pull_fail"),
    "oci_fail": lambda: Fault(scenario="oci_fail"),
    "stuck_loading": lambda: Fault(scenario="stuck_loading"),
    "rate_limit_detail": lambda: rate_limited("detail"),
    "rate_limit_text": lambda: rate_limited("text"),
    "rate_limit_json": lambda: rate_limited("json"),
    "search_quota": lambda: rate_limited("search_quota"),
    "http_502": lambda: server_error(502),
    "http_503": lambda: server_error(503),
    "http_504": lambda: server_error(504),
    "drop_connection": lambda: Fault(drop=True),
    "lost_answer_500": lambda: replace(
        _error(500, "server_error", "Internal server error."), after_work=True
    ),
    "lost_answer_502": lambda: lost_answer(502),
    "lost_connection": lambda: lost_answer(None),
    "auth_error": lambda: _error(401, "auth_error", "Invalid user key"),
    "not_authorized": lambda: _error(403, "not_authorized", "Not authorized for this action."),
    "invalid_args": lambda: _error(400, "invalid_args", "error 400/3467: Invalid args: rejected"),
    "insufficient_credit": lambda: _error(
        400, "insufficient_credit", "Your account balance is too low to rent this instance."
    ),
    "spend_rate_limit": lambda: _error(
        400, "spend_rate_limit", "New accounts are limited in how fast they can spend."
    ),
    "no_such_instance": lambda: _error(404, "no_such_instance", "Instance {id} not found."),
    "logs_without_url": lambda: Fault(
        status=200, body={"success": True, "msg": "Log upload requested, try again shortly."}
    ),
    "logs_slow": lambda: slow_logs(30.0),
}


def resolve(fault: Fault | str) -> Fault:
    """A Fault from itself or from one of the NAMED_FAULTS."""
    if isinstance(fault, Fault):
        return fault
    if fault not in NAMED_FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {sorted(NAMED_FAULTS)}")
    made: Fault = NAMED_FAULTS[fault]()
    return made


@dataclass
class _Planned:
    first_call: int
    times: int
    fault: Fault


class FaultPlan:
    """Per-endpoint call counters and the faults scheduled against given call numbers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._planned: dict[str, list[_Planned]] = {}

    def inject(
        self, endpoint: str, fault: Fault | str, *, call: int | None = None, times: int = 1
    ) -> None:
        """Answer calls `call` .. `call + times - 1` of `endpoint` (1-based) with `fault`.

        Without `call`, the next `times` calls of the endpoint get it.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
        if times < 1 or (call is not None and call < 1):
            raise ValueError("call and times count from 1")
        resolved = resolve(fault)
        with self._lock:
            first = call if call is not None else self._calls.get(endpoint, 0) + 1
            self._planned.setdefault(endpoint, []).append(_Planned(first, times, resolved))

    def take(self, endpoint: str) -> tuple[int, Fault | None]:
        """Count one call of `endpoint`; return its number and the fault planned for it."""
        with self._lock:
            number = self._calls.get(endpoint, 0) + 1
            self._calls[endpoint] = number
            planned = self._planned.get(endpoint, [])
            hit = next(
                (p for p in planned if p.first_call <= number < p.first_call + p.times), None
            )
            self._planned[endpoint] = [p for p in planned if p.first_call + p.times - 1 > number]
            return number, hit.fault if hit else None

    def calls(self, endpoint: str) -> int:
        """How many calls `endpoint` has received so far."""
        with self._lock:
            return self._calls.get(endpoint, 0)
