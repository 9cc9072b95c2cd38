"""Validation errors worded for a person: each as `yaml.path: what is wrong`, in the words of
the spec's own types (a whole number, true or false, a list, a section), never pydantic's."""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from trainer.spec.dates import YYYYMMDD_RE

PATTERNS = {
    r"^[a-z0-9][a-z0-9._-]{0,62}$": (
        "must be 1 to 63 lower-case letters, digits, `.`, `_` or `-`, starting with a letter "
        "or a digit"
    ),
    r"^[a-z0-9_-]+$": "must be lower-case letters, digits, `_` or `-`",
    r"^[0-9a-f]{64}$": "must be 64 lower-case hex digits (a sha256)",
    YYYYMMDD_RE: 'must be a day written "YYYYMMDD", e.g. "20251201"',
}
"""What each pattern of the spec asks for, in words."""


def describe_errors(errors: Iterable[Mapping[str, Any]], root: type[BaseModel]) -> list[str]:
    """Every pydantic error of a `root` document as `yaml.path: what is wrong`, one line per
    path: a value no arm of a choice of types takes is one problem, not one per arm."""
    lines: dict[str, list[Mapping[str, Any]]] = {}
    errors = list(errors)
    paths = {yaml_path(e["loc"]) for e in errors}
    for err in errors:
        path = yaml_path(err["loc"])
        if err["type"] == "too_short" and any(p.startswith(f"{path}.") for p in paths):
            continue  # a list whose items were refused is not also "too short"
        lines.setdefault(path, []).append(err)
    problems = []
    for path, errs in lines.items():
        arms = [e for e in errs if _arm(e["loc"]) is not None]
        if len(arms) > 1:
            wanted = " or ".join(dict.fromkeys(_arm_words(_arm(e["loc"]) or "") for e in arms))
            problems.append(f"{path}: must be {wanted}, not {shown(arms[0].get('input'))}")
            problems += [describe(e, root) for e in errs if e not in arms]
        else:
            problems += [describe(e, root) for e in errs]
    return problems


def describe(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error of a `root` document as `yaml.path: what is wrong`."""
    path = yaml_path(err["loc"])
    return f"{path}: {_what(err, tuple(p for p in err['loc'] if not _is_tag(p)), root)}"


def yaml_path(loc: Iterable[Any]) -> str:
    """`data.dates.days.0`: the keys and list positions, without pydantic's type tags."""
    return ".".join(str(p) for p in loc if not _is_tag(p)) or "(top level)"


def shown(value: Any) -> str:
    """A value as the YAML file would show it: text in quotes, `true`, `null`, `[1, 2]`."""
    if isinstance(value, dict):
        return "a section"
    try:
        text = json.dumps(value, default=str)
    except ValueError:  # NaN and infinities
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _what(err: Mapping[str, Any], loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    number = _is_number(value)
    if kind == "extra_forbidden":
        return f"unknown key{_suggest(loc, root)}"
    if kind == "missing":
        return "required"
    if kind == "bool_type":
        return f"must be true or false, not {shown(value)}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        if isinstance(value, str) and _is_number(_number(value)):
            return f"must be a whole number, not the text {shown(value)}: write it without quotes"
        return f"must be a whole number, not {_kind_of(value)}"
    if kind in ("float_type", "float_parsing"):
        if isinstance(value, str) and _is_number(_number(value)):
            return f"must be a number, not the text {shown(value)}: write it without quotes"
        return f"must be a number, not {_kind_of(value)}"
    if kind == "finite_number":
        return f"must be a finite number, not {shown(value)}"
    if kind == "string_type":
        if number:
            return f"must be text, not the number {shown(value)}: write it in quotes"
        return f"must be text, not {_kind_of(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, such as [a, b], not {_kind_of(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type", "model_class_type"):
        return f"must be a section of `key: value` lines, not {_kind_of(value)}"
    if kind in ("too_short", "too_long"):
        least = kind == "too_short"
        limit = ctx.get("min_length" if least else "max_length")
        unit = "key" if ctx.get("field_type") == "Dictionary" else "item"
        got = ctx.get("actual_length")
        return (
            f"must have at {'least' if least else 'most'} {_count(limit, unit)}, "
            f"not {got if got else 'none'}"
        )
    if kind == "string_too_short":
        limit = ctx.get("min_length", 1)
        return "must not be empty" if limit == 1 else f"must be at least {limit} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return f"{PATTERNS.get(pattern, f'must match {pattern}')}, not {shown(value)}"
    return _plain(str(err["msg"]))


def _plain(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message.replace("Input should be", "must be").replace("String should", "must")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a section"
    if isinstance(value, list | tuple):
        return f"a list {shown(list(value))}"
    if isinstance(value, str):
        return f"the text {shown(value)}"
    return shown(value)


def _count(n: Any, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _is_tag(part: Any) -> bool:
    """pydantic's name of a union arm (`tuple[str, ...]`, `literal['auto']`) or of a mapping's
    key check (`[key]`), which is no part of the YAML path."""
    return isinstance(part, str) and "[" in part


def _arm(loc: Iterable[Any]) -> str | None:
    tags = [p for p in loc if _is_tag(p)]
    return tags[-1] if tags else None


def _arm_words(tag: str) -> str:
    if tag.startswith(("tuple[", "list[")):
        return "a list"
    if tag.startswith("literal["):
        return " or ".join(f"`{v.strip(chr(39))}`" for v in tag[8:-1].split(", "))
    if tag.startswith("dict["):
        return "a section"
    return tag.split("[")[0]


def _suggest(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    """` (did you mean 'lr'?)` for a misspelled key, from the fields of the enclosing section."""
    fields = _fields_at(loc[:-1], root)
    match = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    model: Any = root
    keyed = False  # the part after a mapping field is one of its keys, not a field
    for part in loc:
        if keyed:
            keyed = False
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        keyed = typing.get_origin(field.annotation) is dict
        model = section_type(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = section_type(arg)
        if found is not None:
            return found
    return None
