"""Parsing of human units: ``"512MiB"`` memory sizes and ``"5m"`` durations.

Both raise :class:`~chaperone_otel.exceptions.ConfigurationError` with the accepted forms, so
a typo in a decorator argument fails at decoration time, not at the first sample.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .exceptions import ConfigurationError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_bytes(value: int | float | str, *, what: str = "memory_limit") -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1048576"``."""
    if isinstance(value, bool):
        raise ConfigurationError(
            f"{what} must be a size such as 512 * 2**20 or '512MiB', not a bool"
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{what} must be a positive number of bytes, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            number = float(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "B").lower()]
            if number > 0:
                return int(number)
    raise ConfigurationError(
        f"{what}={value!r} is not a size: use bytes (an int) or a string such as '512MiB', "
        "'2GiB', '500MB'"
    )


def parse_duration(value: float | int | str | timedelta, *, what: str = "timeout") -> float:
    """Seconds from a number, a :class:`~datetime.timedelta` or ``"90s"``, ``"5m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be seconds or a timedelta, not a bool")
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _DURATION_FACTORS[(m.group(2) or "s").lower()]
    if seconds is None:
        raise ConfigurationError(
            f"{what}={value!r} is not a duration: use seconds (a number), a timedelta, or a "
            "string such as '90s', '5m', '2h', '30d'"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{what} must be a positive duration, got {value!r}")
    return seconds
