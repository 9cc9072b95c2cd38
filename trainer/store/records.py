"""Every JSON document the runner stores, one frozen pydantic model each, and the two calls that
read and write them.

Writers build the model, readers get attributes: no stored document travels as a bare dict.
A document that is absent reads as None; one that does not parse is a VerificationError that
names its URI. Unknown keys are ignored on reading, so an older reader can read a newer
writer's document.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, computed_field

from trainer.errors import ObjectNotFound, PreconditionFailed, VerificationError
from trainer.store.base import Loc, ObjectInfo, ObjectStore


class Record(BaseModel):
    """Base of every stored document: frozen, unknown keys ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


R = TypeVar("R", bound=Record)


def utc_now() -> str:
    """Now, as every record writes a time: UTC ISO 8601 to the second, `Z` suffix."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def epoch_of(iso: str) -> float:
    """Epoch seconds of a time `utc_now` wrote."""
    return dt.datetime.fromisoformat(iso).timestamp()


def parse_record(kind: type[R], raw: bytes, where: str) -> R:
    """`raw` as a `kind`, or a VerificationError naming `where` and what is wrong."""
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise VerificationError(
            f"{where} is not a valid {kind.__name__} ({path}: {first['msg']}); it may be "
            "damaged or written by another tool"
        ) from None


def read_record(store: ObjectStore, loc: Loc, kind: type[R]) -> R | None:
    """The document at `loc`, None when absent."""
    try:
        raw = store.get(loc)
    except ObjectNotFound:
        return None
    return parse_record(kind, raw, store.uri(loc))


def read_records(store: ObjectStore, locs: Sequence[Loc], kind: type[R]) -> list[R | None]:
    """The documents at `locs`, read concurrently, in order; None for each absent one."""
    return [
        None if raw is None else parse_record(kind, raw, store.uri(loc))
        for loc, raw in zip(locs, store.get_many(locs), strict=True)
    ]


def write_record(
    store: ObjectStore,
    loc: Loc,
    record: Record,
    *,
    if_absent: bool = False,
    if_match: str | None = None,
) -> ObjectInfo:
    return store.put(loc, record.to_json(), if_absent=if_absent, if_match=if_match)


UPDATE_ATTEMPTS = 8


def update_record(
    store: ObjectStore, loc: Loc, kind: type[R], change: Callable[[R | None], R]
) -> R:
    """Read-modify-write of a document with more than one writer: `change(current)` is applied
    to what is stored (None when absent) and written only if nothing changed meanwhile; a lost
    race reads again. The write names the etag of the very body that was read."""
    for _ in range(UPDATE_ATTEMPTS):
        got = store.read(loc)
        info = got[1] if got else None
        current = parse_record(kind, got[0], store.uri(loc)) if got else None
        new = change(current)
        try:
            write_record(
                store, loc, new, if_absent=info is None, if_match=info.etag if info else None
            )
        except PreconditionFailed:
            continue
        return new
    raise PreconditionFailed(
        f"{store.uri(loc)} kept changing while it was updated ({UPDATE_ATTEMPTS} tries); retry"
    )


# -- evaluation and metrics ------------------------------------------------------------------
class EvalMetrics(Record):
    """One evaluation on the validation rows."""

    val_loss: float
    """Mean squared error of the predictions."""
    loss: float | None = None
    """The spec's `train.loss` on the validation rows, batched as in training (absent in
    documents written before the loss was reported)."""
    ic: float
    """Pearson correlation of predictions and labels."""
    rank_ic: float
    """Spearman correlation."""
    hit_rate: float
    """Share of rows where the prediction's sign matches a non-zero label's."""
    rows: int


class EvalRecord(EvalMetrics):
    """An evaluation during training, with where it happened."""

    step: int
    epoch: int


class StepRecord(Record):
    """A training-step line of `metrics.jsonl` (`kind: step`); eval lines are EvalRecords."""

    kind: Literal["step"] = "step"
    time: float = 0.0
    """Epoch seconds."""
    step: int
    epoch: int
    loss: float
    lr: float | None = None
    grad_norm: float | None = None
    rows_per_s: float | None = None
    rows_seen: int = 0
    eta_s: float | None = None
    total_steps: int | None = None
    gpu_mem_gb: float | None = None


class EvalLine(EvalRecord):
    """An evaluation line of `metrics.jsonl` (`kind: eval`)."""

    kind: Literal["eval"] = "eval"
    time: float = 0.0


MetricsLine = Annotated[StepRecord | EvalLine, Field(discriminator="kind")]
_METRICS_LINE: TypeAdapter[StepRecord | EvalLine] = TypeAdapter(MetricsLine)


def parse_metrics_log(raw: bytes, where: str) -> list[StepRecord | EvalLine]:
    """Every line of a `metrics.jsonl`, typed by its `kind`; VerificationError naming the
    line that does not parse."""
    out = []
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(_METRICS_LINE.validate_json(line))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise VerificationError(
                f"{where} line {n} is not a metrics record ({first['msg']})"
            ) from None
    return out


class PassRows(Record):
    """The rows of one pass over a split, counted block by block: what the footers planned,
    what was read, and where every row read went. `read == outside + dropped + short +
    used` always; `read == planned` for a pass that covered every planned row group."""

    row_groups: int
    """Row groups planned for the pass (each one is read)."""
    planned: int
    """Their rows, from the Parquet footers."""
    read: int
    """Rows decoded from the row groups read."""
    outside: int
    """Rows read outside the split's window: the purge gap, the other split, and the history
    before the split that windows reach back to."""
    dropped: int
    """Rows inside the window with a NaN or infinite label or feature (in their window, with
    `data.window` above 1)."""
    short: int = 0
    """Rows inside the window with too few earlier rows in their partition for a window."""
    used: int
    """Samples the pass served: what was trained on, evaluated or summed."""


class RowCounts(Record):
    """The rows each pass of a job covered (`metrics.json`, `rows`)."""

    statistics: PassRows
    """The feature statistics' sample of the training row groups (every one when the split
    is small enough), in rows: with `data.window` above 1 its `used` are the rows summed and
    the non-finite rows are counted in `outside`."""
    validation: PassRows
    """The validation split, every row group of it."""
    train: PassRows
    """The first training epoch this run read from its beginning, on every rank together;
    when there was none (training stopped inside it, or resumed inside it), what the last
    epoch read, from where it started."""
    epochs_read: int
    """Training epochs that read every row group of the split."""


class JobMetrics(Record):
    """`metrics.json`, also carried by the manifest."""

    final: EvalMetrics
    """The model as exported (the best weights), on every validation row."""
    best: EvalRecord | None
    best_step: int
    steps: int
    rows_seen: int
    stopped_early: bool
    train_seconds: float
    rows_dropped_non_finite: int
    """Training rows (windows, with `data.window` above 1) with a NaN or infinite value."""
    rows_dropped_short_window: int = 0
    """Training rows with fewer than `data.window - 1` earlier rows in their partition."""
    history: tuple[EvalRecord, ...]
    rows_seen_all_ranks: int
    world_size: int
    resumed_from_step: int | None
    checkpoints: tuple[int, ...]
    max_steps: int | None = None
    """The step budget: the epochs' steps, capped by `train.max_steps`."""
    pruned_at_step: int | None = None
    """Set when a sweep's pruning rule stopped the run at this step (the model is the best
    weights up to there)."""
    rows: RowCounts | None = None
    """Rows planned, read, dropped and used by each pass (absent in documents written before
    they were counted)."""


