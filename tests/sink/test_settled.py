"""A finished run's verdict is stored once (``settled_health``) and scopes read it (issue 16).

The column is the residual of the one rule tree for the run's terminal status, rendered to SQL
(``sink/_settled.py``): the writer computes it for every row it writes, migration 6 backfills
the rows stored before. These tests check that the stored value is the verdict the Python
rules give at any evaluation time, for every terminal status and every way a run ends (its
own finish, a finished span, another process's ``close_run``), that an old store gets it, and
that the scopes reading it return exactly the rows the full rule selects. Real DuckDB files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._health import DEFAULT_POLICY, PREDICATES, All, HealthPolicy, Not, rules
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._schema import (
    HEALTH_COLUMNS,
    MIGRATIONS,
    health_case,
    migrate,
    predicate,
    stored_health,
    where_predicate,
)
from chaperone_otel.sink._settled import (
    reads_clock,
    residual,
    settle_case,
    settled_residuals,
    settled_usable,
    status_residual,
    verdict_is_exclusive,
)
from chaperone_otel.testing import capture
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all

NOW = T0 + 10_000.0
STRICT = HealthPolicy(degraded_after=1.0, unhealthy_after=2.0, stuck_after=2.0,
                      lost_after=5.0, warn_ratio=0.5)


def _settled(sink: Any) -> dict[str, Any]:
    return dict(sink.sql("SELECT run_id, settled_health FROM jobs")[1])


def _signals(sink: Any, run_id: str) -> dict[str, Any]:
    """The run's health signals, read back from its stored row (as the rules name them)."""
    cols = ", ".join(f"{sql} AS {name}" for name, sql in HEALTH_COLUMNS.items())
    names, rows = sink.sql(f"SELECT {cols} FROM jobs WHERE run_id = ?", [run_id])
    return dict(zip(names, rows[0], strict=True))


# --- the rule tree's residuals ------------------------------------------------------------


def test_the_residual_of_a_finished_run_keeps_only_what_is_undecided() -> None:
    r = rules()
    assert residual(r.unhealthy, {"status": "failed"}) is True
    assert residual(r.unhealthy, {"status": "completed"}) == r.violated
    assert residual(r.degraded, {"status": "completed"}) is False
    assert residual(r.healthy, {"status": "completed"}) == Not(r.violated)
    assert residual(r.stuck, {"status": "cancelled"}) is False
    # a live run's verdict reads the clock: never settled
    assert reads_clock(residual(r.unhealthy, {"status": "running"}))
    assert set(settled_residuals()) == {"completed", "failed", "cancelled", "retried"}


def test_no_threshold_of_the_policy_reaches_a_finished_run() -> None:
    """The stored verdicts were computed with the default policy; they are valid for any
    other because the settled SQL is the same text (no threshold survives the residual)."""
    assert settle_case(HEALTH_COLUMNS, STRICT) == settle_case(HEALTH_COLUMNS)
    assert settled_usable(STRICT, HEALTH_COLUMNS)
    r = rules()
    assert all(verdict_is_exclusive(r, v) for v in ("unhealthy", "degraded", "healthy"))
    # the structural check refuses a "healthy" rule that does not exclude the others
    broken = type(r)(**{**{f: getattr(r, f) for f in PREDICATES}, "policy": r.policy,
                        "healthy": All((r.running,))})
    assert not verdict_is_exclusive(broken, "healthy")


# --- the writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "retried"])
@pytest.mark.parametrize("violations", [0, 2])
def test_the_writer_stores_the_verdict_of_each_terminal_status(
    tmp_path: Path, status: str, violations: int
) -> None:
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, lifecycle("done", status=status,
                                    **{sc.ATTR_VIOLATION_COUNT: violations}))
        write_all(writer, [record(run_id="live", ts=T0), record(run_id="due", status="pending")])
        settled = _settled(sink)
        signals = _signals(sink, "done")
        expected = rules().health(signals, NOW)
        for later in (T0, NOW, NOW + 1e6):  # the clock does not matter: it is settled
            assert rules().health(signals, later) == expected
        assert settled == {"done": expected, "live": None, "due": None}
        assert expected == ("unhealthy" if status == "failed" or violations else "healthy")
        assert sink.job("done").health == expected  # type: ignore[union-attr]


def test_a_run_closed_by_another_process_gets_its_verdict(tmp_path: Path) -> None:
    """close_run(): the closer's record ends a running row through the span path."""
    execution = {sc.ATTR_JOB_EXECUTION_ID: "exec-1"}
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, [record(sc.EVENT_JOB_STARTED, ts=T0, **execution)])
        assert _settled(sink) == {"run-1": None}
        with capture() as cap:
            chaperone.close_run("run-1", execution_id="exec-1", status="failed")
        write_all(writer, cap.records)
        assert _settled(sink) == {"run-1": "unhealthy"}
        assert sink.jobs.unhealthy().count() == 1
        assert sink.jobs.healthy().count() == 0


