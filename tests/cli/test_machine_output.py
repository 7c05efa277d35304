"""What ``--csv`` and ``--json`` write for scripts (review of the CLI): whole values, keys
that do not depend on the data."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from types import SimpleNamespace

from chaperone_otel.cli import _render as render
from tests.cli._cli_helpers import Recorded, invoke


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_sql_csv_keeps_the_microseconds_json_keeps(recorded_store: Recorded) -> None:
    """``sql --csv`` cut timestamps to whole seconds; ``--json`` kept them."""
    q = (
        "SELECT TIMESTAMP '2024-05-01 12:00:00.123456' AS t, "
        "TIMESTAMP '2024-05-01 12:00:00' AS whole, "
        "TIMESTAMPTZ '2024-05-01 14:00:00.5+02:00' AS tz"
    )
    db = str(recorded_store.path)
    text = invoke("sql", q, "--db", db, "--csv").stdout
    assert text.splitlines() == [
        "t,whole,tz",
        "2024-05-01T12:00:00.123456Z,2024-05-01T12:00:00Z,2024-05-01T12:00:00.500000Z",
    ]
    (row,) = json.loads(invoke("sql", q, "--db", db, "--json").stdout)
    (csv_row,) = csv.DictReader(io.StringIO(text))
    assert {k: _instant(v) for k, v in csv_row.items()} == {k: _instant(v) for k, v in row.items()}


def test_jobs_csv_times_are_the_json_times(recorded_store: Recorded) -> None:
    """Real runs start at a fraction of a second: the CSV and JSON instants are the same."""
    db = str(recorded_store.path)
    as_csv = list(csv.DictReader(io.StringIO(invoke("jobs", "--db", db, "--csv").stdout)))
    as_json = {r["id"]: r for r in json.loads(invoke("jobs", "--db", db, "--json").stdout)}
    assert len(as_csv) == len(as_json) == 5
    for row in as_csv:
        for column in ("started_at", "last_heartbeat_at"):
            assert _instant(row[column]) == _instant(as_json[row["id"]][column]), column
    assert any(_instant(r["started_at"]).microsecond for r in as_csv)


def test_show_json_other_executions_keep_the_microseconds() -> None:
    started = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)
    other = SimpleNamespace(attempt=1, execution_id="e1", status="failed", started_at=started)
    (listed,) = render.executions_dict([other])
    assert listed["started_at"] == "2024-05-01T12:00:00.250000Z"


def test_health_json_counts_every_verdict_on_a_store_with_none_running(
    recorded_store: Recorded,
) -> None:
    result = invoke("health", "--db", str(recorded_store.path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == {
        "ok": True,
        "counts": {"healthy": 0, "degraded": 0, "unhealthy": 0, "stuck": 0, "lost": 0},
        "runs": [],
    }
