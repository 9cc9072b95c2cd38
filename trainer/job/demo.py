"""`quantlab-train demo`: the whole job on this machine, no account, key or GPU needed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from trainer.data.synth import SynthConfig, generate
from trainer.errors import SpecError
from trainer.job.artifacts import verify
from trainer.job.run import JobResult, run_job
from trainer.spec import JobSpec, load_spec
from trainer.store import open_store
from trainer.store.layout import Layout, Partition
from trainer.store.records import JobManifest

DEFAULT_ROOT = Path(".quantlab/store")
DEMO_SPEC = Path(__file__).resolve().parents[2] / "jobspecs" / "tiny-cpu.yaml"
"""The shipped spec the demo runs: three days of generated BTC/USDT features, a small MLP."""
DEMO_DATA = SynthConfig(rows_per_day=30_000, n_features=12, row_group_size=7_500)


def demo_spec(path: Path = DEMO_SPEC) -> JobSpec:
    if not path.is_file():
        raise SpecError(
            f"cannot find the demo spec {path}",
            ["run the demo from a checkout of the repository (pip install -e .)"],
        )
    return load_spec(path)


def run_demo(
    root: Path = DEFAULT_ROOT, spec_path: Path = DEMO_SPEC
) -> tuple[JobResult, JobManifest]:
    """Generate the dataset (once) into a local store at `root`, train on CPU, commit and
    verify the artifacts. Returns the job result and the verified manifest."""
    spec = demo_spec(spec_path)
    store = open_store(f"file://{root.resolve()}", read_only_buckets=[spec.storage.raw_bucket])
    layout = Layout.of(spec.storage)
    d = spec.data
    days = d.dates.resolve()
    last = Partition(d.exchange, d.stream, d.symbols[0], days[-1])
    if not store.exists(layout.feature_meta(last, d.featureset)):
        generate(store, layout, d.exchange, d.stream, d.symbols, days, DEMO_DATA)
    result = run_job(spec, store, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = verify(store, layout.job(result.job_id), Path(tmp))
    return result, manifest
