"""Parsing of human units: ``"512MiB"`` memory sizes, ``"5m"`` durations, ISO 8601 times.

Sizes and durations raise :class:`~chaperone_otel.exceptions.ConfigurationError` with the
accepted forms, so a typo in a decorator argument fails at decoration time, not at the first
sample. ISO times parse with Python 3.11's grammar on 3.10 too (``Z``, ``.5``, basic forms).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Final

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


EPOCH_MIN: Final = datetime.min.replace(tzinfo=timezone.utc).timestamp()
"""0001-01-01T00:00:00Z in Unix seconds: the earliest time a ``datetime`` (and so the
sink's ``TIMESTAMP`` columns as Python reads them) holds."""
EPOCH_MAX: Final = datetime.max.replace(tzinfo=timezone.utc).timestamp()
"""9999-12-31T23:59:59.999999Z in Unix seconds: the latest."""


def parse_duration(
    value: float | int | str | timedelta, *, what: str = "timeout", allow_zero: bool = False
) -> float:
    """Seconds from a number, a :class:`~datetime.timedelta` or ``"90s"``, ``"5m"``, ``"2h"``;
    more than 0, or 0 too with ``allow_zero`` (an age of 0: now)."""
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
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "a duration of 0 or more" if allow_zero else "a positive duration"
        raise ConfigurationError(f"{what} must be {kind}, got {value!r}")
    return seconds


# ISO 8601 as Python 3.11's datetime.fromisoformat reads it: calendar or week date, extended
# or basic; optional time after one non-digit separator (``T``, space); fraction with ``.`` or
# ``,``; offset ``Z`` or ``±HH[[:]MM[[:]SS[.ffffff]]]``.
_ISO_DATETIME = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})-(?P<day>\d{2})|(?P<bmonth>\d{2})(?P<bday>\d{2})"
    r"|-?W(?P<week>\d{2})(?:-?(?P<weekday>\d))?)"
    r"(?:[^0-9](?P<time>"
    r"(?P<hour>\d{2})(?:(?P<tsep>:?)(?P<minute>\d{2})(?:(?P=tsep)(?P<second>\d{2})"
    r"(?:[.,](?P<fraction>\d+))?)?)?"
    r"(?P<offset>Z|[+-]\d{2}(?:(?P<osep>:?)\d{2}(?:(?P=osep)\d{2}(?:\.\d{1,6})?)?)?)?))?",
)


def _fromisoformat_backport(text: str) -> datetime:
    """``datetime.fromisoformat`` with Python 3.11's grammar, for Python 3.10.

    3.10 reads only what ``isoformat()`` writes: it rejects the ``Z`` suffix, short fractions
    (``.5``) and basic forms (``20240501T1200``) that users paste and that 3.11 accepts.
    """
    m = _ISO_DATETIME.fullmatch(text)
    if m is None:
        raise ValueError(f"Invalid isoformat string: {text!r}")
    year = int(m["year"])
    if m["week"] is not None:
        day = date.fromisocalendar(year, int(m["week"]), int(m["weekday"] or 1))
    else:
        day = date(year, int(m["month"] or m["bmonth"]), int(m["day"] or m["bday"]))
    fraction = (m["fraction"] or "")[:6].ljust(6, "0")
    tz: timezone | None = None
    offset = m["offset"]
    if offset == "Z":
        tz = timezone.utc
    elif offset:
        digits = offset[1:].replace(":", "")  # HH[MM[SS[.ffffff]]]
        delta = timedelta(
            hours=int(digits[:2]),
            minutes=int(digits[2:4] or 0),
            seconds=int(digits[4:6] or 0),
            microseconds=int(digits[7:].ljust(6, "0")),
        )
        tz = timezone(-delta if offset[0] == "-" else delta)
    return datetime(
        day.year,
        day.month,
        day.day,
        int(m["hour"] or 0),
        int(m["minute"] or 0),
        int(m["second"] or 0),
        int(fraction),
        tzinfo=tz,
    )


parse_iso_datetime: Callable[[str], datetime]
"""A datetime from ISO 8601 text, with 3.11's grammar on every supported Python."""
if sys.version_info >= (3, 11):
    parse_iso_datetime = datetime.fromisoformat
else:
    parse_iso_datetime = _fromisoformat_backport
