"""The property of damaged inputs: `validate --check-data` and `run` either refuse by name with
the documented exit code, or commit a job whose recorded rows, split bounds and metrics are
those of an independent recount. Nothing in between, and never exit 1.

Datasets and specs are damaged generatively (`tests/damaged_data.py`, `tests/damaged_specs.py`):
types, ranges, missing, duplicated and shifted values, empty and NaN row groups, timestamps off
the partition's day,
bad meta.json, spec values out of range or not YAML. Both commands run in-process through the
CLI entry point on a local store. The fast tier runs a fixed, bounded set of examples; the
slow tier runs more, and a few on loopback S3. `--hypothesis-show-statistics` lists the
damage classes each run covered."""

from __future__ import annotations

import contextlib
import json
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.damaged_data import (
    ARTIFACTS,
    COMPACT,
    Damage,
    Dataset,
    all_label_nan,
    clean,
    damaged_data,
    datasets,
)
from tests.damaged_specs import base_spec, set_path, spec_damages
from tests.helpers import cli
from tests.recount import recount, sha256

DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 130}

FAST = settings(
    max_examples=15,
    derandomize=True,  # a fixed seed: the same examples every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=400)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder that is also the system temp dir, so what `run` leaves there shows."""
    with tempfile.TemporaryDirectory(prefix="damage-") as tmp:
        before, tempfile.tempdir = tempfile.tempdir, str(Path(tmp) / "tmp")
        (Path(tmp) / "tmp").mkdir()
        try:
            yield Path(tmp)
        finally:
            tempfile.tempdir = before


class LocalPlace:
    """The case's files in a local store: written where the store reads them."""

    def store(self, root: Path) -> str:
        return f"file://{root}"

    def publish(self, root: Path) -> None:
        pass

    def fetch(self, root: Path) -> None:
        pass


@dataclass
class S3Place:
    """The case's files in loopback S3 (moto), emptied for each case: uploaded there, and the
    artifacts bucket's jobs downloaded back into the local folder the checks read."""

    endpoint: str

    def store(self, root: Path) -> str:
        return "s3://"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def publish(self, root: Path) -> None:
        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        s3 = self.client()
        for bucket in ("quantlab-raw", COMPACT, ARTIFACTS):
            s3.create_bucket(Bucket=bucket)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            bucket, key = path.relative_to(root).as_posix().split("/", 1)
            s3.upload_file(str(path), bucket, key)

    def fetch(self, root: Path) -> None:
        s3 = self.client()
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=ARTIFACTS, Prefix="ml-artifacts/"
        ):
            for obj in page.get("Contents", []):
                target = root / ARTIFACTS / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(ARTIFACTS, obj["Key"], str(target))


Place = LocalPlace | S3Place


def check(ds: Dataset, damages: list[Damage], tmp: Path, place: Place | None = None) -> None:
    """Write the damaged case, validate it, run it, and hold the outcome to the property."""
    place = place or LocalPlace()
    for d in damages:
        event(d.what)
    root = tmp / "store"
    ds.write(root)
    place.publish(root)
    raw = base_spec(ds)
    for d in damages:
        if d.spec_change is not None:
            d.spec_change(raw)
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    sets = [a for d in damages for o in d.overrides for a in ("--set", o)]
    args = [str(spec_path), "--store", place.store(root), *sets]

    refusing = [d for d in damages if d.expect == "refuse"]
    code, text = cli("validate", "--check-data", *args)
    assert code in DOCUMENTED and code != 1, text
    if code != 0:
        assert not all(d.expect == "accept" for d in damages), f"refused a good case: {text}"
        named = [d for d in damages if d.expect != "accept" and d.codes]
        assert any(code in d.codes for d in named), f"exit {code} for {damages}: {text}"
        assert any(t in text for d in named for t in d.targets), f"names none: {text}"
        run_code, run_text = cli("run", *args, "--device", "cpu")
        assert run_code == code, run_text  # `run` refuses the same way, before training
        place.fetch(root)
        jobs = root / ARTIFACTS / "ml-artifacts"
        left = {p.name for p in jobs.rglob("*") if p.is_file()} if jobs.exists() else set()
        assert left <= {"failure.json"}, left  # an explicit job id records why; nothing else
        return
    assert not refusing, f"validate passed {refusing}: {text}"
    code, text = cli("run", *args, "--device", "cpu")
    assert code == 0, f"validate said yes, run exited {code}: {text}"
    place.fetch(root)
    for d in damages:
        for o in d.overrides:
            key, _, value = o.partition("=")
            set_path(raw, key, yaml.safe_load(value))
    committed(ds, raw, root, tmp)


