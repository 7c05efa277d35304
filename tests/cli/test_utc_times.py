"""Every time the CLI prints is UTC (review of the CLI): the ``jobs`` table's STARTED column
was the machine's local time, unlabelled, beside ``show``'s UTC and ``--today``'s UTC day."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from chaperone_otel.cli import _render as render
from chaperone_otel.cli._monitor import Frame, render_frame
from tests.cli._cli_helpers import Recorded, invoke


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in UTC+9 (the C library's zone, which ``astimezone()`` reads)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    assert datetime.now().astimezone().utcoffset() == timedelta(hours=9)
    yield
    monkeypatch.undo()
    time.tzset()


def test_fmt_time_is_utc_whatever_the_local_zone(tokyo: None) -> None:
    earlier = datetime(2024, 5, 1, 23, 30, 5, tzinfo=timezone.utc)  # 08:30 on May 2 in Tokyo
    assert render.fmt_time(earlier) == "2024-05-01 23:30"
    assert render.fmt_time(earlier.replace(tzinfo=None)) == "2024-05-01 23:30"  # naive: UTC
    now = render.now_utc()
    assert render.fmt_time(now) in (now.strftime("%H:%M:%S"), now.strftime("%Y-%m-%d %H:%M"))


def test_jobs_table_started_column_is_utc_and_says_so(
    recorded_store: Recorded, tokyo: None
) -> None:
    db = str(recorded_store.path)
    table = invoke("jobs", "--db", db, "--limit", "1")
    assert table.exit_code == 0, table.output
    header, _, row = table.stdout.splitlines()[:3]
    assert "STARTED UTC" in header
    (run,) = json.loads(invoke("jobs", "--db", db, "--limit", "1", "--json").stdout)
    started = datetime.fromisoformat(run["started_at"]).astimezone(timezone.utc)
    assert f" {render.fmt_time(started)} " in row
    local = started.astimezone()  # Tokyo: 9 hours later
    assert local.strftime("%H:%M:%S") not in row
    assert not re.search(local.strftime("%Y-%m-%d %H:%M"), row)


def test_monitor_clock_is_utc(tokyo: None) -> None:
    at = datetime(2024, 5, 1, 23, 30, 5, tzinfo=timezone.utc)
    frame = render_frame(Frame(at=at), title="t", interval=1, width=120)
    console = Console(width=120, record=True, color_system=None)
    console.print(frame)
    assert "23:30:05 UTC" in console.export_text()
