"""The shapes a strict section takes from a document, JSON's and YAML's data model: the one
rule per type the CLI and the published JSON Schema share.

The sections validate strictly: a boolean is `true` or `false` (never `yes`, `1` or
`"true"`), a number is a number (never `"0.001"`), a string is a string (never `20251201`).
Two things JSON Schema accepts that strict pydantic would not are taken here, by the field's
type: an array for a tuple (JSON has no tuples) and a float with no fraction for an integer
(JSON Schema counts `2.0` as an integer)."""

from __future__ import annotations

import types
import typing
from typing import Any


def shaped(annotation: Any, value: Any) -> Any:
    """`value` as the strict field of type `annotation` takes it; unchanged where no rule
    applies, so the field's own check reports what is wrong."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return shaped(args[0], value)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            new = shaped(arm, value)
            if new is not value:
                return new
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(shaped(args[0], item) for item in value)
        if len(args) == len(value):
            return tuple(shaped(arg, item) for arg, item in zip(args, value, strict=True))
        return tuple(value)
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def shaped_fields(fields: dict[str, Any], data: Any) -> Any:
    """Every key of a section's input shaped by its field's type; unknown keys left alone."""
    if not isinstance(data, dict):
        return data
    return {
        key: shaped(fields[key].annotation, value) if key in fields else value
        for key, value in data.items()
    }
