"""End to end against a real Prometheus: a live supervised workload and a live sink server
are scraped every second with the generated rules loaded; every dashboard query returns
data, the hung run makes ChaperoneJobStuck fire, and a SIGKILLed worker makes
ChaperoneJobLost fire through the sink's fleet metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel.artifacts import DASHBOARDS_DIR, RULES_PATH, dashboards
from chaperone_otel.artifacts._rules import NAME, SINK_SCRAPE_JOB, WORKER_SCRAPE_JOB
from chaperone_otel.sink._server import SinkServer

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Grafana variables, as an operator selecting "All" would send them.
VARIABLES = {"$__rate_interval": "15s", "$job_name": ".*", "$queue": ".*", "$run_id": ".*",
             "$instance": ".*"}
# The worker-sourced dashboards and the sink server's (the -sink ones: test_e2e_sink_only).
BOARDS = sorted(dashboards(sources=("worker",)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` every 0.25 s until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    prometheus: str
    sink: SinkServer
    worker: subprocess.Popen[str]
    worker_metrics: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = _get(url)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        body = _get(f"{self.prometheus}/api/v1/alerts")
        return [a for a in body["data"]["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Sink server (in process), worker (subprocess), Prometheus (subprocess), all loopback."""
    tmp = tmp_path_factory.mktemp("e2e")
    sink = SinkServer(str(tmp / "jobs.duckdb"), port=0, advertise=False).start()
    procs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as logs:
        worker_log = logs.enter_context(open(tmp / "worker.log", "w"))
        prometheus_log = logs.enter_context(open(tmp / "prometheus.log", "w"))
        try:
            yield from _start(prometheus_binary, tmp, sink, procs, worker_log, prometheus_log)
        finally:
            for proc in reversed(procs):
                _stop(proc)
            sink.stop()


