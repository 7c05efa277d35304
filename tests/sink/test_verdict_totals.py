"""``verdict_totals``: the writer and prune keep the stored runs per settled verdict exact, and
a verdict scope's ``count()`` read from them equals the full scan (issue 16, goal 1).

Every check compares against the runs themselves in a real DuckDB store: the table against a
``GROUP BY`` of the stored verdicts, and each count against the whole rule evaluated over
every row (``predicate``, which never reads the stored verdict or the totals).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._query import JobQuery
from chaperone_otel.sink._schema import BACKFILL_SETTLED, MIGRATIONS, migrate, predicate
from chaperone_otel.sink._store import acquire
from chaperone_otel.testing import capture
from tests.sink.store_factory import lifecycle, record, store_writer, write_all

VERDICTS = ("healthy", "unhealthy", "degraded")
Filter = tuple[str, Callable[[JobQuery], JobQuery], Callable[[dict[str, Any]], bool]]
FILTERS: list[Filter] = [
    ("all", lambda q: q, lambda r: True),
    ("named", lambda q: q.named("etl.a"), lambda r: r["name"] == "etl.a"),
    ("queue", lambda q: q.on_queue("q2"), lambda r: r["queue"] == "q2"),
    ("class", lambda q: q.by_class("etl"), lambda r: (r["name"] or "").startswith("etl.")),
    ("failed", lambda q: q.failed(), lambda r: r["status"] == "failed"),
    ("completed+named+queue", lambda q: q.completed().named("etl.b").on_queue("q1"),
     lambda r: (r["status"], r["name"], r["queue"]) == ("completed", "etl.b", "q1")),
    ("running", lambda q: q.running(), lambda r: r["status"] == "running"),
]
"""Filters the totals answer: (label, scope, the same filter over a stored row)."""


def _totals(sink: Any) -> list[tuple[Any, ...]]:
    return sorted(sink.sql("SELECT name, queue, status, CAST(health AS VARCHAR), stored "
                           "FROM verdict_totals")[1])


def _grouped(sink: Any) -> list[tuple[Any, ...]]:
    """What the totals must be: the stored verdicts grouped, straight from ``jobs``."""
    return sorted(sink.sql(
        "SELECT coalesce(name, ''), coalesce(queue, ''), status, "
        "CAST(settled_health AS VARCHAR), count(*) FROM jobs "
        "WHERE settled_health IS NOT NULL GROUP BY ALL")[1])


def _full_scan(sink: Any, verdict: str, now: float) -> list[dict[str, Any]]:
    """The runs the whole rule judges ``verdict`` at ``now``, over every row."""
    names, rows = sink.sql("SELECT name, queue, status FROM jobs "
                           f"WHERE {predicate(verdict)}", {"now": now})
    return [dict(zip(names, row, strict=True)) for row in rows]


def assert_exact(sink: Any, now: float, *, every_filter: bool = True) -> int:
    """The totals equal the stored verdicts, and every verdict count read from them equals
    the full scan (``every_filter``: with each of :data:`FILTERS`, else unfiltered); returns
    how many counts were checked."""
    assert _totals(sink) == _grouped(sink)
    assert all(row[-1] > 0 for row in _totals(sink))  # no empty group is kept
    checked = 0
    for verdict in VERDICTS:
        full = _full_scan(sink, verdict, now)
        for label, scope, keep in FILTERS if every_filter else FILTERS[:1]:
            query = scope(getattr(sink.jobs.at(now), verdict)())
            if verdict != "degraded":  # a finished run is never degraded: one scan, no totals
                assert "verdict_totals" in query.render(sink.policy, count=True)[0], label
            want = sum(1 for row in full if keep(row))
            assert query.count() == want == len(query.all()), (verdict, label)
            checked += 1
    return checked


def _ended(run_id: str, status: str, at: float, *, name: str = "etl.a", queue: str = "q1",
           violations: int = 0, **kw: Any) -> list[LifecycleRecord]:
    return lifecycle(run_id, beats=1, status=status, start=at - 10, step=5.0, name=name,
                     queue=queue, **{sc.ATTR_VIOLATION_COUNT: violations}, **kw)


def _history(now: float) -> list[LifecycleRecord]:
    """Finished runs of two names on two queues (every terminal status, some violated),
    half of them an hour old, and live ones (running, stuck, pending)."""
    runs: list[LifecycleRecord] = []
    statuses = ("completed", "failed", "cancelled", "retried")
    for i in range(16):
        runs += _ended(f"end-{i}", statuses[i % 4], now - (3600 if i % 2 else 60),
                       name=("etl.a", "etl.b")[i // 8], queue=("q1", "q2")[(i // 2) % 2],
                       violations=int(i % 3 == 0))
    runs.append(record(run_id="live", ts=now - 1, started_at=now - 100, name="etl.a",
                       queue="q1"))
    runs.append(record(run_id="stuck", ts=now - 1, started_at=now - 600,
                       last_heartbeat=now - 500, name="etl.b", queue="q2"))
    runs.append(record(run_id="due", status="pending", ts=now - 1, name="etl.a", queue="q2"))
    return runs


def test_totals_stay_exact_through_writes_late_records_refinishes_closes_and_prune(
    tmp_path: Path,
) -> None:
    now = time.time()
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, sink):
        history = _history(now)
        write_all(writer, history[:20], history[20:])  # ends split across batches
        assert _totals(sink)  # the store has settled verdicts to count
        assert assert_exact(sink, now) == len(VERDICTS) * len(FILTERS)

        # a re-delivered end changes nothing
        write_all(writer, _ended("end-0", "completed", now - 60)[-1:])
        assert_exact(sink, now, every_filter=False)

        # a late record of an ended run rewrites its verdict (healthy -> unhealthy) ...
        write_all(writer, [record(sc.EVENT_JOB_FINISHED, run_id="end-4", seq=99, ts=now - 50,
                                  status="completed", name="etl.a", queue="q1",
                                  started_at=now - 70, **{sc.ATTR_VIOLATION_COUNT: 2})])
        assert dict(sink.sql("SELECT run_id, CAST(settled_health AS VARCHAR) FROM jobs "
                             "WHERE run_id = 'end-4'")[1]) == {"end-4": "unhealthy"}
        assert_exact(sink, now, every_filter=False)

        # ... and the run that was live ends, beside a heartbeat of another live run
        write_all(writer, [
            record(sc.EVENT_JOB_FINISHED, run_id="live", seq=5, ts=now - 1, status="completed",
                   started_at=now - 100, name="etl.a", queue="q1"),
            record(run_id="stuck", seq=3, ts=now - 1, started_at=now - 600,
                   last_heartbeat=now - 500, name="etl.b", queue="q2"),
        ])
        assert_exact(sink, now, every_filter=False)

        # a finish recorded by another process: a running run, and one that had completed
        # (the closer's outcome wins: completed/healthy -> failed/unhealthy)
        execution = {sc.ATTR_JOB_EXECUTION_ID: "exec-1"}
        write_all(writer, [record(sc.EVENT_JOB_STARTED, run_id="child", ts=now - 5,
                                  started_at=now - 5, name="etl.b", queue="q1", **execution)],
                  _ended("done", "completed", now - 30, name="etl.b", queue="q1", **execution))
        assert_exact(sink, now, every_filter=False)
        with capture() as cap:
            chaperone.close_run("child", execution_id="exec-1", status="failed")
            chaperone.close_run("done", execution_id="exec-1", status="failed")
        write_all(writer, cap.records)
        assert dict(sink.sql("SELECT run_id, status FROM jobs WHERE run_id IN "
                             "('child', 'done')")[1]) == {"child": "failed", "done": "failed"}
        assert_exact(sink, now)

        # a second execution of an ended run is a run of its own
        write_all(writer, _ended("end-1", "completed", now - 20,
                                 **{sc.ATTR_JOB_EXECUTION_ID: "exec-2"}))
        assert_exact(sink, now, every_filter=False)

        # prune: the hour-old runs go, the totals follow
        pruner = LocalSink(acquire(path, read_only=False), read_only=False)
        try:
            assert pruner.prune("30m") == 8
        finally:
            pruner.close()
        assert_exact(sink, now)
        assert sink.jobs.at(now).healthy().count() > 0


def test_the_count_reads_the_totals(tmp_path: Path) -> None:
    """A hand-made wrong total shows in the count (and not in a count the totals cannot
    answer), which proves the count reads them and why only the writer, prune and the
    migration may change them."""
    now = time.time()
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, _ended("r", "completed", now - 60))
    con = duckdb.connect(str(path))
    con.execute("UPDATE verdict_totals SET stored = 5")
    con.close()
    with open_sink(path) as sink:
        jobs = sink.jobs.at(now)
        assert jobs.healthy().count() == 5
        assert jobs.healthy().named("etl.a").count() == 5
        assert jobs.healthy().since(now - 3600).count() == 1  # a filter the totals lack
        assert len(jobs.healthy().all()) == 1


def test_the_migration_fills_the_totals_from_the_stored_verdicts(tmp_path: Path) -> None:
    """A store from before the totals: its finished runs (their verdicts stored as the writer
    and the earlier migration store them) are counted when it is upgraded."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    before = next(i for i, m in enumerate(MIGRATIONS) if "verdict_totals" in m.description)
    migrate(con, str(path), migrations=MIGRATIONS[:before])
    con.execute(
        "INSERT INTO jobs (run_id, attempt, name, queue, status, started_at, "
        "heartbeat_interval, violation_count) SELECT 'r' || i, 1, "
        "CASE WHEN i % 3 = 0 THEN NULL ELSE 'etl.' || (i % 2) END, 'q' || (i % 2), "
        "['completed', 'failed', 'cancelled', 'retried', 'running'][1 + i % 5], "
        "TIMESTAMP '2026-01-01', 10.0, i % 4 FROM range(40) t(i)"
    )
    con.execute(BACKFILL_SETTLED)
    migrate(con, str(path))
    con.close()
    with open_sink(path) as sink:
        assert len(_totals(sink)) > 4
        assert _totals(sink) == _grouped(sink)
        assert ("", "q0", "failed", "unhealthy", 2) in _totals(sink)  # no name: ''
        for verdict in ("healthy", "unhealthy"):
            query = getattr(sink.jobs, verdict)()
            assert query.count() == len(query.all()) > 0