# -- the dataset ---------------------------------------------------------------------------
MAX_LABEL_HORIZON_SEC = 86_400
"""A label looking further ahead than a day is a damaged meta.json, not a feature set: the
horizon becomes the purge before the validation start."""


class PartitionMeta(Record):
    """`meta.json` beside every feature partition (storage layout v1, section 3). Strict:
    a number written as a string, a fraction or a boolean is a damaged file, never coerced;
    the ranges are those a real partition can have (its day is checked by the pre-flight)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    featureset_version: str
    symbol: str
    date: str
    rows: int = Field(ge=0)
    ts_min: int = Field(ge=0)
    """Epoch milliseconds of the first row."""
    ts_max: int = Field(ge=0)
    label_horizon_sec: int = Field(ge=0, le=MAX_LABEL_HORIZON_SEC)
    """How far ahead the label looks, seconds: the default purge before validation."""
    config_hash: str = Field(min_length=1)


# -- a job's prefix ------------------------------------------------------------------------
class FileEntry(Record):
    name: str
    size: int
    sha256: str


class DatasetRef(Record):
    config_hash: str
    featureset: str
    fingerprint: str | None = None
    """The `DatasetFingerprint.digest()` of the data the job trained on (`dataset.json`)."""


class ModelRef(Record):
    format: str
    features: tuple[str, ...]
    label: str


class JobManifest(Record):
    """`manifest.json`: written last and only if absent; its presence means complete."""

    job_id: str
    started_at: str
    ended_at: str
    committed_at: str
    code_version: str
    device: str
    dataset: DatasetRef
    model: ModelRef
    metrics: JobMetrics
    files: tuple[FileEntry, ...]


class FeatureEffect(Record):
    """What shuffling one feature across the validation sample does to the model."""

    feature: str
    ic_drop: float
    """Validation IC with the true column minus with the shuffled one (mean over repeats)."""
    loss_increase: float
    """Validation loss with the shuffled column minus with the true one."""


class FeatureImportance(Record):
    """`importance.json`: permutation importance of each feature on the validation sample."""

    rows: int
    repeats: int
    seed: int
    ic: float
    """The unshuffled sample's IC, the baseline of every `ic_drop`."""
    val_loss: float
    features: tuple[FeatureEffect, ...]


