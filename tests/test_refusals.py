"""Inputs that used to crash with exit 1 or pass validation are refused by name: values that
are not YAML, path-like ids, oversized specs and spans, failing stores, a store that refuses
every checkpoint, and splits the data cannot hold."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BUCKETS, _point_at
from tests.helpers import cli, make_dataset, spec_dict, write_day, write_spec
from trainer.data.synth import SynthConfig
from trainer.errors import StorageError, exit_code_of
from trainer.spec import spec_from_dict
from trainer.store import ObjectStore, open_store
from trainer.store.layout import Layout, Partition
from trainer.train.checkpoint import MAX_FAILED_SAVES

SMALL = SynthConfig(rows_per_day=600, row_group_size=200, n_features=3)


@pytest.mark.parametrize("value", ["[1", "*a", "\t", "!!python/object/apply:os.system ['true']"])
def test_set_values_that_are_not_yaml_are_refused_by_their_key(value: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_dict())
    code, text = cli("validate", str(spec), "--set", f"train.lr={value}")
    assert code == 2, text
    assert "train.lr:" in text and "is not a YAML value" in text, text


@pytest.mark.parametrize(
    "args",
    [
        ["status", "../x"],
        ["logs", "../x"],
        ["stop", "a/b"],
        ["promote", "../x"],
        ["report", "../../etc"],
        ["compare", "job-a", "../x"],
        ["production", "../x"],
        ["rollback", "BTC"],
        ["jobs", "--symbol", "../x"],
        ["promote", "job-a", "--symbol", "../x"],
    ],
)
def test_path_like_ids_and_symbols_are_refused_before_any_store_key(
    args: list[str], tmp_path: Path
) -> None:
    code, text = cli(*args, "--store", f"file://{tmp_path / 'store'}")
    assert code == 2, text
    assert "cannot name a job folder" in text or "must be lower case" in text, text
    assert not (tmp_path / "store").exists()  # nothing was looked up, let alone written


def test_a_bad_symbol_is_one_problem_without_a_stray_length_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_dict())
    code, text = cli("validate", str(spec), "--set", "data.symbols=[../x]")
    assert code == 2
    assert "data.symbols.0: must be lower-case letters, digits" in text
    assert "Tuple should have" not in text and "1 problem(s)" in text


def test_a_spec_over_a_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text("# " + "x" * (1 << 20) + "\n")
    code, text = cli("validate", str(spec))
    assert code == 2 and "larger than 1 MiB" in text, text


def test_a_spec_that_aliases_expand_past_reason_is_refused(tmp_path: Path) -> None:
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 8):  # ten times more values at each level: 10^8 in eight lines
        levels.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    body = "\n".join(f"    {line}" for line in levels)
    spec = tmp_path / "bomb.yaml"
    spec.write_text(
        "data: {exchange: binance, stream: bbo, symbols: [btcusdt],\n"
        "       dates: {start: 20251201, end: 20251203}}\n"
        f"code: {{path: .}}\nmodel:\n  type: 'pkg.mod:build'\n  params:\n{body}\n"
    )
    code, text = cli("validate", str(spec))
    assert code == 2 and "expands to more than 100,000 values" in text, text


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ('data.dates.start="10000101"', "outside 19700101..20991231"),
        ('data.dates.end="99991231"', "outside 19700101..20991231"),
        ('data.dates.start="19760101"', "spans 18,263 days; a range spans at most 3,660"),
        ('data.dates.days=["20991232"]', "not a real calendar date"),
    ],
)
def test_dates_outside_the_era_or_over_ten_years_are_refused(
    override: str, says: str, tmp_path: Path
) -> None:
    raw = spec_dict(dates=("20251201", "20251231"))
    spec = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli("validate", str(spec), "--set", override)
    assert code == 2 and "data.dates" in text and says in text, text
    assert len(text.splitlines()) < 5


def test_too_many_partitions_are_refused(tmp_path: Path) -> None:
    symbols = [f"s{i:03d}" for i in range(20)]
    raw = spec_dict(dates=("20150101", "20221231"), symbols=tuple(symbols))
    code, text = cli("validate", str(write_spec(tmp_path / "spec.yaml", raw)))
    assert code == 2 and "58,440 partitions; at most 50,000" in text, text


def test_missing_partitions_print_as_date_ranges(local_store: ObjectStore, tmp_path: Path) -> None:
    raw = spec_dict(dates=("20250101", "20251231"))
    make_dataset(local_store, spec_from_dict(spec_dict(dates=("20250301", "20250302"))), SMALL)
    spec = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli("validate", str(spec), "--check-data", "--store", local_store.root)
    assert code == 3, text
    assert "dates 20250101..20250228, symbol btcusdt: 59 partitions missing" in text
    assert "dates 20250303..20251231, symbol btcusdt: 304 partitions missing" in text
    assert len(text.splitlines()) < 6, text


def test_validate_refuses_a_purge_longer_than_the_training_span(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    raw = spec_dict()  # three days, the last one for validation
    make_dataset(local_store, spec_from_dict(raw), SMALL)
    spec = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli(
        "validate", str(spec), "--check-data", "--store", local_store.root,
        "--set", "data.split.purge_sec=200000",
    )  # fmt: skip
    assert code == 3 and "data.split.purge_sec=200000 ends training" in text, text


def test_validate_refuses_all_nan_labels(local_store: ObjectStore, tmp_path: Path) -> None:
    raw = spec_dict()
    for date in spec_from_dict(raw).data.dates.resolve():
        part = Partition("binance", "bbo", "btcusdt", date)
        write_day(local_store, Layout(), part, SMALL,
                  lambda t: {"label": np.full(t.num_rows, np.nan, np.float32)})  # fmt: skip
    path = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli("validate", str(path), "--check-data", "--store", local_store.root)
    assert code == 3 and "no finite value in column(s) 'label'" in text, text


def test_validate_refuses_a_missing_artifacts_bucket(s3_store: ObjectStore, tmp_path: Path) -> None:
    raw = spec_dict(storage={"artifacts_bucket": "no-such-bucket"})
    make_dataset(s3_store, spec_from_dict(raw), SMALL)
    path = write_spec(tmp_path / "spec.yaml", raw)
    code, text = cli("validate", str(path), "--check-data", "--store", "s3://")
    assert code == 8 and "bucket no-such-bucket does not exist" in text, text


def test_a_store_lost_while_reading_data_is_infrastructure_not_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _point_at(f"http://{host}:{port}", monkeypatch)
    raw = spec_dict()
    make_dataset(open_store("s3://"), spec_from_dict(raw), SMALL)
    path = write_spec(tmp_path / "spec.yaml", raw)
    server.stop()  # gone for good
    code, text = cli("validate", str(path), "--check-data", "--store", "s3://")
    assert code == 8, text
    assert "internal error" not in text and "dataset pre-flight failed" not in text, text


def test_access_denied_on_a_footer_is_infrastructure_said_once(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every meta.json readable, every data.parquet's footer GET refused (a bucket policy
    that lets HEAD through): the store refused, so exit 8, never a damaged dataset."""
    from tests.fakes.s3_counter import CountingS3

    _point_at(s3_endpoint, monkeypatch)
    raw = spec_dict()
    make_dataset(open_store("s3://"), spec_from_dict(raw), SMALL)
    proxy = CountingS3(s3_endpoint)
    try:
        proxy.deny = lambda method, key: method == "GET" and key.endswith("/data.parquet")
        _point_at(proxy.url, monkeypatch)
        path = write_spec(tmp_path / "spec.yaml", raw)
        code, text = cli("validate", str(path), "--check-data", "--store", "s3://")
        assert code == 8, text
        assert "internal error" not in text and "dataset pre-flight failed" not in text, text
        assert "the store failed" in text and "credentials" in text, text
        assert len(text.splitlines()) < 4, text  # said once, not once per partition
        code, text = cli("run", str(path), "--store", "s3://", "--device", "cpu")
        assert code == 8, text
    finally:
        proxy.close()


