"""One contract every object store passes: the local folder and S3 on a loopback server."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.errors import ObjectNotFound, PreconditionFailed, StorageError
from trainer.store import ObjectStore
from trainer.store.base import Loc
from trainer.store.records import JobSummary, read_record, update_record

ART = "quantlab-artifacts"


def test_put_get_head_roundtrip(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/job-1/metrics.json")
    info = store.put(loc, b'{"ic": 0.3}')
    assert info.size == 11
    assert store.get(loc) == b'{"ic": 0.3}'
    head = store.head(loc)
    assert head is not None and head.size == 11 and head.etag == info.etag


def test_missing_object_is_typed(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/nope/model.bin")
    assert store.head(loc) is None
    assert not store.exists(loc)
    with pytest.raises(ObjectNotFound, match=r"nope/model\.bin"):
        store.get(loc)


def test_list_is_prefix_scoped_and_sorted(store: ObjectStore) -> None:
    for key in ("ml-artifacts/j2/b", "ml-artifacts/j1/z", "ml-artifacts/j1/a", "other/x"):
        store.put(Loc(ART, key), b"x")
    keys = [o.loc.key for o in store.list(Loc(ART, "ml-artifacts/j1/"))]
    assert keys == ["ml-artifacts/j1/a", "ml-artifacts/j1/z"]
    assert store.list(Loc(ART, "ml-artifacts/none/")) == []


def test_children_are_the_folders_right_under_a_prefix(store: ObjectStore) -> None:
    for key in ("ml-artifacts/j2/b", "ml-artifacts/j1/z", "ml-artifacts/j1/sub/a", "top.json"):
        store.put(Loc(ART, key), b"x")
    assert store.children(Loc(ART, "ml-artifacts/")) == ["j1", "j2"]
    assert store.children(Loc(ART, "ml-artifacts")) == ["j1", "j2"]
    assert store.children(Loc(ART, "ml-artifacts/j1/")) == ["sub"]
    assert store.children(Loc(ART, "nothing/")) == []


def test_get_many_reads_in_order_with_none_for_the_absent(store: ObjectStore) -> None:
    locs = [Loc(ART, f"ml-artifacts/j{i}/summary.json") for i in range(40)]
    for i, loc in enumerate(locs):
        if i % 3:
            store.put(loc, str(i).encode())
    got = store.get_many(locs)
    assert got == [None if i % 3 == 0 else str(i).encode() for i in range(40)]
    assert store.get_many([]) == []


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


def test_upload_download_delete(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00weights" * 1000)
    loc = Loc(ART, "ml-artifacts/job-1/model.bin")
    store.upload(loc, src)
    dst = tmp_path / "back.bin"
    store.download(loc, dst)
    assert dst.read_bytes() == src.read_bytes()
    store.delete(loc)
    store.delete(loc)  # deleting twice is fine
    assert store.head(loc) is None


def test_raw_bucket_is_read_only(store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="read-only"):
        store.put(Loc("quantlab-raw", "ticks/x.csv"), b"no")


def test_arrow_reads_what_the_store_wrote(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    loc = Loc("quantlab-compact", "features/featureset=v1/x/data.parquet")
    store.upload(loc, path)
    with store.arrow_fs().open_input_file(store.arrow_path(loc)) as f:
        assert pq.read_table(f).column("a").to_pylist() == [1, 2, 3]


def test_uri_names_the_real_place(store: ObjectStore) -> None:
    loc = Loc(ART, "ml-artifacts/j/model.bin")
    uri = store.uri(loc)
    assert uri.endswith("quantlab-artifacts/ml-artifacts/j/model.bin")
    assert uri.startswith(("s3://", "file://"))