class PartitionFingerprint(Record):
    uri: str
    rows: int
    bytes: int
    config_hash: str
    footer_sha256: str = ""
    """sha256 of the Parquet footer's bytes (row groups, sizes, column statistics)."""


class DatasetFingerprint(Record):
    """`dataset.json`: what the model was trained on. Its `digest()` is part of the identity
    of a job whose id is derived, so new data is a new job."""

    featureset: str
    config_hash: str
    label_horizon_sec: int
    features: tuple[str, ...]
    label: str
    timestamp: str
    val_start_ms: int
    train_end_ms: int
    partitions: tuple[PartitionFingerprint, ...]

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field: equal digests, equal datasets."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


Cause = Literal["error", "limit", "signal", "heartbeat", "user", "outbid", "host_offline", "lease"]
"""Why a job ended without committing. `error`: the job itself failed. `limit`: its own
runtime limit. `heartbeat`: the launcher's heartbeat went stale. `signal`: something outside
the job stopped the container (a host stop, an outbid). `user`: `quantlab-train stop`.
`outbid` and `host_offline`: what the launcher saw happen to the instance. `lease`: another
container holds the job's lease, so this one did not run it (or stopped)."""

OUTSIDE_CAUSES: frozenset[str] = frozenset({"signal", "outbid", "host_offline"})
"""Causes outside the job: another host may well run it to the end."""


class FailureRecord(Record):
    """`failure.json`: why the job ended without a manifest."""

    job_id: str
    reason: str
    cause: Cause = "error"
    error: str = ""
    """The error's type name."""
    failed_at: str
    code_version: str = ""
    started_at: str | None = None
    instances: tuple[int, ...] = ()


class LeaseRecord(Record):
    """`lease.json`: which container runs the job; written only if absent, rewritten only by
    its holder (conditional writes), taken over only once it stops changing."""

    holder: str
    """The holding process: its instance id (or `local`) and a random suffix."""
    instance: str | None
    """The Vast.ai instance it runs on; None outside Vast.ai."""
    renew_every_s: float
    """How often the holder rewrites the record."""
    renewals: int = 0
    taken_at: str
    renewed_at: str
    released: bool = False
    """The holder is done without committing: the next container may take it at once."""


class Latest(Record):
    """The newest training-step figures."""

    loss: float | None = None
    lr: float | None = None
    rows_per_s: float | None = None
    eta_s: float | None = None
    grad_norm: float | None = None
    gpu_mem_gb: float | None = None


JobState = Literal[
    "starting", "training", "succeeded", "already_done", "dry_run", "worker", "failed", "stopped"
]


class StatusDoc(Record):
    """`status.json`: the container's live state, rewritten every few seconds."""

    job_id: str
    container_id: str | None
    state: JobState
    started_at: str
    step: int = 0
    epoch: int = 0
    rows_seen: int = 0
    latest: Latest = Latest()
    last_eval: EvalRecord | None = None
    total_steps: int | None = None
    """The step budget of the run (epochs capped by `max_steps`), once training began."""
    host: dict[str, Any] = {}
    """Host facts (hostname, CPUs, Python, torch, GPU): informational only."""
    updated_at: str | None = None
    updated_at_epoch: float | None = None
    reason: str | None = None
    cause: Cause | None = None
    metrics: EvalMetrics | None = None
    artifacts: str | None = None

    def written_by(self, instance_id: int | str) -> bool:
        return self.container_id is not None and str(self.container_id) == str(instance_id)


