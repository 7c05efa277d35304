"""RemoteSink and the query API over HTTP: open_sink(path) follows a live owner's sidecar
(the sink server in another process), every scope and terminal gives what a local sink gives
once the owner is gone, and bad input gets 4xx, not a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._remote import TOKEN_ENV, RemoteSink
from chaperone_otel.sink._store import read_sidecar

pytestmark = pytest.mark.slow

SERVE = ("from chaperone_otel.sink._server import serve; import sys; "
         "serve(sys.argv[1], port=0, token=sys.argv[2] or None)")


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _log(run_id: str, event: str, at: float, seq: int, **attrs: Any) -> dict[str, Any]:
    base = {sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_SEQUENCE: seq,
            sc.ATTR_HEARTBEAT_INTERVAL: 1.0, sc.ATTR_JOB_STARTED_AT: at - 10}
    return {"timeUnixNano": str(int(at * 1e9)), "eventName": event,
            "traceId": "ab" * 16, "spanId": "cd" * 8,
            "attributes": [{"key": k, "value": _value(v)} for k, v in {**base, **attrs}.items()]}


def _workload(now: float) -> bytes:
    logs = []
    for i in range(6):
        logs.append(_log(f"ok-{i}", sc.EVENT_JOB_FINISHED, now - 1, 3, **{
            sc.ATTR_JOB_NAME: "etl.import", sc.ATTR_JOB_QUEUE: "q1" if i % 2 else "q2",
            sc.ATTR_JOB_STATUS: "completed", sc.ATTR_JOB_FINISHED_AT: now - 1,
            sc.ATTR_MEMORY_USAGE: 1000 * i, sc.ATTR_HEARTBEAT_LAST: now - 1}))
    logs.append(_log("bad", sc.EVENT_JOB_FINISHED, now - 1, 4, **{
        sc.ATTR_JOB_NAME: "etl.report", sc.ATTR_JOB_STATUS: "failed",
        sc.ATTR_JOB_FINISHED_AT: now - 1, sc.ATTR_ERROR_TYPE: "KeyError",
        sc.ATTR_ERROR_MESSAGE: "'x'", sc.ATTR_ERROR_STACKTRACE: "Traceback ...KeyError"}))
    for seq in (1, 2):
        logs.append(_log("beat", sc.EVENT_JOB_HEARTBEAT, now - 3 + seq, seq, **{
            sc.ATTR_JOB_NAME: "etl.live", sc.ATTR_JOB_STATUS: "running",
            sc.ATTR_HEARTBEAT_LAST: now - 3 + seq, sc.ATTR_HEARTBEAT_CALLS: seq,
            sc.ATTR_HEARTBEAT_KIND: "heartbeat", sc.ATTR_METADATA: json.dumps({"n": seq})}))
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()


def _post(url: str, path: str, body: bytes, token: str = "") -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


class Owner:
    """A sink server in another process (so the file's DuckDB lock is really held)."""

    def __init__(self, path: Path, token: str = "") -> None:
        self.path = str(path)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, self.path, token],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while (owner := read_sidecar(self.path)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the sink server did not start")
            time.sleep(0.05)
        self.url: str = owner["url"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


_AT = time.time() + 60  # one "now" for both sinks: a running run's duration so far
_HOUR_AGO_TOKYO = datetime.now(timezone(timedelta(hours=9))) - timedelta(hours=1)
_NOW_NAIVE_UTC = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=10)


def _shape(sink: Any) -> dict[str, Any]:
    jobs = sink.jobs
    return {
        "all": sorted(r.id for r in jobs.all()),
        # Whole records, field by field (a remote fetch travels as Arrow, a local one not).
        "records": [r.to_dict() for r in jobs.at(_AT).order_by("id").all()],
        "count": jobs.count(),
        "completed": jobs.completed().count(),
        "failed": [r.id for r in jobs.failed().all()],
        "named": jobs.named("etl.import").on_queue("q1").count(),
        "memory": [r.id for r in jobs.memory_above(2500).order_by("memory_bytes", desc=True)
                   .limit(2).all()],
        "since": jobs.since("1h").count(),
        "first": jobs.order_by("id").first().id,
        "arrow": jobs.completed().to_arrow().num_rows,
        "error": [(e.type, e.trace) for e in sink.job("bad").errors],
        "beats": [(h.calls, h.kind, h.metadata) for h in sink.job("beat").heartbeats()],
        "latest": sink.job("beat").latest_heartbeat().calls,
        "kinds": [len(sink.job("beat").heartbeats(kind=k)) for k in ("heartbeat", "liveness")],
        "missing": sink.job("nope"),
        "sql": sink.sql("SELECT name, count(*) AS n FROM jobs GROUP BY name ORDER BY name"),
        "sqlp": sink.sql("SELECT run_id FROM jobs WHERE run_id = ?", ["bad"])[1],
        # Typed parameters bind with their types remotely too (not as ISO strings).
        "sql_aware": sink.sql("SELECT count(*) FROM jobs WHERE started_at >= ?",
                              [_HOUR_AGO_TOKYO])[1],
        "sql_interval": sink.sql("SELECT count(*) FROM jobs WHERE started_at >= ? - INTERVAL 1 HOUR",
                                 [_NOW_NAIVE_UTC])[1],
        "sql_named": sink.sql("SELECT count(*) FROM jobs WHERE started_at >= $t - $d",
                              {"t": _NOW_NAIVE_UTC, "d": timedelta(hours=1)})[1],
        "trace": sink.job("ok-1").trace_id,
    }


def test_open_sink_follows_the_owner_and_matches_a_local_sink(tmp_path: Path) -> None:
    """While the server owns the file, open_sink(path) is remote; its answers equal the local
    sink's answers on the same file after the owner stopped."""
    path = tmp_path / "owned.duckdb"
    owner = Owner(path)
    try:
        assert _post(owner.url, "/v1/logs", _workload(time.time())) == 200
        with open_sink(str(path)) as sink:
            assert isinstance(sink, RemoteSink)
            assert sink.url == owner.url
            remote = _shape(sink)
            stamps = sink.sql("SELECT max(started_at) FROM jobs")[1][0][0]
            assert hasattr(stamps, "year")  # typed values (Arrow), not strings
            with pytest.raises(SinkError, match="read-only"):
                sink.sql("DELETE FROM jobs")
            with pytest.raises(ValueError, match="cannot order by"):
                sink.jobs.order_by("no_such_column")  # validated client side, as locally
            assert sink.prune("1000d") == 0
    finally:
        owner.stop()
    assert read_sidecar(str(path)) is None
    with open_sink(str(path)) as local:
        assert not isinstance(local, RemoteSink)
        expected = _shape(local)
    assert remote == expected
    assert remote["failed"] == ["bad"]
    assert remote["beats"] == [(1, "heartbeat", {"n": 1}), (2, "heartbeat", {"n": 2})]
    assert remote["trace"] == "ab" * 16
    assert remote["sql_aware"] == remote["sql_interval"] == remote["sql_named"]
    assert remote["sql_aware"] == [(remote["count"],)]


def test_http_api_errors_and_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad scopes/params are 400, unknown runs 404, and with a token the API needs it
    (RemoteSink reads it from the environment)."""
    owner = Owner(tmp_path / "tok.duckdb", token="t0k")
    try:
        assert _post(owner.url, "/v1/logs", _workload(time.time()), token="t0k") == 200
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        with pytest.raises(SinkError, match=TOKEN_ENV):
            open_sink(owner.url)
        monkeypatch.setenv(TOKEN_ENV, "t0k")
        with open_sink(owner.url) as sink:
            assert sink.jobs.count() == 8
            assert sink.jobs.running().named("etl.live").count() == 1

        def get(path: str) -> tuple[int, Any]:
            request = urllib.request.Request(owner.url + path,
                                             headers={"Authorization": "Bearer t0k"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = get("/api/jobs?scope=failed&scope=unhealthy&limit=5")
        assert status == 200
        assert [j["id"] for j in body["jobs"]] == ["bad"]
        assert get("/api/jobs?scope=running&count=1") == (200, {"count": 1})
        assert get("/api/jobs?queue=q1&name=etl.import&count=1")[1] == {"count": 3}
        assert get("/api/jobs?scope=bogus")[0] == 400
        assert get("/api/jobs?colour=red")[0] == 400
        assert get("/api/jobs?order_by=nope")[0] == 400
        assert get("/api/jobs/nope")[0] == 404
        status, body = get("/api/jobs/bad")
        assert status == 200
        assert body["job"]["errors"][0]["type"] == "KeyError"
        assert get("/api/heartbeats?run_id=beat&attempt=x")[0] == 400
        request = urllib.request.Request(owner.url + "/api/jobs")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 401
        info.value.close()
    finally:
        owner.stop()


def test_unreachable_owner_is_a_clear_error() -> None:
    """A dead URL raises SinkError saying what to check."""
    with pytest.raises(SinkError, match="cannot reach"):
        open_sink("http://127.0.0.1:9")


def test_remote_sql_takes_the_local_limits_and_the_owner_stops_before_the_client(
    tmp_path: Path,
) -> None:
    """``RemoteSink.sql`` takes ``timeout``, ``max_rows`` and ``max_bytes`` as a local sink
    does (it raised TypeError), and a query past the client's time is interrupted by the
    owner, which says so, rather than left running there while the client reports the
    owner unreachable."""
    path = tmp_path / "owned.duckdb"
    owner = Owner(path)
    try:
        with open_sink(str(path)) as sink:
            assert isinstance(sink, RemoteSink)
            few = sink.sql("SELECT * FROM range(10)", max_rows=3)
            assert len(few.rows) == 3
            assert few.truncated
            small = sink.sql("SELECT repeat('x', 1000) FROM range(100)", max_bytes=4000)
            assert len(small.rows) < 10
            start = time.monotonic()
            with pytest.raises(SinkError, match=r"time limit|interrupt") as refused:
                sink.sql("SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b",
                         timeout=2)
            assert "cannot reach" not in str(refused.value)
            assert time.monotonic() - start < 10
    finally:
        owner.stop()


def test_remote_sql_answers_values_arrow_cannot_type_from_python(tmp_path: Path) -> None:
    """A MAP with integer keys and a HUGEINT past 64 bits are answered (as text) by the
    owner's Arrow answer; they were a 400 though a local sink returns them."""
    path = tmp_path / "owned.duckdb"
    owner = Owner(path)
    try:
        with open_sink(str(path)) as sink:
            assert isinstance(sink, RemoteSink)
            ((mapping, huge, n),) = sink.sql(
                "SELECT MAP {1: 'a'}, 12345678901234567890123456789::HUGEINT, 7"
            )[1]
            assert "1" in mapping
            assert "a" in mapping
            assert huge == "12345678901234567890123456789"
            assert n == 7  # the other columns keep their types
    finally:
        owner.stop()
