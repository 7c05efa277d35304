"""The writer's key probe (``sink/_probe.py``) finds every stored row of a batch's runs.

A write reads ``jobs`` only where a batch key's row can be: the open runs (not ended, or no
start time) at their last write, which the store's writers keep (``OpenRuns``); the other
runs at or after the start time their records carry. These tests write records in the orders
that could make such a narrowing miss a row, over real DuckDB files, and check that the run
still has exactly one row with the merged state; that the writers' open runs are always
exactly the open rows of the file; and that a store written with the narrowed probe equals
one written with the full join.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel.sink import _ingest, _probe, open_sink
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._records import SpanRecord, record_from_span, stage
from chaperone_otel.sink._store import acquire, release
from chaperone_otel.sink._writer import Writer
from tests.sink.store_factory import T0, record, store_writer, write_all
from tests.stores import empty_store

DAY = 86_400.0


def rec(event: str, run: str, *, seq: int, ts: float, execution: str | None = None,
        started_at: float | None = None, status: str = "running", **extra: Any) -> LifecycleRecord:
    """A record of run ``run``'s execution ``execution`` (default ``run + "-x"``);
    ``started_at=None`` leaves the start time out, as pending and closed records do."""
    out = record(event, run_id=run, seq=seq, ts=ts, status=status,
                 started_at=T0 if started_at is None else started_at,
                 **{sc.ATTR_JOB_EXECUTION_ID: f"{run}-x" if execution is None else execution},
                 **extra)
    if started_at is None:
        attrs = dict(out.attributes)
        del attrs[sc.ATTR_JOB_STARTED_AT]
        out = LifecycleRecord(event_name=out.event_name, timestamp=out.timestamp,
                              attributes=attrs, trace_id=out.trace_id, span_id=out.span_id)
    return out


def pending(run: str, ts: float) -> LifecycleRecord:
    attrs = {sc.ATTR_JOB_RUN_ID: run, sc.ATTR_JOB_ATTEMPT: 1, sc.ATTR_JOB_EXECUTION_ID: f"{run}-x",
             sc.ATTR_JOB_NAME: "etl.import", sc.ATTR_JOB_QUEUE: "default",
             sc.ATTR_JOB_STATUS: "pending", sc.ATTR_JOB_SEQUENCE: 0,
             sc.ATTR_JOB_SCHEDULED_AT: ts + 3600}
    return LifecycleRecord(event_name=sc.EVENT_JOB_PENDING, timestamp=ts, attributes=attrs)


def closed(run: str, ts: float, status: str = "failed") -> LifecycleRecord:
    attrs = {sc.ATTR_JOB_RUN_ID: run, sc.ATTR_JOB_ATTEMPT: 1, sc.ATTR_JOB_EXECUTION_ID: f"{run}-x",
             sc.ATTR_JOB_STATUS: status, sc.ATTR_JOB_FINISHED_AT: ts,
             sc.ATTR_ERROR_TYPE: "billiard.exceptions.WorkerLostError",
             sc.ATTR_ERROR_MESSAGE: "lost"}
    return LifecycleRecord(event_name=sc.EVENT_JOB_CLOSED, timestamp=ts, attributes=attrs)


def span(run: str, start: float, end: float) -> SpanRecord:
    return record_from_span({sc.ATTR_JOB_RUN_ID: run, sc.ATTR_JOB_ATTEMPT: 1,
                             sc.ATTR_JOB_EXECUTION_ID: f"{run}-x"},
                            start_time=start, end_time=end, trace_id=7, span_id=8, failed=False)


def whole_run(run: str, start: float, status: str = "completed") -> list[LifecycleRecord]:
    return [rec(sc.EVENT_JOB_STARTED, run, seq=1, ts=start, started_at=start),
            rec(sc.EVENT_JOB_FINISHED, run, seq=2, ts=start + 5, started_at=start, status=status,
                **{sc.ATTR_JOB_FINISHED_AT: start + 5})]


def rows_of(sink: LocalSink, run: str) -> list[dict[str, Any]]:
    names, rows = sink.sql("SELECT * FROM jobs WHERE run_id = ?", [run])
    return [dict(zip(names, row, strict=True)) for row in rows]


def open_runs_agree(writer: Writer, sink: LocalSink) -> None:
    """The writer's open runs are exactly the open rows of ``jobs``, at their
    ``ingested_at`` (a key it lacks has no open row)."""
    known = writer.store.open_runs.snapshot()
    assert known is not None  # loaded by the first write
    _names, rows = sink.sql(f"SELECT run_id, attempt, execution_id, epoch_us(ingested_at) FROM jobs "
                            f"WHERE {_probe.OPEN_SQL}")
    assert known == {(r, a, e): at for r, a, e, at in rows}


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each write needed the full join (True) or read only the narrowed rows."""
    seen: list[bool] = []
    real = _ingest.take_current

    def spy(cur: Any, keys: Any, register: Any, open_runs: Any) -> Any:
        current, full = real(cur, keys, register, open_runs)
        seen.append(full)
        return current, full

    monkeypatch.setattr(_ingest, "take_current", spy)
    return seen


