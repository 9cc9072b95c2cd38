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

MAX_SPEC_BYTES = 1 << 20
"""A JobSpec (or a sweep spec) is at most 1 MiB: a larger one is not a hand-written spec, and
parsing it would take minutes before saying so."""


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Load and validate a JobSpec file; `overrides` are `a.b.c=value` strings."""
    return parse_spec(read_spec_text(path, "JobSpec"), source=str(path), overrides=overrides)


def read_spec_text(path: str | Path, what: str) -> str:
    """The text of a spec file, refused unread past MAX_SPEC_BYTES."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read {what} {path}", [f"{exc.strerror or exc}"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path} is not a {what} one can write by hand",
            [f"it is larger than {MAX_SPEC_BYTES >> 20} MiB, the most a spec file may be"],
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read {what} {path}", [f"not UTF-8 text ({exc})"]) from None


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
    if _values_past(raw, MAX_SPEC_VALUES):
        raise SpecError(
            f"{source} is not {what} one can write by hand",
            [f"it expands to more than {MAX_SPEC_VALUES:,} values (YAML aliases repeat what "
             "they name: a few lines can stand for billions)"],
        )  # fmt: skip
    return raw


MAX_SPEC_VALUES = 100_000
"""Values (mappings, lists, scalars) a spec may expand to, aliases counted each time used."""


def _values_past(root: object, limit: int) -> bool:
    """Whether `root` holds more than `limit` values, counted without expanding them all."""
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


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
    key, value = parse_override(item, source)
    problem = set_path(raw, key, value)
    if problem:
        raise SpecError(f"{source}: bad override", [problem])


def parse_override(item: str, source: str) -> tuple[str, Any]:
    """`a.b.c=value` as the key and the YAML value; SpecError naming the key when the value
    is not YAML (`[1`, `*a`, a tab, `!!python/...`: the safe loader builds no object)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"{source}: bad override", [f"{item!r}: write it as path.to.key=value"])
    try:
        return key, read_yaml(value)
    except YAMLError as exc:
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError(
            f"{source}: bad override",
            [f"{key}: {value!r} is not a YAML value ({reason}); quote text as {key}='...'"],
        ) from None


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