def test_a_store_lost_in_the_middle_of_a_pass_is_infrastructure_not_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.server import ThreadedMotoServer

    from trainer.data.passes import read_split
    from trainer.data.plan import preflight

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _point_at(f"http://{host}:{port}", monkeypatch)
    store = open_store("s3://")
    spec = spec_from_dict(spec_dict())
    make_dataset(store, spec, SMALL)
    plan = preflight(spec.data, store, Layout())  # the footers read while the store was up
    server.stop()
    with pytest.raises(StorageError, match="the store failed") as failed:
        read_split(plan, store, "val")
    assert exit_code_of(failed.value) == 8


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """`folder` refusing new files, even to root (the immutable attribute)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not shutil.which("chattr"):
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a folder immutable here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_local_store_refusing_writes_is_a_clear_refusal_with_local_paths(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    raw = spec_dict(job={"id": "blocked"})
    make_dataset(local_store, spec_from_dict(raw), SMALL)
    path = write_spec(tmp_path / "spec.yaml", raw)
    jobs = tmp_path / "store" / BUCKETS.artifacts_bucket / "ml-artifacts"
    with unwritable(jobs):
        code, text = cli("run", str(path), "--store", local_store.root, "--device", "cpu")
    assert code == 8, text
    assert f"cannot write {jobs}/blocked/" in text, text
    assert "s3://" not in text and "internal error" not in text, text


def run_refusing_checkpoints(
    store: ObjectStore, tmp_path: Path, job_id: str, **train: object
) -> tuple[int, str, Path]:
    """`run` of a job whose checkpoints folder refuses every write: exit code, output, and the
    job's folder."""
    raw = spec_dict(job={"id": job_id})
    raw["train"].update(train)
    make_dataset(store, spec_from_dict(raw), SMALL)
    path = write_spec(tmp_path / "spec.yaml", raw)
    folder = tmp_path / "store" / BUCKETS.artifacts_bucket / "ml-artifacts" / job_id
    with unwritable(folder / "checkpoints"):
        code, text = cli("run", str(path), "--store", store.root, "--device", "cpu")
    return code, text, folder