def bulk_ended(path: Path, n: int, first_start: float) -> None:
    """Append ``n`` ended runs (one a second from ``first_start``, written in end order) to
    the store at ``path`` directly, as a long-lived store holds them: more than one DuckDB
    row group, so the zone maps skip the old ones."""
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "INSERT INTO jobs (run_id, attempt, execution_id, name, queue, status, started_at, "
            "finished_at, ingested_at, seq) SELECT 'bulk-' || i, 1, 'bulk-x-' || i, 'etl', "
            "'default', 'completed', make_timestamp(CAST(($t + i) * 1e6 AS BIGINT)), "
            "make_timestamp(CAST(($t + i + 1) * 1e6 AS BIGINT)), "
            "make_timestamp(CAST(($t + i + 2) * 1e6 AS BIGINT)), 2 FROM range($n) r(i)",
            {"t": first_start, "n": n},
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


# --- each way a narrowing could miss a row --------------------------------------------------


def test_a_late_record_of_a_run_ended_long_ago_finds_its_row_in_a_large_store(
    tmp_path: Path, paths: list[bool]
) -> None:
    path = tmp_path / "large.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, whole_run("old", T0))
    bulk_ended(path, 250_000, T0 + DAY)  # three row groups after the old run's
    late = T0 + DAY + 300_000
    with store_writer(path) as (writer, sink):
        paths.clear()
        new = [rec(sc.EVENT_JOB_STARTED, f"new-{i}", seq=1, ts=late, started_at=late)
               for i in range(50)]
        # the old run's span, a day and more late, among new runs' starts
        write_all(writer, [*new, span("old", T0, T0 + 5)])
        (row,) = rows_of(sink, "old")
        assert row["status"] == "completed"
        assert row["span_seen"]
        assert row["seq"] == 2
        assert row["trace_id"] is not None
        # and a late heartbeat of the ended run: still one row, still ended
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, "old", seq=1, ts=T0 + 1, started_at=T0)])
        (row,) = rows_of(sink, "old")
        assert row["status"] == "completed"
        assert sink.sql("SELECT count(*) FROM jobs")[1][0][0] == 250_000 + 51
        assert paths == [False, False]  # found without the full join
        open_runs_agree(writer, sink)


def test_a_pending_run_started_later_merges_into_its_pending_row(
    tmp_path: Path, paths: list[bool]
) -> None:
    path = tmp_path / "pending.duckdb"
    with store_writer(path) as (writer, sink):
        write_all(writer, [pending("eta", T0)])
        (row,) = rows_of(sink, "eta")
        assert row["status"] == "pending"
        assert row["started_at"] is None
    bulk_ended(path, 130_000, T0 + 10)  # the pending row is now far from the end
    start = T0 + 200_000
    with store_writer(path) as (writer, sink):
        paths.clear()
        write_all(writer, [rec(sc.EVENT_JOB_STARTED, "eta", seq=1, ts=start, started_at=start)])
        (row,) = rows_of(sink, "eta")
        assert row["status"] == "running"
        assert row["scheduled_at"] is not None  # the pending record's, kept
        write_all(writer, whole_run("eta", start)[1:])
        (row,) = rows_of(sink, "eta")
        assert row["status"] == "completed"
        assert paths == [False, False]
        open_runs_agree(writer, sink)