class LauncherHeartbeat(Record):
    """`launcher-heartbeat.json`: the launcher is alive (read by the dead-man switch)."""

    updated_at: float
    """Epoch seconds."""
    detached: bool = False
    """A detached launcher no longer beats: only the runtime limit applies."""
    instances: tuple[int, ...] = ()


class StopRequest(Record):
    """`stop-requested.json`: written by `stop` before it destroys anything."""

    requested_at: float
    """Epoch seconds."""
    by: str


class CheckpointPointer(Record):
    """`checkpoints/latest.json`: the newest complete checkpoint."""

    step: int
    epoch: int
    object: str
    """The checkpoint's name relative to the job folder."""
    size: int
    sha256: str
    saved_at: float


class ModelMeta(Record):
    """The metadata inside `model.bin` (its `quantlab.json`)."""

    job_id: str
    features: tuple[str, ...]
    label: str
    featureset: str
    config_hash: str
    label_horizon_sec: int
    format: str
    window: int = 1
    """Rows per sample (`data.window`): above 1 the model maps `[batch, window, features]`,
    the last `window` rows of one symbol and one day, oldest first, to `[batch]`."""
    model: str = "mlp"
    """`model.type`: a built-in name or the entry point `package.module:factory`."""
    loss: str = "mse"
    """`train.loss` it was trained with."""
    code_sha256: str | None = None
    """`code.sha256` of the researcher's code it was built from; None for built-ins."""


SENTINEL = "QUANTLAB_RESULT"
"""The first word of the container's last stdout line; the rest is a ResultSentinel."""


class ResultSentinel(Record):
    """The container's last stdout line: `QUANTLAB_RESULT {...}`."""

    job_id: str | None = None
    outcome: str
    """succeeded, already_done, dry_run, failed or stopped."""
    exit_code: int
    reason: str | None = None
    cause: Cause | None = None
    artifacts: str | None = None
    holder: str | None = None
    """With cause `lease`: the instance that holds the job."""

    def line(self) -> str:
        body = json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True)
        return f"{SENTINEL} {body}"

    @classmethod
    def parse_line(cls, line: str) -> ResultSentinel | None:
        """The sentinel a log line carries, None for any other line."""
        head, _, body = line.strip().partition(" ")
        if head != SENTINEL:
            return None
        try:
            return cls.model_validate_json(body)
        except ValidationError:
            return None


class AttemptRecord(Record):
    """One instance a launch rented or attached to, as the launcher saw it end."""

    launch: int = 1
    """Which launch of the job (1 for the first) rented it."""
    number: int
    instance_id: int
    offer_id: int | None = None
    machine_id: int = 0
    gpu: str = ""
    dph: float = 0.0
    attached: bool = False
    outcome: str
    reason: str = ""
    cause: Cause | None = None
    """Why a replaced instance ended: `outbid`, `host_offline`, or `signal` (stopped from
    outside, the provider never saying why). None for the others."""
    cost_usd: float
    provisioning_s: float = 0.0
    running_s: float = 0.0


class JobSummary(Record):
    """`summary.json`: the job's entry in the history, one read per job for `jobs`.

    Written by the job right after its manifest (so `committed` is only ever true for a
    committed job) and updated by each launch that ends with what it spent. It is an index,
    not evidence: it is not listed in the manifest, and a job without one is read from its
    other records."""

    job_id: str
    name: str = ""
    tags: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    """Every `YYYYMMDD` day the job trained and validated on, in order."""
    model: str = ""
    loss: str = ""
    committed: bool = False
    outcome: str | None = None
    """The last launch's outcome (succeeded, failed, limit_exceeded, …); None for a local run."""
    reason: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    metrics: EvalMetrics | None = None
    """Final validation metrics of the committed model."""
    train_rows: int | None = None
    """Training rows seen, all ranks together."""
    steps: int | None = None
    train_seconds: float | None = None
    cost_usd: float = 0.0
    """Every launch of the job together, dollars."""
    launches: int = 0
    attempts: tuple[AttemptRecord, ...] = ()
    """Every instance every launch of the job used, in order."""

    @property
    def date_span(self) -> str:
        """`20251201..20251203 (3 days)`, or the one day."""
        if not self.dates:
            return ""
        first, last, n = self.dates[0], self.dates[-1], len(self.dates)
        return first if n == 1 else f"{first}..{last} ({n} days)"


