"""Request rules of the fake Vast.ai API: the create-body checks and the error bodies they give."""

from __future__ import annotations

import json
import shlex
from typing import Any

RUNTYPE_WORDS = frozenset({"args"})
"""The launcher rents in `args` mode only; other runtypes are refused like unknown ones."""
MAX_IMAGE, MAX_LABEL, MAX_ARGS, MAX_ENV = 1024, 256, 4096, 32768


class ApiError(Exception):
    """A refusal, as the status code and JSON body the endpoint answers with."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.body: dict[str, Any] = {"success": False, "error": error, "msg": msg, **extra}


def invalid_args(what: str, **extra: Any) -> ApiError:
    return ApiError(400, "invalid_args", f"error 400/3467: Invalid args: {what}", **extra)


def parse_env_string(text: str) -> dict[str, str]:
    """The `-e K=V -p 8080:8080` docker-flag string form of `env`, as an object."""
    env: dict[str, str] = {}
    tokens = shlex.split(text)
    for flag, value in zip(tokens[::2], tokens[1::2], strict=False):
        if flag == "-e" and "=" in value:
            key, _, val = value.partition("=")
            env[key] = val
        elif flag.startswith("-"):
            env[f"{flag} {value}"] = "1"
    return env


def validate_create(body: Any) -> tuple[dict[str, str], str]:
    """(env, runtype) of a valid `PUT /asks/{id}/` body; ApiError 400 naming the first problem."""
    if not isinstance(body, dict):
        raise invalid_args("body must be a JSON object")
    image = body.get("image")
    if not image and not body.get("template_hash_id"):
        raise invalid_args("image is required")
    if image and len(str(image)) > MAX_IMAGE:
        raise invalid_args(f"image is longer than {MAX_IMAGE} characters")
    env = body.get("env") or {}
    if isinstance(env, str):
        env = parse_env_string(env)
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise invalid_args("env must be an object of string values")
    if len(json.dumps(env)) > MAX_ENV:
        raise invalid_args(f"env is longer than {MAX_ENV} characters")
    disk = body.get("disk", 8)
    if not isinstance(disk, int | float) or isinstance(disk, bool) or disk < 8:
        raise invalid_args("disk must be a number of GB, at least 8")
    price = body.get("price")
    if price is not None and (not isinstance(price, int | float) or not 0.001 <= price <= 128):
        raise ApiError(
            400,
            "invalid_price",
            "error 400/3467: Invalid args: price must be between 0.001 and 128",
        )
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        raise invalid_args(f"label must be a string of at most {MAX_LABEL} characters")
    args = body.get("args")
    if args is not None and (
        not isinstance(args, list) or not all(isinstance(a, str) for a in args)
    ):
        raise invalid_args("args must be a list of strings")
    runtype = str(body.get("runtype") or "")
    if not set(runtype.split()) <= RUNTYPE_WORDS:
        raise invalid_args(f"unknown runtype {runtype!r}")
    if len(" ".join(args or [])) + len(body.get("onstart") or "") > MAX_ARGS:
        raise invalid_args(f"args and onstart together exceed {MAX_ARGS} characters")
    return {str(k): v for k, v in env.items()}, runtype
