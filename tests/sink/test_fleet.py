"""Fleet /metrics of the sink server: runs by name/queue/status/health, stuck and lost counts
from the one health definition, heartbeat/silence ratios and ingest counters, scraped as
Prometheus text from a real server over a real store."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chaperone_otel import semconv as sc
from chaperone_otel.sink._server import SinkServer
from tests.stores import empty_store


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def record(run_id: str, event: str, at: float, **attrs: Any) -> dict[str, Any]:
    attrs = {sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_NAME: "fleet.job",
             sc.ATTR_JOB_QUEUE: "q", sc.ATTR_JOB_SEQUENCE: 1, **attrs}
    return {"timeUnixNano": str(int(at * 1e9)), "eventName": event,
            "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()]}


def post_json(url: str, path: str, body: bytes, content_type: str = "application/json") -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def one(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str,
        **labels: str) -> float:
    found = [v for lab, v in metrics.get(name, []) if all(lab.get(k) == x
                                                         for k, x in labels.items())]
    assert len(found) == 1, (name, labels, metrics.get(name))
    return found[0]


def test_fleet_metrics_from_the_store(tmp_path: Path) -> None:
    """Known runs give exact fleet gauges; counters follow ingests and rejections."""
    now = time.time()
    running = {sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_STARTED_AT: now - 60}
    logs = [
        # healthy: beat 1 s ago, interval 10 s
        record("ok", sc.EVENT_JOB_HEARTBEAT, now - 1, **running,
               **{sc.ATTR_HEARTBEAT_INTERVAL: 10.0, sc.ATTR_HEARTBEAT_LAST: now - 1}),
        # stuck: code silent 10 intervals, process seen just now (liveness)
        record("stuck", sc.EVENT_JOB_HEARTBEAT, now, **running,
               **{sc.ATTR_HEARTBEAT_INTERVAL: 1.0, sc.ATTR_HEARTBEAT_LAST: now - 10}),
        # lost: nothing at all for 8 intervals
        record("lost", sc.EVENT_JOB_HEARTBEAT, now - 8, **running,
               **{sc.ATTR_HEARTBEAT_INTERVAL: 1.0, sc.ATTR_HEARTBEAT_LAST: now - 8}),
        # lost two days ago: still lost in the store, no longer in the problem gauges
        record("ancient", sc.EVENT_JOB_HEARTBEAT, now - 2 * 86400, **{
            sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_STARTED_AT: now - 2 * 86400 - 60,
            sc.ATTR_HEARTBEAT_INTERVAL: 1.0, sc.ATTR_HEARTBEAT_LAST: now - 2 * 86400,
            sc.ATTR_JOB_QUEUE: "old"}),
        record("done", sc.EVENT_JOB_FINISHED, now - 5, **{
            sc.ATTR_JOB_STATUS: "completed", sc.ATTR_JOB_STARTED_AT: now - 30,
            sc.ATTR_JOB_FINISHED_AT: now - 5, sc.ATTR_HEARTBEAT_INTERVAL: 1.0}),
        record("bad", sc.EVENT_JOB_FINISHED, now - 5, **{
            sc.ATTR_JOB_STATUS: "failed", sc.ATTR_JOB_STARTED_AT: now - 30,
            sc.ATTR_JOB_FINISHED_AT: now - 5, sc.ATTR_ERROR_TYPE: "ValueError",
            sc.ATTR_HEARTBEAT_INTERVAL: 1.0, sc.ATTR_JOB_QUEUE: "other"}),
    ]
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()
    with SinkServer(str(empty_store(tmp_path / "fleet.duckdb")), port=0, queue_capacity=1234) as srv:
        empty = scrape(srv.url)
        assert empty.get(sc.METRIC_SINK_RUNS.prometheus) is None
        assert one(empty, sc.METRIC_SINK_LAST_INGEST.prometheus) == 0
        assert post_json(srv.url, "/v1/logs", body) == 200
        assert post_json(srv.url, "/v1/logs", body, "text/plain") == 415
        assert post_json(srv.url, "/v1/logs", b"{", "application/json") == 400
        m = scrape(srv.url)
    runs = sc.METRIC_SINK_RUNS.prometheus
    name, queue = sc.prometheus_label(sc.ATTR_JOB_NAME), sc.prometheus_label(sc.ATTR_JOB_QUEUE)
    status, health = (sc.prometheus_label(sc.ATTR_JOB_STATUS),
                      sc.prometheus_label(sc.ATTR_JOB_HEALTH))
    assert one(m, runs, **{status: "running", health: "healthy"}) == 1
    assert one(m, runs, **{status: "running", health: "unhealthy", queue: "q"}) == 2  # stuck + lost
    assert one(m, runs, **{status: "completed", queue: "q"}) == 1
    assert one(m, runs, **{status: "failed", queue: "other"}) == 1
    assert one(m, sc.METRIC_SINK_RUNS_STUCK.prometheus, **{name: "fleet.job", queue: "q"}) == 1
    assert one(m, sc.METRIC_SINK_RUNS_LOST.prometheus, **{name: "fleet.job", queue: "q"}) == 1
    # the run lost two days ago is still counted as running, but pages no more
    assert one(m, runs, **{status: "running", queue: "old"}) == 1
    assert not [lab for lab, _ in m.get(sc.METRIC_SINK_RUNS_LOST.prometheus, [])
                if lab.get(queue) == "old"]
    assert not [lab for lab, _ in m.get(sc.METRIC_SINK_SILENCE_RATIO.prometheus, [])
                if lab.get(queue) == "old"]
    age = one(m, sc.METRIC_SINK_HEARTBEAT_AGE_RATIO.prometheus, **{queue: "q"})
    assert 10 <= age < 12  # the stuck run: 10 s late at 1 s interval
    silence = one(m, sc.METRIC_SINK_SILENCE_RATIO.prometheus, **{queue: "q"})
    assert 8 <= silence < 10  # the lost run
    assert one(m, sc.METRIC_SINK_RECORDS_INGESTED.prometheus,
               chaperone_sink_source="otlp.logs") == 6
    rejected = sc.METRIC_SINK_REQUESTS_REJECTED.prometheus
    assert one(m, rejected, http_response_status_code="415") == 1
    assert one(m, rejected, http_response_status_code="400") == 1
    assert one(m, sc.METRIC_SINK_RECORDS_DROPPED.prometheus) == 0
    assert one(m, sc.METRIC_SINK_QUEUE_CAPACITY.prometheus) == 1234
    assert one(m, sc.METRIC_SINK_QUEUE_DEPTH.prometheus) == 0
    assert one(m, sc.METRIC_SINK_STORE_SIZE.prometheus) > 0
    assert abs(one(m, sc.METRIC_SINK_LAST_INGEST.prometheus) - time.time()) < 30
    every = {spec.prometheus for spec in sc.SINK_METRICS}
    assert every <= set(m) | {runs}  # every declared fleet metric is served
