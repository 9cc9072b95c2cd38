"""Secrets out of every message: the one set of secret values, the masking, the log filter
that the job, the container and the launcher all install, and the capture of what the
researcher's code prints."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TextIO

MASK = "[REDACTED]"
SECRET_ENV = ("VAST_API_KEY", "CONTAINER_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Environment variables whose values are secrets wherever the runner runs."""
# Header and query shapes a library might echo back in an error: only the value is masked,
# and only a value shaped like a credential (a digit or one of `+/=` in it). A word after a
# name that ends in "token" or "secret" is part of a sentence, kept: in `GetFederationToken:
# InvalidClientTokenId` the error code is what the reader needs. Known secrets are masked by
# value above whatever their shape.
_VALUE = r"(?=[A-Za-z._~-]*[0-9+/=])[A-Za-z0-9._~+/=-]{8,}"
_PATTERNS = (
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"((?:api_key|apikey|token|secret)[\"']?\s*[=:]\s*[\"']?)" + _VALUE,
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


class _LogWriter(io.TextIOBase):
    """A text stream that hands each complete line, secrets masked, to a logger."""

    def __init__(self, logger: logging.Logger, level: int, secrets: Secrets, raw: TextIO):
        super().__init__()
        self._logger, self._level, self._secrets, self._raw = logger, level, secrets, raw
        self._pending = ""
        self._lock = threading.RLock()
        self._inside = threading.local()

    def writable(self) -> bool:
        return True

    @property
    def terminal(self) -> io.TextIOBase:
        """The stream this one stands in for, secrets masked: where a log handler that
        follows `sys.stderr` writes, so that its records are not logged a second time as if
        something had printed them."""
        return _Masked(self._raw, self._secrets)

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._pending + text).split("\n")
            self._pending = lines.pop()
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._emit(self._pending)
                self._pending = ""

    def _emit(self, line: str) -> None:
        clean = self._secrets.redact(line)
        if getattr(self._inside, "yes", False):  # a handler writing to this very stream
            self._raw.write(clean + "\n")
            return
        self._inside.yes = True
        try:
            self._logger.log(self._level, "%s", clean)
        finally:
            self._inside.yes = False


class _Masked(io.TextIOBase):
    """A text stream writing to another one with the secrets masked."""

    def __init__(self, raw: TextIO, secrets: Secrets) -> None:
        super().__init__()
        self._raw, self._secrets = raw, secrets

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._raw.write(self._secrets.redact(text))
        return len(text)

    def flush(self) -> None:
        self._raw.flush()


@contextlib.contextmanager
def prints_to_log(logger: logging.Logger, secrets: Secrets) -> Iterator[None]:
    """For the duration, what anything prints (the researcher's code, warnings) goes to
    `logger` line by line with the secrets masked: stdout at INFO, stderr at WARNING. The
    log's handlers (the terminal, `train.log`, the container log) take it from there."""
    saved, level = (sys.stdout, sys.stderr), logger.level
    logger.setLevel(logging.INFO)  # printed lines are kept whatever the log's level
    out = _LogWriter(logger, logging.INFO, secrets, saved[0])
    err = _LogWriter(logger, logging.WARNING, secrets, saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = saved
        logger.setLevel(level)
