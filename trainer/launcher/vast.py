"""Vast.ai access for the launcher: the only module that imports `vastai`, behind typed results.

Everything goes through `vastai.VastAI` except one request. `VastAI.logs()` waits for the
uploaded log file by polling its result_url 30 times, 0.3 s apart, and that wait cannot be
shortened; a poll loop that asks for logs every few seconds would stall about 9 s on each
call while the file is not there yet. So `logs()` sends the request_logs call through the
SDK's own HTTP client (same auth, retries and timeout) and fetches the returned result_url
with a plain `requests.get`, bounded by `logs_wait_s`. That URL needs no credentials.

Vast's status strings are mapped once, by `normalize_status` (in `states`), into
`InstanceState`. Every error message passes through `trainer.redact.redact` so that neither the
API key, nor the container key, nor any env value sent to an instance can appear in an
exception or a log line.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from trainer.errors import InfraError
from trainer.launcher.states import InstanceState, normalize_status
from trainer.redact import redact

log = logging.getLogger(__name__)

INSTALL_HINT = "install the launch extra: pip install 'quantlab-trainer[launch]'"
GONE_ERRORS = frozenset({"no_such_instance", "not_found"})
RETRY_STATUSES = frozenset({500, 502, 503, 504})
LIST_PAGE_SIZE = 25
MAX_LIST_PAGES = 400


class VastApiError(InfraError):
    """A Vast.ai call failed. `status`/`error` are what the API answered (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        op: str,
        status: int | None = None,
        error: str | None = None,
        new_contract: int | None = None,
    ) -> None:
        super().__init__(message)
        self.op = op
        self.status = status
        self.error = error
        self.new_contract = new_contract


class VastAuthError(VastApiError):
    """Vast.ai refused the API key."""


class VastRateLimited(VastApiError):
    """Vast.ai kept answering 429 (or the daily search quota is spent)."""


class OfferGone(VastApiError):
    """The offer was rented by someone else or withdrawn; search again or take the next one."""


class CreateRejected(VastApiError):
    """Vast.ai refused a rental but created an instance anyway; `cleaned_up` says if it is gone."""

    def __init__(
        self, message: str, *, cause: VastApiError, instance_id: int, cleaned_up: bool
    ) -> None:
        super().__init__(
            message, op=cause.op, status=cause.status, error=cause.error, new_contract=instance_id
        )
        self.instance_id = instance_id
        self.cleaned_up = cleaned_up


