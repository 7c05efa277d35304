"""``chaperone-otel schedules``: lists slots by state and exits 1 on findings, like ``stuck``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chaperone_otel._schedule import declaration_record
from chaperone_otel._schedules import make_schedule
from chaperone_otel.sink._schedule_store import evaluate
from tests.cli._cli_helpers import invoke
from tests.sink.store_factory import store_writer, write_all


def _store(path: Path) -> None:
    """'idle' (every 60 s, three slots missed by now) and 'fresh' (not due yet)."""
    now = time.time()
    with store_writer(path) as (writer, _sink):
        write_all(
            writer,
            [
                declaration_record(make_schedule("idle", interval=60, grace=10), now - 200),
                declaration_record(make_schedule("fresh", interval=3600), now - 5),
            ],
        )
        with writer.store.write_lock:
            evaluate(writer.store.cursor(), now)


def test_missed_slots_are_listed_and_exit_1(tmp_path: Path) -> None:
    """--missed lists each missed slot (JSON for pipes) and exits 1; a schedule with
    nothing missed exits 0."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "--db", str(db), "--missed", "--json")
    assert result.exit_code == 1, result.output
    rows = json.loads(result.output)
    assert [(r["schedule"], r["state"]) for r in rows] == [("idle", "missed")] * 3
    result = invoke("schedules", "--db", str(db), "--name", "fresh")
    assert result.exit_code == 0, result.output
    assert "no matching schedule slots" in result.output


def test_without_flags_each_schedules_latest_slot_is_judged(tmp_path: Path) -> None:
    """The default view is one row per schedule (its latest slot); a missed one is a
    finding."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "--db", str(db), "--csv")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("schedule,due_at,state")
    assert len(lines) == 2
    assert lines[1].startswith("idle,")
    assert ",missed," in lines[1]
