"""The store: schema versioning, idempotent bulk ingest, bounded heartbeats, the writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import duckdb
import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import SchemaVersionError, SinkError
from chaperone_otel.sink import SCHEMA_VERSION, open_sink, record_from_span
from chaperone_otel.sink._store import acquire, release, sidecar_path
from tests.sink.store_factory import T0, lifecycle, record, store_writer, table, write_all

JOBS = "SELECT * EXCLUDE (ingested_at) FROM jobs"
ALL_TABLES = (JOBS, "SELECT * FROM heartbeats", "SELECT * FROM job_errors",
              "SELECT * FROM resource_violations")


def snapshot(sink):
    return [table(sink, q) for q in ALL_TABLES]


# --- schema ------------------------------------------------------------------------------


def test_new_file_gets_current_schema_and_views(tmp_path):
    """A new store records its schema version and has every table and view."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (_writer, sink):
        assert sink.sql("SELECT max(version) FROM schema_version")[1] == [(SCHEMA_VERSION,)]
        names = {r[0] for r in sink.sql("SELECT table_name FROM information_schema.tables")[1]}
    assert {"jobs", "heartbeats", "job_errors", "resource_violations", "jobs_health",
            "problem_runs", "schema_version"} <= names


def test_file_from_newer_version_fails_clearly(tmp_path):
    """A file whose schema is newer than this code raises SchemaVersionError saying what to do."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path):
        pass
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP, 'future')",
                [SCHEMA_VERSION + 1])
    con.close()
    for read_only in (True, False):
        with pytest.raises(SchemaVersionError, match=r"newer.*Upgrade chaperone-otel"):
            open_sink(path, read_only=read_only)


def test_read_only_open_of_missing_file_says_what_to_do(tmp_path):
    """Opening a missing file read-only does not create it and explains how stores are made."""
    path = tmp_path / "nope.duckdb"
    with pytest.raises(SinkError, match=r"no job store at .*configure\(sink="):
        open_sink(path)
    assert not path.exists()


def test_foreign_duckdb_file_is_not_a_store(tmp_path):
    """A DuckDB file without our schema is refused read-only."""
    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).close()
    with pytest.raises(SinkError, match="not a chaperone-otel job store"):
        open_sink(path)


@pytest.mark.slow
def test_file_held_by_another_process_names_its_pid(tmp_path):
    """A store locked by another process (no sidecar) raises SinkError with that PID."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(SinkError, match=rf"held by process {holder.pid}.*Stop that process"):
            open_sink(path, handover_timeout=0.5)  # the wait itself: test_local
        assert not sidecar_path(path).exists()
    finally:
        assert holder.stdin is not None
        assert holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


# --- ingest ------------------------------------------------------------------------------


def test_repeated_and_reordered_delivery_gives_the_same_rows(tmp_path):
    """The same records delivered once, twice, or reversed in split batches give equal tables."""
    records = lifecycle("a", beats=4, status="failed") + lifecycle("b", beats=2)
    records.append(record(sc.EVENT_JOB_VIOLATION, run_id="b", seq=99, ts=T0 + 1, **{
        sc.ATTR_LIMIT_TYPE: "memory", sc.ATTR_LIMIT_VALUE: 100.0, sc.ATTR_LIMIT_ACTUAL: 150.0}))
    with store_writer(tmp_path / "once.duckdb") as (writer, sink):
        write_all(writer, records)
        once = snapshot(sink)
    with store_writer(tmp_path / "twice.duckdb") as (writer, sink):
        write_all(writer, records, records, records[::-1])
        twice = snapshot(sink)
    with store_writer(tmp_path / "shuffled.duckdb") as (writer, sink):
        rev = records[::-1]
        write_all(writer, *[rev[i:i + 2] for i in range(0, len(rev), 2)])
        write_all(writer, [records[3]])
        shuffled = snapshot(sink)
    assert all(once)  # every table has rows
    assert twice == once
    assert shuffled == once


def test_older_sequence_never_overwrites_newer(tmp_path):
    """A late, older record (lower sequence) does not roll the run back."""
    with store_writer(tmp_path / "j.duckdb") as (writer, sink):
        write_all(writer, [record(run_id="r", seq=5, ts=T0 + 50, **{
            sc.ATTR_PROGRESS_RATIO: 0.5, sc.ATTR_PROGRESS_PHASE: "load"})])
        write_all(writer, [record(run_id="r", seq=2, ts=T0 + 20, **{
            sc.ATTR_PROGRESS_RATIO: 0.2, sc.ATTR_PROGRESS_PHASE: "extract"})])
        run = sink.job("r")
        assert run is not None
        assert (run.progress, run.phase) == (50.0, "load")
        assert run.last_seen_at.timestamp() == T0 + 50


