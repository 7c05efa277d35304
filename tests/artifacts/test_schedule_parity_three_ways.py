"""One slot, one verdict: the schedule rules in Python, in the store's SQL (DuckDB) and in
PromQL over the sink's schedule series (evaluated by promtool) agree on every predicate.

Scenarios are a schedule's *latest* slot (what the sink's series describe). Times are
seconds since the Unix epoch, promtool's clock; evaluation at 600 s.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chaperone_otel._schedules import (
    SCHEDULE_PREDICATES,
    SCHEDULE_PROMQL_SIGNALS,
    schedule_rules,
)
from chaperone_otel.artifacts import _yaml
from chaperone_otel.artifacts._rules import SINK_LABELS, series
from chaperone_otel.artifacts._schedule_alerts import SCHEDULE
from chaperone_otel.sink._schedule_sql import predicate

NOW = 600.0
STEP = 15
LABELS = {SCHEDULE: "nightly", **SINK_LABELS}

# name -> slot signals (the run's status decides running_since: the sink exports it only
# while the run runs).
SCENARIOS: dict[str, dict[str, Any]] = {
    "on time": {"due_at": 540, "opens_at": 480, "started_at": 545},
    "late": {"due_at": 590, "opens_at": 530},
    "missed": {"due_at": 540, "opens_at": 480},
    "missed, older run": {"due_at": 540, "opens_at": 480, "started_at": 400},
    "run at the deadline": {"due_at": 540, "opens_at": 480, "started_at": 570},
    # an interval slot opens at the previous run's start: that run alone does not fulfil it
    "interval, previous run only": {"due_at": 540, "opens_at": 480, "started_at": 480},
    "overran": {"due_at": 300, "opens_at": 240, "started_at": 305, "running": True,
                "max_runtime": 200},
    "within max runtime": {"due_at": 495, "opens_at": 435, "started_at": 500, "running": True,
                           "max_runtime": 200},
    "failing": {"due_at": 540, "opens_at": 480, "started_at": 545, "consecutive_failures": 3,
                "failure_threshold": 3},
    "not yet failing": {"due_at": 540, "opens_at": 480, "started_at": 545,
                        "consecutive_failures": 2, "failure_threshold": 3},
    "scheduler lost": {"due_at": 540, "opens_at": 480, "started_at": 545, "declared_at": 500,
                       "declare_every": 20},
    "scheduler declaring": {"due_at": 540, "opens_at": 480, "started_at": 545,
                            "declared_at": 585, "declare_every": 20},
}
for s in SCENARIOS.values():
    s.setdefault("grace", 30)
    s.setdefault("consecutive_failures", 0)
    s.setdefault("failure_threshold", 1)
    s.setdefault("declared_at", 0)
    if s.pop("running", False):
        s["running_since"] = s["started_at"]


def python_verdicts() -> dict[str, dict[str, bool]]:
    r = schedule_rules()
    return {name: {p: r.by_name(p).holds(sig, NOW) for p in SCHEDULE_PREDICATES}
            for name, sig in SCENARIOS.items()}


TIMES = frozenset({"due_at", "opens_at", "run_started_at", "declared_at"})


def sql_verdicts() -> dict[str, dict[str, bool]]:
    """Each scenario as a row shaped like the store's slot rows, judged by its predicates."""
    con = duckdb.connect()
    out: dict[str, dict[str, bool]] = {}
    for name, sig in SCENARIOS.items():
        row = {
            "due_at": sig["due_at"], "opens_at": sig["opens_at"],
            "run_started_at": sig.get("started_at"), "declared_at": sig.get("declared_at"),
            "grace": sig["grace"], "max_runtime": sig.get("max_runtime"),
            "consecutive_failures": sig["consecutive_failures"],
            "failure_threshold": sig["failure_threshold"],
            "declare_every": sig.get("declare_every"),
            "run_status": "running" if "running_since" in sig else "completed",
            "latest": True,
        }
        def cast(column: str) -> str:
            if column in TIMES:
                return f"CAST(to_timestamp(CAST(? AS DOUBLE)) AS TIMESTAMP) AS {column}"
            kind = {"run_status": "VARCHAR", "latest": "BOOLEAN"}.get(column, "DOUBLE")
            return f"CAST(? AS {kind}) AS {column}"

        con.execute("DROP TABLE IF EXISTS slots")
        con.execute(f"CREATE TABLE slots AS SELECT {', '.join(map(cast, row))}",
                    list(row.values()))
        select = ", ".join(predicate(p) for p in SCHEDULE_PREDICATES)
        fetched = con.execute(f"SELECT {select} FROM slots", {"now": NOW}).fetchone()
        assert fetched is not None
        out[name] = dict(zip(SCHEDULE_PREDICATES, (bool(v) for v in fetched), strict=True))
    con.close()
    return out


def promtool_suite(expected: dict[str, dict[str, bool]]) -> dict[str, object]:
    """A promtool suite asserting, per scenario and predicate, the expected verdict."""
    r = schedule_rules()
    steps = int(NOW // STEP)
    tests = []
    for name, sig in SCENARIOS.items():
        input_series = [series(spec.prometheus, LABELS, f"{float(sig[key])!r}x{steps}")
                        for key, spec in SCHEDULE_PROMQL_SIGNALS.items()
                        if sig.get(key) is not None]
        checks = []
        for p in SCHEDULE_PREDICATES:
            expr = r.by_name(p).promql()
            assert isinstance(expr, str)
            checks.append({"expr": f"count({expr}) or vector(0)", "eval_time": f"{int(NOW)}s",
                           "exp_samples": [{"labels": "{}", "value": int(expected[name][p])}]})
        tests.append({"name": name, "interval": f"{STEP}s", "input_series": input_series,
                      "promql_expr_test": checks})
    return {"rule_files": [], "evaluation_interval": f"{STEP}s", "tests": tests}


def test_python_and_duckdb_agree_on_every_scenario() -> None:
    """The store's SQL schedule predicates give the Python rules' verdicts."""
    assert sql_verdicts() == python_verdicts()


def test_scenarios_exercise_every_predicate_both_ways() -> None:
    """Each predicate is true in some scenario and false in another (the test can fail)."""
    verdicts = python_verdicts()
    for p in SCHEDULE_PREDICATES:
        assert {verdicts[s][p] for s in SCENARIOS} == {True, False}, p


@pytest.mark.prometheus
def test_prometheus_agrees_with_python_on_every_scenario(promtool: str, tmp_path: Path) -> None:
    """promtool evaluates each schedule predicate's PromQL over the scenario's series and
    finds the Python verdict."""
    suite = tmp_path / "parity.test.yaml"
    suite.write_text(_yaml.dump(promtool_suite(python_verdicts())))
    out = subprocess.run([promtool, "test", "rules", suite.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.prometheus
def test_parity_suite_fails_on_a_wrong_verdict(promtool: str, tmp_path: Path) -> None:
    """Flipping one expected verdict makes promtool fail, so the comparison is real."""
    expected = python_verdicts()
    expected["missed, older run"]["missed"] = not expected["missed, older run"]["missed"]
    suite = tmp_path / "parity.test.yaml"
    suite.write_text(_yaml.dump(promtool_suite(expected)))
    out = subprocess.run([promtool, "test", "rules", suite.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0
