"""The sink's fleet /metrics serve every input of the shipped alerts and dashboards (issue 14):
per-run signal gauges formed as the workers form theirs, problem counts, the finished-runs
counter and the last success, read from active runs and the ``job_totals`` summary only, so
the series (and the scrape) do not grow with history."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import duckdb
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from chaperone_otel import semconv as sc
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._fleet import PROBLEMS, FleetCollector, IngestStats
from chaperone_otel.sink._schema import MIGRATIONS, migrate
from chaperone_otel.sink._server import SinkServer
from tests.sink.serve_process import PROTOBUF, lifecycle_logs, request
from tests.sink.test_fleet import one, post_json, record, scrape
from tests.stores import empty_store

NAME, QUEUE, RUN_ID, STATUS = (sc.prometheus_label(a) for a in (
    sc.ATTR_JOB_NAME, sc.ATTR_JOB_QUEUE, sc.ATTR_JOB_RUN_ID, sc.ATTR_JOB_STATUS))
PROBLEM = sc.prometheus_label(sc.ATTR_SINK_PROBLEM)
INGEST = {sc.METRIC_SINK_RECORDS_INGESTED.prometheus, sc.METRIC_SINK_LAST_INGEST.prometheus,
          sc.METRIC_SINK_STORE_SIZE.prometheus}


def _post(url: str, logs: list[dict[str, Any]]) -> None:
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()
    assert post_json(url, "/v1/logs", body) == 200


def _series(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> set[tuple[str, ...]]:
    """Every series (name and label set), values ignored."""
    return {(name, *sorted(f"{k}={v}" for k, v in labels.items()))
            for name, samples in metrics.items() for labels, _ in samples}


def _running(run_id: str, now: float, *, started: float, beat: float, seen: float,
             **attrs: Any) -> dict[str, Any]:
    return record(run_id, sc.EVENT_JOB_HEARTBEAT, seen, **{
        sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_STARTED_AT: started,
        sc.ATTR_HEARTBEAT_INTERVAL: 10.0, sc.ATTR_HEARTBEAT_LAST: beat, **attrs})


def test_ten_thousand_short_runs_leave_the_series_of_one_thousand(tmp_path: Path) -> None:
    """1,000 then 10,000 finished short runs beside a few running ones: the set of series is
    the same (finished runs only move counter values), and the counter follows."""
    now = time.time()
    with SinkServer(str(empty_store(tmp_path / "card.duckdb")), port=0) as srv:
        _post(srv.url, [_running(f"live{i}", now, started=now - 5, beat=now - 1, seen=now)
                        for i in range(3)])
        assert request(srv.port, "POST", "/v1/logs", lifecycle_logs(1000), PROTOBUF)[0] == 200
        small = scrape(srv.url)
        for _ in range(9):
            body = lifecycle_logs(1000)
            assert request(srv.port, "POST", "/v1/logs", body, PROTOBUF)[0] == 200
        big = scrape(srv.url)
    finished = sc.METRIC_SINK_RUNS_FINISHED.prometheus
    assert one(small, finished, **{STATUS: "completed"}) == 1000
    assert one(big, finished, **{STATUS: "completed"}) == 10_000
    assert one(big, sc.METRIC_SINK_RUN_ACTIVE.prometheus, **{NAME: "fleet.job"}) == 3
    assert _series(big) == _series(small)
    assert len(_series(big)) < 100


def test_run_signal_gauges_are_grouped_like_the_workers(tmp_path: Path) -> None:
    """A run past the long-run threshold has series of its own (run id label) carrying its
    signals; two young runs of a job share one series holding the stalest one's values;
    ended runs have none; problem counts come from the one health definition."""
    now = time.time()
    long_run = _running("long", now, started=now - 600, beat=now - 100, seen=now - 1, **{
        sc.ATTR_JOB_TIMEOUT_AT: now - 30, sc.ATTR_MEMORY_USAGE: 900,
        sc.ATTR_LIMIT_MEMORY: 1000, sc.ATTR_CPU_PERCENT: 50.0, sc.ATTR_LIMIT_CPU: 200.0,
        sc.ATTR_VIOLATION_COUNT: 2, sc.ATTR_PROGRESS_RATIO: 0.25})
    young = [_running("fresh", now, started=now - 5, beat=now - 2, seen=now - 1),
             _running("stale", now, started=now - 6, beat=now - 25, seen=now - 1)]
    done = record("done", sc.EVENT_JOB_FINISHED, now - 3, **{
        sc.ATTR_JOB_STATUS: "completed", sc.ATTR_JOB_STARTED_AT: now - 9,
        sc.ATTR_JOB_FINISHED_AT: now - 3, sc.ATTR_HEARTBEAT_INTERVAL: 10.0})
    with SinkServer(str(empty_store(tmp_path / "sig.duckdb")), port=0, long_run_threshold=60) as srv:
        _post(srv.url, [long_run, *young, done])
        m = scrape(srv.url)
    own = {NAME: "fleet.job", QUEUE: "q", RUN_ID: "long"}
    assert one(m, sc.METRIC_SINK_RUN_ACTIVE.prometheus, **own) == 1
    assert abs(one(m, sc.METRIC_SINK_RUN_LAST_HEARTBEAT.prometheus, **own) - (now - 100)) < 1
    assert abs(one(m, sc.METRIC_SINK_RUN_LAST_SEEN.prometheus, **own) - (now - 1)) < 1
    assert abs(one(m, sc.METRIC_SINK_RUN_DEADLINE.prometheus, **own) - (now - 30)) < 1
    assert one(m, sc.METRIC_SINK_RUN_HEARTBEAT_INTERVAL.prometheus, **own) == 10
    assert one(m, sc.METRIC_SINK_RUN_MEMORY.prometheus, **own) == 900
    assert one(m, sc.METRIC_SINK_RUN_MEMORY_LIMIT.prometheus, **own) == 1000
    assert one(m, sc.METRIC_SINK_RUN_CPU.prometheus, **own) == 0.5  # a fraction of a core
    assert one(m, sc.METRIC_SINK_RUN_CPU_LIMIT.prometheus, **own) == 2.0
    assert one(m, sc.METRIC_SINK_RUN_VIOLATIONS.prometheus, **own) == 2
    assert one(m, sc.METRIC_SINK_RUN_PROGRESS.prometheus, **own) == 0.25
    # the young runs: one label-less series, the stalest run's heartbeat
    group = [(lab, v) for lab, v in m[sc.METRIC_SINK_RUN_ACTIVE.prometheus]
             if not lab.get(RUN_ID)]
    assert group == [({NAME: "fleet.job", QUEUE: "q", RUN_ID: ""}, 2.0)] or \
        group == [({NAME: "fleet.job", QUEUE: "q"}, 2.0)]
    beats = [v for lab, v in m[sc.METRIC_SINK_RUN_LAST_HEARTBEAT.prometheus]
             if not lab.get(RUN_ID)]
    assert len(beats) == 1
    assert abs(beats[0] - (now - 25)) < 1
    # no series names the ended run
    assert not [lab for samples in m.values() for lab, _ in samples
                if lab.get(RUN_ID) == "done"]
    problems = {lab[PROBLEM]: v for lab, v in m[sc.METRIC_SINK_RUNS_PROBLEM.prometheus]}
    assert set(problems) == set(PROBLEMS)
    # long: overtime, near its memory limit, violated, stuck (past timeout, process alive);
    # stale: 2.5 intervals without a heartbeat (missed); fresh: nothing
    assert problems == {"overtime": 1, "stalled": 0, "heartbeat_missed": 2, "near_limit": 1,
                        "violated": 1, "stuck": 1, "lost": 0}


def _collect(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(con.cursor, stats=IngestStats))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_job_totals_follow_ends_redeliveries_and_prune(tmp_path: Path) -> None:
    """An end counts once however often it is delivered; prune lowers the stored runs but
    not the finished counter; the last success is the latest completed end."""
    path = str(empty_store(tmp_path / "totals.duckdb"))
    old = time.time() - 3600

    def ended(run_id: str, status: str, at: float) -> dict[str, Any]:
        return record(run_id, sc.EVENT_JOB_FINISHED, at, **{
            sc.ATTR_JOB_STATUS: status, sc.ATTR_JOB_STARTED_AT: at - 5,
            sc.ATTR_JOB_FINISHED_AT: at, sc.ATTR_HEARTBEAT_INTERVAL: 1.0,
            sc.ATTR_JOB_SEQUENCE: 2})

    with SinkServer(path, port=0, advertise=False) as srv:
        _post(srv.url, [record("r1", sc.EVENT_JOB_STARTED, old - 10, **{
            sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_STARTED_AT: old - 10})])
        _post(srv.url, [ended("r1", "completed", old), ended("r2", "failed", old + 1)])
        _post(srv.url, [ended("r1", "completed", old), ended("r3", "completed", old + 2)])
    con = duckdb.connect(path, read_only=True)
    try:
        m = _collect(con)
    finally:
        con.close()
    finished = sc.METRIC_SINK_RUNS_FINISHED.prometheus
    runs = sc.METRIC_SINK_RUNS.prometheus
    assert one(m, finished, **{STATUS: "completed"}) == 2
    assert one(m, finished, **{STATUS: "failed"}) == 1
    assert one(m, runs, **{STATUS: "completed"}) == 2
    assert abs(one(m, sc.METRIC_SINK_LAST_SUCCESS.prometheus) - (old + 2)) < 0.01
    with open_sink(path, read_only=False) as sink:
        assert sink.prune("10m") == 3
    con = duckdb.connect(path, read_only=True)
    try:
        m = _collect(con)
    finally:
        con.close()
    assert one(m, finished, **{STATUS: "completed"}) == 2
    assert one(m, finished, **{STATUS: "failed"}) == 1
    assert not m.get(runs)  # nothing stored any more
    assert abs(one(m, sc.METRIC_SINK_LAST_SUCCESS.prometheus) - (old + 2)) < 0.01


def test_the_migration_fills_job_totals_from_the_runs_already_stored(tmp_path: Path) -> None:
    """A store from before job_totals: its ended runs are counted when it is upgraded."""
    path = str(tmp_path / "before.duckdb")
    con = duckdb.connect(path)
    before = next(i for i, m in enumerate(MIGRATIONS) if "job_totals" in m.description)
    migrate(con, path, migrations=MIGRATIONS[:before])
    con.execute("INSERT INTO jobs (run_id, attempt, name, queue, status, finished_at) VALUES "
                "('a', 1, 'j', 'q', 'completed', TIMESTAMP '2026-01-01 10:00:00'), "
                "('b', 1, 'j', 'q', 'completed', TIMESTAMP '2026-01-01 11:00:00'), "
                "('c', 1, 'j', NULL, 'failed', NULL), ('d', 1, 'j', 'q', 'running', NULL)")
    migrate(con, path)
    rows = con.execute("SELECT name, queue, status, finished, stored, last_finished_at "
                       "FROM job_totals ORDER BY status").fetchall()
    con.close()
    assert [r[:5] for r in rows] == [("j", "q", "completed", 2, 2), ("j", "", "failed", 1, 1)]
    assert str(rows[0][5]) == "2026-01-01 11:00:00"


def test_another_family_is_one_add_source_call(tmp_path: Path) -> None:
    """A source added with add_source() is served in the same scrape, on the same cursor and
    snapshot as the built-in families (how schedules, say, would join)."""
    path = str(tmp_path / "extra.duckdb")
    con = duckdb.connect(path)
    migrate(con, path)

    def schedules(cur: Any, now: float) -> Any:
        assert now == 1000.0
        (count,) = cur.execute("SELECT count(*) FROM jobs").fetchone()
        family = GaugeMetricFamily("chaperone_sink_test_extra", "a test family", labels=["k"])
        family.add_metric(["v"], count)
        yield family

    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(con.cursor, stats=IngestStats, clock=lambda: 1000.0)
    collector.add_source(schedules)
    registry.register(collector)
    text = generate_latest(registry).decode()
    con.close()
    assert 'chaperone_sink_test_extra{k="v"} 0.0' in text
    assert sc.METRIC_SINK_RUN_ACTIVE.prometheus in text


def test_job_totals_count_each_execution_of_a_run(tmp_path: Path) -> None:
    """Two executions of one (run id, attempt), as an acks-late redelivery makes them, are
    two ends: the second counts even when it arrives beside a re-delivery of the first,
    and pruning the old one leaves the new one stored."""
    path = str(empty_store(tmp_path / "executions.duckdb"))
    now = time.time()

    def ended(execution: str, status: str, at: float) -> dict[str, Any]:
        return record("r", sc.EVENT_JOB_FINISHED, at, **{
            sc.ATTR_JOB_STATUS: status, sc.ATTR_JOB_STARTED_AT: at - 5,
            sc.ATTR_JOB_FINISHED_AT: at, sc.ATTR_HEARTBEAT_INTERVAL: 1.0,
            sc.ATTR_JOB_SEQUENCE: 2, sc.ATTR_JOB_EXECUTION_ID: execution})

    with SinkServer(path, port=0, advertise=False) as srv:
        _post(srv.url, [ended("e1", "failed", now - 3600)])
        _post(srv.url, [ended("e1", "failed", now - 3600), ended("e2", "completed", now - 1)])
    finished = sc.METRIC_SINK_RUNS_FINISHED.prometheus
    runs = sc.METRIC_SINK_RUNS.prometheus
    con = duckdb.connect(path, read_only=True)
    try:
        m = _collect(con)
    finally:
        con.close()
    assert one(m, finished, **{STATUS: "completed"}) == 1
    assert one(m, finished, **{STATUS: "failed"}) == 1
    with open_sink(path, read_only=False) as sink:
        assert sink.prune("10m") == 1
    con = duckdb.connect(path, read_only=True)
    try:
        m = _collect(con)
    finally:
        con.close()
    assert one(m, runs, **{STATUS: "completed"}) == 1
    assert not [labels for labels, _v in m.get(runs, []) if labels.get(STATUS) == "failed"]