@pytest.mark.slow
def test_a_refused_checkpoint_write_does_not_stop_the_run(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    # two epochs: one checkpoint after each, both refused, fewer than MAX_FAILED_SAVES
    code, text, folder = run_refusing_checkpoints(local_store, tmp_path, "some-checkpoints")
    assert code == 0, text
    assert "not saved: cannot write" in text and (folder / "manifest.json").exists()


def test_checkpoint_writes_stop_the_job_after_a_bounded_number_of_failures(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    code, text, _ = run_refusing_checkpoints(
        local_store, tmp_path, "no-checkpoints", epochs=3, checkpoint={"every_steps": 1}
    )
    assert code == 8, text
    assert f"{MAX_FAILED_SAVES} checkpoint writes in a row failed, the last at step " in text
    assert f"step {MAX_FAILED_SAVES}:" in text, text  # stopped there, not at the end


@pytest.mark.parametrize(
    "field", ["train.lr", "train.weight_decay", "promotion.min_ic", "limits.max_cost_usd"]
)
def test_nan_is_reported_as_not_finite_not_against_a_bound(field: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_dict())
    code, text = cli("validate", str(spec), "--set", f"{field}=.nan")
    assert code == 2 and f"{field}: must be a finite number" in text, text
    assert "greater" not in text and "less" not in text, text


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str = "96k") -> Iterator[None]:
    """`folder` on a file system of `size` bytes (a tmpfs: needs the right to mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_under_the_local_store_is_a_clear_refusal(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    raw = spec_dict(job={"id": "full"})
    make_dataset(local_store, spec_from_dict(raw), SMALL)
    path = write_spec(tmp_path / "spec.yaml", raw)
    with tiny_disk(tmp_path / "store" / BUCKETS.artifacts_bucket):
        code, text = cli("run", str(path), "--store", local_store.root, "--device", "cpu")
    assert code == 8, text
    assert "no space left on the device" in text and str(tmp_path / "store") in text, text
    assert "internal error" not in text and "s3://" not in text, text


@pytest.mark.parametrize("job_id", ["a..b", "../x", "x/y"])
def test_a_spec_job_id_that_cannot_name_a_folder_is_refused_by_the_spec(
    job_id: str, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(job={"id": job_id}))
    code, text = cli("run", str(spec), "--store", f"file://{tmp_path / 'store'}")
    assert code == 2 and "job.id:" in text, text
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "SPEC", "--rows-per-day", "-1"],
        ["generate", "SPEC", "--rows-per-day", "0"],
        ["generate", "SPEC", "--features", "0"],
        ["logs", "job-a", "--tail", "-5"],
        ["jobs", "--limit", "0"],
    ],
)
def test_numbers_on_the_command_line_are_refused_out_of_range(
    args: list[str], tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec.yaml", spec_dict())
    argv = [str(spec) if a == "SPEC" else a for a in args]
    code, text = cli(*argv, "--store", f"file://{tmp_path / 'store'}")
    assert code == 2 and "is not in 1.." in text, text
