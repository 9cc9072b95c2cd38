"""The JobSpec sections: one closed pydantic model each, a docstring under every field."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer.spec.dates import YYYYMMDD_RE, date_span, parse_yyyymmdd
from trainer.spec.shapes import shaped_fields


class Section(BaseModel):
    """Base of every JobSpec section: frozen, unknown keys rejected, docstrings as help,
    every type strict as the published JSON Schema is (`trainer.spec.shapes`), and every
    number finite: `.nan` or `.inf` is never a setting (a NaN bound compares false and turns
    its check off; an infinite one is no limit)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
        strict=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _json_shapes(cls, data: Any) -> Any:
        return shaped_fields(cls.model_fields, data)


def _day_is_text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads an unquoted 20251229 as a number; the layout's days are text.
        raise ValueError(f'write the day in quotes, "{value}": unquoted, YAML reads it as a number')
    return value


def _real_day(value: str) -> str:
    if re.fullmatch(YYYYMMDD_RE, value, flags=re.ASCII):
        return value
    if len(value) == 8 and value.isascii() and value.isdigit():
        raise ValueError(f"{value} is not a real calendar date")
    raise ValueError(f'must be a day written "YYYYMMDD", e.g. "20251201", not "{value}"')


Yyyymmdd = Annotated[
    str,
    BeforeValidator(_day_is_text),
    AfterValidator(_real_day),
    Field(json_schema_extra={"pattern": YYYYMMDD_RE}),
]
"""A calendar day, `"YYYYMMDD"` in quotes; the schema's pattern checks the calendar too."""
JOB_ID_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class JobMeta(Section):
    id: str | None = Field(default=None, pattern=JOB_ID_RE)
    """Job id, the folder under `ml-artifacts/`. Default: derived from the spec's content and
    the dataset's fingerprint (`job-` + 12 hex digits), so the same spec on the same data is
    the same job, and new data is a new job. An explicit id that was committed with other
    data is refused (exit 9). Lower case letters, digits, `.`, `_` and `-`, never `..`."""
    name: str = Field(default="", max_length=200)
    """Human-readable name shown by `status` and `list`. Default: empty."""
    tags: tuple[str, ...] = ()
    """Free-form tags recorded in the manifest. Default: none."""

    @field_validator("id")
    @classmethod
    def _names_a_folder(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError(f"{value!r} cannot name a job folder: '..' is not allowed")
        return value


FIRST_DAY, LAST_DAY = "19700101", "20991231"
"""The days a partition can be: its timestamps are epoch milliseconds from 1970."""
MAX_SPAN_DAYS = 3_660
"""Days one `start`..`end` range spans at most: ten years."""
MAX_PARTITIONS = 50_000
"""Symbols times days at most: the pre-flight reads every partition's footer."""


def _given(key: str, kind: str) -> dict[str, Any]:
    """JSON Schema: `key` is present and not null."""
    return {"properties": {key: {"type": kind}}, "required": [key]}


class DateSelection(Section):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {"if": _given("start", "string"), "then": _given("end", "string")},
                {"if": _given("end", "string"), "then": _given("start", "string")},
                {
                    "anyOf": [
                        _given("start", "string"),
                        {"properties": {"days": {"minItems": 1}}, "required": ["days"]},
                    ]
                },
            ]
        }
    )

    start: Yyyymmdd | None = None
    """First day of an inclusive range, `"YYYYMMDD"` in quotes (unquoted, YAML reads a
    number), 19700101 to 20991231 (checked by `validate`). Default: no range."""
    end: Yyyymmdd | None = None
    """Last day of the inclusive range, `"YYYYMMDD"` in quotes. Required with `start`. A range
    spans at most 3660 days, ten years (checked by `validate`)."""
    days: tuple[Yyyymmdd, ...] = ()
    """Extra single days, `"YYYYMMDD"` in quotes, added to the range. Default: none."""

    @field_validator("start", "end")
    @classmethod
    def _day_in_era(cls, value: str | None) -> str | None:
        if value is not None:
            _in_era(value)
        return value

    @field_validator("end")
    @classmethod
    def _not_reversed(cls, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("start")
        if value is not None and start is not None and value < start:
            raise ValueError(f"{value} is before start {start}")
        return value

    @field_validator("days")
    @classmethod
    def _days_in_era(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for day in value:
            _in_era(day)
        return value

    @model_validator(mode="after")
    def _range_is_whole(self) -> DateSelection:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both `start` and `end`, or neither")
        if self.start is None and not self.days:
            raise ValueError("name at least one day: a `start`/`end` range or `days`")
        if self.start is not None and self.end is not None:
            span = (parse_yyyymmdd(self.end) - parse_yyyymmdd(self.start)).days + 1
            if span > MAX_SPAN_DAYS:
                raise ValueError(
                    f"{self.start}..{self.end} spans {span:,} days; a range spans at most "
                    f"{MAX_SPAN_DAYS:,} (ten years)"
                )
        return self

    def resolve(self) -> tuple[str, ...]:
        """Every selected day, sorted, without repeats."""
        span = date_span(self.start, self.end) if self.start and self.end else []
        return tuple(sorted(set(span) | set(self.days)))


def _in_era(day: str) -> None:
    parse_yyyymmdd(day)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{day} is outside {FIRST_DAY}..{LAST_DAY}, the days data can have")


class SplitSpec(Section):
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "allOf": [
                    _given("validation_days", "integer"),
                    _given("validation_fraction", "number"),
                ]
            }
        }
    )

    validation_days: int | None = Field(default=None, ge=1)
    """Hold out the last N days for validation. Exclusive with `validation_fraction`."""
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)
    """Hold out the last fraction of the period (by time) for validation. Default: 0.2 when
    neither option is given."""
    purge_sec: int | None = Field(default=None, ge=0)
    """Seconds of training rows dropped before the validation start, so no training label
    window reaches into validation. Default: the dataset's `label_horizon_sec`."""

    @model_validator(mode="after")
    def _one_rule(self) -> SplitSpec:
        if self.validation_days is not None and self.validation_fraction is not None:
            raise ValueError("give `validation_days` or `validation_fraction`, not both")
        return self

    @property
    def fraction(self) -> float | None:
        if self.validation_days is None and self.validation_fraction is None:
            return 0.2
        return self.validation_fraction