def committed(ds: Dataset, spec: dict[str, Any], root: Path, tmp: Path) -> None:
    """The one job in the store verifies, and its numbers are the recount's."""
    (job,) = (p for p in (root / ARTIFACTS / "ml-artifacts").iterdir() if p.is_dir())
    manifest = json.loads((job / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert sha256(job / entry["name"]) == entry["sha256"], entry
    assert not (job / "failure.json").exists()
    assert not list((tmp / "tmp").glob("job-*")), "run left its working folder"

    rc = recount(ds, spec)
    dataset = json.loads((job / "dataset.json").read_text())
    assert (dataset["val_start_ms"], dataset["train_end_ms"]) == (rc.val_start_ms, rc.train_end_ms)
    metrics = json.loads((job / "metrics.json").read_text())
    rows = metrics["rows"]
    train, val = rows["train"], rows["validation"]
    assert (train["planned"], train["read"]) == (rc.train_planned, rc.train_planned), rows
    assert (train["used"], train["dropped"]) == (rc.train_used, rc.train_dropped), rows
    assert (val["planned"], val["read"]) == (rc.val_planned, rc.val_planned), rows
    assert (val["used"], val["dropped"]) == (rc.val_used, rc.val_dropped), rows
    assert rows["statistics"] == train, rows
    assert metrics["rows_dropped_non_finite"] == rc.train_dropped
    epochs = spec["train"]["epochs"]
    assert rows["epochs_read"] == epochs
    assert metrics["rows_seen"] == epochs * rc.train_used

    table = pq.read_table(job / "val_predictions.parquet")
    label = table.column("label").to_numpy().astype(np.float64)
    pred = table.column("prediction").to_numpy().astype(np.float64)
    np.testing.assert_array_equal(
        np.sort(label.astype(np.float32)), rc.val_labels.astype(np.float32)
    )
    final = metrics["final"]
    assert final["rows"] == rc.val_used
    assert final["val_loss"] == pytest.approx(np.mean((pred - label) ** 2), rel=1e-4)
    ic = np.corrcoef(pred, label)[0, 1] if pred.std() > 0 else 0.0
    assert final["ic"] == pytest.approx(ic, abs=1e-4)


@st.composite
def data_cases(draw: st.DrawFn) -> tuple[Dataset, list[Damage]]:
    ds = draw(datasets())
    if draw(st.integers(0, 19)) == 0:
        return ds, [all_label_nan(ds)]
    return ds, draw(damaged_data(ds))


@st.composite
def spec_cases(draw: st.DrawFn) -> tuple[Dataset, list[Damage]]:
    ds = draw(datasets())
    return ds, [draw(spec_damages(ds))]


@st.composite
def mixed_cases(draw: st.DrawFn) -> tuple[Dataset, list[Damage]]:
    ds = draw(datasets())
    return ds, [*draw(damaged_data(ds)), draw(spec_damages(ds))]


@FAST
@given(data_cases())
def test_damaged_datasets_are_refused_by_name_or_committed_as_recounted(
    case: tuple[Dataset, list[Damage]],
) -> None:
    with scratch() as tmp:
        check(*case, tmp)


@FAST
@given(spec_cases())
def test_damaged_specs_are_refused_by_name_or_committed_as_recounted(
    case: tuple[Dataset, list[Damage]],
) -> None:
    with scratch() as tmp:
        check(*case, tmp)


def test_an_undamaged_dataset_commits_as_recounted() -> None:
    ds = clean(("btcusdt", "ethusdt"), n_days=3, rows=150, group_rows=40, horizon=10)
    with scratch() as tmp:
        check(ds, [], tmp)


@pytest.mark.slow
@SLOW
@given(st.one_of(data_cases(), spec_cases(), mixed_cases()))
def test_many_damaged_cases_hold_the_property(case: tuple[Dataset, list[Damage]]) -> None:
    with scratch() as tmp:
        check(*case, tmp)


@pytest.mark.slow
@settings(SLOW, max_examples=30, suppress_health_check=list(HealthCheck))
@given(st.one_of(data_cases(), spec_cases()))
def test_damaged_cases_on_s3_hold_the_property(
    s3_env: dict[str, str], case: tuple[Dataset, list[Damage]]
) -> None:
    with scratch() as tmp:
        check(*case, tmp, S3Place(s3_env["AWS_ENDPOINT_URL_S3"]))
