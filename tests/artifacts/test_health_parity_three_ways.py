"""One scenario, one verdict: the Python health evaluator, the store's SQL (DuckDB) and both
Prometheus renderings (evaluated by promtool) agree on every predicate for every scenario.

The two PromQL renderings are the worker's (over each worker's live-run gauges, the process's
last sign of life being the scrape time) and the sink's (over the gauges the sink's fleet
``/metrics`` serve from its store). For the sink's, each scenario is stored as a row of a real
store, the real :class:`FleetCollector` turns it into gauges, and promtool judges those.

Scenarios are *running* runs: those are what the live gauges (and so PromQL) can describe;
finished runs are judged by Python and SQL only (tests/test_health.py).
Times are seconds since the Unix epoch, which is promtool's clock (evaluation at 600 s).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client import CollectorRegistry

from chaperone_otel import semconv as sc
from chaperone_otel._health import (
    DEFAULT_POLICY,
    PREDICATES,
    SIGNAL_GAUGES,
    SINK_SIGNAL_GAUGES,
    SINK_SOURCE,
    SignalValue,
    promql,
    rules,
)
from chaperone_otel.artifacts import _yaml
from chaperone_otel.artifacts._rules import SINK_LABELS, WORKER_LABELS, series
from chaperone_otel.sink._fleet import FleetCollector, IngestStats
from chaperone_otel.sink._schema import migrate, predicate

NOW = 600.0
STEP = 15  # promtool sample interval, seconds

GAUGES = {k: v for k, v in SIGNAL_GAUGES.items() if k != "started_at"}  # the rules' inputs

# name -> signals; last_seen is when the process last reported (the gauges' last sample).
SCENARIOS: dict[str, dict[str, SignalValue]] = {
    "healthy": {"last_heartbeat": 590, "last_seen": 600},
    "late 1.2x": {"last_heartbeat": 528, "last_seen": 600},
    "late exactly 1.5x": {"last_heartbeat": 510, "last_seen": 600},
    "late 2x": {"last_heartbeat": 480, "last_seen": 600},
    "silent 5x, alive": {"last_heartbeat": 300, "last_seen": 600},
    "overtime": {"last_heartbeat": 595, "last_seen": 600, "timeout_at": 500},
    "within timeout": {"last_heartbeat": 595, "last_seen": 600, "timeout_at": 900},
    "stalled": {"last_heartbeat": 595, "last_seen": 600, "stall_deadline": 550},
    "memory near limit": {"last_heartbeat": 595, "last_seen": 600, "memory": 850,
                          "memory_limit": 1000},
    "cpu near limit": {"last_heartbeat": 595, "last_seen": 600, "cpu": 0.85, "cpu_limit": 0.9},
    "fds well under": {"last_heartbeat": 595, "last_seen": 600, "fds": 10, "fd_limit": 1000},
    # A reading shared with other runs (cpu_scope) is not the run's: no verdict uses it.
    "shared cpu near limit": {"last_heartbeat": 595, "last_seen": 600, "cpu": 0.85,
                              "cpu_limit": 0.9, "cpu_scope": "shared"},
    "violated": {"last_heartbeat": 595, "last_seen": 600, "violation_count": 1},
    # A zero limit is "no limit" (another producer's OTLP may carry one): x / 0 was +Inf in
    # PromQL, near any limit, while Python and SQL said no.
    "zero memory limit": {"last_heartbeat": 595, "last_seen": 600, "memory": 100_000_000,
                          "memory_limit": 0},
    "lost": {"last_heartbeat": 300, "last_seen": 405},
    "recently silent process": {"last_heartbeat": 540, "last_seen": 540},
    # lease="liveness": the code never beat; the process being alive renews the lease (the
    # worker's last-heartbeat gauge is then the time of each observation)
    "liveness lease, alive": {"lease": "liveness", "last_heartbeat": 0, "last_seen": 600},
    "liveness lease, overtime": {"lease": "liveness", "last_heartbeat": 0, "last_seen": 600,
                                 "timeout_at": 500},
    "liveness lease, silent process": {"lease": "liveness", "last_heartbeat": 0,
                                       "last_seen": 405},
    "liveness lease, 1.6x silent": {"lease": "liveness", "last_heartbeat": 0,
                                    "last_seen": 495},
}
for signals in SCENARIOS.values():
    signals.setdefault("heartbeat_interval", 60)
    signals["status"] = "running"


def live_signals(sig: dict[str, SignalValue]) -> dict[str, SignalValue]:
    """The signals as the runtime (Run.signals) and the worker's gauges present them: a
    shared CPU reading is no ``cpu`` signal (the store keeps it, with its scope)."""
    shared = sig.get("cpu_scope") == "shared"
    return {k: v for k, v in sig.items() if k != "cpu_scope" and not (shared and k == "cpu")}


def python_verdicts() -> dict[str, dict[str, bool]]:
    r = rules(DEFAULT_POLICY)
    return {name: {p: r.by_name(p).holds(live_signals(sig), NOW) for p in PREDICATES}
            for name, sig in SCENARIOS.items()}


def _row(sig: dict[str, SignalValue]) -> dict[str, Any]:
    """A scenario as the ``jobs`` columns the rules read (epoch seconds for times)."""
    stall = sig.get("stall_deadline")
    return {
        "status": sig["status"], "last_heartbeat_at": sig.get("last_heartbeat"),
        "last_seen_at": sig.get("last_seen"), "timeout_at": sig.get("timeout_at"),
        "progress_updated_at": None if stall is None else float(stall) - 100,
        "stall_timeout": None if stall is None else 100.0,
        "heartbeat_interval": sig.get("heartbeat_interval"),
        "memory_bytes": sig.get("memory"), "memory_limit_bytes": sig.get("memory_limit"),
        # The store keeps CPU in percent; the rule compares a ratio, so units cancel.
        "cpu_percent": None if sig.get("cpu") is None else float(sig["cpu"]) * 100,
        "cpu_limit_percent": None if sig.get("cpu_limit") is None
        else float(sig["cpu_limit"]) * 100,
        "open_fds": sig.get("fds"), "fd_limit": sig.get("fd_limit"),
        "violation_count": sig.get("violation_count", 0),
        "cpu_scope": sig.get("cpu_scope"),
        "lease": sig.get("lease"),
    }


TIMES = {"last_heartbeat_at", "last_seen_at", "timeout_at", "progress_updated_at"}


def sql_verdicts() -> dict[str, dict[str, bool]]:
    """Each scenario as a row of a `jobs`-shaped table, judged by the store's predicates."""
    con = duckdb.connect()
    out: dict[str, dict[str, bool]] = {}
    for name, sig in SCENARIOS.items():
        row = _row(sig)
        times = TIMES
        cols = ", ".join(
            (f"to_timestamp(CAST(? AS DOUBLE)) AS {c}" if c in times
             else f"CAST(? AS {'VARCHAR' if c in ('status', 'cpu_scope', 'lease') else 'DOUBLE'}) AS {c}")
            for c in row)
        con.execute("DROP TABLE IF EXISTS jobs")
        con.execute(f"CREATE TABLE jobs AS SELECT {cols}", list(row.values()))
        select = ", ".join(predicate(p) for p in PREDICATES)
        fetched = con.execute(f"SELECT {select} FROM jobs", {"now": NOW}).fetchone()
        assert fetched is not None
        out[name] = dict(zip(PREDICATES, (bool(v) for v in fetched), strict=True))
    con.close()
    return out