class DataSpec(Section):
    featureset: Literal["v1"] = "v1"
    """Feature set version, the `featureset=` partition. Default: `v1`."""
    exchange: str = Field(pattern=r"^[a-z0-9_-]+$")
    """Exchange partition, e.g. `binance`."""
    stream: str = Field(pattern=r"^[a-z0-9_-]+$")
    """Stream partition, e.g. `bbo`."""
    symbols: tuple[Annotated[str, Field(pattern=r"^[a-z0-9_-]+$")], ...] = Field(
        min_length=1, json_schema_extra={"uniqueItems": True}
    )
    """Symbols to train on, lower case as in the layout, e.g. `[btcusdt]`; each once (a
    symbol listed twice would read each of its partitions twice). Symbols times days: at
    most 50000 partitions."""
    dates: DateSelection
    """Which `date=` partitions to read."""
    timestamp_column: str = "ts"
    """Event time column, epoch milliseconds. Default: `ts`."""
    label_column: str = "label"
    """Target column. Default: `label`."""
    features: (
        Annotated[tuple[str, ...], Field(json_schema_extra={"minItems": 1, "uniqueItems": True})]
        | Literal["auto"]
    ) = "auto"
    """Feature columns in model input order (at least one, each once), or `auto`: every
    numeric column but the timestamp and the label, in file order. Default: `auto`."""
    split: SplitSpec = SplitSpec()
    """Chronological train/validation split."""
    non_finite: Literal["drop", "fail"] = "drop"
    """Rows whose label or any feature is NaN or infinite: `drop` (counted and reported) or
    `fail` the job. With `window` above 1, a sample holding such a value anywhere in its
    window is dropped (or fails the job) the same way. Default: `drop`."""
    window: int = Field(default=1, ge=1, le=4096)
    """Rows per sample: a sample is the `window` consecutive rows of one partition (one symbol,
    one day) in timestamp order, ending at the row whose label it carries, and the model sees
    `[batch, window, features]`. A window never crosses a partition: a row with fewer than
    `window - 1` earlier rows in its partition is no sample (counted and reported). The split
    and the purge go by the labelled row's timestamp, so a validation window may reach back
    before the validation start (past features, never labels). Default: 1, one row per
    sample, `[batch, features]`."""
    cache_gb: float | None = Field(default=None, ge=0)
    """Memory for decoded row groups kept for later epochs, GB (10^9 bytes), on the training
    device: GPU memory on CUDA. The first row groups that fit are kept for the whole job, so
    each later epoch reads only the rest. `0` turns the cache off. Default: `null`, sized
    from free memory: on CUDA 75% of what the GPU has free once the model is on it, less
    1 GiB; on CPU half of the host's available memory, shared by the ranks on the host."""
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Set by the runner, not by you: the sha256 of the dataset's fingerprint (every
    partition's rows, size, footer and `config_hash`), written into the resolved spec that
    travels with the job. The container refuses to train when the data no longer matches it.
    Default: unset."""

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataSpec:
        if self.timestamp_column == self.label_column:
            raise ValueError("`timestamp_column` and `label_column` must differ")
        return self

    @model_validator(mode="after")
    def _partitions_capped(self) -> DataSpec:
        count = len(self.symbols) * len(self.dates.resolve())
        if count > MAX_PARTITIONS:
            raise ValueError(
                f"`symbols` times `dates` names {count:,} partitions; at most "
                f"{MAX_PARTITIONS:,} in one job (the pre-flight reads each footer)"
            )
        return self

    @field_validator("symbols")
    @classmethod
    def _each_symbol_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({s for s in value if value.count(s) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return value

    @field_validator("features")
    @classmethod
    def _some_feature(
        cls, value: tuple[str, ...] | str, info: ValidationInfo
    ) -> tuple[str, ...] | str:
        if value == ():
            raise ValueError("names no column: list at least one, or `auto`")
        if isinstance(value, tuple):  # the two columns before it are in `info.data`
            twice = sorted({c for c in value if value.count(c) > 1})
            if twice:
                raise ValueError(f"lists {', '.join(map(repr, twice))} more than once")
            roles = {info.data.get("timestamp_column"), info.data.get("label_column")}
            clash = sorted(c for c in value if c in roles)
            if clash:
                raise ValueError(f"must not include {clash}: the timestamp or the label")
        return value


OPTIONS_OF = {
    "hidden": ("mlp",),
    "dropout": ("mlp", "tcn"),
    "activation": ("mlp", "tcn"),
    "channels": ("tcn",),
    "kernel_size": ("tcn",),
}
"""Which built-in models each model option applies to."""
ENTRY_POINT = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
"""`package.module:name`: a function or class in the researcher's code (`code.path`)."""
FACTORY_ARGS = ("n_features", "input_shape")
"""What the runner passes a model factory itself; `model.params` may not use these names."""