def _start(prometheus_binary: str, tmp: Path, sink: SinkServer,
           procs: list[subprocess.Popen[str]], worker_log: Any,
           prometheus_log: Any) -> Iterator[Stack]:
    """Start the worker and Prometheus; yield the stack (the caller stops them)."""
    env = {**os.environ, "OTEL_BLRP_SCHEDULE_DELAY": "200", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "workload.py"), sink.url], stdout=subprocess.PIPE,
        stderr=worker_log, text=True, env=env)
    procs.append(worker)
    assert worker.stdout is not None
    metrics_url = json.loads(worker.stdout.readline())["metrics"]
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / RULES_PATH)],
        "scrape_configs": [
            {"job_name": WORKER_SCRAPE_JOB,
             "static_configs": [{"targets": [urllib.parse.urlsplit(metrics_url).netloc]}]},
            {"job_name": SINK_SCRAPE_JOB,
             "static_configs": [{"targets": [urllib.parse.urlsplit(sink.url).netloc]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    prometheus = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=prometheus_log, text=True)
    procs.append(prometheus)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
             30, "prometheus ready")
    # A malformed OTLP request, so the sink's rejection counter has a series.
    bad = urllib.request.Request(f"{sink.url}/v1/logs", data=b"\x00garbage", method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=10)
    yield Stack(base, sink, worker, metrics_url)


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for name in BOARDS:
        board = json.loads((REPO / DASHBOARDS_DIR / name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, expr
                out.append((board["uid"], panel["title"], expr))
    return out


def test_both_targets_are_scraped(stack: Stack) -> None:
    """Prometheus scrapes the worker and the sink (up == 1 for both jobs)."""
    def both_up() -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in stack.query("up")}
        return up.get(WORKER_SCRAPE_JOB) == "1" and up.get(SINK_SCRAPE_JOB) == "1"

    wait_for(both_up, 30, "both targets up")


def test_stuck_alert_fires_for_the_hung_run(stack: Stack) -> None:
    """The run that never beats (1 s lease) makes ChaperoneJobStuck fire, naming it (the
    rendering over the worker's gauges; the sink's count of stuck runs may fire it first
    for the job, without the run id, until the rendering does)."""
    firing = wait_for(
        lambda: [a for a in stack.alerts("ChaperoneJobStuck")
                 if a["labels"].get(NAME) == "e2e.hung"
                 and a["labels"].get("chaperone_job_run_id")], 60,
        "ChaperoneJobStuck naming the e2e.hung run")
    labels = firing[0]["labels"]
    assert labels["severity"] == "critical"
    assert labels["job"] == WORKER_SCRAPE_JOB  # from the worker's own gauges
    healthy = {a["labels"].get(NAME) for a in stack.alerts("ChaperoneJobStuck")}
    assert "e2e.progress" not in healthy


def test_stuck_table_shows_the_hung_runs_heartbeat_age(stack: Stack) -> None:
    """The overview's stuck table (worker view) gives the hung run's heartbeat age in
    seconds, its unit: a small number, not the heartbeat's Unix time (which a date unit
    would have shown as a January 1970 date)."""
    board = json.loads((REPO / DASHBOARDS_DIR / "chaperone-overview.json").read_text())
    [panel] = [p for p in board["panels"] if p["title"] == "Stuck runs now (worker view)"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
    expr = panel["targets"][0]["expr"]
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    rows = wait_for(lambda: [r for r in stack.query(expr) if r["metric"].get(NAME) == "e2e.hung"],
                    60, "the hung run in the stuck table")
    age = float(rows[0]["value"][1])
    assert 0 < age < 3600, age


def test_other_worker_alerts_fire_for_their_runs(stack: Stack) -> None:
    """The stalled and over-limit runs fire their alerts; the progressing run fires none."""
    wait_for(lambda: [a for a in stack.alerts("ChaperoneJobStalled")
                      if a["labels"].get(NAME) == "e2e.stalled"], 60, "ChaperoneJobStalled")
    wait_for(lambda: [a for a in stack.alerts("ChaperoneJobResourceLimitViolated")
                      if a["labels"].get(NAME) == "e2e.hog"], 60, "LimitViolated for e2e.hog")
    body = _get(f"{stack.prometheus}/api/v1/alerts")
    assert not [a for a in body["data"]["alerts"] if a["labels"].get(NAME) == "e2e.progress"]


def every_query_has_data(
    query: Callable[[str], Any], queries: list[tuple[str, str, str]], timeout: float
) -> None:
    """Wait until each (dashboard uid, title, expression) returns a series; fail naming the
    ones that still return none at ``timeout``."""
    pending = dict.fromkeys(queries)

    def all_have_data() -> bool:
        for key in list(pending):
            if query(key[2]):
                del pending[key]
        return not pending

    try:
        wait_for(all_have_data, timeout, "data for every panel")
    except pytest.fail.Exception:
        pytest.fail("panels without data: " + "; ".join(f"{u}/{t}: {e}" for u, t, e in pending))


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    """Each target of each committed dashboard, with its variables set to "All", returns at
    least one series from the real Prometheus."""
    queries = _panel_queries()
    assert len(queries) > 25
    every_query_has_data(stack.query, queries, 60)


def test_every_dashboard_variable_has_values(stack: Stack) -> None:
    """The label_values() variable queries have values (via the label values API)."""
    for name in BOARDS:
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


def test_a_schedule_with_no_runs_is_missed_and_one_running_every_2s_is_not(
    stack: Stack,
) -> None:
    """Two schedules declared every 2 s over OTLP: the one nothing runs makes
    ChaperoneScheduleMissed fire in Prometheus (from the sink's schedule series); the one
    whose job runs every 2 s never does, over a dozen of its slots."""
    label = "chaperone_schedule_name"
    wait_for(lambda: [a for a in stack.alerts("ChaperoneScheduleMissed")
                      if a["labels"].get(label) == "e2e.never"], 60,
             "ChaperoneScheduleMissed for e2e.never")
    wait_for(lambda: stack.query(f'chaperone_schedule_last_start_timestamp_seconds{{{label}='
                                 '"e2e.every2s"}'), 30, "runs of e2e.every2s in the sink")
    deadline = time.monotonic() + 24
    while time.monotonic() < deadline:
        states = {a["state"] for a in _get(f"{stack.prometheus}/api/v1/alerts")["data"]["alerts"]
                  if a["labels"].get(label) == "e2e.every2s"}
        assert not states, f"an alert is {states} for the schedule that runs on time"
        time.sleep(0.5)
    assert not stack.alerts("ChaperoneSchedulerLost")


def test_sigkilled_worker_makes_the_lost_alert_fire_from_the_sink(stack: Stack) -> None:
    """After SIGKILL the worker's own series vanish; the sink still holds its runs as
    running, their silence grows past 3 intervals and ChaperoneJobLost fires."""
    wait_for(lambda: stack.query('chaperone_sink_runs{chaperone_job_status="running"}'), 30,
             "running runs in the sink")
    assert not stack.alerts("ChaperoneJobLost")
    os.kill(stack.worker.pid, signal.SIGKILL)
    stack.worker.wait(timeout=10)
    firing = wait_for(lambda: [a for a in stack.alerts("ChaperoneJobLost")
                               if a["labels"].get(NAME) == "e2e.progress"], 60,
                      "ChaperoneJobLost for e2e.progress")
    assert firing[0]["labels"]["severity"] == "critical"
    # The dead worker's own gauges are gone, so its stuck alert resolves.
    wait_for(lambda: not stack.alerts("ChaperoneJobStuck"), 30, "stuck alert resolved")
    # It was also the scheduler of e2e.every2s (declared every second): lost, and missed.
    wait_for(lambda: [a for a in stack.alerts("ChaperoneSchedulerLost")
                      if a["labels"].get("chaperone_schedule_name") == "e2e.every2s"], 60,
             "ChaperoneSchedulerLost for e2e.every2s")
