"""PyYAML's safe loader, in C (libyaml) where PyYAML was built with it, for the tests that
read the generated rule files, promtool suites and exporter configs back: those are
thousands of lines, which the pure-Python loader read ~10x slower (~1 s of the inner loop).
Both loaders implement the same safe subset; the pure-Python one remains the fallback."""

from __future__ import annotations

from typing import Any

import yaml

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, with the C loader when there is one."""
    return yaml.load(text, Loader=_LOADER)
