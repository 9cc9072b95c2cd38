"""The storage layout v1: bucket roles and Hive paths, the one place they are spelled."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.spec.dates import parse_yyyymmdd
from trainer.spec.model import StorageSpec

CURATED_ROOT = "curated"
FEATURES_ROOT = "features"
ARTIFACTS_ROOT = "ml-artifacts"
PRODUCTION_ROOT = "models/production"
DATA_FILE = "data.parquet"
META_FILE = "meta.json"


@dataclass(frozen=True, order=True)
class Loc:
    """One object (or prefix) in a bucket. `str()` is its canonical `s3://` URI."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> Loc:
        return Loc(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Partition:
    """One Hive leaf `exchange=/stream=/symbol=/date=`."""

    exchange: str
    stream: str
    symbol: str
    date: str

    def __post_init__(self) -> None:
        parse_yyyymmdd(self.date)
        for field, value in (("exchange", self.exchange), ("stream", self.stream)):
            if not value or "/" in value or "=" in value:
                raise ValueError(f"{field} {value!r} cannot be a Hive partition value")
        if not self.symbol or self.symbol != self.symbol.lower() or "/" in self.symbol:
            raise ValueError(f"symbol {self.symbol!r} must be lower case, as the layout writes it")

    @property
    def hive_path(self) -> str:
        return (
            f"exchange={self.exchange}/stream={self.stream}/symbol={self.symbol}/date={self.date}"
        )


class Layout:
    """Resolves bucket roles and partitions to locations, per the storage layout v1."""

    def __init__(self, buckets: StorageSpec | None = None) -> None:
        self.buckets = buckets or StorageSpec()

    # -- compact bucket ---------------------------------------------------------------
    def curated_dir(self, part: Partition) -> Loc:
        return Loc(self.buckets.compact_bucket, f"{CURATED_ROOT}/{part.hive_path}/")

    def feature_dir(self, part: Partition, featureset: str = "v1") -> Loc:
        return Loc(
            self.buckets.compact_bucket,
            f"{FEATURES_ROOT}/featureset={featureset}/{part.hive_path}/",
        )

    def feature_data(self, part: Partition, featureset: str = "v1") -> Loc:
        return self.feature_dir(part, featureset).child(DATA_FILE)

    def feature_meta(self, part: Partition, featureset: str = "v1") -> Loc:
        return self.feature_dir(part, featureset).child(META_FILE)

    # -- artifacts bucket -------------------------------------------------------------
    def job_dir(self, job_id: str) -> Loc:
        if not job_id or "/" in job_id:
            raise ValueError(f"job id {job_id!r} cannot be a path segment")
        return Loc(self.buckets.artifacts_bucket, f"{ARTIFACTS_ROOT}/{job_id}/")

    def job_file(self, job_id: str, name: str) -> Loc:
        return self.job_dir(job_id).child(name)

    def production_dir(self, symbol: str) -> Loc:
        if not symbol or symbol != symbol.lower() or "/" in symbol:
            raise ValueError(f"symbol {symbol!r} must be lower case, as the layout writes it")
        return Loc(self.buckets.artifacts_bucket, f"{PRODUCTION_ROOT}/{symbol}/")

    def production_file(self, symbol: str, name: str) -> Loc:
        return self.production_dir(symbol).child(name)

    # -- guard ------------------------------------------------------------------------
    def check_writable(self, loc: Loc) -> None:
        """Nothing is ever written to the raw bucket."""
        if loc.bucket == self.buckets.raw_bucket:
            raise PermissionError(f"{loc} is in the raw bucket, which is read-only")
