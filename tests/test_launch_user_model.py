"""The researcher's own model through `launch`: proven on this machine before any create
request, shipped as code.tar.gz, trained by the real container entrypoint behind a fake
Vast.ai, and its model.bin usable where the code is not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broken_models import BROKEN, GOOD, net_spec, write_net
from tests.helpers import job_predictions, predict_in_bare_python, spec_dict
from tests.launcher_env import Lab, lab, run_cli, with_data
from trainer.data.loader import read_split_arrays
from trainer.data.plan import preflight
from trainer.errors import EXIT_SPEC, SpecError
from trainer.job.artifacts import verify
from trainer.model.code import resolve_code
from trainer.redact import MASK
from trainer.spec import dump_spec, spec_from_dict
from trainer.spec.sweep import SweepSpec, sweep_from_dict
from trainer.store import ObjectStore
from trainer.store.layout import Layout

pytestmark = pytest.mark.slow  # the proof's child process, real containers

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gated_residual.py"
LOUD = """

def loud(n_features: int, width: int) -> GatedResidual:
    import os
    print("the key is", os.environ.get("AWS_SECRET_ACCESS_KEY"))
    return GatedResidual(n_features, width)
"""


@pytest.fixture
def env(s3_env: dict[str, str], s3_store: ObjectStore, tmp_path: Path) -> Iterator[Lab]:
    with lab(s3_store, tmp_path) as found:
        yield found


def tiny(job_id: str) -> dict[str, object]:
    raw = spec_dict(
        job={"id": job_id},
        train={"epochs": 1, "log_every_steps": 1, "eval_every_steps": 2, "warmup_steps": 1},
        limits={"provision_timeout_minutes": 1, "max_runtime_minutes": 5, "max_cost_usd": 5},
    )
    raw.pop("model")
    return raw


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_model_is_refused_before_any_create_request(env: Lab, name: str) -> None:
    source, expected, loss = BROKEN[name]
    code_dir = write_net(env.tmp / "models", source)
    spec = with_data(env.store, net_spec(tiny(f"lt-broken-{name}"), code_dir, loss))
    with pytest.raises(SpecError) as info:
        env.launch(spec)
    assert info.value.problems[0].startswith(expected.format(code=code_dir))
    assert env.creates() == 0 and env.fake.calls("search") == 0
    assert not env.store.exists(Layout().job(spec.job_id).code)  # nothing shipped either


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_validate_check_model_refuses_a_broken_model(
    local_store: ObjectStore, tmp_path: Path, name: str
) -> None:
    source, expected, loss = BROKEN[name]
    code_dir = write_net(tmp_path / "models", source)
    spec = with_data(local_store, net_spec(tiny(f"v-{name}"), code_dir, loss))
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec))
    run = run_cli(["validate", str(path), "--check-model", "--store", local_store.root])
    assert run.code == EXIT_SPEC
    assert f"error: the model code failed\n  {expected.format(code=code_dir)}" in run.stderr


ODD_WIDTH = GOOD.replace("nn.Linear(width, 1)", "nn.Linear(width // 2 * 2, 1)")
"""A shape bug that only an odd `width` shows: the base's width (8) trains, 7 cannot."""


def _width_sweep(env: Lab, job_id: str, widths: list[int]) -> SweepSpec:
    base = with_data(env.store, net_spec(tiny(job_id), write_net(env.tmp / job_id, ODD_WIDTH)))
    raw = {
        "sweep": {"id": job_id},
        "base": base.model_dump(mode="json"),
        "space": {
            "model.params.width": {"choice": widths},
            "train.lr": {"log_uniform": [1.0e-4, 1.0e-2]},
        },
        "sampler": "random",
        "trials": 4,
    }
    return sweep_from_dict(raw)


