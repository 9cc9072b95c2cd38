"""Real S3 (or any S3-compatible endpoint) through boto3 and pyarrow's S3 client."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import boto3
import pyarrow.fs
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from trainer.errors import (
    ConditionalWritesIgnored,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
)
from trainer.store.base import Loc, ObjectInfo, ObjectStore
from trainer.store.layout import conditional_write_probe

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict", "409"}
_UNSUPPORTED = {"501", "NotImplemented"}

_probed: dict[tuple[str | None, str], str | None] = {}
"""(endpoint, bucket) → None when its conditional writes hold, else what it ignores. Each
endpoint and bucket is probed once per process."""
_probe_lock = threading.Lock()


def endpoint_url() -> str | None:
    """The S3 endpoint override, as the AWS tools read it (S3-specific variable first)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class S3Store(ObjectStore):
    """The standard AWS credential chain; `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` honoured
    by both clients, so MinIO, R2 or a loopback S3 server work unchanged."""

    def __init__(self, read_only_buckets: frozenset[str] = frozenset()) -> None:
        super().__init__(read_only_buckets)
        self._endpoint = endpoint_url()
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
        self._client = boto3.client("s3", endpoint_url=self._endpoint, config=config)
        self._arrow: pyarrow.fs.S3FileSystem | None = None

    @property
    def root(self) -> str:
        return "s3://"

    def uri(self, loc: Loc) -> str:
        return str(loc)

    def read(self, loc: Loc) -> tuple[bytes, ObjectInfo] | None:
        try:
            r = self._client.get_object(Bucket=loc.bucket, Key=loc.key)
            body: bytes = r["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            _raise(exc, "read", loc)
        return body, ObjectInfo(loc, len(body), str(r["ETag"]))

    def head(self, loc: Loc) -> ObjectInfo | None:
        try:
            r = self._client.head_object(Bucket=loc.bucket, Key=loc.key)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            _raise(exc, "inspect", loc)
        return ObjectInfo(loc, int(r["ContentLength"]), str(r["ETag"]))

    def _put(self, loc: Loc, data: bytes, if_absent: bool, if_match: str | None) -> ObjectInfo:
        extra: dict[str, Any] = {}
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            r = self._client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _PRECONDITION:
                why = "already exists" if if_absent else "changed since it was read"
                raise PreconditionFailed(f"{loc} {why}") from None
            _raise(exc, "write", loc)
        return ObjectInfo(loc, len(data), str(r["ETag"]))

    def require_conditional_writes(self, bucket: str) -> None:
        with _probe_lock:
            if (self._endpoint, bucket) not in _probed:
                _probed[self._endpoint, bucket] = self._probe(bucket)
        ignored = _probed[self._endpoint, bucket]
        if ignored is not None:
            where = f"the S3 endpoint {self._endpoint}" if self._endpoint else "AWS S3"
            raise ConditionalWritesIgnored(
                f"{where} ignores {ignored} on bucket {bucket}: a job's commit or a model's "
                "promotion there could silently lose a write, so nothing is committed or "
                "promoted. Point AWS_ENDPOINT_URL_S3 at a store that honours conditional "
                "writes (AWS S3, MinIO, Cloudflare R2), or use a local folder "
                "(--store file://DIR)"
            )

    def _probe(self, bucket: str) -> str | None:
        """Write a probe object if absent twice, then with a stale ETag: None when both
        second writes are refused, else what the endpoint ignored. The probe is deleted."""
        loc = conditional_write_probe(bucket, secrets.token_hex(8))
        put = self._client.put_object
        try:
            first = put(Bucket=bucket, Key=loc.key, Body=b"probe 1", IfNoneMatch="*")
            if _accepted(lambda: put(Bucket=bucket, Key=loc.key, Body=b"2", IfNoneMatch="*")):
                return "If-None-Match: * (a second write-if-absent of one object succeeded)"
            put(Bucket=bucket, Key=loc.key, Body=b"probe 3")
            stale = first["ETag"]
            if _accepted(lambda: put(Bucket=bucket, Key=loc.key, Body=b"4", IfMatch=stale)):
                return "If-Match (a write naming a stale ETag succeeded)"
            return None
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in _UNSUPPORTED:
                return "conditional writes (it answers NotImplemented)"
            _raise(exc, "check conditional writes with", loc)
        finally:
            # A probe left behind is harmless: the next one has another name.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_object(Bucket=bucket, Key=loc.key)

    def _upload(self, loc: Loc, path: Path) -> None:
        try:
            self._client.upload_file(str(path), loc.bucket, loc.key)
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, "upload", loc)
        except boto3.exceptions.S3UploadFailedError as exc:
            raise StorageError(f"cannot upload {path} to {loc}: {exc}") from None

    def children(self, prefix: Loc) -> list[str]:
        key = prefix.key if not prefix.key or prefix.key.endswith("/") else prefix.key + "/"
        found = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=key, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    found.append(common["Prefix"][len(key) :].rstrip("/"))
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, "list", prefix)
        return sorted(name for name in found if name)

    def list(self, prefix: Loc) -> list[ObjectInfo]:
        found = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=prefix.key
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    found.append(
                        ObjectInfo(Loc(prefix.bucket, obj["Key"]), int(obj["Size"]), obj["ETag"])
                    )
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, "list", prefix)
        return sorted(found, key=lambda o: o.loc.key)

    def _delete(self, loc: Loc) -> None:
        try:
            self._client.delete_object(Bucket=loc.bucket, Key=loc.key)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) not in _NOT_FOUND:
                _raise(exc, "delete", loc)

    def download(self, loc: Loc, path: Path) -> None:
        try:
            self._client.download_file(loc.bucket, loc.key, str(path))
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, "download", loc)

    def arrow_fs(self) -> pyarrow.fs.FileSystem:
        if self._arrow is None:
            self._arrow = arrow_s3(self._endpoint)
        return self._arrow

    def arrow_path(self, loc: Loc) -> str:
        return f"{loc.bucket}/{loc.key}"


def arrow_s3(endpoint: str | None) -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 client on the same endpoint and region boto3 would use."""
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    return pyarrow.fs.S3FileSystem(**kwargs)


def _accepted(write: Callable[[], object]) -> bool:
    """Whether a conditional write that must be refused went through."""
    try:
        write()
    except ClientError as exc:
        if _code(exc) in _PRECONDITION:
            return False
        raise
    return True


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _raise(exc: Exception, action: str, loc: Loc) -> NoReturn:
    """Rewrite a provider error so it says what to do next; never echo credentials."""
    code = _code(exc)
    if code in _NOT_FOUND:
        raise ObjectNotFound(f"{loc} does not exist") from None
    if code == "NoSuchBucket":
        raise StorageError(
            f"cannot {action} {loc}: bucket {loc.bucket} does not exist; check the bucket "
            "names in the spec's `storage` section and the S3 endpoint"
        ) from None
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        raise StorageError(
            f"cannot {action} {loc}: access denied ({code}); check the AWS credentials and "
            "that they may use this bucket and prefix"
        ) from None
    if isinstance(exc, NoCredentialsError):
        raise StoreUnavailable(
            f"cannot {action} {loc}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or a profile, or use a local store (--store file://DIR)"
        ) from None
    detail = code or type(exc).__name__
    where = f" at {endpoint_url()}" if endpoint_url() else ""
    unreachable = isinstance(exc, EndpointConnectionError | ConnectTimeoutError)
    raise (StoreUnavailable if unreachable else StorageError)(
        f"cannot {action} {loc}: S3{where} failed ({detail}); check the network and the "
        "endpoint, then retry"
    ) from None