def is_entry_point(name: str) -> bool:
    return ":" in name


def _named(builtins: tuple[str, ...], what: str) -> tuple[str, AfterValidator]:
    """The pattern of a built-in name or an entry point, and a validator worded for people."""
    pattern = "^(" + "|".join(builtins) + "|" + ENTRY_POINT + ")$"

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            listed = ", ".join(f"`{b}`" for b in builtins)
            raise ValueError(f"must be {listed} or an entry point `package.module:{what}`")
        return value

    return pattern, AfterValidator(check)


_MODEL_PATTERN, _model_check = _named(("mlp", "linear", "tcn"), "factory")
_LOSS_PATTERN, _loss_check = _named(("mse", "huber", "ic"), "function")
ModelName = Annotated[str, Field(json_schema_extra={"pattern": _MODEL_PATTERN}), _model_check]
LossName = Annotated[str, Field(json_schema_extra={"pattern": _LOSS_PATTERN}), _loss_check]


class CodeSpec(Section):
    path: str = Field(min_length=1)
    """The researcher's model code: a folder of modules (and packages), or one `.py` file,
    relative to the current folder. It is packed into `code.tar.gz`, shipped with the job and
    imported from there; entry points in `model.type` and `train.loss` name its modules."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the packed code, part of the job's identity. Default: computed when the spec
    is resolved, before anything runs; give it to pin the code (a different tree is then
    refused)."""