def test_a_sweep_whose_space_makes_a_broken_model_is_refused_before_any_create_request(
    env: Lab,
) -> None:
    sweep = _width_sweep(env, "lt-sweep-odd", [8, 7])
    with pytest.raises(SpecError) as info:
        env.launch(sweep.base, sweep=sweep)
    code = env.tmp / "lt-sweep-odd"
    assert str(info.value).startswith(
        "the model code failed, in the sweep's trials with space.model.params.width = 7\n"
    )
    assert info.value.problems[0].startswith(
        f"model.type: {code}/net.py:11: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    )
    assert env.creates() == 0 and env.fake.calls("search") == 0
    assert not env.store.exists(Layout().job(sweep.sweep_id).code)  # nothing shipped either


def test_a_sweep_dry_run_proves_each_model_its_space_can_make(env: Lab) -> None:
    sweep = _width_sweep(env, "lt-sweep-even", [8, 16])
    result = env.launch(sweep.base, sweep=sweep, dry_run=True).wait()
    assert result.outcome == "dry_run"
    proofs = [e for e in env.reporter.events if e["event"] == "model_proof"]
    assert [(e["space"], e["parameters"]) for e in proofs] == [
        ({"model.params.width": 8}, 12 * 8 + 8 + 8 + 1),  # 12 features, 8 wide, one out
        ({"model.params.width": 16}, 12 * 16 + 16 + 16 + 1),
    ]
    said = [line for line in env.human.getvalue().splitlines() if "model ok" in line]
    assert len(said) == 2 and said[1].endswith("(space.model.params.width = 16)"), said


def test_launch_dry_run_proves_the_model_and_a_good_one_passes(env: Lab) -> None:
    source, expected, loss = BROKEN["batch-by-one"]
    code_dir = write_net(env.tmp / "models", source)
    spec = with_data(env.store, net_spec(tiny("lt-dry"), code_dir, loss))
    path = env.tmp / "spec.yaml"
    path.write_text(dump_spec(spec))
    dry = run_cli(["launch", str(path), "--dry-run", "--json", "--vast-url", env.fake.url])
    assert dry.code == EXIT_SPEC and dry.result["outcome"] == "invalid_spec"
    assert expected.format(code=code_dir) in dry.stderr
    assert env.creates() == 0

    write_net(code_dir, GOOD)
    path.write_text(dump_spec(net_spec(tiny("lt-dry"), code_dir, "net:loss")))
    ok = run_cli(["validate", str(path), "--check-model"])
    assert ok.code == 0, ok.stderr
    assert "model ok: net:Net, 113 parameters, built, stepped and exported on 256 real rows" in (
        ok.stdout
    )


def test_a_gated_residual_with_its_own_loss_trains_on_a_rented_instance(
    env: Lab, tmp_path: Path
) -> None:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "gated_residual.py").write_text(EXAMPLE.read_text() + LOUD)
    raw = tiny("lt-gated")
    raw["code"] = {"path": str(code_dir)}
    raw["model"] = {"type": "gated_residual:loud", "params": {"width": 16}}
    raw["train"] = {**raw["train"], "loss": "gated_residual:log_cosh"}  # type: ignore[dict-item]
    spec = with_data(env.store, resolve_code(spec_from_dict(raw)))

    result = env.launch(spec).wait()
    assert result.outcome == "succeeded", env.human.getvalue()[-3000:]
    assert env.creates() == 1
    env.assert_clean()
    paths = Layout().job("lt-gated")
    got = tmp_path / "got"
    got.mkdir()
    manifest = verify(env.store, paths, got)
    assert "code.tar.gz" in {f.name for f in manifest.files}
    proof = [e for e in env.reporter.events if e["event"] == "model_proof"]
    assert proof and proof[0]["wall_s"] > 0

    # model.bin predicts, without the researcher's code, what the job predicted
    plan = preflight(spec.data, env.store, Layout())
    x_val, _, _ = read_split_arrays(plan, env.store, "val")
    meta, pred = predict_in_bare_python(got / "model.bin", x_val, tmp_path, "gated_residual")
    assert meta["model"] == "gated_residual:loud" and meta["loss"] == "gated_residual:log_cosh"
    assert spec.code is not None and meta["code_sha256"] == spec.code.sha256
    assert abs(pred - job_predictions(got)[1]).max() < 1e-4

    # what the code printed: in the container's log and train.log, the secret masked
    secret = env.fake.requests_to("create")[0].body["env"]["AWS_SECRET_ACCESS_KEY"]
    train_log = (got / "train.log").read_text()
    shipped = "\n".join(env.store.get(o.loc).decode() for o in env.store.list(paths.logs))
    for text in (train_log, shipped, env.containers.all_output()):
        assert f"the key is {MASK}" in text
        assert secret not in text
