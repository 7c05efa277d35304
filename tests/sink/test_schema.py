"""One rule, two evaluators: the Python health rules and the SQL scopes give the same verdicts.

Each scenario is a set of health signals. It is written to a real store as a lifecycle record
(``last_seen`` is the record's time), then every predicate is asked of both
``chaperone_otel._health.rules()`` (``.holds(signals, now)`` / ``.health(signals, now)``) and
the store (``jobs.at(now).<scope>()`` and ``JobRecord.health``). Times are whole seconds and
intervals halves, so both sides compute exactly the same numbers.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaperone_otel import semconv as sc
from chaperone_otel._health import DEFAULT_POLICY, HealthPolicy, rules
from chaperone_otel.sink import open_sink
from tests.sink.store_factory import T0, record, store_writer, write_all

NOW = T0 + 10_000.0
SCOPES = ("healthy", "degraded", "unhealthy", "stuck", "lost", "stalled", "overtime",
          "violated", "near_limit", "running")

_ids = itertools.count()


def to_record(run_id: str, s: dict[str, Any]):
    """The lifecycle record that carries exactly these signals."""
    extra: dict[str, Any] = {sc.ATTR_VIOLATION_COUNT: s["violation_count"]}
    for signal, attribute in (("timeout_at", sc.ATTR_JOB_TIMEOUT_AT),
                              ("memory", sc.ATTR_MEMORY_USAGE),
                              ("memory_limit", sc.ATTR_LIMIT_MEMORY),
                              ("cpu", sc.ATTR_CPU_PERCENT), ("cpu_limit", sc.ATTR_LIMIT_CPU),
                              ("fds", sc.ATTR_OPEN_FDS), ("fd_limit", sc.ATTR_LIMIT_FDS)):
        if s[signal] is not None:
            extra[attribute] = s[signal]
    if s["stall_timeout"] is not None:
        extra[sc.ATTR_JOB_STALL_TIMEOUT] = s["stall_timeout"]
        extra[sc.ATTR_PROGRESS_UPDATED_AT] = s["progress_updated_at"]
    return record(run_id=run_id, seq=1, ts=s["last_seen"], status=s["status"],
                  started_at=s["started_at"], interval=s["heartbeat_interval"],
                  last_heartbeat=s["last_heartbeat"], **extra)


def python_signals(s: dict[str, Any]) -> dict[str, Any]:
    out = {k: s[k] for k in ("status", "started_at", "last_heartbeat", "last_seen",
                             "heartbeat_interval", "timeout_at", "memory", "memory_limit",
                             "cpu", "cpu_limit", "fds", "fd_limit", "violation_count")}
    out["stall_deadline"] = (None if s["stall_timeout"] is None
                             else s["progress_updated_at"] + s["stall_timeout"])
    return out


def check(scenarios: list[dict[str, Any]], tmp_path, policy: HealthPolicy = DEFAULT_POLICY):
    r = rules(policy)
    path = tmp_path / f"parity-{next(_ids)}.duckdb"
    named = {f"s{i}": s for i, s in enumerate(scenarios)}
    with store_writer(path) as (writer, _sink):
        write_all(writer, [to_record(k, s) for k, s in named.items()])
    with open_sink(path, policy=policy) as sink:
        jobs = sink.jobs.at(NOW)
        stored = {run.id: run for run in jobs.all()}
        for scope in SCOPES:
            in_sql = {run.id for run in getattr(jobs, scope)().all()}
            in_python = {k for k, s in named.items()
                         if r.by_name(scope).holds(python_signals(s), NOW)}
            assert in_sql == in_python, scope
        # a finished run is judged from its stored verdict: the full rule's answer
        settled = dict(sink.sql("SELECT run_id, CAST(settled_health AS VARCHAR) FROM jobs")[1])
        for k, s in named.items():
            signals = python_signals(s)
            assert stored[k].health == r.health(signals, NOW), k
            finished = s["status"] in ("completed", "failed", "cancelled", "retried")
            assert settled[k] == (r.health(signals, NOW) if finished else None), k
            assert stored[k].stuck == r.stuck.holds(signals, NOW), k
            assert stored[k].lost == r.lost.holds(signals, NOW), k


def scenario(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "status": "running", "started_at": NOW - 600, "last_heartbeat": NOW - 1,
        "last_seen": NOW - 1, "heartbeat_interval": 10.0, "timeout_at": None,
        "stall_timeout": None, "progress_updated_at": None, "memory": None,
        "memory_limit": None, "cpu": None, "cpu_limit": None, "fds": None, "fd_limit": None,
        "violation_count": 0,
    }
    base.update(overrides)
    return base


TABLE = [
    scenario(),                                                   # healthy
    scenario(last_heartbeat=NOW - 15),                            # exactly 1.5x: healthy
    scenario(last_heartbeat=NOW - 16),                            # degraded
    scenario(last_heartbeat=NOW - 30),                            # exactly 3x: degraded
    scenario(last_heartbeat=NOW - 31),                            # unhealthy + stuck
    scenario(last_heartbeat=NOW - 31, last_seen=NOW - 31),        # lost, not stuck
    scenario(last_heartbeat=NOW - 100, last_seen=NOW - 30),       # alive at the edge: stuck
    scenario(timeout_at=NOW - 1),                                 # overtime, stuck
    scenario(timeout_at=NOW + 1),                                 # not yet
    scenario(stall_timeout=60.0, progress_updated_at=NOW - 61),   # stalled: degraded
    scenario(memory=80, memory_limit=100),                        # 80 %: degraded
    scenario(memory=79, memory_limit=100),                        # healthy
    scenario(cpu=90.0, cpu_limit=100.0, fds=1, fd_limit=0),       # zero limit ignored
    scenario(violation_count=2),                                  # violated: unhealthy
    scenario(status="failed", last_heartbeat=NOW - 500, last_seen=NOW - 500),
    scenario(status="completed", last_heartbeat=NOW - 500, last_seen=NOW - 500),
    scenario(status="cancelled", violation_count=1),
    scenario(status="pending"),
    scenario(status="retried", last_heartbeat=NOW - 500, last_seen=NOW - 500),
    scenario(status="completed", violation_count=1, memory=99, memory_limit=100),
]


def test_scenario_table_gives_the_same_verdicts(tmp_path):
    """The hand-picked scenarios (including exact threshold edges) agree in Python and SQL."""
    r = rules()
    for scope in SCOPES:  # the table exercises every scope (the comparison is not vacuous)
        assert any(r.by_name(scope).holds(python_signals(s), NOW) for s in TABLE), scope
    check(TABLE, tmp_path)


def test_a_stricter_policy_is_rendered_too(tmp_path):
    """A non-default policy changes both evaluators the same way."""
    check(TABLE, tmp_path, HealthPolicy(degraded_after=1.0, unhealthy_after=2.0,
                                        stuck_after=2.0, lost_after=5.0, warn_ratio=0.5))


_opt_int = st.none() | st.integers(0, 1000)
_ages = st.integers(0, 200)


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    interval = draw(st.sampled_from([0.5, 1.0, 2.5, 10.0, 60.0]))
    stall = draw(st.none() | st.integers(1, 300))
    return scenario(
        status=draw(st.sampled_from(["pending", "running", "running", "running", "completed",
                                     "failed", "cancelled", "retried"])),
        last_heartbeat=NOW - draw(_ages),
        last_seen=NOW - draw(_ages),
        heartbeat_interval=interval,
        timeout_at=draw(st.none() | st.integers(-100, 100).map(lambda d: NOW + d)),
        stall_timeout=None if stall is None else float(stall),
        progress_updated_at=NOW - draw(_ages),
        memory=draw(_opt_int), memory_limit=draw(_opt_int),
        cpu=draw(st.none() | st.integers(0, 200).map(float)),
        cpu_limit=draw(st.none() | st.integers(0, 200).map(float)),
        fds=draw(_opt_int), fd_limit=draw(_opt_int),
        violation_count=draw(st.integers(0, 2)),
    )


@pytest.mark.slow  # 25 stores written and queried (~10 s); the table above is the fast check
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(scenarios(), min_size=1, max_size=30))
def test_generated_scenarios_give_the_same_verdicts(tmp_path, batch):
    """Property: for any scenarios, every SQL scope selects exactly the runs Python picks."""
    check(batch, tmp_path)


def _foreign_database(path: Any) -> dict[str, bytes]:
    """A DuckDB file of someone else's, with its own ``jobs`` table; its bytes (and its
    WAL's, if any) after the connection closed."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE jobs (id INTEGER, title VARCHAR)")
    con.execute("INSERT INTO jobs VALUES (1, 'plumber')")
    con.execute("CREATE TABLE invoices (n INTEGER)")
    con.close()
    return _bytes_of(path)


def _bytes_of(path: Any) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def test_a_foreign_duckdb_file_is_refused_before_anything_is_written(tmp_path):
    """``open_sink(path, read_only=False)`` on a DuckDB file with its own ``jobs`` table
    and no ``schema_version`` fails with a message naming its tables and what to do, and
    the file stays byte-for-byte unchanged. (Before: ``heartbeats``, ``job_errors``,
    ``resource_violations`` and ``schema_version`` were added, then a binder error.)"""
    from chaperone_otel.exceptions import SinkError

    path = tmp_path / "app.duckdb"
    before = _foreign_database(path)
    with pytest.raises(SinkError, match=r"tables of its own \(invoices, jobs\).*not a job store"):
        open_sink(str(path), read_only=False)
    assert _bytes_of(path) == before
    with pytest.raises(SinkError, match="not a chaperone-otel job store"):
        open_sink(str(path))  # read-only: refused as before
    assert _bytes_of(path) == before


def test_an_empty_duckdb_file_becomes_a_store(tmp_path):
    """An existing DuckDB file without any table (created empty) is adopted as a store."""
    import duckdb

    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    sink = open_sink(str(path), read_only=False)
    try:
        assert sink.jobs.count() == 0
    finally:
        sink.close()