def test_a_record_without_a_start_time_finds_an_ended_run(
    tmp_path: Path, paths: list[bool]
) -> None:
    path = tmp_path / "closed.duckdb"
    with store_writer(path) as (writer, sink):
        write_all(writer, whole_run("done", T0, status="failed"))
        write_all(writer, [rec(sc.EVENT_JOB_STARTED, "fresh", seq=1, ts=T0 + DAY,
                               started_at=T0 + DAY)])
        paths.clear()
        # another process's word on the run, with no start time, after a newer run's start
        write_all(writer, [closed("done", T0 + 10),
                           rec(sc.EVENT_JOB_HEARTBEAT, "fresh", seq=2, ts=T0 + DAY + 1,
                               started_at=T0 + DAY)])
        (row,) = rows_of(sink, "done")
        assert row["status"] == "failed"
        assert row["started_at"] is not None
        assert paths == [True]  # no bound for it: the full join
        # a pending record of an ended run (a re-delivered one) has none either
        paths.clear()
        write_all(writer, [pending("done", T0 + 20)])
        (row,) = rows_of(sink, "done")
        assert row["status"] == "failed"
        assert paths == [True]
        open_runs_agree(writer, sink)


def test_a_closed_run_without_a_start_is_found_by_its_own_records(
    tmp_path: Path, paths: list[bool]
) -> None:
    """A ``closed`` record that arrives first makes a row with no start time; the run's own
    records, with a start, must find it although its ``started_at`` is NULL."""
    path = tmp_path / "closed_first.duckdb"
    with store_writer(path) as (writer, sink):
        write_all(writer, [closed("lost", T0 + 100)])
        paths.clear()
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, "lost", seq=3, ts=T0 + 50,
                               started_at=T0)])
        (row,) = rows_of(sink, "lost")
        assert row["status"] == "failed"
        assert row["started_at"] is not None
        assert paths == [False]
        open_runs_agree(writer, sink)


def test_a_key_stored_with_an_earlier_start_is_found(tmp_path: Path, paths: list[bool]) -> None:
    path = tmp_path / "reused.duckdb"
    with store_writer(path) as (writer, sink):
        # A sender without execution ids re-delivers a run under the same key, an hour on.
        write_all(writer, whole_run("redelivered", T0))
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, f"other-{i}", seq=1, ts=T0 + 7200,
                               started_at=T0 + 7200) for i in range(5)])
        legacy = [rec(sc.EVENT_JOB_STARTED, "legacy", seq=1, ts=T0, started_at=T0, execution=""),
                  rec(sc.EVENT_JOB_FINISHED, "legacy", seq=2, ts=T0 + 5, started_at=T0,
                      execution="", status="completed")]
        write_all(writer, legacy)
        paths.clear()
        write_all(writer, [rec(sc.EVENT_JOB_STARTED, "legacy", seq=9, ts=T0 + 3600,
                               started_at=T0 + 3600, execution="")])
        assert len(rows_of(sink, "legacy")) == 1
        assert paths == [True]  # no execution id: the full join
        # A record whose start differs a little from the stored one (rounding, a sender
        # stamping its span apart from its records) is found within the slack.
        paths.clear()
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, "redelivered", seq=1, ts=T0 + 2,
                               started_at=T0 + 30)])
        assert len(rows_of(sink, "redelivered")) == 1
        assert paths == [False]
        open_runs_agree(writer, sink)


def test_a_long_lived_run_is_found_at_its_last_write(tmp_path: Path, paths: list[bool]) -> None:
    """A run started long before the batch's other runs, written rarely: found through
    ``open_runs`` (its row is where it was last written, not where it started)."""
    path = tmp_path / "long.duckdb"
    with store_writer(path) as (writer, sink):
        write_all(writer, [rec(sc.EVENT_JOB_STARTED, "long", seq=1, ts=T0, started_at=T0)])
    bulk_ended(path, 130_000, T0 - 200_000)  # runs that ended before it started, after it
    with store_writer(path) as (writer, sink):
        paths.clear()
        later = T0 + 300_000
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, "long", seq=2, ts=later, started_at=T0),
                           rec(sc.EVENT_JOB_STARTED, "short", seq=1, ts=later,
                               started_at=later)])
        (row,) = rows_of(sink, "long")
        assert row["seq"] == 2
        assert row["heartbeat_count"] == 2
        assert paths == [False]
        open_runs_agree(writer, sink)


