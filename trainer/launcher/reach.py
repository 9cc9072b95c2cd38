"""Whether a rented host can reach the launch's store, decided before anything is rented.

The container runs on a machine on the internet: a `file://` store is a folder on this machine,
and an S3 endpoint on a loopback, link-local or private address is one only this machine (or
its network) reaches. Either would be handed to a paid instance that could never read its
spec. Tests and local trials that run the container on this machine opt in with
`QUANTLAB_ALLOW_LOCAL_STORE=1` (local testing only)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from urllib.parse import urlparse

from trainer.errors import UnreachableStore

ALLOW_LOCAL_STORE = "QUANTLAB_ALLOW_LOCAL_STORE"
"""Set to 1 when the container runs on this machine (the Vast.ai fake): local testing only."""
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where the container's S3 client looks for its endpoint, in its order."""
WAY_OUT = f"or set {ALLOW_LOCAL_STORE}=1 if the container runs on this machine (local testing only)"

Resolver = Callable[[str], list[str]]


def check_reachable(
    store_root: str, environ: Mapping[str, str], resolve: Resolver | None = None
) -> None:
    """UnreachableStore naming the setting and the way out, unless a rented host can reach
    the store at `store_root` (with the S3 endpoint `environ` names) or the launch opted in."""
    if environ.get(ALLOW_LOCAL_STORE, "").strip() in ("1", "true", "yes"):
        return
    problem = store_problem(store_root, environ, resolve or _addresses)
    if problem:
        raise UnreachableStore("a rented host could not reach this launch's store", [problem])


def store_problem(store_root: str, environ: Mapping[str, str], resolve: Resolver) -> str | None:
    if not store_root.startswith("s3://"):
        return (
            f"--store / QUANTLAB_STORE: {store_root} is a folder on this machine, which a "
            "rented host cannot read: launch with an S3 store (`--store s3://`, the default), "
            + WAY_OUT
        )
    name = next((v for v in ENDPOINT_VARIABLES if environ.get(v)), None)
    if name is None:
        return None  # AWS S3 itself
    endpoint = environ[name]
    where = local_address(urlparse(endpoint).hostname or "", resolve)
    if where is None:
        return None
    return (
        f"{name}: {endpoint} is {where}, which a rented host cannot reach: point it at an S3 "
        f"endpoint reachable from the internet (or unset it for AWS S3), {WAY_OUT}"
    )


def local_address(host: str, resolve: Resolver) -> str | None:
    """How `host` is local (`a loopback address`, `a private address (10.0.0.5)`), None for
    a public one or a name that does not resolve here."""
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback address"
    try:
        addresses = [ipaddress.ip_address(host)]
        shown = ""
    except ValueError:
        addresses = [ipaddress.ip_address(a) for a in resolve(host)]
        shown = f" ({host} resolves to {', '.join(str(a) for a in addresses)})"
    kinds = [_kind(a) for a in addresses]
    if not kinds or any(k is None for k in kinds):
        return None  # unresolved, or one public address: reachable as far as can be told
    return f"{kinds[0]}{shown}"


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private or not address.is_global:
        return "a private address"
    return None


def _addresses(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})
