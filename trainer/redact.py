"""Secrets out of every message: API keys and AWS secrets are replaced before anything prints."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

MASK = "[REDACTED]"
SECRET_ENV = ("VAST_API_KEY", "CONTAINER_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Header and query shapes a library might echo back in an error.
_PATTERNS = (
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"((?:api_key|apikey|token|secret)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._~+/=-]{8,}",
        re.IGNORECASE,
    ),
)


def env_secrets() -> list[str]:
    return [v for v in (os.environ.get(name) for name in SECRET_ENV) if v]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret value, and anything shaped like a credential, masked."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """A log filter that renders each record and masks the secrets in it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self._secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self._secrets
            )
        return True
