"""YAML read and written as YAML 1.2 reads it, the way editors and JSON Schema validators see
a spec: only `true`/`false` are booleans (`yes`, `no`, `on`, `off` are text), `2025-12-01` is
text (no dates), `1e-3` is a number, `017` is seventeen. PyYAML's own loader follows YAML 1.1,
under which `interruptible: yes` would be a boolean for the runner and text for an editor."""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.resolver import BaseResolver

YAMLError = yaml.YAMLError

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"


class _Core(BaseResolver):
    """The YAML 1.2 core schema's plain scalars."""


for _tag, _pattern, _first in (
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        _FLOAT,
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        "-+0123456789.",
    ),
    (_NULL, r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    (_MERGE, r"<<", "<"),
):
    _Core.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))


class _Loader(yaml.SafeLoader):
    """Numbers, booleans and nulls as YAML 1.2 spells them; no dates."""

    yaml_implicit_resolvers = _Core.yaml_implicit_resolvers

    def construct_yaml_bool(self, node: Any) -> bool:
        return str(self.construct_scalar(node)).lower() == "true"

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)  # a leading zero is decimal in YAML 1.2

    def construct_yaml_float(self, node: Any) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        return float("nan") if text == ".nan" else float(text)


_Loader.add_constructor(_BOOL, _Loader.construct_yaml_bool)
_Loader.add_constructor(_INT, _Loader.construct_yaml_int)
_Loader.add_constructor(_FLOAT, _Loader.construct_yaml_float)


class _Dumper(yaml.SafeDumper):
    """Quotes every string the loader above would read as something else."""

    yaml_implicit_resolvers = _Core.yaml_implicit_resolvers


def read_yaml(text: str) -> Any:
    """One YAML document, read as YAML 1.2's core schema reads it."""
    return yaml.load(text, Loader=_Loader)


def write_yaml(data: Any) -> str:
    """`data` as YAML that `read_yaml` reads back unchanged, keys in their order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