class ModelSpec(Section):
    type: ModelName = "mlp"
    """The model. `mlp`: a feed-forward network; `linear`: linear regression, the baseline to
    beat (with `data.window` above 1 both take the window's rows side by side); `tcn`: a
    causal temporal convolution network over the window (needs `data.window` above 1), for
    signals that lie in the recent past; or `package.module:factory` in `code.path`, called
    with `n_features`, `input_shape` (one sample's shape: `[n_features]`, or `[window,
    n_features]` with `data.window` above 1) if it takes it, and `params`, returning an
    `nn.Module` from float32 `[batch, *input_shape]` to `[batch]`. Whichever it is, the
    runner standardizes the features first with the training rows' statistics, inside the
    exported model. Default: `mlp`."""
    params: dict[str, Any] = {}
    """Entry points only: keyword arguments for the factory. Default: none."""
    hidden: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = (256, 128)
    """`mlp` only: hidden layer widths. Default: `[256, 128]`."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """`mlp` and `tcn`: dropout after each hidden layer (each convolution). Default: 0."""
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    """`mlp` and `tcn`: hidden activation. Default: `gelu`."""
    channels: int = Field(default=64, ge=1, le=4096)
    """`tcn` only: channels of every convolution. Default: 64."""
    kernel_size: int = Field(default=3, ge=2, le=64)
    """`tcn` only: taps of each causal convolution; the dilations double layer by layer until
    the receptive field covers the whole window. Default: 3."""

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> ModelSpec:
        if self.params and not is_entry_point(self.type):
            raise ValueError("`params` only apply to an entry point `type`")
        clash = sorted(set(FACTORY_ARGS) & set(self.params))
        if clash:
            raise ValueError(f"`params` may not set {', '.join(clash)}: the runner passes them")
        # Compared with the defaults, not with what was written: a dumped spec lists all.
        fields = type(self).model_fields
        for option, types in OPTIONS_OF.items():
            if self.type not in types and getattr(self, option) != fields[option].default:
                only = " and ".join(f"`type: {t}`" for t in types)
                raise ValueError(f"{option} only applies to {only}")
        return self


class EarlyStopping(Section):
    metric: Literal["loss", "val_loss", "ic", "rank_ic", "hit_rate"] = "val_loss"
    """Validation metric watched: `loss` (the spec's `train.loss`) or `val_loss` (mean squared
    error), lower is better; `ic`, `rank_ic` or `hit_rate`, higher is better.
    Default: `val_loss`."""
    patience: int = Field(default=5, ge=1)
    """Evaluations without improvement before training stops. Default: 5."""
    min_delta: float = Field(default=0.0, ge=0, le=1e6)
    """Smallest change that counts as an improvement, in the metric's units (at most 1e6).
    Default: 0."""


class CheckpointSpec(Section):
    every_steps: int | None = Field(default=None, ge=1)
    """Checkpoint every N optimizer steps. Default: off (time-based only)."""
    every_minutes: float | None = Field(default=10.0, gt=0)
    """Checkpoint every N minutes of training. Default: 10. `null` turns time-based off."""
    keep: int = Field(default=2, ge=1)
    """Checkpoints kept in the store; older ones are deleted. Default: 2."""


class TrainSpec(Section):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {
                            "not": {
                                "properties": {"epochs": {"type": "null"}},
                                "required": ["epochs"],
                            }
                        },
                        _given("max_steps", "integer"),
                    ]
                },
                {
                    "if": {
                        "not": {"properties": {"loss": {"const": "huber"}}, "required": ["loss"]}
                    },
                    "then": {"properties": {"huber_delta": {"const": 1.0}}},
                },
            ]
        }
    )

    epochs: int | None = Field(default=3, ge=1)
    """Passes over the training rows. Default: 3. With `max_steps`, whichever ends first."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps. Default: no step limit."""
    batch_size: int = Field(default=4096, ge=1, le=1_048_576)
    """Rows per optimizer step (per GPU). Default: 4096."""
    optimizer: Literal["adamw"] = "adamw"
    """Optimizer. Default: `adamw`."""
    loss: LossName = "mse"
    """Training objective: `mse`; `huber`, squared below `huber_delta` and linear above, for
    fat-tailed labels; `ic`, minus the Pearson correlation of predictions and labels within
    each batch (scale-free: the predictions' size is not learnt, so `val_loss` means little);
    or `package.module:function` in `code.path`, `(pred [batch], target [batch]) -> scalar`,
    lower is better. Default: `mse`."""
    huber_delta: float = Field(default=1.0, gt=0)
    """`huber` only: where the loss turns from squared to linear, in label units; set it near
    a typical label's size. Default: 1."""
    lr: float = Field(default=1e-3, gt=0, le=10)
    """Peak learning rate. Default: 1e-3."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up. Default: `cosine`."""
    warmup_steps: int = Field(default=100, ge=0)
    """Linear warm-up steps from 0 to `lr`. Default: 100."""
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    """AdamW weight decay, 0 to 1 (above 1 each step would shrink the weights by more than
    the learning rate moves them). Default: 0.01."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; `null` turns clipping off. Default: 1.0."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Autocast precision on CUDA. `bf16` falls back to fp32 on cards without bf16 and on
    CPU. Default: `bf16`."""
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    """Seed for weights, shuffling and dropout, 0 to 2^63 - 1 (what every generator the
    runner seeds accepts). Default: 0."""
    eval_every_steps: int = Field(default=500, ge=1)
    """Evaluate on the validation rows every N steps, and at the end. Default: 500."""
    log_every_steps: int = Field(default=50, ge=1)
    """One progress line every N steps. Default: 50."""
    early_stopping: EarlyStopping | None = None
    """Stop when the validation metric stops improving. Default: off."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Resumable checkpoints under `ml-artifacts/<jobId>/checkpoints/`."""
    shuffle_buffer_row_groups: int = Field(default=4, ge=1)
    """Row groups mixed together when shuffling rows. Default: 4."""

    @model_validator(mode="after")
    def _some_stop(self) -> TrainSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give `epochs`, `max_steps` or both")
        if self.huber_delta != 1.0 and self.loss != "huber":
            raise ValueError("`huber_delta` only applies to `loss: huber`")
        return self


