"""``chaperone-otel schedules``: lists slots by state and exits 1 on findings, like ``stuck``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chaperone_otel import semconv as sc
from chaperone_otel._schedule import declaration_record
from chaperone_otel._schedules import make_schedule
from chaperone_otel.sink._schedule_store import evaluate
from tests.cli._cli_helpers import invoke
from tests.sink.store_factory import lifecycle, store_writer, write_all


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
    rows = json.loads(result.stdout)
    assert [(r["schedule"], r["state"]) for r in rows] == [("idle", "missed")] * 3
    result = invoke("schedules", "--db", str(db), "--name", "fresh")
    assert result.exit_code == 0, result.output
    assert "no matching schedule slots" in result.output


def test_a_schedule_name_the_store_does_not_know_exits_1(tmp_path: Path) -> None:
    """`schedules --name nightly-imprt || page` exited 0 for good on a typo: a name no
    schedule has is a finding, and the message names the declared ones."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "--db", str(db), "--name", "idel")
    assert result.exit_code == 1
    assert "no schedule 'idel'" in result.stderr
    assert "(declared: 'fresh', 'idle')" in result.stderr
    assert result.stdout == ""


def test_a_declared_name_past_the_first_twenty_is_known(tmp_path: Path) -> None:
    """The names listed in the error are the first twenty; whether the name exists is
    asked of the store itself (a 23rd schedule was "unknown", its check paging for good)."""
    db = tmp_path / "jobs.duckdb"
    now = time.time()
    with store_writer(db) as (writer, _sink):
        write_all(writer, [declaration_record(make_schedule(f"a{i:02d}", interval=3600), now)
                           for i in range(22)]
                          + [declaration_record(make_schedule("zz", interval=3600), now)])
    result = invoke("schedules", "--db", str(db), "--name", "zz", "--missed")
    assert result.exit_code == 0, result.output
    unknown = invoke("schedules", "--db", str(db), "--name", "zy")
    assert unknown.exit_code == 1
    assert "'a19', …)" in unknown.stderr


def test_a_store_no_process_owns_says_it_finds_no_missed_run(tmp_path: Path) -> None:
    """Slots fall due only where an owner evaluates them: read straight from the file, a
    schedule whose job stopped running keeps its last state. The listing says so on
    stderr, and not while an owner holds the store."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "--db", str(db), "--json")
    json.loads(result.stdout)
    assert result.stderr.count("note: no process owns") == 1
    assert "chaperone-otel sink serve --db PATH" in result.stderr
    with store_writer(db):  # this process owns it now; the CLI shares the connection
        owned = invoke("schedules", "--db", str(db))
    assert "no process owns" not in owned.stderr
    empty = tmp_path / "empty.duckdb"
    with store_writer(empty):
        pass
    assert "no process owns" not in invoke("schedules", "--db", str(empty)).stderr


def test_without_flags_each_schedules_latest_slot_is_judged(tmp_path: Path) -> None:
    """The default view is one row per schedule (its latest slot); a missed one is a
    finding."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "--db", str(db), "--csv")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("schedule,due_at,state")
    assert len(lines) == 2
    assert lines[1].startswith("idle,")
    assert ",missed," in lines[1]


def test_forget_removes_a_schedule_and_exits_1_when_there_is_none(tmp_path: Path) -> None:
    """`schedules forget NAME` deletes the schedule, its slots and dispatches (exit 0); the
    listing no longer shows it; forgetting it again, or a name never declared, exits 1
    (`--json` says so); a URL is refused (exit 2), as for prune."""
    db = tmp_path / "jobs.duckdb"
    _store(db)
    result = invoke("schedules", "forget", "idle", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "forgot schedule 'idle'" in result.stdout
    listed = invoke("schedules", "--db", str(db), "--json")
    assert listed.exit_code == 0, listed.output
    assert {r["schedule"] for r in json.loads(listed.stdout)} <= {"fresh"}
    result = invoke("schedules", "--db", str(db), "forget", "idle", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == {"schedule": "idle", "forgotten": False}
    assert invoke("schedules", "forget", "never", "--db", str(db)).exit_code == 1
    refused = invoke("schedules", "--url", "http://127.0.0.1:9", "forget", "fresh")
    assert refused.exit_code == 2, refused.output
    assert invoke("schedules", "--missed", "forget", "fresh", "--db", str(db)).exit_code == 2
    assert invoke("schedules", "forget", "--db", str(db)).exit_code == 2  # NAME is required


def _old_store(path: Path) -> None:
    """'gone' (declared 30 days ago, its one run 20 days ago) and 'fresh' (declared now)."""
    now = time.time()
    with store_writer(path) as (writer, _sink):
        write_all(
            writer,
            [
                declaration_record(make_schedule("gone", interval=3600), now - 30 * 86400),
                declaration_record(make_schedule("fresh", interval=3600), now - 5),
                *lifecycle("r-old", start=now - 20 * 86400, **{sc.ATTR_SCHEDULE_NAME: "gone"}),
            ],
        )


def test_prune_prints_the_runs_deleted_and_the_schedules_retired(tmp_path: Path) -> None:
    """`prune` says how many schedules it retired beside the runs it deleted: in its text
    line and as "schedules_retired" in --json ("deleted" stays the runs)."""
    text_db, json_db = tmp_path / "text.duckdb", tmp_path / "json.duckdb"
    _old_store(text_db)
    _old_store(json_db)
    result = invoke("prune", "--older-than", "7d", "--db", str(text_db))
    assert result.exit_code == 0, result.output
    assert result.stdout == "pruned 1 run(s) older than 7d00h; retired 1 schedule(s)\n"
    result = invoke("prune", "--older-than", "7d", "--db", str(json_db), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "deleted": 1,
        "schedules_retired": 1,
        "older_than_seconds": 7 * 86400,
    }
    listed = invoke("schedules", "--db", str(json_db), "--json")
    assert {r["schedule"] for r in json.loads(listed.stdout)} <= {"fresh"}


def test_the_table_shows_names_as_written_in_a_plain_grid(tmp_path: Path) -> None:
    """A schedule name with rich markup and a control character is shown as written (it was
    read as markup), in the plain grid of the other listings (it had box borders)."""
    db = tmp_path / "jobs.duckdb"
    now = time.time()
    with store_writer(db) as (writer, _sink):
        write_all(
            writer,
            [declaration_record(make_schedule("[red]nightly[/red]\x1b[2J", interval=60), now - 200)],
        )
        with writer.store.write_lock:
            evaluate(writer.store.cursor(), now)
    result = invoke("schedules", "--db", str(db))
    assert "[red]nightly[/red]" in result.output
    assert "\x1b" not in result.output
    assert not any(border in result.output for border in "┏┃│╭")
