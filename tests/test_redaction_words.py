"""Redaction masks credential values, never the words of a message: an STS refusal keeps its
operation and its error code, a secret-shaped value after `token=` is still masked."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import make_spec
from trainer.errors import InfraError
from trainer.launcher.credentials import job_credentials
from trainer.launcher.events import Reporter
from trainer.redact import MASK, Secrets, redact

STS_REFUSAL = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
    b"</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the "
    b"request is invalid.</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
)


class _RefusingSts(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(STS_REFUSAL)))
        self.end_headers()
        self.wfile.write(STS_REFUSAL)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def refusing_sts() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingSts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_sts_refusal_keeps_its_operation_and_error_code(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(job={"id": "j-sts"})
    with refusing_sts() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", endpoint)
        with pytest.raises(InfraError) as caught:
            job_credentials(spec, mode="scoped")
    out = io.StringIO()
    reporter = Reporter("j-sts", json_out=out, human=io.StringIO(), secrets=Secrets())
    reporter.emit("result", str(caught.value))
    reason = json.loads(out.getvalue())["reason"]
    assert reason == (
        "cannot mint scoped job credentials with STS (GetFederationToken: InvalidClientTokenId)"
    )
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in out.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STS (GetFederationToken: InvalidClientTokenId)", None),
        ("secret: reference to a policy", None),
        ("the session token: expired yesterday", None),
        ("token=abcdefgh12345678", f"token={MASK}"),
        ('"sessionToken": "FwoGZXIvYXdzEBYaDH+abc="', f'"sessionToken": "{MASK}"'),
        ("AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjEJr//////////wEa", f"AWS_SESSION_TOKEN={MASK}"),
        ("api_key: 0123456789abcdef", f"api_key: {MASK}"),
        ("Authorization: Bearer abcdefghijk", f"Authorization: Bearer {MASK}"),
    ],
)
def test_credential_shapes_are_masked_and_words_kept(text: str, expected: str | None) -> None:
    assert redact(text) == (expected or text)


def test_a_known_secret_is_masked_whatever_its_shape() -> None:
    assert redact("key abcdefghijklmnop here", ["abcdefghijklmnop"]) == f"key {MASK} here"
