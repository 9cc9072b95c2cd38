"""The storage layout v1: bucket roles, Hive paths, and every object name of a job and of a
symbol's production, spelled in this one place."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Protocol

from trainer.store.base import Loc

CURATED_ROOT = "curated"
FEATURES_ROOT = "features"
ARTIFACTS_ROOT = "ml-artifacts"
PRODUCTION_ROOT = "models/production"
DATA_FILE = "data.parquet"
META_FILE = "meta.json"

RAW_BUCKET = "quantlab-raw"
COMPACT_BUCKET = "quantlab-compact"
ARTIFACTS_BUCKET = "quantlab-artifacts"

PROBE_ROOT = "quantlab-probes"
"""Short-lived objects written to check what an endpoint honours, then deleted."""

JOB_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
"""A job id is one path segment: lower case letters, digits, `.`, `_` and `-`, at most 63."""
SYMBOL_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
"""A symbol as the layout writes it: lower case, one path segment."""


class Buckets(Protocol):
    """The three bucket names; the JobSpec's `storage` section is one."""

    @property
    def raw_bucket(self) -> str: ...

    @property
    def compact_bucket(self) -> str: ...

    @property
    def artifacts_bucket(self) -> str: ...


def check_job_id(job_id: str) -> str:
    """The id, if it can name a job folder; ValueError saying why otherwise."""
    if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise ValueError(
            f"job id {job_id!r} cannot name a job folder: use lower case letters, digits, "
            "'.', '_' and '-' (at most 63, starting with a letter or digit)"
        )
    if ".." in job_id:
        raise ValueError(f"job id {job_id!r} cannot name a job folder: '..' is not allowed")
    return job_id


def check_symbol(symbol: str) -> str:
    """The symbol, if the layout can write it; ValueError saying why otherwise."""
    if not isinstance(symbol, str) or not re.fullmatch(SYMBOL_PATTERN, symbol):
        raise ValueError(f"symbol {symbol!r} must be lower case, as the layout writes it")
    return symbol


@dataclass(frozen=True)
class Partition:
    """One Hive leaf `exchange=/stream=/symbol=/date=`."""

    exchange: str
    stream: str
    symbol: str
    date: str

    def __post_init__(self) -> None:
        try:
            if len(self.date) != 8 or not self.date.isdigit():
                raise ValueError
            dt.datetime.strptime(self.date, "%Y%m%d")
        except ValueError:
            raise ValueError(f"date {self.date!r} is not a YYYYMMDD calendar day") from None
        for field, value in (("exchange", self.exchange), ("stream", self.stream)):
            if not value or "/" in value or "=" in value:
                raise ValueError(f"{field} {value!r} cannot be a Hive partition value")
        check_symbol(self.symbol)

    @property
    def hive_path(self) -> str:
        return (
            f"exchange={self.exchange}/stream={self.stream}/symbol={self.symbol}/date={self.date}"
        )


@dataclass(frozen=True)
class JobPaths:
    """Every object of one job, under `ml-artifacts/<jobId>/` in the artifacts bucket.

    A sweep's folder, `ml-artifacts/<sweepId>/`, is one too: the launcher watches it as a job
    (status, heartbeat, logs, the spec of its instance), and it holds `sweep.yaml` and
    `sweep.json` where a job holds its artifacts."""

    bucket: str
    job_id: str

    MANIFEST = "manifest.json"
    FAILURE = "failure.json"
    STATUS = "status.json"
    LAUNCHER_HEARTBEAT = "launcher-heartbeat.json"
    STOP_REQUEST = "stop-requested.json"
    LEASE = "lease.json"
    JOBSPEC = "jobspec.yaml"
    MODEL = "model.bin"
    CODE = "code.tar.gz"
    METRICS = "metrics.json"
    METRICS_LOG = "metrics.jsonl"
    TRAIN_LOG = "train.log"
    DATASET = "dataset.json"
    VAL_PREDICTIONS = "val_predictions.parquet"
    VAL_SAMPLE = "val_sample.parquet"
    IMPORTANCE = "importance.json"
    SUMMARY = "summary.json"
    SWEEP = "sweep.json"
    SWEEP_SPEC = "sweep.yaml"
    CHECKPOINTS = "checkpoints/"
    CHECKPOINT_POINTER = "checkpoints/latest.json"
    LOGS = "logs/"

    def __post_init__(self) -> None:
        check_job_id(self.job_id)

    @property
    def dir(self) -> Loc:
        return Loc(self.bucket, f"{ARTIFACTS_ROOT}/{self.job_id}/")

    def file(self, name: str) -> Loc:
        """An object of the job by its name relative to the job folder."""
        return self.dir.child(name)

    @property
    def manifest(self) -> Loc:
        return self.file(self.MANIFEST)

    @property
    def failure(self) -> Loc:
        return self.file(self.FAILURE)

    @property
    def status(self) -> Loc:
        return self.file(self.STATUS)

    @property
    def launcher_heartbeat(self) -> Loc:
        return self.file(self.LAUNCHER_HEARTBEAT)

    @property
    def stop_request(self) -> Loc:
        return self.file(self.STOP_REQUEST)

    @property
    def lease(self) -> Loc:
        """Which container runs the job (`store.lease`)."""
        return self.file(self.LEASE)

    @property
    def jobspec(self) -> Loc:
        return self.file(self.JOBSPEC)

    @property
    def model(self) -> Loc:
        return self.file(self.MODEL)

    @property
    def code(self) -> Loc:
        """The researcher's model code, packed: uploaded by the launcher, read by the job."""
        return self.file(self.CODE)

    @property
    def metrics(self) -> Loc:
        return self.file(self.METRICS)

    @property
    def metrics_log(self) -> Loc:
        return self.file(self.METRICS_LOG)

    @property
    def dataset(self) -> Loc:
        """`dataset.json`: the fingerprint of the data the job trained on."""
        return self.file(self.DATASET)

    @property
    def val_predictions(self) -> Loc:
        return self.file(self.VAL_PREDICTIONS)

    @property
    def val_sample(self) -> Loc:
        return self.file(self.VAL_SAMPLE)

    @property
    def importance(self) -> Loc:
        return self.file(self.IMPORTANCE)

    @property
    def summary(self) -> Loc:
        """The job's entry in the history, written after the manifest (not listed in it)."""
        return self.file(self.SUMMARY)

    @property
    def sweep(self) -> Loc:
        """`sweep.json` in a sweep's folder: its trials, their states and the best one."""
        return self.file(self.SWEEP)

    @property
    def sweep_spec(self) -> Loc:
        """`sweep.yaml` in a sweep's folder: the resolved sweep its instance runs."""
        return self.file(self.SWEEP_SPEC)

    @property
    def checkpoints(self) -> Loc:
        """The prefix of every checkpoint object and the pointer."""
        return self.file(self.CHECKPOINTS)

    @property
    def checkpoint_pointer(self) -> Loc:
        return self.file(self.CHECKPOINT_POINTER)

    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"checkpoints/step-{step:08d}.pt"

    def checkpoint(self, step: int) -> Loc:
        return self.file(self.checkpoint_name(step))

    @property
    def logs(self) -> Loc:
        return self.file(self.LOGS)

    def log(self, container_id: str | None) -> Loc:
        """The log a container ships; `local` when it runs outside Vast.ai."""
        return self.file(f"{self.LOGS}{container_id or 'local'}.log")


