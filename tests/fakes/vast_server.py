"""A fake Vast.ai REST server on loopback that speaks the wire format of the real API.

Start it with `running_fake_vast(...)`; point `vastai.VastAI(server_url=fake.url)` (or any HTTP
client) at it. Routing, authentication, request recording and fault injection live here; what
each endpoint does lives in vast_api, the instance lifecycle in vast_state, offers in
vast_offers and the fault catalogue in vast_faults.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .vast_api import VastAccount
from .vast_faults import Fault, FaultPlan
from .vast_ledger import Ledger
from .vast_offers import default_offers
from .vast_rules import ApiError
from .vast_state import DEFAULT_SCRIPT, Job, JobCallback, ScriptLine, Timings

__all__ = ["FakeVast", "Fault", "RecordedRequest", "Timings", "running_fake_vast"]

ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), endpoint)
    for method, pattern, endpoint in (
        ("POST", r"/api/v0/bundles/?", "search"),
        ("PUT", r"/api/v0/search/asks/?", "search"),
        ("PUT", r"/api/v0/asks/(\d+)/?", "create"),
        ("GET", r"/api/v1/instances/?", "list"),
        ("PUT", r"/api/v0/instances/request_logs/(\d+)/?", "logs"),
        ("GET", r"/api/v0/instances/(\d+)/?", "show"),
        ("DELETE", r"/api/v0/instances/(\d+)/?", "destroy"),
        ("GET", r"/instance_logs/([0-9a-f]+)\.log", "log_file"),
    )
)
"""Only what the launcher's client and the container's self-destroy send."""
NO_AUTH = frozenset({"log_file"})
S3_NOT_FOUND = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    "<Message>The specified key does not exist.</Message></Error>"
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it; `body` is parsed JSON, text, or None."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    endpoint: str
    call: int


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


def _route(method: str, path: str) -> tuple[str, str | None]:
    for route_method, pattern, endpoint in ROUTES:
        found = pattern.fullmatch(path)
        if found and route_method == method:
            return endpoint, found.group(1) if found.groups() else None
    return "not_found", None


class FakeVast:
    """The server plus the handles tests use to steer it and to inspect what happened.

    Options: `offers` (catalogue, default `default_offers()`), `api_key` (the account key;
    random when omitted), `timings`/`speed` (phase durations, divided by speed), `on_running`
    (job callback run in its own thread once an instance runs), `script`/`script_exits` (timed
    log lines used when there is no callback), `balance` (dollars), `wrong_key_status` (401, or
    404 like some real endpoints), `scenario` (default lifecycle scenario of new instances).
    """

    def __init__(
        self,
        *,
        offers: Iterable[Mapping[str, Any]] | None = None,
        api_key: str | None = None,
        timings: Timings | None = None,
        speed: float = 1.0,
        on_running: JobCallback | None = None,
        script: Sequence[ScriptLine] = DEFAULT_SCRIPT,
        script_exits: bool = True,
        balance: float = 100.0,
        wrong_key_status: int = 401,
        scenario: str = "ok",
    ) -> None:
        self.api_key = api_key or f"fakevast-{secrets.token_hex(16)}"
        self.wrong_key_status = wrong_key_status
        job = Job(callback=on_running, script=tuple(script), exits=script_exits)
        self.account = VastAccount(
            offers=default_offers() if offers is None else offers,
            timings=(timings or Timings()).scaled(speed),
            job=job,
            balance=balance,
            scenario=scenario,
        )
        self.faults = FaultPlan()
        self._log_lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake Vast server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeVast:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self.account.base_url = self.url
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-vast-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, job_join_s: float = 5.0) -> None:
        """Stop serving, tell running jobs they were killed and wait a little for them."""
        self._stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.account.lock:
            instances = list(self.account.instances.values())
            for inst in instances:
                inst.killed.set()
        for inst in instances:
            for thread in inst.threads:
                thread.join(timeout=job_join_s)

    # -- steering ------------------------------------------------------------------------
    def inject(
        self, endpoint: str, fault: Fault | str, *, call: int | None = None, times: int = 1
    ) -> None:
        """Answer calls `call`.. of `endpoint` (next calls when None) with a fault."""
        self.faults.inject(endpoint, fault, call=call, times=times)

    def outbid(self, instance_id: int, min_bid: float | None = None) -> None:
        """A higher bid takes the machine: the instance stops at once (the outbid triple)."""
        with self.account.lock:
            self.account.outbid(instance_id, min_bid)

    def host_lost(self, instance_id: int, status: str = "offline") -> None:
        """The host stops reporting: actual_status becomes "offline" or "unknown" for good."""
        with self.account.lock:
            self.account.host_lost(instance_id, status)

    def rent_offer(self, offer_id: int) -> None:
        """Another customer rents an offer (it drops out of searches; creating on it fails)."""
        with self.account.lock:
            self.account.take_offer(offer_id)

    def set_balance(self, dollars: float) -> None:
        """Set the credit; at or below what was spent, every instance is stopped."""
        with self.account.lock:
            self.account.balance = dollars
            self.account.tick()

    # -- inspection ----------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._log_lock:
            return list(self._requests)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def calls(self, endpoint: str) -> int:
        return self.faults.calls(endpoint)

    def ledger(self) -> Ledger:
        with self.account.lock:
            return self.account.ledger()

    def live_instances(self) -> list[dict[str, Any]]:
        """Rows of every instance not destroyed yet (each still bills storage)."""
        with self.account.lock:
            now = self.account.tick()
            return [i.row(now) for i in self.account.live()]

    def instance(self, instance_id: int) -> dict[str, Any] | None:
        """The current row of an instance, None once destroyed or never created."""
        with self.account.lock:
            found: dict[str, Any] | None = self.account.show(instance_id)["instances"]
            return found

    def container_log(self, instance_id: int) -> list[str]:
        with self.account.lock:
            self.account.tick()
            return list(self.account.instances[instance_id].logs)

    def job_errors(self, instance_id: int) -> list[str]:
        """Tracebacks of job callbacks that raised, for test diagnostics."""
        with self.account.lock:
            return list(self.account.instances[instance_id].job_errors)

    def instance_key(self, instance_id: int) -> str:
        with self.account.lock:
            return self.account.instances[instance_id].api_key

    def offer(self, offer_id: int) -> dict[str, Any]:
        with self.account.lock:
            return dict(self.account.offers[offer_id])

    # -- serving -------------------------------------------------------------------------
    def serve(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> Reply | None:
        """Answer one request; None means drop the connection without a reply."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body: Any = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        endpoint, ident = _route(method, parts.path)
        number, fault = self.faults.take(endpoint)
        with self._log_lock:
            self._requests.append(
                RecordedRequest(method, parts.path, query, dict(headers), body, endpoint, number)
            )
        path_id = int(ident) if ident is not None and ident.isdigit() else None
        if fault is not None:
            if fault.delay_s and self._stopped.wait(fault.delay_s):
                return None  # the server went away while holding the request: nothing done
            if fault.take_offer and path_id is not None:
                self.rent_offer(path_id)
            if not fault.after_work and (fault.drop or fault.status is not None):
                return self._fault_reply(fault, path_id)
        try:
            reply = self._dispatch(endpoint, ident, path_id, query, headers, body, fault)
        except ApiError as exc:
            reply = Reply(exc.status, exc.body)
        if fault is not None and fault.after_work:
            return self._fault_reply(fault, path_id)
        return reply

    @staticmethod
    def _fault_reply(fault: Fault, path_id: int | None) -> Reply | None:
        if fault.drop:
            return None
        return Reply(
            fault.status or 500,
            fault.render_body(path_id),
            fault.headers,
            "application/json" if isinstance(fault.body, dict) else "text/plain",
        )

    def _caller(
        self, endpoint: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> str | int | None:
        """The caller: "account", the instance id its key belongs to, or None without a key."""
        lowered = {k.lower(): v for k, v in headers.items()}
        auth = lowered.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else query.get("api_key")
        if not key:
            if endpoint in NO_AUTH or endpoint == "search":
                return None
            raise ApiError(401, "auth_error", "This action requires login.")
        if key == self.api_key:
            return "account"
        with self.account.lock:
            owner = self.account.instance_keys.get(key)
        if owner is None:
            raise ApiError(self.wrong_key_status, "auth_error", "Invalid user key")
        return owner

    def _dispatch(
        self,
        endpoint: str,
        ident: str | None,
        path_id: int | None,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: Any,
        fault: Fault | None,
    ) -> Reply:
        if endpoint == "not_found":
            return Reply(404, {"success": False, "error": "not_found", "msg": "No such endpoint."})
        if endpoint == "log_file":
            with self.account.lock:
                text = self.account.log_file(ident or "")
            if text is None:
                return Reply(404, S3_NOT_FOUND, content_type="application/xml")
            return Reply(200, text, content_type="text/plain")
        caller = self._caller(endpoint, query, headers)
        if isinstance(caller, int) and (endpoint != "destroy" or caller != path_id):
            raise ApiError(
                403,
                "not_authorized",
                f"This key may only start, stop or destroy instance {caller}.",
            )
        acct = self.account
        with acct.lock:
            if endpoint == "search":
                query_body = body.get("q") if isinstance(body, dict) and "q" in body else body
                return Reply(200, acct.search(query_body))
            if endpoint == "list":
                return Reply(200, acct.list(query))
            if path_id is None:
                return Reply(404, {"success": False, "error": "not_found", "msg": "No such id."})
            handlers = {
                "create": lambda: acct.create(path_id, body, fault),
                "show": lambda: acct.show(path_id),
                "destroy": lambda: acct.destroy(path_id),
                "logs": lambda: acct.request_logs(path_id, body, fault),
            }
            return Reply(200, handlers[endpoint]())


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeVast


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply = self.server.fake.serve(method, self.path, dict(self.headers.items()), raw)
        if reply is None:
            self.close_connection = True
            return
        payload = (
            json.dumps(reply.body)
            if reply.content_type == "application/json"
            else str(reply.body or "")
        ).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        # A client that gave up (a timeout) gets no answer, and the test output no traceback.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)


@contextmanager
def running_fake_vast(**options: Any) -> Iterator[FakeVast]:
    """A started FakeVast (see its docstring for options), stopped on exit whatever happens."""
    fake = FakeVast(**options)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
