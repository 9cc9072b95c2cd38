"""A counting pass-through in front of the loopback S3 server: every request goes on to it
unchanged, and the bytes of each GET's answer are added up by object key. `deny` makes it
answer chosen requests itself with S3's 403 AccessDenied, as a bucket policy would."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class CountingS3(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.get_bytes: Counter[str] = Counter()
        """`bucket/key` → bytes of every GET answer for it."""
        self.gets: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        """HTTP method → requests passed on (every one, whatever its answer)."""
        self.deny: Callable[[str, str], bool] | None = None
        """`(method, bucket/key)` → answer 403 AccessDenied instead of passing it on."""
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bytes_under(self, prefix: str) -> int:
        with self._lock:
            return sum(n for key, n in self.get_bytes.items() if key.startswith(prefix))

    def reset(self) -> None:
        with self._lock:
            self.get_bytes.clear()
            self.gets.clear()
            self.requests.clear()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingS3

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        key = unquote(urlsplit(self.path).path).lstrip("/")
        if self.server.deny is not None and self.server.deny(self.command, key):
            self._access_denied(key)
            return
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        with self.server._lock:
            self.server.requests[self.command] += 1
        if self.command == "GET" and answer.status in (200, 206):
            with self.server._lock:
                self.server.get_bytes[key] += len(data)
                self.server.gets[key] += 1
        self.send_response(answer.status)
        head = self.command == "HEAD"  # its Content-Length is the object's: passed on as is
        for k, v in answer.getheaders():
            if k.lower() not in HOP_HEADERS and (head or k.lower() != "content-length"):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def _access_denied(self, key: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            f"<Message>Access Denied</Message><Resource>/{key}</Resource></Error>"
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