def test_a_run_pruned_while_open_is_written_again_as_a_new_row(tmp_path: Path) -> None:
    path = tmp_path / "prune.duckdb"
    with store_writer(path) as (writer, sink):
        # closed before it started: no start time, so open, and silent for a year: pruned
        write_all(writer, [closed("gone", T0)], whole_run("kept", T0))
        assert writer.store.open_runs.snapshot() is not None
        with open_sink(path, read_only=False) as owner:
            assert owner.prune("1d") >= 1
        assert rows_of(sink, "gone") == []
        # forgotten by prune (else every run closed before its start would stay listed)
        assert writer.store.open_runs.snapshot() is None
        write_all(writer, [rec(sc.EVENT_JOB_HEARTBEAT, "gone", seq=5, ts=T0 + 9, started_at=T0)])
        (row,) = rows_of(sink, "gone")
        assert row["seq"] == 5
        open_runs_agree(writer, sink)


def test_the_open_runs_are_read_from_the_stored_rows(tmp_path: Path) -> None:
    """Rows stored before this writer (another process, an older release) are found: the
    first write reads the open ones from ``jobs``."""
    path = tmp_path / "old.duckdb"
    empty_store(path)
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO jobs (run_id, attempt, execution_id, status, started_at, ingested_at, seq) "
        "SELECT * FROM (VALUES "
        "('done', 1, 'done-x', 'completed', TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01', 2), "
        "('live', 1, 'live-x', 'running', TIMESTAMP '2025-01-01', TIMESTAMP '2026-01-02', 2), "
        "('eta', 1, 'eta-x', 'pending', NULL, TIMESTAMP '2026-01-03', 0), "
        "('gone', 1, 'gone-x', 'cancelled', NULL, TIMESTAMP '2026-01-04', 1), "
        "('odd', 1, 'odd-x', NULL, TIMESTAMP '2026-01-01', NULL, 1))"
    )
    con.close()
    bulk_ended(path, 130_000, T0 + 10 * DAY)
    later = T0 + 30 * DAY
    with store_writer(path) as (writer, sink):
        write_all(
            writer,
            [
                rec(sc.EVENT_JOB_STARTED, "fresh", seq=1, ts=later, started_at=later),
                rec(sc.EVENT_JOB_STARTED, "eta", seq=1, ts=later, started_at=later),
                rec(sc.EVENT_JOB_HEARTBEAT, "live", seq=3, ts=later,
                    started_at=T0 - 365 * DAY),
            ],
        )
        write_all(
            writer,
            [
                rec(sc.EVENT_JOB_HEARTBEAT, "gone", seq=2, ts=later, started_at=T0),
                rec(sc.EVENT_JOB_HEARTBEAT, "odd", seq=2, ts=later, started_at=T0),
            ],
        )
        for run, seq in (("eta", 1), ("live", 3), ("gone", 2), ("odd", 2)):
            (row,) = rows_of(sink, run)  # one row: the stored one, merged
            assert row["seq"] == seq, run
        (row,) = rows_of(sink, "eta")
        assert row["status"] == "running"
        open_runs_agree(writer, sink)


