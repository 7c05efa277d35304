"""Executions: a run id and attempt started twice (a redelivered task) are two stored rows.

A task framework that redelivers a message after its worker died (Celery's ``acks_late`` +
``reject_on_worker_lost``) runs the same ``(run id, attempt)`` again in a new process. Its
records start at sequence 1 again; merged into the dead execution's row (whose sequence was
15) they were all discarded, and the row said ``completed`` with the dead process's pid.
Each start now has its own execution id, part of the store's key. Real DuckDB files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._schema import MIGRATIONS
from chaperone_otel.sink._server import SinkServer
from tests.cli._cli_helpers import invoke
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all

EXEC = sc.ATTR_JOB_EXECUTION_ID


def _dead_execution(execution: str, pid: int) -> list[Any]:
    """Started, then heartbeats up to sequence 15, then nothing (SIGKILLed)."""
    extra = {EXEC: execution, sc.ATTR_PROCESS_PID: pid}
    out = [record(sc.EVENT_JOB_STARTED, seq=1, ts=T0, **extra)]
    out += [record(seq=i, ts=T0 + i, **extra) for i in range(2, 16)]
    return out


def test_a_redelivered_execution_is_a_second_row_and_neither_is_corrupted(tmp_path: Path):
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, _dead_execution("exec-dead", 111))
        second = lifecycle(
            "run-1", beats=3, start=T0 + 60, **{EXEC: "exec-new", sc.ATTR_PROCESS_PID: 222}
        )
        write_all(writer, second)
        rows = {r.execution_id: r for r in sink.jobs.with_id("run-1").all()}
        assert set(rows) == {"exec-dead", "exec-new"}
        dead, new = rows["exec-dead"], rows["exec-new"]
        assert (dead.attempt, new.attempt) == (1, 1)
        assert dead.status == "running"
        assert dead.pid == 111
        assert dead.heartbeat_count == 15
        assert new.status == "completed"
        assert new.pid == 222
        assert new.heartbeat_count == 5
        assert new.duration == 20.0
        assert len(dead.heartbeats()) == 14
        assert len(new.heartbeats()) == 3
        assert sink.job("run-1").execution_id == "exec-new"  # the latest start


def test_a_record_without_an_execution_id_keeps_the_old_key(tmp_path: Path):
    """An older sender's records (no execution id) are execution '': one row, as before."""
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, lifecycle("old-sender", beats=2))
        (row,) = sink.jobs.with_id("old-sender").all()
        assert row.execution_id == ""
        assert row.status == "completed"
        assert len(row.heartbeats()) == 2


def test_a_version_1_store_is_migrated_and_its_rows_are_execution_empty(tmp_path: Path):
    """Rows stored before executions existed get execution '' (and so do their heartbeats,
    errors and violations); an older sender still completes them; a new execution of the
    same attempt is a row of its own."""
    path = tmp_path / "jobs.duckdb"
    con = duckdb.connect(str(path))
    for statement in MIGRATIONS[0].statements:  # a file of the first release (no views)
        con.execute(statement)
    con.execute("INSERT INTO schema_version VALUES (1, current_timestamp, 'v1')")
    con.execute(
        "INSERT INTO jobs (run_id, attempt, seq, name, status, started_at, heartbeat_interval, "
        "last_heartbeat_at, last_seen_at) VALUES ('legacy', 1, 2, 'etl.import', 'running', "
        "make_timestamp(1767225600000000), 10, make_timestamp(1767225605000000), "
        "make_timestamp(1767225605000000))"
    )
    con.execute(
        "INSERT INTO heartbeats (run_id, attempt, seq, recorded_at, calls, kind) "
        "VALUES ('legacy', 1, 2, make_timestamp(1767225605000000), 1, 'heartbeat')"
    )
    con.close()
    with store_writer(path) as (writer, sink):
        (row,) = sink.jobs.with_id("legacy").all()
        assert row.execution_id == ""
        assert row.status == "running"
        assert len(row.heartbeats()) == 1
        finished = record(
            sc.EVENT_JOB_FINISHED,
            run_id="legacy",
            seq=3,
            ts=T0 + 10,
            status="completed",
            **{sc.ATTR_JOB_FINISHED_AT: T0 + 10},
        )
        again = record(sc.EVENT_JOB_STARTED, run_id="legacy", seq=1, ts=T0 + 20, **{EXEC: "exec-2"})
        write_all(writer, [finished], [again])
        rows = {r.execution_id: r for r in sink.jobs.with_id("legacy").all()}
        assert rows[""].status == "completed"
        assert rows["exec-2"].status == "running"
        assert sink.sql("SELECT count(*) FROM heartbeats WHERE execution_id = ''")[1] == [(1,)]


