"""Secrets out of every message: the one set of secret values, the masking, and the log filter
that the job, the container and the launcher all install."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable

MASK = "[REDACTED]"
SECRET_ENV = ("VAST_API_KEY", "CONTAINER_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Environment variables whose values are secrets wherever the runner runs."""
# Header and query shapes a library might echo back in an error: only the value is masked.
_PATTERNS = (
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"((?:api_key|apikey|token|secret)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._~+/=-]{8,}",
        re.IGNORECASE,
    ),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret value, and anything shaped like a credential, masked."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class Secrets:
    """The values that must never be printed: those of SECRET_ENV at creation, and every key
    or credential added later as it is minted or learned. Thread-safe."""

    def __init__(self, values: Iterable[str | None] = (), *, from_env: bool = True) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        if from_env:
            self.add(*(os.environ.get(name) for name in SECRET_ENV))
        self.add(*values)

    def add(self, *values: str | None) -> None:
        with self._lock:
            self._values.update(v for v in values if v)

    def values(self) -> list[str]:
        with self._lock:
            return sorted(self._values)

    def redact(self, text: str) -> str:
        return redact(text, self.values())


class RedactingFilter(logging.Filter):
    """A log filter that renders each record and masks the current secrets in it, tracebacks
    included."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.secrets.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.secrets.redact(text)
        return True


def install(secrets: Secrets, loggers: Iterable[logging.Logger] = ()) -> None:
    """Put one RedactingFilter for `secrets` on every handler of `loggers` (default: the
    `quantlab` logger and the root logger), replacing any earlier one."""
    for logger in loggers or (logging.getLogger("quantlab"), logging.getLogger()):
        for handler in logger.handlers:
            for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(old)
            handler.addFilter(RedactingFilter(secrets))