class _FailingCommit:
    """A cursor whose ``COMMIT`` commits, then raises: the writer cannot tell whether a
    failed commit happened (DuckDB's can, on a full disk)."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def execute(self, sql: str, *args: Any) -> Any:
        out = self._cur.execute(sql, *args)
        if sql == "COMMIT":
            raise OSError("no space left on device")
        return out


def test_a_write_whose_commit_failed_makes_the_writer_read_the_open_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "failed.duckdb"
    empty_store(path)
    store = acquire(path, read_only=False)
    sink = LocalSink(acquire(path, read_only=True), read_only=True)
    cur = store.cursor()
    try:
        open_runs = store.open_runs
        _ingest.write(cur, stage([whole_run("done", T0)[0]]), heartbeat_limit=10,
                      open_runs=open_runs)
        assert open_runs.snapshot() is not None
        # the pending record's row is committed, but the writer never hears it was
        with pytest.raises(OSError, match="no space"):
            _ingest.write(_FailingCommit(cur), stage([pending("eta", T0)]), heartbeat_limit=10,
                          open_runs=open_runs)
        assert open_runs.snapshot() is None
        later = [rec(sc.EVENT_JOB_STARTED, "eta", seq=1, ts=T0 + 9, started_at=T0 + 9)]
        _ingest.write(cur, stage(later), heartbeat_limit=10, open_runs=open_runs)
        (row,) = rows_of(sink, "eta")  # the pending row, found: not a second row
        assert row["status"] == "running"
        # a write that fails before its commit changes nothing: the open runs stay known
        def broken(*_args: Any) -> None:
            raise ValueError("a bad value")

        monkeypatch.setattr(_ingest, "totals_delta", broken)
        with pytest.raises(ValueError, match="bad value"):
            _ingest.write(cur, stage([pending("x", T0)]), heartbeat_limit=10, open_runs=open_runs)
        assert open_runs.snapshot() is not None
        assert ("x", 1, "x-x") not in open_runs.snapshot()  # type: ignore[operator]
    finally:
        cur.close()
        sink.close()
        release(store)


def test_a_reopened_store_reads_its_open_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "reopen.duckdb"
    empty_store(path)
    store = acquire(path, read_only=False)
    try:
        cur = store.cursor()
        assert store.open_runs.load(cur) == {}
        cur.close()
        with store.write_lock:
            store.reopen()
        assert store.open_runs.snapshot() is None
    finally:
        release(store)


# --- any order of records: the same rows as the full join -----------------------------------


def _records_of_runs(rng: random.Random, runs: int) -> list[Any]:
    out: list[Any] = []
    for i in range(runs):
        run = f"r{i}"
        start = T0 + rng.uniform(0, 3 * DAY)
        kind = rng.random()
        if kind < 0.2:
            out.append(pending(run, start - rng.uniform(0, DAY)))
        out.append(rec(sc.EVENT_JOB_STARTED, run, seq=1, ts=start, started_at=start))
        for k in range(rng.randint(0, 3)):
            out.append(rec(sc.EVENT_JOB_HEARTBEAT, run, seq=k + 2, ts=start + k + 1,
                           started_at=start))
        if kind < 0.7:
            end = start + rng.uniform(1, DAY)
            out.append(rec(sc.EVENT_JOB_FINISHED, run, seq=9, ts=end, started_at=start,
                           status=rng.choice(["completed", "failed"]),
                           **{sc.ATTR_JOB_FINISHED_AT: end}))
            if rng.random() < 0.5:
                out.append(span(run, start, end))
        elif kind < 0.8:
            out.append(closed(run, start + 50))
    return out


def _write_shuffled(path: Path, records: list[Any], rng: random.Random) -> None:
    with store_writer(path, linger=0) as (writer, sink):
        rest = list(records)
        while rest:
            n = rng.randint(1, 25)
            batch, rest = rest[:n], rest[n:]
            write_all(writer, batch)
            open_runs_agree(writer, sink)


def _table(path: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        columns = [r[0] for r in con.execute("DESCRIBE jobs").fetchall()]
        kept = ", ".join(c for c in columns if c != "ingested_at")
        return sorted(con.execute(f"SELECT {kept} FROM jobs").fetchall(), key=repr)
    finally:
        con.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_order_of_records_gives_the_rows_of_the_full_join(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    records = _records_of_runs(rng, 40)
    rng.shuffle(records)
    narrowed, full = tmp_path / "narrowed.duckdb", tmp_path / "full.duckdb"
    empty_store(narrowed)
    empty_store(full)
    _write_shuffled(narrowed, records, random.Random(seed))
    with monkeypatch.context() as m:  # the reference: every write by the full join
        m.setattr(_probe, "NARROW_DELETE", _probe.FULL_DELETE.replace(
            "RETURNING", "AND ($started IS NULL OR TRUE) AND ($written IS NULL OR TRUE) RETURNING"))
        _write_shuffled(full, records, random.Random(seed))
    assert _table(narrowed) == _table(full)
    assert len(_table(narrowed)) == 40