def test_a_later_record_of_an_ended_run_recomputes_its_verdict(tmp_path: Path) -> None:
    """A re-delivered or later record (here a finish carrying a violation) rewrites the row;
    the stored verdict follows the merged values, never a stale one."""
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, lifecycle("r", status="completed"))
        assert _settled(sink) == {"r": "healthy"}
        write_all(writer, [record(sc.EVENT_JOB_FINISHED, run_id="r", seq=99, ts=T0 + 99,
                                  status="completed", **{sc.ATTR_VIOLATION_COUNT: 1})])
        assert _settled(sink) == {"r": "unhealthy"}


# --- an old store -------------------------------------------------------------------------


def test_an_old_store_gets_its_finished_runs_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    previous = MIGRATIONS[:-1]
    assert "settled_health" in MIGRATIONS[-1].columns  # the last migration adds it
    migrate(con, str(path), migrations=previous)
    con.execute(
        "INSERT INTO jobs (run_id, attempt, status, started_at, heartbeat_interval, "
        "last_heartbeat_at, last_seen_at, violation_count) SELECT * FROM (VALUES "
        "('ok', 1, 'completed', TIMESTAMP '2026-01-01', 10.0, TIMESTAMP '2026-01-01', "
        " TIMESTAMP '2026-01-01', 0), "
        "('bad', 1, 'failed', TIMESTAMP '2026-01-01', 10.0, NULL, NULL, 0), "
        "('hit', 1, 'retried', TIMESTAMP '2026-01-01', 10.0, NULL, NULL, 3), "
        "('off', 1, 'cancelled', TIMESTAMP '2026-01-01', 10.0, NULL, NULL, NULL), "
        "('live', 1, 'running', TIMESTAMP '2026-01-01', 10.0, TIMESTAMP '2026-01-01', "
        " TIMESTAMP '2026-01-01', 0))"
    )
    con.close()
    with open_sink(path, read_only=False) as sink:
        assert _settled(sink) == {"ok": "healthy", "bad": "unhealthy", "hit": "unhealthy",
                                  "off": "healthy", "live": None}
        jobs = sink.jobs.at(T0 + 1000)
        assert {j.id for j in jobs.healthy().all()} == {"ok", "off"}
        assert {j.id for j in jobs.unhealthy().all()} == {"bad", "hit", "live"}


# --- scopes read the column and select what the full rule selects ------------------------


def _mixed_store(path: Path) -> None:
    runs: list[Any] = []
    for i, status in enumerate(["completed", "failed", "cancelled", "retried"] * 3):
        runs += lifecycle(f"end-{i}", status=status, start=NOW - 900 + i,
                          **{sc.ATTR_VIOLATION_COUNT: int(i % 3 == 0),
                             sc.ATTR_MEMORY_USAGE: 900, sc.ATTR_LIMIT_MEMORY: 1000})
    for i, age in enumerate([1, 16, 31, 200]):
        runs.append(record(run_id=f"live-{i}", ts=NOW - 1, last_heartbeat=NOW - age,
                           started_at=NOW - 600))
    runs.append(record(run_id="lost", ts=NOW - 500, started_at=NOW - 600))
    runs.append(record(run_id="hot", ts=NOW - 1, started_at=NOW - 600,
                       **{sc.ATTR_MEMORY_USAGE: 900, sc.ATTR_LIMIT_MEMORY: 1000}))
    runs.append(record(run_id="due", status="pending", ts=NOW - 1))
    with store_writer(path) as (writer, _sink):
        write_all(writer, runs)


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, STRICT], ids=["default", "strict"])
def test_scopes_on_a_mixed_store_match_the_full_rule(tmp_path: Path, policy: HealthPolicy) -> None:
    path = tmp_path / "mixed.duckdb"
    _mixed_store(path)
    with open_sink(path, policy=policy) as sink:
        params = {"now": NOW}

        def rows(where: str) -> list[Any]:
            text = f"SELECT run_id FROM jobs WHERE {where} ORDER BY run_id"
            return sink.sql(text, params if "$now" in text else None)[1]

        for name in PREDICATES:
            fast, full = rows(where_predicate(name, policy)), rows(predicate(name, policy))
            assert fast == full, name
            via_api = sorted(j.id for j in getattr(sink.jobs.at(NOW), name)().all())
            assert via_api == [r[0] for r in full], name
            # count() of a verdict scope adds two scans (stored verdicts + the rule)
            assert getattr(sink.jobs.at(NOW), name)().count() == len(full), name
            combined = getattr(sink.jobs.at(NOW), name)().named("etl.import").since(NOW - 700)
            assert combined.count() == len(combined.all()), name
        for name in ("healthy", "unhealthy", "degraded"):  # the store has each of them
            assert rows(predicate(name, policy)), name
        health = sink.sql(f"SELECT run_id, {stored_health(policy)}, {health_case(policy)} "
                          "FROM jobs", params)[1]
        assert all(a == b for _r, a, b in health), health
        view = dict(sink.sql("SELECT run_id, health FROM jobs_health")[1])
        assert view["end-1"] == "unhealthy"
        assert view["end-2"] == "healthy"