class ResourcesSpec(Section):
    gpu_names: tuple[str, ...] = Field(
        default=("RTX 4090", "RTX 3090", "A100 SXM4", "H100 SXM"), min_length=1
    )
    """Accepted GPU models, as Vast.ai names them (`RTX 4090`); at least one."""
    num_gpus: int = Field(default=1, ge=1, le=16)
    """GPUs on one machine; above 1 the job runs under `torchrun`. Default: 1."""
    min_gpu_ram_gb: float = Field(default=16, gt=0)
    """Minimum memory per GPU, GB. Default: 16."""
    min_cuda: float = Field(default=12.1, ge=10)
    """Minimum CUDA version the host driver supports. Default: 12.1."""
    disk_gb: int = Field(default=40, ge=8, le=4096)
    """Container disk, GB (Vast's minimum is 8). Default: 40."""
    image: str = Field(default="ghcr.io/quantlab/trainer:0.1.0", min_length=1, max_length=1024)
    """Container image with the training entrypoint."""
    interruptible: bool = False
    """Rent an interruptible (bid) instance, 50-80% cheaper, stopped when outbid. Default: no."""
    bid_markup: float = Field(default=1.1, ge=1.0, le=5.0)
    """Bid = offer's `min_bid` × this factor (interruptible only). Default: 1.1."""
    max_price_per_hour: float = Field(default=2.0, gt=0, le=128)
    """Highest price accepted, dollars per hour for the whole instance. Default: 2.0."""
    min_reliability: float = Field(default=0.98, ge=0, le=1)
    """Host reliability score floor. Default: 0.98."""
    verified_only: bool = True
    """Only Vast-verified hosts. Default: yes."""
    min_download_mbps: float = Field(default=500, ge=0)
    """Host download bandwidth floor, Mbit/s; the dataset streams over it. Default: 500."""