def test_show_names_the_execution_and_lists_the_other_one(tmp_path: Path):
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, _dead_execution("exec-dead", 111))
        write_all(writer, lifecycle("run-1", beats=1, start=T0 + 60, **{EXEC: "exec-new"}))
    shown = invoke("show", "run-1", "--db", str(path))
    assert shown.exit_code == 0, shown.output
    assert "exec-new" in shown.stdout  # the latest start, shown in full
    assert "other attempts and executions of this run id: 1" in shown.stdout
    assert "exec-dead" in shown.stdout
    data = json.loads(invoke("show", "run-1", "--db", str(path), "--json").stdout)
    assert data["execution_id"] == "exec-new"
    assert [(o["execution_id"], o["status"]) for o in data["other_executions"]] == [
        ("exec-dead", "running")
    ]


@pytest.mark.slow
def test_a_remote_record_reads_its_own_executions_details(tmp_path: Path):
    """Over the HTTP query API too, a record's heartbeats are its own execution's."""
    srv = SinkServer(str(tmp_path / "jobs.duckdb"), port=0, advertise=False).start()
    try:
        second = lifecycle("run-1", beats=3, start=T0 + 60, **{EXEC: "exec-new"})
        assert srv.writer.submit(_dead_execution("exec-dead", 111) + second)
        assert srv.writer.flush(30)
        remote = RemoteSink(srv.url)
        try:
            rows = {r.execution_id: r for r in remote.jobs.with_id("run-1").all()}
            assert len(rows["exec-dead"].heartbeats()) == 14
            assert len(rows["exec-new"].heartbeats()) == 3
            assert remote.heartbeats_of("run-1", 1) != []  # no execution: every one
        finally:
            remote.close()
    finally:
        srv.stop(15)


def test_an_end_centuries_after_the_start_is_stored_not_a_failed_write(tmp_path: Path):
    """A ``closed`` record ending a run ~950 years after its start (a valid time, if an odd
    one) over its stored start: its duration is computed in float. Before, Arrow refused
    the microseconds past 2**53 and the whole write failed, a good record with it."""

    started = record(sc.EVENT_JOB_STARTED, run_id="odd", started_at=1.0, ts=1.0)
    closed = record(
        sc.EVENT_JOB_CLOSED,
        run_id="odd",
        seq=2,
        ts=3e10,
        started_at=1.0,
        status="failed",
        **{sc.ATTR_JOB_FINISHED_AT: 3e10},
    )
    good = record(sc.EVENT_JOB_STARTED, run_id="innocent")
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, [started])
        write_all(writer, [closed, good])
        rows = dict(sink.sql("SELECT run_id, status FROM jobs")[1])
        assert rows == {"odd": "failed", "innocent": "running"}
        ((duration,),) = sink.sql("SELECT duration FROM jobs WHERE run_id = 'odd'")[1]
        assert duration == pytest.approx(3e10 - 1.0)


def test_a_record_from_the_far_future_does_not_keep_its_run_seen_for_ever(tmp_path: Path):
    """A sender's clock far ahead (or a time of 2^64 ns) counts as at most a few minutes
    ahead of the sink's for when the run was last seen: its last_seen_at stayed in the
    future, so the run could never be judged lost."""
    import time

    from chaperone_otel.sink._records import FUTURE_SLACK

    far = record(sc.EVENT_JOB_STARTED, run_id="ahead", started_at=T0, ts=18_446_744_073.0)
    before = time.time()
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, [far])
        ((seen,),) = sink.sql("SELECT epoch(last_seen_at) FROM jobs WHERE run_id = 'ahead'")[1]
    assert before < seen <= time.time() + FUTURE_SLACK
