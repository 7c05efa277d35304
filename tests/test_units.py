"""ISO 8601 parsing: Python 3.11's grammar on every supported interpreter.

Users paste ``2024-05-01T12:00:00Z`` into ``jobs.since()`` / ``--since``; Python 3.10's
``datetime.fromisoformat`` rejects it, so 3.10 uses a backport. These cases run on both.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaperone_otel._units import _fromisoformat_backport, parse_iso_datetime

UTC = timezone.utc

READ = [
    ("2024-05-01", datetime(2024, 5, 1)),
    ("2024-05-01T12", datetime(2024, 5, 1, 12)),
    ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30)),
    ("2024-05-01 12:30:15", datetime(2024, 5, 1, 12, 30, 15)),
    ("2024-05-01T12:30:15Z", datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)),
    ("2024-05-01T12:30Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T12:30:15.5", datetime(2024, 5, 1, 12, 30, 15, 500000)),
    ("2024-05-01T12:30:15,25", datetime(2024, 5, 1, 12, 30, 15, 250000)),
    ("2024-05-01T12:30:15.1234567", datetime(2024, 5, 1, 12, 30, 15, 123456)),
    (
        "2024-05-01T12:30:15+0200",
        datetime(2024, 5, 1, 12, 30, 15, tzinfo=timezone(timedelta(hours=2))),
    ),
    (
        "2024-05-01T12:30:15-05",
        datetime(2024, 5, 1, 12, 30, 15, tzinfo=timezone(timedelta(hours=-5))),
    ),
    (
        "2024-05-01T12:30:15-05:30:15.5",
        datetime(
            2024,
            5,
            1,
            12,
            30,
            15,
            tzinfo=timezone(-timedelta(hours=5, minutes=30, seconds=15, microseconds=500000)),
        ),
    ),
    ("20240501", datetime(2024, 5, 1)),
    ("20240501T123015", datetime(2024, 5, 1, 12, 30, 15)),
    ("20240501T1230Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-W18-3", datetime(2024, 5, 1)),
    ("2024W18", datetime(2024, 4, 29)),
]

REJECTED = [
    "",
    "x",
    "2024-13-01",
    "2024-05-01T",
    "2024-05-01T24:00",
    "2024-05-01T12:0000",
    "2024-05-01T12:00:00+",
    "2024-05-01T12:00:00z",
    "1h",
]


@pytest.mark.parametrize(("text", "expected"), READ)
def test_reads_what_python_311_reads(text, expected):
    for parse in (parse_iso_datetime, _fromisoformat_backport):
        got = parse(text)
        assert got == expected
        assert got.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("text", REJECTED)
def test_rejects_what_python_311_rejects(text):
    for parse in (parse_iso_datetime, _fromisoformat_backport):
        with pytest.raises(ValueError):
            parse(text)


# ISO 8601 offsets are hours and minutes. Python can write sub-minute ones, but CPython
# 3.11's own fromisoformat drops a microsecond offset after an hours-only time
# ("T00+00:00:00.000001" reads back as +00:00): not a moment anyone sends.
OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
TRUNCATE = {
    "hours": {"minute": 0, "second": 0, "microsecond": 0},
    "minutes": {"second": 0, "microsecond": 0},
    "seconds": {"microsecond": 0},
}


@given(
    moment=st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.none() | OFFSETS),
    timespec=st.sampled_from(["hours", "minutes", "seconds", "milliseconds", "microseconds"]),
    sep=st.sampled_from(["T", " "]),
    zulu=st.booleans(),
)
def test_round_trips_isoformat(moment, timespec, sep, zulu):
    """What ``isoformat`` writes (any precision, any offset, ``Z``) reads back to that moment."""
    text = moment.isoformat(sep=sep, timespec=timespec)
    if zulu and text.endswith("+00:00"):
        text = text[: -len("+00:00")] + "Z"
    if timespec == "milliseconds":
        expected = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    else:
        expected = moment.replace(**TRUNCATE.get(timespec, {}))
    parsed = [parse_iso_datetime(text), _fromisoformat_backport(text)]
    if sys.version_info >= (3, 11):
        parsed.append(datetime.fromisoformat(text))
    for got in parsed:
        assert got.replace(tzinfo=None) == expected.replace(tzinfo=None), text
        assert got.utcoffset() == expected.utcoffset(), text