def test_a_verdict_scope_reads_the_stored_column(tmp_path: Path) -> None:
    """The column, not the rule, decides a finished run: a (hand-made) wrong value shows,
    which proves the scope reads it (and why only the writer and the backfill may set it)."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, lifecycle("r", status="completed"))
    con = duckdb.connect(str(path))
    con.execute("UPDATE jobs SET settled_health = 'unhealthy'")
    con.close()
    with open_sink(path) as sink:
        assert sink.jobs.healthy().count() == 0
        assert sink.jobs.unhealthy().count() == 1


# --- a live run's residual ------------------------------------------------------------------


def _live_grid() -> list[dict[str, Any]]:
    """Live runs across every rule's edges: late, silent, overtime, stalled, near a limit,
    violated, on a liveness lease, NULL signals."""
    out: list[dict[str, Any]] = []
    for status in ("running", "pending"):
        for beat, seen in ((1, 1), (16, 1), (31, 1), (200, 1), (200, 31), (None, None)):
            for extra in ({}, {"timeout_at": NOW - 1}, {"stall_deadline": NOW - 1},
                          {"memory": 90.0, "memory_limit": 100.0}, {"violation_count": 1},
                          {"lease": "liveness"}, {"cpu": 90.0, "cpu_limit": 0.0}):
                out.append({"status": status, "heartbeat_interval": 10.0,
                            "last_heartbeat": None if beat is None else NOW - beat,
                            "last_seen": None if seen is None else NOW - seen,
                            "violation_count": 0, **extra})
    return out


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, STRICT], ids=["default", "strict"])
def test_a_live_statuss_residual_is_the_predicate(policy: HealthPolicy) -> None:
    """The live part of a scope judges a running or pending run by its status's residual
    (the earlier verdicts known false): the same answer as the whole predicate."""
    r = rules(policy)
    seen: set[tuple[str, bool]] = set()
    for signals in _live_grid():
        for name in PREDICATES:
            part = status_residual(r, name, str(signals["status"]))
            got = part if isinstance(part, bool) else part.holds(signals, NOW)
            want = r.by_name(name).holds(signals, NOW)
            assert got == want, (name, signals)
            seen.add((name, want))
    assert all((v, True) in seen for v in ("healthy", "degraded", "unhealthy"))


def test_status_scopes_of_live_runs_skip_finished_runs_by_the_column(tmp_path: Path) -> None:
    """running()/pending() add the stored column's IS NULL (pushed into the scan first): the
    same rows, since only a finished run has a stored verdict."""
    path = tmp_path / "mixed.duckdb"
    _mixed_store(path)
    with open_sink(path) as sink:
        for status in ("running", "pending", "completed", "failed"):
            where = getattr(sink.jobs, status)().sql()[0].split(" FROM jobs WHERE ")[-1]
            assert ("settled_health IS NULL" in where) == (status in ("running", "pending"))
            want = sink.sql("SELECT count(*) FROM jobs WHERE status = ?", [status])[1][0][0]
            assert getattr(sink.jobs, status)().count() == want > 0, status


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, STRICT], ids=["default", "strict"])
def test_per_status_sql_judges_every_status_as_python_does(
    tmp_path: Path, policy: HealthPolicy
) -> None:
    """The record's health and every scope are rendered per status (each status's residual,
    ``health_by_status`` / ``live_sql``): for each status, one a sender made up and NULL,
    and terminal rows without a stored verdict, the SQL gives the Python rules' answers."""
    path = tmp_path / "mixed.duckdb"
    _mixed_store(path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE jobs SET status = 'weird' WHERE run_id IN ('live-1', 'end-0', 'hot')")
    con.execute("UPDATE jobs SET status = NULL WHERE run_id IN ('live-2', 'end-3')")
    con.execute("UPDATE jobs SET settled_health = NULL")  # every row judged by the rule
    con.close()
    r = rules(policy)
    with open_sink(path, policy=policy) as sink:
        ids = [row[0] for row in sink.sql("SELECT run_id FROM jobs")[1]]
        signals = {run_id: _signals(sink, run_id) for run_id in ids}
        assert {s["status"] for s in signals.values()} >= {"weird", None, "completed", "failed"}
        jobs = sink.jobs.at(NOW)
        health = {run.id: run.health for run in jobs.all()}
        assert health == {k: r.health(s, NOW) for k, s in signals.items()}
        for name in PREDICATES:
            want = {k for k, s in signals.items() if r.by_name(name).holds(s, NOW)}
            assert {run.id for run in getattr(jobs, name)().all()} == want, name
            assert getattr(jobs, name)().count() == len(want), name
