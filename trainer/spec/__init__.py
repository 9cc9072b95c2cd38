"""The JobSpec: a closed, typed, frozen description of one training job."""

from trainer.spec.load import dump_spec, load_spec, parse_spec, spec_from_dict
from trainer.spec.sections import (
    DataSpec,
    JobSpec,
    LimitsSpec,
    ModelSpec,
    ResourcesSpec,
    SplitSpec,
    StorageSpec,
    TrainSpec,
)

__all__ = [
    "DataSpec",
    "JobSpec",
    "LimitsSpec",
    "ModelSpec",
    "ResourcesSpec",
    "SplitSpec",
    "StorageSpec",
    "TrainSpec",
    "dump_spec",
    "load_spec",
    "parse_spec",
    "spec_from_dict",
]
