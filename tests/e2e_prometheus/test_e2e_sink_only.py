"""End to end, sink-only deployment (issue 14): real worker processes send OTLP only to a real
``chaperone-otel sink serve``; a real Prometheus scrapes only the sink, with the shipped
``exporters/prometheus/prometheus-sink-only.yml`` (intervals shortened to 1 s) and the
sink-derived rules (rendered from the one definition, with short ``for:`` and windows).
Every alert fires for its scenario, none for the healthy runs, and every panel query of the
sink-sourced dashboards returns data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaperone_otel.artifacts import DASHBOARDS_DIR, _yaml
from chaperone_otel.artifacts._rules import NAME, SINK_SCRAPE_JOB, AlertSettings, rule_file
from tests.e2e_prometheus.test_e2e_prometheus import (
    _free_port,
    _get,
    _stop,
    every_query_has_data,
    wait_for,
)
from tests.sink.serve_process import ServeProcess

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VARIABLES = {"$__rate_interval": "15s", "$job_name": ".*", "$queue": ".*", "$run_id": ".*",
             "$instance": ".*"}
SINK_BOARDS = ("chaperone-overview-sink.json", "chaperone-run-sink.json", "chaperone-sink.json")
# Short enough for a test: no `for:` on the heartbeat warning, a 1 s one on limits, and
# "no success" over the last 30 s instead of 24 h.
SETTINGS = AlertSettings(heartbeat_missed_for="0s", limit_near_for="1s", no_success_window="30s")
# alert -> the job whose scenario must fire it
SCENARIOS = {
    "ChaperoneJobStuck": "e2e.hung",
    "ChaperoneJobHeartbeatMissed": "e2e.silent",
    "ChaperoneJobOvertime": "e2e.overtime",
    "ChaperoneJobStalled": "e2e.stalled",
    "ChaperoneJobResourceLimitViolated": "e2e.hog",
    "ChaperoneJobResourceLimitNear": "e2e.hog",
    "ChaperoneJobFailureRatioHigh": "e2e.flaky",
    "ChaperoneJobNoRecentSuccess": "e2e.doomed",
}
HEALTHY = ("e2e.healthy", "e2e.short")


@dataclass
class SinkOnly:
    prometheus: str
    sink: ServeProcess
    victim: subprocess.Popen[str]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = _get(url)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self, name: str | None = None, state: str | None = "firing") -> list[dict[str, Any]]:
        body = _get(f"{self.prometheus}/api/v1/alerts")
        return [a for a in body["data"]["alerts"]
                if (name is None or a["labels"]["alertname"] == name)
                and (state is None or a["state"] == state)]


def _worker(sink_url: str, log: Any, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OTEL_BLRP_SCHEDULE_DELAY": "200", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    proc = subprocess.Popen([sys.executable, str(HERE / "sink_workload.py"), sink_url, *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    return proc


def _prometheus_config(tmp: Path, sink_port: int) -> Path:
    """The shipped sink-only config, 1 s intervals, the test's rules, this sink."""
    config = yaml.safe_load((REPO / "exporters/prometheus/prometheus-sink-only.yml").read_text())
    rules = tmp / "chaperone-sink.rules.yaml"
    rules.write_text(_yaml.dump(rule_file(settings=SETTINGS, source="sink")))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config.pop("alerting")
    [job] = config["scrape_configs"]
    assert job["job_name"] == SINK_SCRAPE_JOB
    job["static_configs"] = [{"targets": [f"127.0.0.1:{sink_port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def stack(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkOnly]:
    """sink serve, two worker processes and Prometheus, all loopback, stopped by PID."""
    tmp = tmp_path_factory.mktemp("e2e-sink-only")
    procs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as stack_:
        sink = stack_.enter_context(ServeProcess(tmp / "jobs.duckdb", "--long-run-threshold", "1"))
        log = stack_.enter_context(open(tmp / "workers.log", "w"))
        prometheus_log = stack_.enter_context(open(tmp / "prometheus.log", "w"))
        try:
            procs.append(_worker(sink.url, log))
            victim = _worker(sink.url, log, "victim")
            procs.append(victim)
            port = _free_port()
            procs.append(subprocess.Popen(
                [prometheus_binary, f"--config.file={_prometheus_config(tmp, sink.port)}",
                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=prometheus_log, text=True))
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
                     30, "prometheus ready")
            # A malformed OTLP request, so the sink's rejection counter has a series.
            bad = urllib.request.Request(f"{sink.url}/v1/logs", data=b"\x00garbage",
                                         method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(bad, timeout=10)
            yield SinkOnly(base, sink, victim)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def test_prometheus_scrapes_only_the_sink(stack: SinkOnly) -> None:
    """The only target is the sink (up == 1), and no worker series exists."""
    up = wait_for(lambda: stack.query("up"), 30, "a scrape")
    assert [(r["metric"]["job"], r["value"][1]) for r in up] == [(SINK_SCRAPE_JOB, "1")]
    assert not stack.query('{__name__=~"chaperone_job_.+"}')


def test_every_alert_fires_for_its_scenario(stack: SinkOnly) -> None:
    """Stuck, heartbeat missed, overtime, stalled, limit near/violated, failure ratio and no
    recent success fire for their job, from the sink's series only; the long runs are
    named by their run id."""
    pending = dict(SCENARIOS)

    def fired() -> bool:
        for alert, job in list(pending.items()):
            if any(a["labels"].get(NAME) == job for a in stack.alerts(alert)):
                del pending[alert]
        return not pending

    try:
        wait_for(fired, 90, "every alert")
    except pytest.fail.Exception:
        pytest.fail(f"alerts that never fired: {pending}")
    stuck = [a for a in stack.alerts("ChaperoneJobStuck") if a["labels"][NAME] == "e2e.hung"]
    assert stuck[0]["labels"]["severity"] == "critical"
    assert stuck[0]["labels"]["chaperone_job_run_id"]  # a long run is named by its id


def test_a_sigkilled_worker_makes_the_lost_alert_fire(stack: SinkOnly) -> None:
    """The victim worker is SIGKILLed; its run stays running in the store and goes silent,
    so ChaperoneJobLost fires for it, named by its run id."""
    wait_for(lambda: stack.query(f'chaperone_sink_run_active{{{NAME}="e2e.victim"}}'), 30,
             "the victim's run in the sink")
    assert not stack.alerts("ChaperoneJobLost", state=None)
    os.kill(stack.victim.pid, signal.SIGKILL)
    stack.victim.wait(timeout=10)
    firing = wait_for(lambda: [a for a in stack.alerts("ChaperoneJobLost")
                               if a["labels"].get(NAME) == "e2e.victim"], 60,
                      "ChaperoneJobLost for e2e.victim")
    assert firing[0]["labels"]["severity"] == "critical"
    assert firing[0]["labels"]["chaperone_job_run_id"]


def test_no_alert_for_the_healthy_runs(stack: SinkOnly) -> None:
    """After the scenarios fired (so the rules had time), the healthy runs have no alert in
    any state."""
    wait_for(lambda: stack.alerts("ChaperoneJobStuck"), 60, "the rules to be evaluated")
    named = {a["labels"].get(NAME) for a in stack.alerts(state=None)}
    assert not named & set(HEALTHY), named


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for name in SINK_BOARDS:
        board = json.loads((REPO / DASHBOARDS_DIR / name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, expr
                out.append((board["uid"], panel["title"], expr))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                inner = var["definition"].removeprefix("label_values(").removesuffix(")")
                selector = inner.rsplit(",", 1)[0].strip()
                for value, repl in VARIABLES.items():
                    selector = selector.replace(value, repl)
                out.append((board["uid"], f"variable {var['name']}", selector))
    return out


def test_every_sink_dashboard_panel_query_returns_data(stack: SinkOnly) -> None:
    """Each target (and variable selector) of the sink-sourced dashboards, variables set to
    "All", returns at least one series from the real Prometheus scraping only the sink."""
    queries = _panel_queries()
    assert len(queries) > 30
    every_query_has_data(stack.query, queries, 90)


def test_every_sink_dashboard_variable_has_values(stack: SinkOnly) -> None:
    """The label_values() variables of the sink-sourced dashboards have values (job, queue,
    run id of the long runs, sink instance)."""
    for name in SINK_BOARDS:
        for var in json.loads((REPO / DASHBOARDS_DIR / name).read_text())["templating"]["list"]:
            if var["type"] != "query":
                continue
            inner = var["definition"].removeprefix("label_values(").removesuffix(")")
            selector, label = (p.strip() for p in inner.rsplit(",", 1))
            for value, repl in VARIABLES.items():
                selector = selector.replace(value, repl)
            url = (f"{stack.prometheus}/api/v1/label/{label}/values?"
                   + urllib.parse.urlencode({"match[]": selector}))
            values = wait_for(lambda u=url: _get(u)["data"], 30, f"values of {var['name']}")
            assert values, var["name"]