def test_terminal_status_never_reverts_to_running(tmp_path):
    """Once finished, a delayed 'running' record (any order) leaves the run finished."""
    records = lifecycle("r", beats=2, status="completed")
    with store_writer(tmp_path / "j.duckdb") as (writer, sink):
        write_all(writer, [records[-1]], records[:-1])
        run = sink.job("r")
        assert run is not None
        assert run.status == "completed"
        assert run.finished_at is not None
        assert run.progress == 100.0


def test_last_seen_is_the_latest_record_of_any_kind(tmp_path):
    """A liveness beat moves last_seen_at but not last_heartbeat_at."""
    with store_writer(tmp_path / "j.duckdb") as (writer, sink):
        write_all(writer, [
            record(run_id="r", seq=1, ts=T0, last_heartbeat=T0),
            record(run_id="r", seq=2, ts=T0 + 40, last_heartbeat=T0,
                   **{sc.ATTR_HEARTBEAT_CALLS: 0, sc.ATTR_HEARTBEAT_KIND: "liveness"}),
        ])
        run = sink.job("r")
        assert run is not None
        assert run.last_seen_at.timestamp() == T0 + 40
        assert run.last_heartbeat_at.timestamp() == T0
        kinds = [h.kind for h in run.heartbeats()]
        assert kinds == ["heartbeat", "liveness"]


def test_heartbeats_are_bounded_per_run_keeping_the_latest(tmp_path):
    """With a limit of 10, a run with 35 heartbeats keeps its 10 newest; other runs untouched."""
    beats = [record(run_id="long", seq=i, ts=T0 + i) for i in range(1, 36)]
    with store_writer(tmp_path / "j.duckdb", heartbeat_limit=10) as (writer, sink):
        write_all(writer, beats[:12], beats[12:30], beats[30:], beats[:5],
                  [record(run_id="short", seq=1, ts=T0)])
        long_run = sink.job("long")
        assert long_run is not None
        assert [round(h.at.timestamp() - T0) for h in long_run.heartbeats()] == list(
            range(26, 36))
        assert sink.sql("SELECT heartbeat_rows FROM jobs WHERE run_id = 'long'")[1] == [(10,)]
        short = sink.job("short")
        assert short is not None
        assert len(short.heartbeats()) == 1


def test_span_completes_only_what_log_records_left_empty(tmp_path):
    """A finished span fills missing fields and ends a running run, but never overrides logs."""
    span = record_from_span(
        {sc.ATTR_JOB_RUN_ID: "r", sc.ATTR_JOB_ATTEMPT: 1, sc.ATTR_JOB_NAME: "from.span",
         sc.ATTR_JOB_STATUS: "failed", sc.ATTR_ERROR_TYPE: "builtins.KeyError",
         sc.ATTR_MEMORY_PEAK: 777},
        start_time=T0, end_time=T0 + 30, trace_id=0x1, span_id=0x2,
        error_message="'k'", error_stacktrace="Traceback: KeyError 'k'")
    with store_writer(tmp_path / "a.duckdb") as (writer, sink):
        write_all(writer, [record(run_id="r", seq=3, ts=T0 + 10, trace_id=0, span_id=0)],
                  [span])
        run = sink.job("r")
        assert run is not None
        assert run.name == "etl.import"  # the log record's name wins
        assert run.status == "failed"  # a span proves the run ended
        assert run.memory_peak_bytes == 777  # filled in
        assert run.trace_id == f"{1:032x}"
        assert run.finished_at.timestamp() == T0 + 30
        assert [(e.type, e.trace) for e in run.errors] == [
            ("builtins.KeyError", "Traceback: KeyError 'k'")]
    with store_writer(tmp_path / "b.duckdb") as (writer, sink):
        write_all(writer, [span], [record(run_id="r", seq=3, ts=T0 + 10)])
        run = sink.job("r")
        assert run is not None
        assert (run.name, run.status) == ("etl.import", "failed")


def test_wrong_types_become_null_and_bad_records_are_counted(tmp_path):
    """A wrong-typed value is stored as NULL (counted); a record without run id is skipped."""
    good = record(run_id="r", seq=1, **{sc.ATTR_MEMORY_USAGE: "lots", sc.ATTR_OPEN_FDS: 12})
    bad = record(run_id="", seq=1)
    with store_writer(tmp_path / "j.duckdb") as (writer, sink):
        write_all(writer, [good, bad])
        run = sink.job("r")
        assert run is not None
        assert (run.memory_bytes, run.open_fds) == (None, 12)
        stats = writer.stats
        # the bad value is NULL in the jobs row and in the heartbeat row: two values coerced
        assert (stats.written, stats.invalid, stats.coerced, stats.dropped) == (1, 1, 2, 0)


