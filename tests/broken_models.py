"""Five broken researcher models, each a `net.py` with `Net` (and `loss`), and the message the
proof before renting gives for each: the spec field, the researcher's file:line, the text."""

from __future__ import annotations

from pathlib import Path

from trainer.model.code import resolve_code
from trainer.spec import JobSpec, spec_from_dict

GOOD = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n_features, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x).squeeze(-1)


def loss(pred, target):
    return torch.mean((pred - target) ** 2)
"""

BROKEN: dict[str, tuple[str, str, str]] = {
    # name: (net.py, the line as the proof reports it, train.loss)
    "missing-module": (
        GOOD.replace("from torch import nn\n", "from torch import nn\nimport lightgbm\n"),
        "model.type: {code}/net.py:3: ModuleNotFoundError: No module named 'lightgbm' (the "
        "training image has torch, numpy and the standard library; for other packages, "
        "build your own image FROM ours and name it in `resources.image`)",
        "mse",
    ),
    "forward-raises": (
        GOOD.replace("return self.body(x).squeeze(-1)", "return self.body(x.T).squeeze(-1)"),
        "model.type: {code}/net.py:11: RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        "mse",
    ),
    "batch-by-one": (
        GOOD.replace("return self.body(x).squeeze(-1)", "return self.body(x)"),
        "model.type: {code}/net.py:10: forward returned shape [256, 1] for 256 rows; it must "
        "return one prediction per row, [batch] (squeeze the last dimension)",
        "mse",
    ),
    "nan-loss": (
        GOOD.replace("torch.mean((pred - target) ** 2)", "torch.log(pred - target).mean()"),
        "train.loss: {code}/net.py:14: the loss is nan on 256 real rows, with finite "
        "predictions and labels",
        "net:loss",
    ),
    "not-exportable": (
        GOOD.replace(
            "        return self.body(x).squeeze(-1)",
            "        y = self.body(x).squeeze(-1)\n        if y.mean() > 0:\n            return y\n"
            "        return -y",
        ),
        "model.type: {code}/net.py:12: GuardOnDataDependentSymNode: Could not guard on "
        "data-dependent expression",
        "mse",
    ),
}


def write_net(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(source)
    return folder


def net_spec(raw: dict[str, object], code: Path, loss: str = "mse") -> JobSpec:
    """`raw` (a spec dict) training `net:Net` from `code` with `loss`, its code hashed."""
    raw = {**raw, "code": {"path": str(code)}, "model": {"type": "net:Net"}}
    train = dict(raw.get("train", {}))  # type: ignore[call-overload]
    raw["train"] = {**train, "loss": loss}
    return resolve_code(spec_from_dict(raw))
