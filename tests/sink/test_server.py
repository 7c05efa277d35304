"""The OTLP/HTTP sink server end to end: real workers in separate processes (real OTel SDK and
OTLP/HTTP exporter) send to a real server writing a real DuckDB file.

Every server and subprocess is bounded in time and stopped by PID; waits poll with deadlines.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from chaperone_otel import semconv as sc
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import read_sidecar, sidecar_path
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import os, sys, time
    import chaperone_otel
    from chaperone_otel import supervised, heartbeat
    from chaperone_otel._events import add_listener

    url, mode, control = sys.argv[1], sys.argv[2], sys.argv[3]

    class Count:
        n = 0
        def on_record(self, record):
            Count.n += 1

    add_listener(Count())
    chaperone_otel.configure(otlp_endpoint=url, service_name="worker")

    def wait_for(name, limit=60):
        deadline = time.monotonic() + limit
        while not os.path.exists(os.path.join(control, name)):
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for " + name)
            time.sleep(0.05)

    def say(line):
        print(line, flush=True)

    if mode == "live":
        @supervised(name="live.job", queue="q1", heartbeat_interval=1)
        def live():
            say("RUNNING")
            while not os.path.exists(os.path.join(control, "stop")):
                heartbeat({"pid": os.getpid()})
                time.sleep(0.05)

        @supervised(name="live.fail", heartbeat_interval=1)
        def fail():
            heartbeat()
            raise RuntimeError("boom in worker")

        live()
        try:
            fail()
        except RuntimeError:
            pass
    elif mode == "kill":
        @supervised(name="kill.job", heartbeat_interval=1)
        def forever():
            say("RUNNING")
            while True:
                heartbeat()
                time.sleep(0.05)
        forever()
    elif mode == "hang":
        @supervised(name="hang.job", heartbeat_interval=1)
        def hang():
            for _ in range(3):
                heartbeat()
                time.sleep(0.1)
            say("RUNNING")
            time.sleep(120)  # the code goes silent; the process stays alive
        hang()
    elif mode == "many":
        @supervised(name="many.job", heartbeat_interval=1)
        def quick(i):
            heartbeat({"i": i})
        for i in range(20):
            quick(i)
        say(f"COUNT {Count.n}")
        wait_for("release")
    chaperone_otel.shutdown()
    say(f"DONE {Count.n}")
''')

WORKER_ENV = {
    "OTEL_BLRP_SCHEDULE_DELAY": "100",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_METRIC_EXPORT_INTERVAL": "60000",
}



class Worker:
    """A workload subprocess; lines of its stdout are collected by a reader thread."""

    def __init__(self, tmp: Path, url: str, mode: str) -> None:
        self.control = tmp / f"control-{mode}"
        self.control.mkdir(exist_ok=True)
        script = tmp / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, **WORKER_ENV}
        env.pop("CHAPERONE_OTEL_SINK", None)
        self.errors = tmp / f"worker-{mode}.stderr"
        with self.errors.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), url, mode, str(self.control)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def line(self, prefix: str, timeout: float = 30) -> str:
        return wait_until(lambda: next((x for x in self.lines if x.startswith(prefix)), None),
                          timeout, f"worker line {prefix!r}")

    def touch(self, name: str) -> None:
        (self.control / name).touch()

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def stderr(self) -> str:
        return self.errors.read_text()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SinkServer]:
    srv = SinkServer(str(tmp_path / "sink.duckdb"), port=0).start()
    try:
        yield srv
    finally:
        srv.stop(timeout=15)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, str], Worker]]:
    started: list[Worker] = []

    def start(url: str, mode: str) -> Worker:
        worker = Worker(tmp_path, url, mode)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


# ---- live visibility, completion, failure -------------------------------------------------


def test_worker_runs_are_visible_while_running_then_completed_and_failed(
        server: SinkServer, workers: Callable[[str, str], Worker]) -> None:
    """A separate process's run shows up in running() while it runs (within a flush period),
    then completed(); a failing run lands in failed() with its error, trace and span ids."""
    worker = workers(server.url, "live")
    worker.line("RUNNING")
    with open_sink(server.url) as sink:
        live = wait_until(lambda: sink.jobs.running().named("live.job").first(), 10,
                          "the live run in running()")
        assert live.status == "running"
        assert live.queue == "q1"
        assert live.pid == worker.proc.pid
        assert live.health == "healthy"
        wait_until(lambda: (sink.job(live.id).heartbeat_count or 0) > 0, 10,
                   "heartbeats of the live run")
        assert sink.job(live.id).heartbeats()  # flushed heartbeats stored while running
        worker.touch("stop")
        assert worker.wait(30) == 0, worker.stderr()
        done = wait_until(lambda: sink.jobs.completed().named("live.job").first(), 10,
                          "completed live run")
        assert done.id == live.id
        assert done.finished_at is not None
        assert done.trace_id
        assert len(done.trace_id) == 32
        failed = wait_until(lambda: sink.jobs.failed().first(), 10, "the failed run")
        assert failed.name == "live.fail"
        assert failed.error_type == "RuntimeError"
        assert failed.error_message == "boom in worker"
        (error,) = failed.errors
        assert "boom in worker" in (error.trace or "")
        assert "raise RuntimeError" in (error.trace or "")
        assert sink.jobs.running().count() == 0
        assert sink.jobs.count() == 2
        # The final spans arrived too (span_seen is set only by /v1/traces).
        _, rows = sink.sql("SELECT count(*) FROM jobs WHERE span_seen")
        assert rows == [(2,)]
    stats = server.stats()
    assert stats.ingested["otlp.logs"] > 4
    assert stats.ingested["otlp.traces"] == 2


def test_sigkilled_worker_becomes_lost_after_three_intervals(
        server: SinkServer, workers: Callable[[str, str], Worker]) -> None:
    """SIGKILL mid-run: the run is running, then lost once nothing arrived for 3 x 1 s."""
    worker = workers(server.url, "kill")
    worker.line("RUNNING")
    with open_sink(server.url) as sink:
        run = wait_until(lambda: sink.jobs.running().named("kill.job").first(), 10, "run")
        time.sleep(0.5)  # a few flush periods of real heartbeats
        assert not sink.job(run.id).lost
        worker.kill()
        killed_at = time.time()
        lost = wait_until(lambda: sink.jobs.lost().named("kill.job").first(), 15,
                          "the killed run to be lost")
        assert time.time() - killed_at >= 2.5  # not before ~3 intervals of silence
        assert lost.id == run.id
        assert lost.status == "running"  # its last word; lost is derived, not stored
        assert not lost.stuck
        assert lost.last_seen_at is not None
        assert killed_at - lost.last_seen_at.timestamp() < 1.0


def test_hung_worker_is_stuck_not_lost(
        server: SinkServer, workers: Callable[[str, str], Worker]) -> None:
    """Code silent, process alive (liveness records keep coming): stuck, never lost."""
    worker = workers(server.url, "hang")
    worker.line("RUNNING")
    with open_sink(server.url) as sink:
        stuck = wait_until(lambda: sink.jobs.stuck().named("hang.job").first(), 15,
                           "the hung run to be stuck")
        assert stuck.stuck
        assert not stuck.lost
        assert sink.jobs.lost().count() == 0
        time.sleep(1.5)  # still stuck, still not lost, while the process lives
        again = sink.job(stuck.id)
        assert again.stuck
        assert not again.lost
        kinds = {h.kind for h in again.heartbeats()}
        assert "liveness" in kinds


# ---- bad requests -------------------------------------------------------------------------


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str],
                                                                               bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def otlp_json(*records: dict[str, Any]) -> bytes:
    """An OTLP JSON logs request; each record: event, attrs, and optional extra fields."""
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": str(v)}

    logs = []
    for r in records:
        entry = {
            "timeUnixNano": str(int(r.get("time", time.time()) * 1e9)),
            "eventName": r["event"],
            "attributes": [{"key": k, "value": value(v)} for k, v in r["attrs"].items()],
        }
        entry.update(r.get("extra", {}))
        logs.append(entry)
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()


def started(run_id: str, name: str = "bad.job", **attrs: Any) -> dict[str, Any]:
    now = time.time()
    return {"event": sc.EVENT_JOB_STARTED, "attrs": {
        sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_NAME: name, sc.ATTR_JOB_STATUS: "running",
        sc.ATTR_JOB_SEQUENCE: 1, sc.ATTR_JOB_STARTED_AT: now, sc.ATTR_HEARTBEAT_LAST: now,
        sc.ATTR_HEARTBEAT_INTERVAL: 60.0, **attrs}}


def test_bad_requests_get_their_status_and_store_nothing(tmp_path: Path) -> None:
    """400/401/413/415 each for its cause, with OTLP error bodies; the server keeps serving
    and no partial rows appear; a good request afterwards is stored."""
    path = str(tmp_path / "bad.duckdb")
    token = "s3cret"
    auth = {"Authorization": f"Bearer {token}"}
    pb = {"Content-Type": "application/x-protobuf", **auth}
    js = {"Content-Type": "application/json", **auth}
    with SinkServer(path, port=0, token=token, max_body=64 * 1024,
                    max_decompressed=256 * 1024) as srv:
        good = otlp_json(started("ok-1"))
        cases = [
            ("no token", good, {"Content-Type": "application/json"}, 401),
            ("wrong token", good, {"Content-Type": "application/json",
                                   "Authorization": "Bearer nope"}, 401),
            ("wrong scheme", good, {"Content-Type": "application/json",
                                    "Authorization": f"Basic {token}"}, 401),
            ("content type", good, {**auth, "Content-Type": "text/plain"}, 415),
            ("no content type", good, auth, 415),
            ("encoding", good, {**js, "Content-Encoding": "br"}, 415),
            ("bad protobuf", b"\xff\xff\xff\xff", pb, 400),
            ("bad json", b'{"resourceLogs": [', js, 400),
            ("half bad json", otlp_json(started("half-1"), {**started("half-2"), "extra": {
                "traceId": "not-hex"}}), js, 400),
            ("bad gzip", b"\x1f\x8bnot gzip", {**pb, "Content-Encoding": "gzip"}, 400),
            ("oversized", b"\0" * (65 * 1024), pb, 413),
            ("gzip bomb", gzip.compress(b"\0" * (1024 * 1024)),
             {**pb, "Content-Encoding": "gzip"}, 413),
        ]
        for label, body, headers, expected in cases:
            status, response_headers, payload = post(srv.url, "/v1/logs", body, headers)
            assert status == expected, label
            if expected == 401:
                assert response_headers.get("www-authenticate", "").startswith("Bearer"), label
            if expected in (400, 413) and headers.get("Content-Type") == pb["Content-Type"]:
                assert status_pb2.Status.FromString(payload).message, label
            if expected == 400 and headers is js:
                assert json.loads(payload)["message"], label
            health = urllib.request.urlopen(srv.url + "/healthz", timeout=5)
            assert health.status == 200, label  # still serving
        with open_sink(path) as sink:  # same process: shares the server's connection
            assert sink.jobs.count() == 0  # nothing of any refused request, not half of one
        status, headers, payload = post(srv.url, "/v1/logs", good, js)
        assert status == 200
        assert json.loads(payload) == {}
        status, _, payload = post(srv.url, "/v1/logs", gzip.compress(
            logs_service_pb2.ExportLogsServiceRequest().SerializeToString()),
            {**pb, "Content-Encoding": "gzip"})
        assert status == 200
        assert payload == b""  # an empty ExportLogsServiceResponse
        status, _, _ = post(srv.url, "/v1/metrics", b"", pb)
        assert status == 200  # accepted and ignored, so exporters do not log 404s
        with open_sink(path) as sink:
            assert [r.id for r in sink.jobs.all()] == ["ok-1"]
        rejected = srv.stats().rejected
        assert rejected == {401: 3, 415: 3, 400: 4, 413: 2}


# ---- queue full: 503 + Retry-After, and the real exporter's retries deliver everything -----


def test_full_queue_answers_503_and_exporter_retries_deliver_every_record(
        tmp_path: Path, workers: Callable[[str, str], Worker]) -> None:
    """With the writer paused and its queue full, requests get 503 + Retry-After; the OTLP
    exporter of a real worker retries, and once the writer resumes every record arrives,
    exactly once."""
    path = str(tmp_path / "full.duckdb")
    with SinkServer(path, port=0, queue_capacity=5, retry_after=1) as srv:
        js = {"Content-Type": "application/json"}
        prefill = otlp_json(*[started(f"pre-{i}") for i in range(10)])
        outcome: list[int] = []
        with srv.paused():
            blocked = threading.Thread(
                target=lambda: outcome.append(post(srv.url, "/v1/logs", prefill, js)[0]),
                daemon=True)
            blocked.start()
            wait_until(lambda: srv.writer.stats.accepted >= 10, 10, "prefill accepted")
            status, headers, _ = post(srv.url, "/v1/logs", otlp_json(started("x")), js)
            assert status == 503
            assert headers.get("retry-after") == "1"
            worker = workers(srv.url, "many")
            count = int(worker.line("COUNT", 30).split()[1])
            assert count >= 40  # at least started + finished per run, counted in the worker
            wait_until(lambda: srv.stats().rejected.get(503, 0) >= 3, 10,
                       "the exporter's requests to be refused")
            assert srv.stats().ingested.get("otlp.logs", 0) == 0
        blocked.join(15)
        assert outcome == [200]
        wait_until(lambda: srv.stats().ingested.get("otlp.logs", 0) >= 10 + count, 20,
                   "retried records to be committed")
        worker.touch("release")
        assert worker.wait(30) == 0, worker.stderr()
        stats = srv.stats()
        assert stats.ingested["otlp.logs"] == 10 + count  # exactly once each
        assert stats.ingested["otlp.traces"] == 20
        assert stats.dropped == 0
        with open_sink(srv.url) as sink:
            assert sink.jobs.named("many.job").completed().count() == 20
            assert sink.jobs.count() == 20 + 10
            assert sink.jobs.named("many.job").running().count() == 0


# ---- durability: SIGKILL after acknowledgement, and graceful SIGTERM ----------------------


SERVE = "from chaperone_otel.sink._server import serve; import sys; serve(sys.argv[1], port=0)"


def start_sink_process(path: str) -> tuple[subprocess.Popen[str], str]:
    errors = Path(path + ".stderr")
    with errors.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, path],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
    owner = wait_until(lambda: proc.poll() is not None or read_sidecar(path), 20,
                       "the sink process to advertise its URL")
    if proc.poll() is not None:
        pytest.fail(f"sink process died: {errors.read_text()}")
    return proc, owner["url"]


def send_batches(url: str, batches: int, per_batch: int, prefix: str) -> int:
    acked = 0
    for b in range(batches):
        body = otlp_json(*[started(f"{prefix}-{b}-{i}", name="durable.job")
                           for i in range(per_batch)])
        status, _, _ = post(url, "/v1/logs", body, {"Content-Type": "application/json"})
        assert status == 200
        acked += per_batch
    return acked


def test_acknowledged_records_survive_sigkill_of_the_sink(tmp_path: Path) -> None:
    """Every record acknowledged with 200 is in the file after the sink is SIGKILLed."""
    path = str(tmp_path / "durable.duckdb")
    proc, url = start_sink_process(path)
    try:
        acked = send_batches(url, batches=8, per_batch=25, prefix="k")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert read_sidecar(path) is None  # stale sidecar: its PID is dead, so it is ignored
    with open_sink(path) as sink:  # the file itself, after a restart of nothing
        assert sink.jobs.named("durable.job").count() == acked == 200


def test_sigterm_flushes_and_removes_the_sidecar(tmp_path: Path) -> None:
    """SIGTERM: in-flight work is committed, the sidecar removed, exit status 0."""
    path = str(tmp_path / "term.duckdb")
    proc, url = start_sink_process(path)
    try:
        acked = send_batches(url, batches=3, per_batch=10, prefix="t")
        assert sidecar_path(path).exists()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert not sidecar_path(path).exists()
    with open_sink(path) as sink:
        assert sink.jobs.count() == acked


def test_a_port_in_use_leaves_no_store_file_behind(tmp_path: Path) -> None:
    """Binding comes first: a server that cannot have its port neither creates the store
    file nor holds it."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        db = tmp_path / "never.duckdb"
        with pytest.raises(OSError):
            SinkServer(str(db), port=taken.getsockname()[1]).start()
        assert not db.exists()
    finally:
        taken.close()