def test_full_queue_is_reported_and_counted_not_dropped(tmp_path):
    """While the writer is blocked, submits beyond capacity return False and are counted;
    everything accepted is written afterwards."""
    with store_writer(tmp_path / "j.duckdb", capacity=5, linger=0) as (writer, sink):
        store = writer.store
        with store.write_lock:  # the writer thread blocks on its first batch
            assert writer.submit([record(run_id="a", seq=1)])
            deadline = time.monotonic() + 10
            while writer.stats.queue_depth and time.monotonic() < deadline:
                time.sleep(0.005)  # wait until the thread took "a" and blocked
            assert writer.submit([record(run_id=f"b{i}", seq=1) for i in range(4)])
            assert not writer.submit([record(run_id="c", seq=1)])
            stats = writer.stats
            assert (stats.accepted, stats.rejected) == (5, 1)
        assert writer.flush(30)
        assert sink.jobs.count() == 5
        assert sink.job("c") is None


def test_close_writes_everything_queued(tmp_path):
    """Records submitted without a flush are in the file after close()."""
    path = tmp_path / "j.duckdb"
    with store_writer(path, linger=1.0) as (writer, _sink):
        for i in range(50):
            assert writer.submit(lifecycle(f"r{i}", beats=2))
    with open_sink(path) as sink:
        assert sink.jobs.completed().count() == 50
        assert sink.sql("SELECT count(*) FROM heartbeats")[1] == [(100,)]


def test_submit_after_close_raises(tmp_path):
    """A closed writer refuses records loudly."""
    with store_writer(tmp_path / "j.duckdb") as (writer, _sink):
        pass
    with pytest.raises(SinkError, match="closed"):
        writer.submit([record()])


# --- retention ---------------------------------------------------------------------------


def test_prune_deletes_old_runs_with_their_rows(tmp_path):
    """prune() removes runs whose latest record is older than the age, and their children."""
    now = time.time()
    path = tmp_path / "j.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, lifecycle("old", status="failed", start=now - 40 * 86400),
                  lifecycle("new", start=now - 3600))
    with open_sink(path, read_only=False) as sink:
        assert sink.prune(timedelta(days=30)) == 1
        assert sink.prune("30d") == 0
        assert [r.id for r in sink.jobs.all()] == ["new"]
        for t in ("heartbeats", "job_errors"):
            assert sink.sql(f"SELECT DISTINCT run_id FROM {t}")[1] in ([("new",)], [])
        assert sink.sql("SELECT count(*) FROM heartbeats WHERE run_id = 'old'")[1] == [(0,)]


def test_prune_keeps_runs_still_reporting_and_deletes_lost_ones(tmp_path):
    """A running run is kept while its process reports, however old its last record is
    relative to the age (a 2 h interval, last heard 90 min ago: healthy); once lost (silent
    for more than 3 intervals) it is pruned like a finished run."""
    now = time.time()
    path = tmp_path / "j.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(
            writer,
            [record(run_id="slow-but-alive", ts=now - 5400, started_at=now - 6 * 3600,
                    interval=7200.0)],
            [record(run_id="lost", ts=now - 5400, started_at=now - 6 * 3600, interval=60.0)],
            lifecycle("finished", start=now - 3 * 3600),
        )
    with open_sink(path, read_only=False) as sink:
        assert sink.job("slow-but-alive").health == "healthy"
        assert sink.job("lost").lost
        assert sink.prune("1h") == 2
        assert [r.id for r in sink.jobs.all()] == ["slow-but-alive"]


def test_prune_needs_a_writable_sink(tmp_path):
    """A read-only sink refuses to prune and says how to open it writable."""
    path = tmp_path / "j.duckdb"
    with store_writer(path):
        pass
    with open_sink(path) as sink, pytest.raises(SinkError, match="read_only=False"):
        sink.prune("1d")


def test_in_process_open_shares_the_owners_connection(tmp_path):
    """open_sink() on a file this process writes shares the connection and sees commits."""
    path = tmp_path / "j.duckdb"
    store = acquire(path, read_only=False)
    try:
        with store_writer(path) as (writer, _):
            write_all(writer, lifecycle("x"))
            with open_sink(os.fspath(path)) as sink:
                assert sink.job("x") is not None
    finally:
        release(store)


@pytest.mark.slow
def test_queries_run_in_utc_whatever_the_machine_zone(tmp_path):
    """Every query session runs in UTC (the store's timestamps are naive UTC), so the ad-hoc
    idiom ``CAST(now() AS TIMESTAMP) - INTERVAL …`` means the same on any machine."""
    db = tmp_path / "tz.duckdb"
    script = f"""
import chaperone_otel as c
c.configure(sink={str(db)!r})
with c.supervised("tz.job"):
    pass
c.shutdown()
with c.open_sink({str(db)!r}) as sink:
    print(sink.sql("SELECT current_setting('TimeZone')")[1][0][0])
    print(sink.sql("SELECT count(*) FROM jobs "
                   "WHERE started_at > CAST(now() AS TIMESTAMP) - INTERVAL 1 HOUR")[1][0][0])
"""
    env = {**os.environ, "TZ": "Asia/Tokyo"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["UTC", "1"]