SINK_GAUGES = {SINK_SOURCE.universe, *(spec.prometheus for spec in SINK_SIGNAL_GAUGES.values())}


@functools.cache
def _memory_store() -> duckdb.DuckDBPyConnection:
    """A real store in memory, migrated once for the module (each scenario empties ``jobs``
    and stores its one run: the other tables stay empty, as in a store that only got it)."""
    con = duckdb.connect()
    migrate(con, ":memory:")
    return con


def sink_series(sig: dict[str, SignalValue]) -> list[dict[str, str]]:
    """The scenario stored as the one run of a real (in-memory) store, served by the real
    FleetCollector at ``NOW``: its run gauges as promtool series, constant up to ``NOW``
    (the sink is scraped at every step; it outlives the run)."""
    con = _memory_store().cursor()
    try:
        con.execute("DELETE FROM jobs")
        row = {"run_id": "r", "attempt": 1, "name": "etl.import", "queue": "default",
               "started_at": NOW - 100, **_row(sig)}
        values = ", ".join("make_timestamp(CAST(? * 1e6 AS BIGINT))"
                           if c in TIMES | {"started_at"} else "?" for c in row)
        params = [v if v is None or c not in TIMES | {"started_at"} else float(v)
                  for c, v in row.items()]
        con.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({values})", params)
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(con.cursor, stats=IngestStats, clock=lambda: NOW))
        samples = [x for family in registry.collect() for x in family.samples
                   if x.name in SINK_GAUGES]
    finally:
        con.close()
    steps = int(NOW // STEP)
    assert {x.name for x in samples} >= {SINK_SOURCE.universe}
    return [series(x.name, {**{k: v for k, v in x.labels.items() if v}, **SINK_LABELS},
                   f"{float(x.value)!r}x{steps}") for x in samples]


def worker_series(sig: dict[str, SignalValue]) -> list[dict[str, str]]:
    """The scenario as a worker's live-run gauges, scraped until the process was last seen."""
    sig = live_signals(sig)
    last_seen = float(sig["last_seen"])  # type: ignore[arg-type]
    assert last_seen % STEP == 0
    steps = int(last_seen // STEP)
    return [series(spec.prometheus, WORKER_LABELS, _values(sig, key, steps))
            for key, spec in GAUGES.items() if sig.get(key) is not None]


def _values(sig: dict[str, SignalValue], key: str, steps: int) -> str:
    """A gauge's samples: its signal's value at every step; a liveness-lease run's
    last-heartbeat gauge is the time of each observation (the worker's lease renewal)."""
    if key == "last_heartbeat" and sig.get("lease") == "liveness":
        return f"0+{STEP}x{steps}"
    return f"{float(sig[key])!r}x{steps}"  # type: ignore[arg-type]


def promtool_suite(expected: dict[str, dict[str, bool]],
                   source: str = "worker") -> dict[str, object]:
    """A promtool suite asserting, per scenario and predicate, the expected verdict of the
    ``source`` rendering over the ``source`` series."""
    r = rules(DEFAULT_POLICY)
    tests = []
    for name, sig in SCENARIOS.items():
        input_series = worker_series(sig) if source == "worker" else sink_series(sig)
        checks = []
        for p in PREDICATES:
            expr = promql(r.by_name(p), source)
            assert isinstance(expr, str)
            checks.append({"expr": f"count({expr}) or vector(0)", "eval_time": f"{int(NOW)}s",
                           "exp_samples": [{"labels": "{}", "value": int(expected[name][p])}]})
        tests.append({"name": name, "interval": f"{STEP}s", "input_series": input_series,
                      "promql_expr_test": checks})
    return {"rule_files": [], "evaluation_interval": f"{STEP}s", "tests": tests}


def test_python_and_duckdb_agree_on_every_scenario() -> None:
    """The store's SQL predicates give the Python evaluator's verdicts."""
    assert sql_verdicts() == python_verdicts()


def test_scenarios_exercise_every_predicate_both_ways() -> None:
    """Each predicate is true in some scenario and false in another (the test can fail);
    `running` holds in all of them by construction."""
    verdicts = python_verdicts()
    for p in (p for p in PREDICATES if p != "running"):
        values = {verdicts[s][p] for s in SCENARIOS}
        assert values == {True, False}, p


@pytest.mark.prometheus
@pytest.mark.parametrize("source", ["worker", "sink"])
def test_prometheus_agrees_with_python_on_every_scenario(promtool: str, tmp_path: Path,
                                                         source: str) -> None:
    """promtool evaluates each predicate's PromQL (worker and sink renderings) over the
    scenario's gauges and finds the Python verdict (count of matching run groups is 1
    exactly when Python says true)."""
    suite = tmp_path / "parity.test.yaml"
    suite.write_text(_yaml.dump(promtool_suite(python_verdicts(), source)))
    out = subprocess.run([promtool, "test", "rules", suite.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.prometheus
@pytest.mark.parametrize("source", ["worker", "sink"])
def test_parity_suite_fails_on_a_wrong_verdict(promtool: str, tmp_path: Path,
                                               source: str) -> None:
    """Flipping one expected verdict makes promtool fail, so the comparison is real."""
    expected = python_verdicts()
    expected["silent 5x, alive"]["stuck"] = not expected["silent 5x, alive"]["stuck"]
    suite = tmp_path / "parity.test.yaml"
    suite.write_text(_yaml.dump(promtool_suite(expected, source)))
    out = subprocess.run([promtool, "test", "rules", suite.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0


def test_the_sink_series_carry_the_scenario_signals() -> None:
    """The sink rendering judges the stored run's own values: the served gauges equal the
    scenario's signals (CPU as a fraction of a core, as the workers report it)."""
    sig = SCENARIOS["cpu near limit"]
    got = {s["series"].split("{")[0]: s["values"].split("x")[0] for s in sink_series(sig)}
    assert float(got[sc.METRIC_SINK_RUN_CPU.prometheus]) == 0.85
    assert float(got[sc.METRIC_SINK_RUN_CPU_LIMIT.prometheus]) == 0.9
    assert float(got[sc.METRIC_SINK_RUN_LAST_HEARTBEAT.prometheus]) == 595.0
    assert float(got[sc.METRIC_SINK_RUN_LAST_SEEN.prometheus]) == 600.0
    assert float(got[sc.METRIC_SINK_RUN_HEARTBEAT_INTERVAL.prometheus]) == 60.0