class LimitsSpec(Section):
    max_runtime_minutes: float = Field(default=240, gt=0, le=43_200)
    """Wall-clock limit of the job from instance start, at most 30 days (43200); then it is
    destroyed. Default: 240."""
    max_cost_usd: float = Field(default=20.0, gt=0, le=100_000)
    """Money limit across all attempts of the job, dollars, at most 100000: a limit is a
    finite number. Default: 20."""
    provision_timeout_minutes: float = Field(default=15, gt=0)
    """Time an instance may take from create to the first heartbeat. Default: 15."""
    heartbeat_timeout_minutes: float = Field(default=30, ge=0)
    """The container destroys itself when the launcher's heartbeat is older than this;
    0 turns the dead-man switch off. Default: 30."""
    max_attempts: int = Field(default=3, ge=1, le=20)
    """Instances rented for one job at most (interruptions, bad hosts). Default: 3."""
    retry_window_minutes: float = Field(default=120, gt=0)
    """Replacement instances (after an interruption or a bad host) are rented only within
    this many minutes of the first one ending. Default: 120."""


RAW_BUCKET = "quantlab-raw"
BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_WRITABLE: dict[str, Any] = {"pattern": BUCKET_RE, "not": {"const": RAW_BUCKET}}


class StorageSpec(Section):
    raw_bucket: str = Field(default=RAW_BUCKET, json_schema_extra={"pattern": BUCKET_RE})
    """Raw tick bucket (read-only, never written). Default: `quantlab-raw`."""
    compact_bucket: str = Field(default="quantlab-compact", json_schema_extra=_WRITABLE)
    """Curated data and feature bucket. Never the raw bucket, whatever `raw_bucket` names:
    the storage layout's `quantlab-raw` is read-only in every role. Default:
    `quantlab-compact`."""
    artifacts_bucket: str = Field(default="quantlab-artifacts", json_schema_extra=_WRITABLE)
    """Job artifacts and production models. Neither the raw nor the compact bucket, and
    never the storage layout's `quantlab-raw`: two roles never share a bucket. Default:
    `quantlab-artifacts`."""

    @field_validator("raw_bucket", "compact_bucket", "artifacts_bucket")
    @classmethod
    def _bucket_name(cls, value: str, info: ValidationInfo) -> str:
        if not re.fullmatch(BUCKET_RE, value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name")
        if info.field_name == "raw_bucket":
            return value
        if value == cls.model_fields["raw_bucket"].default:
            raise ValueError(
                f"{value!r} is the storage layout's raw bucket, which is never written; "
                "name a bucket of its own"
            )
        # the fields are validated in order: the earlier roles are in `info.data`
        for role in ("raw_bucket", "compact_bucket"):
            if role != info.field_name and info.data.get(role) == value:
                raise ValueError(
                    f"{value!r} is already storage.{role}: two roles never share a bucket"
                )
        return value


class PromotionSpec(Section):
    auto: bool = False
    """Promote to production after a successful launch, if the gate passes. Default: no."""
    max_ic_drop: float = Field(default=0.0, ge=0, le=2)
    """Gate: the candidate's validation IC may be at most this much below production's
    (0 to 2, the widest gap two correlations can have). Default: 0."""
    min_ic: float | None = Field(default=None, ge=-1, le=1)
    """Gate: the candidate's validation IC must be at least this, -1 to 1 (a correlation).
    Default: no floor."""


class JobSpec(Section):
    """A complete training job: dataset, model, training, resources, limits, storage."""

    job: JobMeta = JobMeta()
    """Identity of the job."""
    code: CodeSpec | None = None
    """The researcher's own model code, shipped with the job. Default: none (built-ins only)."""
    data: DataSpec
    """Which feature partitions to train on, and how to split them."""
    model: ModelSpec = ModelSpec()
    """The model to train."""
    train: TrainSpec = TrainSpec()
    """Optimisation settings."""
    resources: ResourcesSpec = ResourcesSpec()
    """The GPU machine to rent on Vast.ai."""
    limits: LimitsSpec = LimitsSpec()
    """Runtime and money limits; reaching one destroys the instance."""
    storage: StorageSpec = StorageSpec()
    """Bucket names, per the storage layout."""
    promotion: PromotionSpec = PromotionSpec()
    """Production promotion rules."""

    @field_validator("model")
    @classmethod
    def _model_fits_the_window(cls, model: ModelSpec, info: ValidationInfo) -> ModelSpec:
        data = info.data.get("data")  # validated first: it comes before `model`
        if model.type == "tcn" and isinstance(data, DataSpec) and data.window == 1:
            raise ValueError(
                "`type: tcn` convolves over a window of rows: set data.window above 1 (e.g. 32)"
            )
        return model

    @field_validator("model", "train")
    @classmethod
    def _entry_points_have_code(
        cls, section: ModelSpec | TrainSpec, info: ValidationInfo
    ) -> ModelSpec | TrainSpec:
        # `code` comes first; absent from info.data when it failed its own validation
        key, name = (
            ("type", section.type) if isinstance(section, ModelSpec) else ("loss", section.loss)
        )
        if is_entry_point(name) and "code" in info.data and info.data["code"] is None:
            raise ValueError(f"`{key}: {name}` is an entry point; give `code.path`, its code")
        return section

    @property
    def job_id(self) -> str:
        """The explicit id, else the one derived from the resolved spec (`derived_job_id`)."""
        return self.job.id or derived_job_id(self)

    @property
    def resolved(self) -> bool:
        """Whether the job's identity is known: an explicit id, or the content resolved."""
        return self.job.id is not None or self.resolved_content

    @property
    def resolved_content(self) -> bool:
        """Whether what the spec points at is hashed into it: the dataset fingerprinted and
        the code, if any, hashed."""
        code_hashed = self.code is None or self.code.sha256 is not None
        return self.data.fingerprint is not None and code_hashed


class UnresolvedSpec(RuntimeError):
    """A derived job id was asked of a spec whose dataset or code was not hashed yet."""


def derived_job_id(spec: JobSpec) -> str:
    """`job-` + 12 hex digits of the hash of everything in the spec but the id itself, the
    dataset's fingerprint (`data.fingerprint`) and the code's hash (`code.sha256`) included:
    the one place a job's identity is computed. Everything that makes the job what it is (the
    data, the code, any other content the runner resolves into the spec) must be a field of
    the spec by the time this is called."""
    if not spec.resolved_content:
        raise UnresolvedSpec(
            "the job id is derived from the spec, its dataset and its code: resolve the spec "
            "against the store first (trainer.job.identity.resolve)"
        )
    data = spec.model_dump(mode="json")
    data["job"].pop("id", None)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return f"job-{digest[:12]}"
