"""Who the launcher talks to: the Vast.ai client (key and URL), the object store, the secrets.

The Vast.ai key comes from `--vast-key-file` / `key_file=`, else where the vastai CLI finds
it: `VAST_API_KEY`, then `~/.config/vastai/vast_api_key`, then `~/.vast_api_key`; the API base
from `--vast-url` / `url=`, else `VAST_URL`, else https://console.vast.ai. The store root from
`--store`, else `QUANTLAB_STORE`, else `s3://`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.container.env import DEFAULT_VAST_URL
from trainer.errors import InfraError
from trainer.launcher.vast import VastAuthError, VastClient
from trainer.redact import Secrets
from trainer.store import ObjectStore, default_store_root, open_store

LAUNCHER_CLIENT: dict[str, Any] = {"logs_wait_s": 3.0}
"""VastClient settings of the launcher: a log snapshot may hold a poll up for 3 s at most."""


class Session:
    """The store, the Vast.ai URL, the secrets, and the Vast.ai client, made on first use: the
    checks that need no Vast.ai (the spec, the pre-flight) run and fail without a key."""

    def __init__(
        self,
        store: ObjectStore,
        vast_url: str,
        secrets: Secrets,
        connect: Callable[[], VastClient],
    ) -> None:
        self.store, self.vast_url, self.secrets = store, vast_url, secrets
        self._connect = connect
        self._vast: VastClient | None = None

    @property
    def vast(self) -> VastClient:
        if self._vast is None:
            self._vast = self._connect()
        return self._vast


def read_vast_key(
    key_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str:
    env = os.environ if environ is None else environ
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise VastAuthError(
                f"cannot read the Vast.ai key file {key_file}: {exc.strerror or exc}",
                op="connect",
            ) from None
        if key:
            return key
        raise VastAuthError(f"the Vast.ai key file {key_file} is empty", op="connect")
    key = env.get("VAST_API_KEY", "").strip()
    if key:
        return key
    for path in vast_key_files():  # where the vastai CLI keeps it, newest place first
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if key:
            return key
    raise VastAuthError(
        "no Vast.ai API key: set VAST_API_KEY, run `vastai set api-key KEY` (it writes "
        "~/.config/vastai/vast_api_key), or pass --vast-key-file FILE",
        op="connect",
    )


def vast_key_files() -> tuple[Path, ...]:
    """The files the vastai CLI reads its key from, in its order."""
    return key_files_under(Path.home())


def key_files_under(home: Path) -> tuple[Path, ...]:
    """The vastai CLI's key files in `home`: its config folder, then the legacy file."""
    return (home / ".config" / "vastai" / "vast_api_key", home / ".vast_api_key")


def vast_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (url or env.get("VAST_URL") or DEFAULT_VAST_URL).rstrip("/")


def open_session(
    *,
    store: ObjectStore | str | None = None,
    vast: VastClient | None = None,
    key_file: str | Path | None = None,
    url: str | None = None,
    secrets: Secrets | None = None,
    client_options: Mapping[str, Any] | None = None,
    read_only_buckets: tuple[str, ...] = (),
) -> Session:
    """A session from explicit objects, else from the flags and the environment."""
    secrets = secrets or Secrets()
    base = vast_url(url)

    def connect() -> VastClient:
        if vast is not None:
            return vast
        key = read_vast_key(key_file)
        secrets.add(key)
        options = {**LAUNCHER_CLIENT, **(client_options or {})}
        return VastClient(key, base, secrets=secrets.values(), **options)

    if not isinstance(store, ObjectStore):
        root = store or default_store_root()
        try:
            store = open_store(root, read_only_buckets=read_only_buckets)
        except ValueError as exc:
            raise InfraError(f"--store: {exc}") from None
    return Session(store, base, secrets, connect)
