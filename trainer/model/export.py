"""`model.bin`: a torch.export archive that needs nothing but torch to load and run."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from trainer.store.records import ModelMeta, parse_record

METADATA_FILE = "quantlab.json"
FORMAT = "torch.export/pt2"


def export_program(model: nn.Module, sample: tuple[int, ...]) -> torch.export.ExportedProgram:
    """`model`, behind the runner's normalization, traced on the CPU in eval mode for float32
    `[batch, *sample]` input (`sample`: one sample's shape, `(n_features,)` or
    `(window, n_features)`) with the batch dimension dynamic. Raises what torch.export raises
    for a graph it cannot trace."""
    model = model.eval().to("cpu")
    example = torch.zeros(2, *sample, dtype=torch.float32)  # 2, not 1: 1 would specialise
    batch = torch.export.Dim("batch")
    return torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})


def export_model(model: nn.Module, n_features: int, meta: ModelMeta, path: Path) -> None:
    """Trace `model` with a dynamic batch dimension and save it with its metadata inside.

    The archive maps a float32 `[batch, n_features]` tensor of raw features, in the order
    `meta.features` lists them (`[batch, meta.window, n_features]`, oldest row first, with a
    window above 1), to a `[batch]` tensor of predictions; the input normalization is part of
    the graph."""
    sample = (n_features,) if meta.window == 1 else (meta.window, n_features)
    program = export_program(model, sample)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: meta.model_dump_json()})
    path.write_bytes(buffer.getvalue())


def load_model(path: Path) -> tuple[nn.Module, ModelMeta]:
    """The callable module and its metadata; what a consumer of `model.bin` does."""
    extra = {METADATA_FILE: ""}
    with open(path, "rb") as f:
        program = torch.export.load(f, extra_files=extra)
    meta = parse_record(ModelMeta, extra[METADATA_FILE].encode(), f"{path} ({METADATA_FILE})")
    return program.module(), meta