@dataclass(frozen=True)
class ProductionPaths:
    """Every object of one symbol's production, under `models/production/<symbol>/`.

    `manifest.json` is the live version, `objects/<sha256>.bin` the model bytes by content,
    `model.bin` the copy at the seed path, `history/<version>/` each replaced version."""

    bucket: str
    symbol: str

    MANIFEST = "manifest.json"
    MODEL = "model.bin"
    OBJECTS = "objects"
    HISTORY = "history"

    def __post_init__(self) -> None:
        check_symbol(self.symbol)

    @property
    def dir(self) -> Loc:
        return Loc(self.bucket, f"{PRODUCTION_ROOT}/{self.symbol}/")

    @property
    def manifest(self) -> Loc:
        return self.dir.child(self.MANIFEST)

    @property
    def model(self) -> Loc:
        """The seed path `models/production/<symbol>/model.bin`."""
        return self.dir.child(self.MODEL)

    def object(self, sha256: str) -> Loc:
        return self.dir.child(f"{self.OBJECTS}/{sha256}.bin")

    @property
    def history_dir(self) -> Loc:
        return self.dir.child(f"{self.HISTORY}/")

    def history(self, version: int, name: str) -> Loc:
        return self.dir.child(f"{self.HISTORY}/{version}/{name}")


@dataclass(frozen=True)
class Layout:
    """Resolves bucket roles and partitions to locations, per the storage layout v1."""

    raw_bucket: str = RAW_BUCKET
    compact_bucket: str = COMPACT_BUCKET
    artifacts_bucket: str = ARTIFACTS_BUCKET

    @classmethod
    def of(cls, buckets: Buckets) -> Layout:
        return cls(buckets.raw_bucket, buckets.compact_bucket, buckets.artifacts_bucket)

    # -- compact bucket ---------------------------------------------------------------
    def curated_dir(self, part: Partition) -> Loc:
        return Loc(self.compact_bucket, f"{CURATED_ROOT}/{part.hive_path}/")

    def feature_dir(self, part: Partition, featureset: str = "v1") -> Loc:
        return Loc(
            self.compact_bucket, f"{FEATURES_ROOT}/featureset={featureset}/{part.hive_path}/"
        )

    def feature_data(self, part: Partition, featureset: str = "v1") -> Loc:
        return self.feature_dir(part, featureset).child(DATA_FILE)

    def feature_meta(self, part: Partition, featureset: str = "v1") -> Loc:
        return self.feature_dir(part, featureset).child(META_FILE)

    # -- artifacts bucket -------------------------------------------------------------
    def job(self, job_id: str) -> JobPaths:
        return JobPaths(self.artifacts_bucket, job_id)

    @property
    def jobs_root(self) -> Loc:
        return Loc(self.artifacts_bucket, f"{ARTIFACTS_ROOT}/")

    def production(self, symbol: str) -> ProductionPaths:
        return ProductionPaths(self.artifacts_bucket, symbol)

    @property
    def production_root(self) -> Loc:
        return Loc(self.artifacts_bucket, f"{PRODUCTION_ROOT}/")


def conditional_write_probe(bucket: str, token: str) -> Loc:
    """The object the S3 store writes, conditionally and then deletes, to learn whether an
    endpoint honours `If-None-Match: *` and `If-Match` (`store.s3`)."""
    return Loc(bucket, f"{PROBE_ROOT}/conditional-writes-{token}")
