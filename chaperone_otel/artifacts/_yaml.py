"""A tiny, deterministic YAML emitter for the generated artifacts.

Why not PyYAML: it is a dev dependency only, and its output (line folding, quoting) may shift
between versions, which would break the "committed file equals generated file" tests for
reasons unrelated to the artifacts. The data here is plain (dicts, lists, strings, numbers,
booleans), so a small emitter is enough; long strings such as PromQL expressions become
literal blocks (``|-``) so they read as written and need no escaping. The artifact tests
load every emitted file back with PyYAML and compare it to the source data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

Data = object

_PLAIN = re.compile(r"^[A-Za-z_/$][A-Za-z0-9_.:/$\-]*(?: [A-Za-z0-9_.:/$()\-]+)*$")
# Leading digits, dots and signs are always quoted: YAML 1.1 reads 0x20, 1_0 or 1:20 as numbers.
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"})
_LONG = 80


def dump(data: Mapping[str, Data], *, header: str = "") -> str:
    """YAML text of ``data`` (a mapping at the top level), ending in a newline."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines.extend(_mapping(data, 0))
    return "\n".join(lines) + "\n"


def _scalar(value: Data) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = _PLAIN.match(value) and ": " not in value and not value.endswith(":")
        if plain and value.lower() not in _RESERVED and not _numeric(value):
            return value
        return json.dumps(value)
    raise TypeError(f"cannot emit {type(value).__name__} as YAML")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _block(value: Data) -> bool:
    """Strings emitted as literal blocks: multi-line or long ones."""
    return (
        isinstance(value, str)
        and ("\n" in value or len(value) > _LONG)
        and (not value.startswith(" ") and not value.endswith((" ", "\n")))
    )


def _entry(prefix: str, value: Data, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [f"{pad}{prefix} {{}}"]
        return [f"{pad}{prefix}", *_mapping(value, indent + 2)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [f"{pad}{prefix} []"]
        return [f"{pad}{prefix}", *_sequence(value, indent + 2)]
    if _block(value):
        assert isinstance(value, str)
        body = [(" " * (indent + 2) + line).rstrip() for line in value.split("\n")]
        return [f"{pad}{prefix} |-", *body]
    return [f"{pad}{prefix} {_scalar(value)}"]


def _mapping(data: Mapping[str, Data], indent: int) -> list[str]:
    out: list[str] = []
    for key, value in data.items():
        out.extend(_entry(f"{_scalar(key)}:", value, indent))
    return out


def _sequence(items: Sequence[Data], indent: int) -> list[str]:
    out: list[str] = []
    pad = " " * indent
    for item in items:
        if isinstance(item, Mapping) and item:
            nested = _mapping(item, indent + 2)
            out.append(f"{pad}- {nested[0].lstrip()}")
            out.extend(nested[1:])
        elif isinstance(item, Sequence) and not isinstance(item, str) and item:
            nested = _sequence(item, indent + 2)
            out.append(f"{pad}- {nested[0].lstrip()}")
            out.extend(nested[1:])
        else:
            out.extend(_entry("-", item, indent))
    return out
