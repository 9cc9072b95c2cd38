"""One contract every object store passes: the local folder, S3 on moto, and s3rver, a second
S3 implementation. s3rver accepts `If-None-Match: *` and `If-Match` and ignores them, so there
every conditional write is refused before it could lose anything."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.errors import (
    EXIT_INFRA,
    ConditionalWritesIgnored,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    exit_code_of,
)
from trainer.store import ObjectStore, s3
from trainer.store.base import Loc, ObjectInfo
from trainer.store.layout import PROBE_ROOT
from trainer.store.records import JobSummary, read_record, update_record

ART = "quantlab-artifacts"


@pytest.fixture(params=["local", "s3", pytest.param("s3rver", marks=pytest.mark.slow)])
def any_store(request: pytest.FixtureRequest) -> ObjectStore:
    """Every store the runner may meet, conditional writes aside: the local folder, moto and
    s3rver (started as a subprocess, so the slow tier)."""
    name = {"local": "local_store", "s3": "s3_store", "s3rver": "s3rver_store"}[request.param]
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_put_get_head_roundtrip(any_store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/job-1/metrics.json")
    info = any_store.put(loc, b'{"ic": 0.3}')
    assert info.size == 11
    assert any_store.get(loc) == b'{"ic": 0.3}'
    head = any_store.head(loc)
    assert head is not None and head.size == 11 and head.etag == info.etag


def test_a_read_names_the_etag_of_the_very_version_it_returns(any_store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/leased/lease.json")
    assert any_store.read(loc) is None
    written = {any_store.put(loc, b"v0").etag: b"v0"}
    got = any_store.read(loc)
    assert got is not None and got[0] == b"v0" and got[1] == any_store.head(loc)
    try:  # only where leases and read-modify-writes may run: s3rver rewrites in place
        any_store.require_conditional_writes(ART)
    except ConditionalWritesIgnored:
        return
    stop = threading.Event()

    def rewrite() -> None:  # a holder renewing as fast as the store allows
        n = 0
        while not stop.is_set():
            n += 1
            body = f"v{n}".encode()
            written[any_store.put(loc, body).etag] = body

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen: list[tuple[bytes, ObjectInfo] | None] = []
    try:
        deadline = time.monotonic() + 10
        while len({got[1].etag for got in seen if got}) < 5 and time.monotonic() < deadline:
            seen.append(any_store.read(loc))
    finally:
        stop.set()
        writer.join()
    for got in seen:
        assert got is not None
        body, info = got
        assert written[info.etag] == body and info.size == len(body)
    assert len({got[1].etag for got in seen if got}) >= 5, "the writer never got in"


def test_missing_object_is_typed(any_store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/nope/model.bin")
    assert any_store.head(loc) is None
    assert not any_store.exists(loc)
    with pytest.raises(ObjectNotFound, match=r"nope/model\.bin"):
        any_store.get(loc)


def test_list_is_prefix_scoped_and_sorted(any_store: ObjectStore) -> None:
    for key in ("ml-artifacts/j2/b", "ml-artifacts/j1/z", "ml-artifacts/j1/a", "other/x"):
        any_store.put(Loc(ART, key), b"x")
    keys = [o.loc.key for o in any_store.list(Loc(ART, "ml-artifacts/j1/"))]
    assert keys == ["ml-artifacts/j1/a", "ml-artifacts/j1/z"]
    assert any_store.list(Loc(ART, "ml-artifacts/none/")) == []


def test_children_are_the_folders_right_under_a_prefix(any_store: ObjectStore) -> None:
    for key in ("ml-artifacts/j2/b", "ml-artifacts/j1/z", "ml-artifacts/j1/sub/a", "top.json"):
        any_store.put(Loc(ART, key), b"x")
    assert any_store.children(Loc(ART, "ml-artifacts/")) == ["j1", "j2"]
    assert any_store.children(Loc(ART, "ml-artifacts")) == ["j1", "j2"]
    assert any_store.children(Loc(ART, "ml-artifacts/j1/")) == ["sub"]
    assert any_store.children(Loc(ART, "nothing/")) == []


def test_get_many_reads_in_order_with_none_for_the_absent(any_store: ObjectStore) -> None:
    locs = [Loc(ART, f"ml-artifacts/j{i}/summary.json") for i in range(40)]
    for i, loc in enumerate(locs):
        if i % 3:
            any_store.put(loc, str(i).encode())
    got = any_store.get_many(locs)
    assert got == [None if i % 3 == 0 else str(i).encode() for i in range(40)]
    assert any_store.get_many([]) == []


def test_update_record_loses_no_concurrent_change(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/j1/summary.json")

    def add_one(current: JobSummary | None) -> JobSummary:
        base = current or JobSummary(job_id="j1")
        return base.model_copy(update={"launches": base.launches + 1})

    threads = [
        threading.Thread(target=update_record, args=(store, loc, JobSummary, add_one))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = read_record(store, loc, JobSummary)
    assert stored is not None and stored.launches == 6


def test_if_absent_refuses_to_overwrite(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/job-1/manifest.json")
    store.put(loc, b"first", if_absent=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.put(loc, b"second", if_absent=True)
    assert store.get(loc) == b"first"


def test_if_match_is_compare_and_swap(store: ObjectStore) -> None:
    loc = Loc(ART, "models/production/btcusdt/manifest.json")
    v1 = store.put(loc, b"v1")
    v2 = store.put(loc, b"v2", if_match=v1.etag)
    with pytest.raises(PreconditionFailed):
        store.put(loc, b"v3", if_match=v1.etag)
    assert store.get(loc) == b"v2"
    assert v2.etag != v1.etag


def test_concurrent_if_absent_has_one_winner(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/race/manifest.json")
    wins: list[int] = []
    losses: list[int] = []

    def attempt(i: int) -> None:
        try:
            store.put(loc, f"writer {i}".encode(), if_absent=True)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 5
    assert store.get(loc) == f"writer {wins[0]}".encode()


def test_upload_download_delete(any_store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00weights" * 1000)
    loc = Loc(ART, "ml-artifacts/job-1/model.bin")
    any_store.upload(loc, src)
    dst = tmp_path / "back.bin"
    any_store.download(loc, dst)
    assert dst.read_bytes() == src.read_bytes()
    any_store.delete(loc)
    any_store.delete(loc)  # deleting twice is fine
    assert any_store.head(loc) is None


def test_raw_bucket_is_read_only(any_store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="read-only"):
        any_store.put(Loc("quantlab-raw", "ticks/x.csv"), b"no")


def test_arrow_reads_what_the_store_wrote(any_store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    loc = Loc("quantlab-compact", "features/featureset=v1/x/data.parquet")
    any_store.upload(loc, path)
    with any_store.arrow_fs().open_input_file(any_store.arrow_path(loc)) as f:
        assert pq.read_table(f).column("a").to_pylist() == [1, 2, 3]


def test_uri_names_the_real_place(any_store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/j/model.bin")
    uri = any_store.uri(loc)
    assert uri.endswith("quantlab-artifacts/ml-artifacts/j/model.bin")
    assert uri.startswith(("s3://", "file://"))


def test_the_probe_finds_conditional_writes_honoured_and_leaves_nothing(
    store: ObjectStore,
) -> None:
    store.require_conditional_writes(ART)
    assert store.list(Loc(ART, PROBE_ROOT)) == []


def test_an_endpoint_is_probed_once_per_process(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "_probed", {})
    probes: list[str] = []
    real = s3.S3Store._probe

    def counted(self: s3.S3Store, bucket: str) -> str | None:
        probes.append(bucket)
        return real(self, bucket)

    monkeypatch.setattr(s3.S3Store, "_probe", counted)
    for i in range(3):
        s3_store.put(Loc(ART, f"ml-artifacts/p{i}/manifest.json"), b"m", if_absent=True)
    s3.S3Store().put(Loc(ART, "ml-artifacts/p9/manifest.json"), b"m", if_absent=True)
    s3_store.put(Loc("quantlab-compact", "features/x"), b"plain")  # unconditional: no probe
    assert probes == [ART]


@pytest.mark.slow
def test_a_store_that_ignores_conditional_writes_refuses_them_and_writes_nothing(
    s3rver_store: ObjectStore, s3rver_endpoint: str
) -> None:
    """s3rver takes a second write-if-absent of one object as if the first did not exist:
    every conditional write is refused, naming the endpoint and what to use instead."""
    loc = Loc(ART, "ml-artifacts/job-1/manifest.json")
    writes = [
        lambda: s3rver_store.put(loc, b"first", if_absent=True),
        lambda: s3rver_store.put(loc, b"second", if_match='"0123456789abcdef"'),
        lambda: update_record(s3rver_store, loc, JobSummary, lambda _: JobSummary(job_id="j")),
    ]
    for write in writes:
        with pytest.raises(ConditionalWritesIgnored) as caught:
            write()
        message = str(caught.value)
        assert f"the S3 endpoint {s3rver_endpoint} ignores If-None-Match: *" in message
        assert "on bucket quantlab-artifacts" in message
        assert "nothing is committed or promoted" in message
        assert "(AWS S3, MinIO, Cloudflare R2), or use a local folder" in message
        assert exit_code_of(caught.value) == EXIT_INFRA
        assert s3rver_store.head(loc) is None
    assert s3rver_store.list(Loc(ART, PROBE_ROOT)) == []