def _num(row: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = row.get(key)
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Offer:
    """One rentable machine, priced for the storage and offer type it was searched with."""

    id: int
    gpu_name: str
    num_gpus: int
    gpu_ram_mb: int
    dph_total: float
    min_bid: float
    storage_cost: float
    reliability: float
    verified: bool
    cuda_max_good: float
    inet_down: float
    geolocation: str
    machine_id: int
    host_id: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Offer:
        return cls(
            id=int(row["id"]),
            gpu_name=str(row.get("gpu_name") or ""),
            num_gpus=int(_num(row, "num_gpus", 1)),
            gpu_ram_mb=int(_num(row, "gpu_ram")),
            dph_total=_num(row, "dph_total"),
            min_bid=_num(row, "min_bid"),
            storage_cost=_num(row, "storage_cost"),
            reliability=_num(row, "reliability2", _num(row, "reliability")),
            verified=row.get("verification") == "verified",
            cuda_max_good=_num(row, "cuda_max_good"),
            inet_down=_num(row, "inet_down"),
            geolocation=str(row.get("geolocation") or ""),
            machine_id=int(_num(row, "machine_id")),
            host_id=int(_num(row, "host_id")),
        )


@dataclass(frozen=True)
class Instance:
    """What the launcher reads about a rented instance (env values deliberately left out)."""

    id: int
    state: InstanceState
    actual_status: str | None
    intended_status: str | None
    cur_state: str | None
    next_state: str | None
    status_msg: str | None
    label: str | None
    gpu_name: str
    num_gpus: int
    dph_total: float
    is_bid: bool
    min_bid: float
    start_date: float
    machine_id: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Instance:
        def text(key: str) -> str | None:
            value = row.get(key)
            return None if value is None else str(value).strip()

        return cls(
            id=int(row["id"]),
            state=normalize_status(row),
            actual_status=text("actual_status"),
            intended_status=text("intended_status"),
            cur_state=text("cur_state"),
            next_state=text("next_state"),
            status_msg=text("status_msg"),
            label=text("label"),
            gpu_name=str(row.get("gpu_name") or ""),
            num_gpus=int(_num(row, "num_gpus", 1)),
            dph_total=_num(row, "dph_total"),
            is_bid=bool(row.get("is_bid")),
            min_bid=_num(row, "min_bid"),
            start_date=_num(row, "start_date"),
            machine_id=int(_num(row, "machine_id")),
        )


@dataclass(frozen=True)
class CreateResult:
    """A new instance; its own key (the container's CONTAINER_API_KEY) is kept out of repr."""

    instance_id: int
    instance_api_key: str = field(repr=False)


class VastClient:
    """Typed, retrying, redacting access to the Vast.ai REST API through `vastai`.

    `sdk_attempts` is vastai's own `retry` (total attempts per request, with its short
    waits on 429/502/503/504, read timeouts and dropped connections); `retries` more rounds
    are added on top, `backoff_s` doubling up to `max_backoff_s` with random jitter, for rate
    limits and server and connection errors.

    A create is different: it goes through its own SDK client that never re-sends, because a
    create whose answer was lost (a 5xx, a dropped connection, a read timeout) may well have
    rented an instance, and sending it again would rent another. Only a 429, which Vast.ai
    answers before doing anything, is retried. After an unsure create the caller looks for
    the instance by its label for `create_settle_s` (default: the request timeout), the time
    within which an instance made by a late-processed create can still appear.
    """

    def __init__(
        self,
        api_key: str,
        url: str | None = None,
        timeout_s: float = 30,
        *,
        sdk_attempts: int = 3,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        logs_wait_s: float = 6.0,
        logs_poll_s: float = 0.3,
        create_settle_s: float | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        if not api_key:
            raise VastAuthError("no Vast.ai API key given; set VAST_API_KEY", op="connect")
        if sdk_attempts < 1 or retries < 0:
            raise ValueError("sdk_attempts must be at least 1 and retries at least 0")
        try:
            import requests
            import vastai
        except ImportError:
            raise InfraError(INSTALL_HINT) from None
        self._requests: Any = requests
        self._secrets: list[str] = [api_key, *secrets]
        server = url.rstrip("/") if url else None
        self._vast: Any = vastai.VastAI(api_key=api_key, server_url=server, retry=sdk_attempts)
        self._vast.client.timeout = timeout_s
        # One send per create, whatever the SDK would retry: see the class docstring.
        self._create_vast: Any = vastai.VastAI(api_key=api_key, server_url=server, retry=1)
        self._create_vast.client.timeout = timeout_s
        self._timeout_s = timeout_s
        self.create_settle_s = timeout_s if create_settle_s is None else create_settle_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._logs_wait_s = logs_wait_s
        self._logs_poll_s = logs_poll_s

    # -- operations ----------------------------------------------------------------------
    def search_offers(
        self,
        filters: Mapping[str, Mapping[str, Any]],
        *,
        offer_type: Literal["on-demand", "bid"] = "on-demand",
        order: Sequence[tuple[str, str]] = (("dph_total", "asc"),),
        limit: int = 20,
        storage_gb: float = 10.0,
    ) -> list[Offer]:
        """Rentable, verified offers matching `filters` ({field: {op: value}}), priced with
        `storage_gb` of disk; vastai adds verified/external/rentable/rented defaults."""
        query = {name: dict(condition) for name, condition in filters.items()}
        rows = self._call(
            "search offers",
            functools.partial(
                self._vast.search_offers,
                query=query,
                type=offer_type,
                order=[[name, direction] for name, direction in order],
                limit=limit,
                storage=storage_gb,
            ),
        )
        return [Offer.from_row(r) for r in rows if isinstance(r, dict) and "id" in r]

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        env: Mapping[str, str],
        label: str,
        args: Sequence[str] | None = None,
        onstart: str | None = None,
        bid_price: float | None = None,
        cancel_unavail: bool = True,
    ) -> CreateResult:
        """Rent `offer_id`. With `args`, `onstart` is the entrypoint executable (runtype args).

        Raises OfferGone when the offer was taken, CreateRejected when Vast.ai refused but
        left an instance behind (destroyed here before raising).
        """
        self._secrets.extend(env.values())
        op = f"create instance on offer {offer_id}"
        send = functools.partial(
            self._create_vast.create_instance,
            offer_id,
            image=image,
            disk=disk_gb,
            env=dict(env),
            label=label,
            onstart_cmd=onstart,
            args=list(args) if args is not None else None,
            bid_price=bid_price,
            cancel_unavail=cancel_unavail,
        )
        hint = f"; it may have been created anyway: look for instances labelled {label!r}"
        try:
            body = self._call(op, send, retry_unsure=False, unsure_hint=hint)
        except VastApiError as exc:
            if exc.new_contract is not None:
                self._destroy_rejected(exc)
            raise
        contract, key = body.get("new_contract"), body.get("instance_api_key")
        if not isinstance(contract, int) or isinstance(contract, bool):
            raise self._fail(VastApiError, op, f"the answer carried no instance id{hint}")
        self._secrets.append(str(key or ""))
        return CreateResult(instance_id=contract, instance_api_key=str(key or ""))

    def show_instance(self, instance_id: int) -> Instance | None:
        """The instance, or None when Vast.ai no longer knows it (destroyed)."""
        row = self._call(
            f"show instance {instance_id}", lambda: self._vast.show_instance(instance_id)
        )
        return Instance.from_row(row) if isinstance(row, dict) and "id" in row else None

    def list_instances(self, label: str | None = None) -> list[Instance]:
        """Every instance of the account (or with exactly this label), all pages followed."""
        params: dict[str, Any] = {
            "select_filters": {"label": {"eq": label}} if label is not None else {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": LIST_PAGE_SIZE,
        }
        found: list[Instance] = []
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            page = self._call(
                "list instances", functools.partial(self._vast.show_instances_v1, dict(params))
            )
            rows = page.get("instances") or []
            found.extend(Instance.from_row(r) for r in rows if isinstance(r, dict) and "id" in r)
            token = page.get("next_token")
            if not token:
                return found
            if token in seen:
                raise self._fail(VastApiError, "list instances", "the next_token repeated itself")
            seen.add(str(token))
            params["after_token"] = token
        raise self._fail(VastApiError, "list instances", f"more than {MAX_LIST_PAGES} pages")

    def destroy_instance(self, instance_id: int) -> None:
        """Destroy the instance; one that is already gone counts as destroyed."""
        op = f"destroy instance {instance_id}"
        try:
            self._call(op, lambda: self._vast.destroy_instance(instance_id))
        except VastApiError as exc:
            if exc.status == 404 or exc.error in GONE_ERRORS:
                log.info("Vast.ai instance %s was already gone", instance_id)
                return
            raise

    def logs(self, instance_id: int, tail: int = 200) -> str:
        """The last `tail` lines of the container's output; '' while the upload is not ready."""

        def request() -> Any:
            path = f"/instances/request_logs/{instance_id}/"
            response = self._vast.client.put(path, json_data={"tail": str(tail)})
            response.raise_for_status()
            return response.json()

        body = self._call(f"request logs of instance {instance_id}", request)
        url = body.get("result_url") if isinstance(body, dict) else None
        if not url:
            return ""
        deadline = time.monotonic() + self._logs_wait_s
        while True:
            try:
                response = self._requests.get(url, timeout=min(10.0, self._timeout_s))
                if response.status_code == 200:
                    return str(response.text)
            except self._requests.RequestException as exc:
                log.debug("log file not readable yet: %s", self._redact(str(exc)))
            if time.monotonic() + self._logs_poll_s > deadline:
                return ""
            time.sleep(self._logs_poll_s)

    # -- plumbing ------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _fail(self, kind: type[VastApiError], op: str, detail: str, **info: Any) -> VastApiError:
        return kind(self._redact(f"Vast.ai {op} failed: {detail}"), op=op, **info)

    def _call(
        self, op: str, send: Callable[[], Any], *, retry_unsure: bool = True, unsure_hint: str = ""
    ) -> Any:
        """`send()` with the extra retry rounds, `success: false` checked, errors typed."""
        req = self._requests
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                result = send()
            except req.HTTPError as exc:
                error = self._http_error(op, exc.response, unsure_hint)
                wait = self._retry_wait(exc.response, attempt, retry_unsure)
                if last or wait is None:
                    raise error from None
                log.warning(
                    "Vast.ai %s: HTTP %s, round %d of %d; retrying in %.1fs",
                    op,
                    exc.response.status_code,
                    attempt + 1,
                    self._retries + 1,
                    wait,
                )
                time.sleep(wait)
                continue
            except (req.ConnectionError, req.Timeout) as exc:
                error = self._fail(
                    VastApiError, op, f"no answer ({type(exc).__name__}: {exc}){unsure_hint}"
                )
                if last or not retry_unsure:
                    raise error from None
                wait = self._backoff(attempt)
                log.warning(
                    "Vast.ai %s: %s, round %d of %d; retrying in %.1fs",
                    op,
                    type(exc).__name__,
                    attempt + 1,
                    self._retries + 1,
                    wait,
                )
                time.sleep(wait)
                continue
            except (req.RequestException, KeyError, TypeError, ValueError) as exc:
                detail = f"unexpected answer ({type(exc).__name__}: {exc})"
                raise self._fail(VastApiError, op, detail) from None
            if isinstance(result, dict) and result.get("success") is False:
                raise self._body_error(op, 200, result)
            return result
        raise self._fail(VastApiError, op, "no attempt was made")  # retries < 0 is refused

    def _backoff(self, attempt: int) -> float:
        """The wait before round `attempt + 2`: doubling, capped, with jitter so that many
        launchers hit by the same outage do not come back in step."""
        ceiling = min(self._max_backoff_s, self._backoff_s * 2**attempt)
        return ceiling * random.uniform(0.5, 1.0)

    def _retry_wait(self, response: Any, attempt: int, retry_unsure: bool) -> float | None:
        """Seconds to wait before another round, or None when this answer is final."""
        status = response.status_code
        if status == 429:
            if self._json(response).get("error") == "search_quota_exceeded":
                return None
        elif status not in RETRY_STATUSES or not retry_unsure:
            return None
        wait = self._backoff(attempt)
        try:
            asked = float(response.headers.get("Retry-After", ""))
        except ValueError:
            return wait
        return asked if asked <= self._max_backoff_s else None

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _http_error(self, op: str, response: Any, unsure_hint: str) -> VastApiError:
        status = int(response.status_code)
        body = self._json(response)
        if not body:
            body = {"msg": " ".join(str(response.text or "").split())[:200]}
        if status == 429 and body.get("error") == "search_quota_exceeded":
            reset = response.headers.get("X-RateLimit-Reset", "")
            when = datetime.fromtimestamp(float(reset), UTC).isoformat() if reset.isdigit() else "?"
            detail = f"the daily search quota is spent (resets at {when}); try again later"
            return self._fail(
                VastRateLimited, op, detail, status=429, error="search_quota_exceeded"
            )
        if status >= 500:
            body["msg"] = f"{body.get('msg', '')}{unsure_hint}"
        return self._body_error(op, status, body)

    def _body_error(self, op: str, status: int, body: Mapping[str, Any]) -> VastApiError:
        code = str(body.get("error") or "") or None
        msg = str(body.get("msg") or body.get("detail") or "")
        contract = body.get("new_contract")
        info: dict[str, Any] = {
            "status": status,
            "error": code,
            "new_contract": contract if isinstance(contract, int) else None,
        }
        detail = f"HTTP {status}{f' {code}' if code else ''}: {msg}"
        if status == 401:
            return self._fail(VastAuthError, op, f"{detail}; check VAST_API_KEY", **info)
        if status == 429:
            hint = f"; still rate-limited after {self._retries + 1} rounds, wait a minute"
            return self._fail(VastRateLimited, op, detail + hint, **info)
        if status in (404, 410) and "no_such_ask" in f"{code} {msg}":
            return self._fail(
                OfferGone, op, f"{detail}; search again or take the next offer", **info
            )
        return self._fail(VastApiError, op, detail, **info)

    def _destroy_rejected(self, exc: VastApiError) -> None:
        """Destroy the instance a refused create left behind, then raise CreateRejected."""
        instance_id = exc.new_contract or 0
        try:
            self.destroy_instance(instance_id)
        except VastApiError as cleanup:
            message = (
                f"{exc} It left instance {instance_id}, and destroying it failed ({cleanup}); "
                f"destroy it by hand: vastai destroy instance {instance_id}"
            )
            raise CreateRejected(
                self._redact(message), cause=exc, instance_id=instance_id, cleaned_up=False
            ) from None
        message = f"{exc} It left instance {instance_id}, which was destroyed."
        raise CreateRejected(
            self._redact(message), cause=exc, instance_id=instance_id, cleaned_up=True
        ) from None
