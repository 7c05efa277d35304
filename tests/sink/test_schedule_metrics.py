"""Schedules over OTLP to ``sink serve``: a declaration sent as a log record is stored, the
server's own evaluator makes the slots, and the fleet /metrics carries one series per
schedule for each slot signal (issue 15)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from chaperone_otel import semconv as sc
from chaperone_otel._schedules import make_schedule
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._server import SinkServer
from tests.sink.test_fleet import _value, one, post_json, record, scrape
from tests.stores import empty_store
from tests.waiting import wait_until


def declaration(name: str, at: float, **options: Any) -> dict[str, Any]:
    attrs = make_schedule(name, **options).attributes()
    return {
        "timeUnixNano": str(int(at * 1e9)),
        "eventName": sc.EVENT_SCHEDULE_DECLARED,
        "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()],
    }


def test_schedule_series_on_the_fleet_metrics(tmp_path: Path) -> None:
    """A schedule declared over OTLP, with one completed and one running run, gives the
    last due/opens/start/success/running-since timestamps, grace, max runtime, streak,
    threshold and declaration series; a schedule without runs has no start series."""
    now = time.time()
    started = {sc.ATTR_SCHEDULE_NAME: "every10", sc.ATTR_HEARTBEAT_INTERVAL: 5.0}
    logs = [
        declaration("every10", now - 25, interval=10, grace=3, max_runtime=60,
                    declare_every=30),
        declaration("idle", now - 25, interval=10, grace=3),
        record("done", sc.EVENT_JOB_FINISHED, now - 14, **started, **{
            sc.ATTR_JOB_STATUS: "completed", sc.ATTR_JOB_STARTED_AT: now - 16,
            sc.ATTR_JOB_FINISHED_AT: now - 14}),
        record("live", sc.EVENT_JOB_STARTED, now - 5, **started, **{
            sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_STARTED_AT: now - 5}),
    ]
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()
    label = sc.prometheus_label(sc.ATTR_SCHEDULE_NAME)
    with SinkServer(str(empty_store(tmp_path / "fleet.duckdb")), port=0) as srv:
        assert post_json(srv.url, "/v1/logs", body) == 200
        due = sc.METRIC_SCHEDULE_LAST_DUE.prometheus
        m = wait_until(
            lambda: (s := scrape(srv.url)).get(due) and len(s[due]) == 2 and s,
            10,
            "both schedules' first slots",
        )
        # The same slots through a remote sink (the query travels as SQL to the owner).
        with open_sink(srv.url) as remote:
            query = remote.schedules.at(time.time()).named("idle")  # one evaluation time
            idle = query.all()
            assert {s.state for s in idle} <= {"missed", "late"}  # late: a slot just due
            missed = [s for s in idle if s.state == "missed"]
            assert query.missed().count() == len(missed) >= 2
    assert one(m, sc.METRIC_SCHEDULE_GRACE.prometheus, **{label: "every10"}) == 3
    assert one(m, sc.METRIC_SCHEDULE_MAX_RUNTIME.prometheus, **{label: "every10"}) == 60
    assert one(m, sc.METRIC_SCHEDULE_DECLARE_EVERY.prometheus, **{label: "every10"}) == 30
    assert abs(one(m, sc.METRIC_SCHEDULE_LAST_DECLARED.prometheus, **{label: "idle"})
               - (now - 25)) < 0.01
    assert abs(one(m, sc.METRIC_SCHEDULE_LAST_START.prometheus, **{label: "every10"})
               - (now - 5)) < 0.01
    assert abs(one(m, sc.METRIC_SCHEDULE_LAST_SUCCESS.prometheus, **{label: "every10"})
               - (now - 14)) < 0.01
    assert abs(one(m, sc.METRIC_SCHEDULE_RUNNING_SINCE.prometheus, **{label: "every10"})
               - (now - 5)) < 0.01
    # idle: due at declared + 10 and + 20, nothing ran
    assert abs(one(m, due, **{label: "idle"}) - (now - 5)) < 0.01
    assert abs(one(m, sc.METRIC_SCHEDULE_LAST_OPENS.prometheus, **{label: "idle"})
               - (now - 15)) < 0.01
    assert one(m, sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES.prometheus, **{label: "idle"}) == 0
    assert one(m, sc.METRIC_SCHEDULE_FAILURE_THRESHOLD.prometheus, **{label: "idle"}) == 1
    assert not [lab for lab, _ in m.get(sc.METRIC_SCHEDULE_LAST_START.prometheus, [])
                if lab.get(label) == "idle"]
    assert sc.METRIC_SCHEDULE_MAX_RUNTIME.prometheus not in {
        n for n, rows in m.items() for lab, _ in rows if lab.get(label) == "idle"}
