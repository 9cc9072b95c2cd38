"""Object storage behind one interface, chosen by the root URI: `s3://` or `file://<dir>`."""

from __future__ import annotations

import os
from collections.abc import Iterable

from trainer.store.base import ObjectInfo, ObjectStore
from trainer.store.layout import RAW_BUCKET
from trainer.store.local import LocalStore

__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "default_store_root", "open_store"]


def open_store(root: str, read_only_buckets: Iterable[str] = ()) -> ObjectStore:
    """`s3://` → real S3 (or whatever `AWS_ENDPOINT_URL_S3` points at); `file:///dir` or a
    plain path → a local folder holding one sub-folder per bucket. `read_only_buckets` are
    never written; the storage layout's raw bucket is one of them whatever the caller says."""
    ro = frozenset(read_only_buckets) | {RAW_BUCKET}
    if root.startswith("s3://"):
        if root.rstrip("/") != "s3:":
            raise ValueError(f"store root {root!r}: write just s3://, buckets come from the spec")
        from trainer.store.s3 import S3Store  # boto3 and the Arrow S3 client load only here

        return S3Store(read_only_buckets=ro)
    if root.startswith("file://"):
        root = root.removeprefix("file://")
    elif "://" in root:
        raise ValueError(f"store root {root!r}: use s3:// or file://<dir>")
    return LocalStore(root, read_only_buckets=ro)


def default_store_root() -> str:
    """`QUANTLAB_STORE` when set (e.g. `file://./.quantlab/store`), else real S3."""
    return os.environ.get("QUANTLAB_STORE") or "s3://"
