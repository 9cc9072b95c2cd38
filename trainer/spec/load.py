"""Reading a JobSpec from YAML: every problem reported at once, each under its YAML path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trainer.errors import SpecError
from trainer.spec.messages import describe_errors
from trainer.spec.sections import JobSpec
from trainer.spec.yamltext import YAMLError, read_yaml, write_yaml


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Load and validate a JobSpec file; `overrides` are `a.b.c=value` strings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read JobSpec {path}", [f"{exc.strerror or exc}"]) from None
    return parse_spec(text, source=str(path), overrides=overrides)


def parse_spec(text: str, source: str = "<spec>", overrides: Sequence[str] = ()) -> JobSpec:
    raw = yaml_mapping(text, source, "a JobSpec")
    for item in overrides:
        _apply_override(raw, item, source)
    return spec_from_dict(raw, source)


def yaml_mapping(text: str, source: str, what: str) -> dict[str, Any]:
    """The YAML document `text` as a mapping; SpecError naming `source` otherwise."""
    try:
        raw = read_yaml(text)
    except YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML", [str(exc)]) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source} is not {what}", ["the top level must be a mapping"])
    return raw


def spec_from_dict(raw: Mapping[str, Any], source: str = "<spec>") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = describe_errors(exc.errors(include_url=False), JobSpec)
        raise SpecError(f"{source}: {len(problems)} problem(s) in the JobSpec", problems) from None


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec (defaults filled in, job id set) as YAML: what travels with the model."""
    data = spec.model_dump(mode="json")
    data["job"]["id"] = spec.job_id
    return write_yaml(data)


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"{source}: bad override", [f"{item!r}: write it as path.to.key=value"])
    problem = set_path(raw, key, read_yaml(value))
    if problem:
        raise SpecError(f"{source}: bad override", [problem])


def set_path(raw: dict[str, Any], key: str, value: Any) -> str | None:
    """Set `a.b.c` in the raw spec mapping, as `--set` does; the problem when a part on the
    way is not a section, None when it was set."""
    node: dict[str, Any] = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return f"{key}: {part} is not a section"
        node = child
    node[parts[-1]] = value
    return None