# -- sweeps ---------------------------------------------------------------------------------
TrialState = Literal["running", "complete", "pruned", "failed"]


class SweepTrial(Record):
    """One trial of a sweep, as `sweep.json` lists it."""

    number: int
    """From 0, in the order trials were started."""
    job_id: str
    """The trial's job: its artifacts, manifest and history entry are under this id."""
    params: dict[str, Any]
    """Field path → the value this trial set."""
    state: TrialState
    """`running`; `complete` (committed); `pruned` (committed, stopped early by the pruning
    rule); `failed` (its failure record says why)."""
    value: float | None = None
    """The objective of the committed model (its final validation metric)."""
    intermediate: tuple[tuple[int, float], ...] = ()
    """(training step, objective) at each evaluation."""
    steps: int | None = None
    """Optimizer steps trained."""
    planned_steps: int | None = None
    """The step budget the trial would have run without pruning."""
    pruned_at_step: int | None = None
    reason: str | None = None
    """Why a failed trial failed."""
    started_at: str | None = None
    ended_at: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def steps_saved(self) -> int:
        """Steps the pruning rule spared: the budget less what was trained (written to
        `sweep.json`; ignored when read back, as it follows from the other fields)."""
        if self.state != "pruned" or self.planned_steps is None or self.steps is None:
            return 0
        return max(self.planned_steps - self.steps, 0)


class SweepRecord(Record):
    """`sweep.json` in a sweep's folder: the space, every trial with its state, objective
    and pruned step, and the best trial. Rewritten as trials end; `state: committed` is
    written last, once every trial is accounted for, and the sweep is then never run again."""

    sweep_id: str
    name: str = ""
    state: Literal["running", "committed"] = "running"
    sampler: str
    seed: int = 0
    metric: str
    """The objective's validation metric."""
    maximize: bool
    pruning: str = "off"
    space: dict[str, dict[str, Any]]
    """Field path → its range, as the sweep spec gives it."""
    trials_planned: int
    trials: tuple[SweepTrial, ...] = ()
    best: int | None = None
    """The number of the best trial with a value (pruned ones compete too)."""
    started_at: str
    updated_at: str | None = None
    committed_at: str | None = None
    code_version: str = ""
    data_reads: int = 0
    """Times a data section was read from the store: once per distinct data section and
    instance, whatever the number of trials that share it."""
    cost_usd: float = 0.0
    """What the launches of the sweep spent, every instance together (0 for a local run)."""
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def best_trial(self) -> SweepTrial | None:
        return next((t for t in self.trials if t.number == self.best), None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def steps_saved(self) -> int:
        """Training steps pruning spared, every trial together (written to `sweep.json`)."""
        return sum(t.steps_saved for t in self.trials)

    def counts(self) -> dict[str, int]:
        """Trials per state."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


# -- the launcher's own cache --------------------------------------------------------------
class BadHost(Record):
    until: float
    """Epoch seconds; the host is skipped until then."""
    reason: str = ""


class BadHostsFile(Record):
    """`bad-hosts.json` in the launcher's cache folder: machine id → why and until when."""

    hosts: dict[int, BadHost] = {}


# -- production ----------------------------------------------------------------------------
class ProductionModel(Record):
    sha256: str
    size: int
    features: tuple[str, ...] | None = None
    label: str | None = None
    featureset: str | None = None
    config_hash: str | None = None


class GateRuleDoc(Record):
    max_ic_drop: float
    min_ic: float | None


class SampleCheck(Record):
    ic: float
    rows: int


PRODUCTION_FORMAT = "quantlab-production/v1"


class ProductionManifest(Record):
    """`models/production/<symbol>/manifest.json`: the live version; its conditional write
    is the commit point of a promotion or rollback."""

    format: str = PRODUCTION_FORMAT
    symbol: str
    version: int
    previous_version: int | None = None
    action: Literal["promote", "rollback", "legacy"]
    forced: bool = False
    gate: str = ""
    promoted_at: str | None = None
    promoted_by: str | None = None
    code_version: str | None = None
    source_job: str | None = None
    metrics: EvalMetrics | None = None
    sample: SampleCheck | None = None
    gate_rule: GateRuleDoc | None = None
    model: ProductionModel
    rollback_to: int | None = None
    """The version a rollback of this one restores."""
    restored_version: int | None = None
    rolled_back_from: int | None = None
