"""The researcher's own model and loss through `run`: trained, exported behind the runner's
normalization, loadable without their code, and their prints masked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import job_predictions, make_dataset, predict_in_bare_python, spec_dict
from trainer.data.loader import read_split_arrays
from trainer.data.passes import read_split
from trainer.data.plan import preflight
from trainer.data.synth import SynthConfig
from trainer.errors import JobFailed
from trainer.job.run import run_job
from trainer.model.code import resolve_code
from trainer.model.export import load_model
from trainer.redact import MASK
from trainer.spec import JobSpec, spec_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TINY = SynthConfig(rows_per_day=2_000, row_group_size=500)


def user_spec(code: Path, model: str, loss: str = "mse", **params: object) -> JobSpec:
    raw = spec_dict(code={"path": str(code)}, train={"loss": loss, "epochs": 1})
    raw["model"] = {"type": model, "params": params}
    return resolve_code(spec_from_dict(raw))


def code_module(tmp: Path, name: str, source: str) -> Path:
    """A code folder under `tmp` holding the module `name`."""
    src = tmp / "code"
    src.mkdir()
    (src / f"{name}.py").write_text(source)
    return src


def gated(job_id: str) -> JobSpec:
    spec = user_spec(
        EXAMPLES, "gated_residual:GatedResidual", "gated_residual:log_cosh", width=16, blocks=2
    )
    return spec.model_copy(update={"job": spec.job.model_copy(update={"id": job_id})})


def test_a_gated_residual_with_its_own_loss_trains_and_says_what_it_was(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    spec = gated("gated")
    make_dataset(local_store, spec, TINY)
    result = run_job(spec, local_store, device="cpu", workdir=tmp_path / "job")
    assert result.outcome == "succeeded" and result.manifest is not None
    assert result.final is not None and result.final.loss is not None
    assert "code.tar.gz" in {f.name for f in result.manifest.files}
    assert local_store.exists(layout.job("gated").code)
    model, meta = load_model(tmp_path / "job" / "model.bin")
    assert (meta.model, meta.loss) == ("gated_residual:GatedResidual", "gated_residual:log_cosh")
    assert spec.code is not None and meta.code_sha256 == spec.code.sha256
    names = {name for name, _ in model.named_parameters()}
    assert "model.blocks.1.weight" in names  # the researcher's module, behind Normalized
    assert "gated_residual" not in sys.modules  # forgotten once the job ended


def test_a_factory_given_the_window_shape_trains_on_windows(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    src = code_module(
        tmp_path,
        "seq",
        "import math\n"
        "from torch import nn\n"
        "def build(n_features, input_shape, hidden):\n"
        "    assert input_shape == (4, n_features), input_shape\n"
        "    return nn.Sequential(\n"
        "        nn.Flatten(1), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),\n"
        "        nn.Linear(hidden, 1), nn.Flatten(0),\n"
        "    )\n",
    )
    raw = spec_dict(code={"path": str(src)}, data={"window": 4}, train={"epochs": 1})
    raw["model"] = {"type": "seq:build", "params": {"hidden": 8}}
    spec = resolve_code(spec_from_dict(raw))
    make_dataset(local_store, spec, TINY)
    run_job(spec, local_store, device="cpu", workdir=tmp_path / "job")
    model, meta = load_model(tmp_path / "job" / "model.bin")
    assert meta.window == 4 and meta.model == "seq:build"
    val = read_split(preflight(spec.data, local_store, layout), local_store, "val", window=4)
    pred = model(torch.from_numpy(val.inputs(slice(None)))).detach().numpy()
    np.testing.assert_allclose(pred, job_predictions(tmp_path / "job")[1], rtol=1e-5, atol=1e-5)


def test_the_readme_shows_the_shipped_example_whole() -> None:
    example = (EXAMPLES / "gated_residual.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "README.md").read_text()


def test_what_the_model_code_prints_reaches_train_log_with_secrets_masked(
    local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    src = code_module(
        tmp_path,
        "loud",
        "import os, sys\n"
        "from torch import nn\n"
        "def build(n_features):\n"
        "    print('building with', os.environ['AWS_SECRET_ACCESS_KEY'])\n"
        "    print('and on stderr', os.environ['AWS_SECRET_ACCESS_KEY'], file=sys.stderr)\n"
        "    return nn.Sequential(nn.Linear(n_features, 1), nn.Flatten(0))\n",
    )
    spec = user_spec(src, "loud:build")
    make_dataset(local_store, spec, TINY)
    run_job(spec, local_store, device="cpu", workdir=tmp_path / "job", dry_run=True)
    log = (tmp_path / "job" / "train.log").read_text()
    assert f"building with {MASK}" in log and f"and on stderr {MASK}" in log
    out, err = capfd.readouterr()
    assert secret not in log + out + err


def test_an_error_in_forward_during_training_names_the_researchers_line(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    src = code_module(
        tmp_path,
        "late",
        "import torch\n"
        "from torch import nn\n"
        "class Late(nn.Module):\n"
        "    def __init__(self, n_features):\n"
        "        super().__init__()\n"
        "        self.head = nn.Linear(n_features, 1)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if self.calls > 3:\n"
        "            raise RuntimeError('ran out of patience')\n"
        "        return self.head(x).squeeze(-1)\n",
    )
    spec = user_spec(src, "late:Late")
    make_dataset(local_store, spec, TINY)
    with pytest.raises(JobFailed) as info:
        run_job(spec, local_store, device="cpu")
    assert str(info.value) == (
        f"model code failed at {src}/late.py:11: RuntimeError: ran out of patience"
    )


@pytest.mark.slow
def test_model_bin_of_a_user_model_predicts_where_its_code_cannot_be_imported(
    local_store: ObjectStore, layout: Layout, tmp_path: Path
) -> None:
    spec = gated("gated-bare")
    make_dataset(local_store, spec, TINY)
    run_job(spec, local_store, device="cpu", workdir=tmp_path / "job")
    plan = preflight(spec.data, local_store, layout)
    x_val, _, _ = read_split_arrays(plan, local_store, "val")
    meta, pred = predict_in_bare_python(
        tmp_path / "job" / "model.bin", x_val, tmp_path, "gated_residual"
    )
    assert meta["model"] == "gated_residual:GatedResidual"
    np.testing.assert_allclose(pred, job_predictions(tmp_path / "job")[1], rtol=1e-5, atol=1e-5)
