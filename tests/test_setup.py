"""configure(): env precedence, adding to existing providers, real OTLP/HTTP export, fork."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import chaperone_otel as chaperone
from chaperone_otel import ConfigurationError, _process, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._config import build_config, get_config
from chaperone_otel.testing import capture
from tests.loopback import Recorder, Request, recording, serving


def test_env_then_argument_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default < CHAPERONE_OTEL_* environment < configure() argument."""
    assert build_config({}, {}).heartbeat_interval == 60
    env = {"CHAPERONE_OTEL_HEARTBEAT_INTERVAL": "5m", "CHAPERONE_OTEL_ON_LIMIT": "warn"}
    assert build_config({}, env).heartbeat_interval == 300
    assert build_config({"heartbeat_interval": 10}, env).heartbeat_interval == 10
    assert build_config({}, env).on_limit == "warn"
    monkeypatch.setenv("CHAPERONE_OTEL_LONG_RUN_THRESHOLD", "120")
    chaperone.configure()
    assert get_config().long_run_threshold == 120


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAPERONE_OTEL_PROMETHEUS_PORT": "nine"}, "expected an integer"),
        ({"CHAPERONE_OTEL_CONSOLE": "maybe"}, "true/false"),
        ({"CHAPERONE_OTEL_ON_LIMIT": "explode"}, "CHAPERONE_OTEL_ON_LIMIT: on_limit="),
        ({"CHAPERONE_OTEL_PROMETHEUS_PORT": "70000"}, "CHAPERONE_OTEL_PROMETHEUS_PORT: "),
        ({"CHAPERONE_OTEL_HEARTBEAT_INTERVAL": "-1"}, "CHAPERONE_OTEL_HEARTBEAT_INTERVAL"),
    ],
)
def test_bad_environment_fails_loudly(env: dict[str, str], message: str) -> None:
    """A bad variable raises ConfigurationError naming it, before anything changes."""
    with pytest.raises(ConfigurationError, match=message):
        build_config({}, env)


def test_unknown_option_and_bad_values() -> None:
    """Typos and bad values fail at configure() time with the valid choices."""
    with pytest.raises(ConfigurationError, match="unknown option 'heartbeat_intervall'"):
        chaperone.configure(heartbeat_intervall=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="prometheus_port"):
        chaperone.configure(prometheus_port=70000)
    with pytest.raises(ConfigurationError, match="unknown hook"):
        chaperone.configure(on_explode=print)


def test_adds_to_an_existing_sdk_provider(
    receiver: tuple[str, list[tuple[str, str, bytes, float]]],
) -> None:
    """An application's own TracerProvider is kept; chaperone's OTLP processor is added."""
    url, requests = receiver
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setup = chaperone.configure(tracer_provider=provider, otlp_endpoint=url)
    assert setup.tracer_provider is provider
    assert len(setup.span_processors) == 1
    with supervised("kept"):
        pass
    chaperone.shutdown()  # flushes chaperone's processor into the receiver
    assert [s.name for s in exporter.get_finished_spans()] == ["kept"]
    assert any(path == "/v1/traces" for path, *_ in requests)


@pytest.mark.parametrize(
    ("variables", "exported"),
    [
        ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "/v1/logs"}, {"logs"}),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "/v1/traces"}, {"traces"}),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "/v1/metrics"}, {"metrics"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, {"traces", "logs", "metrics"}),
    ],
)
def test_otlp_exports_the_signals_that_have_an_endpoint(
    receiver: tuple[str, list[tuple[str, str, bytes, float]]],
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    exported: set[str],
) -> None:
    """Only a signal with an endpoint somewhere is exported: the logs endpoint alone sent
    spans and metrics to the SDK's default, localhost:4318, where nothing listened
    (connection errors and retries at every batch); a metrics endpoint alone exported
    nothing. The base endpoint variable exports all three."""
    url, requests = receiver
    for name, path in variables.items():
        monkeypatch.setenv(name, url + path)
    setup = chaperone.configure(prometheus_port=None)
    try:
        with supervised("per.signal"):
            pass
        chaperone.flush(10)
        for reader in setup.metric_readers:
            reader.force_flush()
        installed = {
            "traces": bool(setup.span_processors),
            "logs": bool(setup.log_processors),
            "metrics": bool(setup.metric_readers),
        }
        assert {k for k, v in installed.items() if v} == exported
    finally:
        chaperone.shutdown()
    sent = {path.rsplit("/", 1)[-1] for path, *_ in requests}
    assert sent == exported


_Receiver = Recorder


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Request]]]:
    """A real HTTP server on loopback that records OTLP requests."""
    with recording() as received:
        yield received


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A receiver that wants a token the exporter does not send: 401 to every request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_flush_is_false_when_the_receiver_refused_what_was_sent(
    receiver: tuple[str, list[tuple[str, str, bytes, float]]],
) -> None:
    """``flush()`` says whether everything was sent: a receiver that refuses every batch
    (a ``sink serve --token`` without the token) made it True, as the SDK's processors
    report a refused batch as flushed; the records were gone. The same flush against a
    receiver that takes them is True."""

    with serving(_Refusing) as refusing:
        for endpoint, flushed in ((refusing, False), (receiver[0], True)):
            chaperone.configure(otlp_endpoint=endpoint)
            try:
                with supervised("flushed.job"):
                    pass
                assert chaperone.flush(10) is flushed, endpoint
            finally:
                chaperone.reset()


def test_a_metrics_port_that_cannot_be_served_fails_configure_cleanly(
    receiver: tuple[str, list[tuple[str, str, bytes, float]]],
) -> None:
    """A busy ``prometheus_port`` (or an address not of this host) is a ConfigurationError
    naming the option (it was a bare OSError), and the configure() that failed leaves
    nothing behind: before, its OTLP span processor stayed on the application's provider
    and kept exporting every span after the next configure() had turned OTLP off."""
    import socket

    url, requests = receiver
    provider = TracerProvider()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match="prometheus_port"):
            chaperone.configure(tracer_provider=provider, otlp_endpoint=url, prometheus_port=port)
        with pytest.raises(ConfigurationError, match="prometheus_host"):
            chaperone.configure(prometheus_port=0, prometheus_host="192.0.2.1")
    finally:
        busy.close()
    chaperone.configure(tracer_provider=provider, otlp=False)
    try:
        with supervised("after.the.failure"):
            pass
        assert provider.force_flush(10_000)
    finally:
        chaperone.reset()
    assert not [path for path, *_ in requests if path == "/v1/traces"]


class _GatedReceiver(_Receiver):
    """Answers nothing until ``gate`` is set: a collector (or sink) that is slow for a while."""

    gate: threading.Event

    def do_POST(self) -> None:
        self.gate.wait(60)
        super().do_POST()


def _items(requests: list[tuple[str, str, bytes, float]]) -> tuple[int, int]:
    """(log records, spans) in the OTLP requests received."""
    logs = spans = 0
    for path, _ctype, body, _at in list(requests):
        if path == "/v1/logs":
            msg = ExportLogsServiceRequest()
            msg.ParseFromString(body)
            logs += sum(len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs)
        elif path == "/v1/traces":
            tmsg = ExportTraceServiceRequest()
            tmsg.ParseFromString(body)
            spans += sum(len(ss.spans) for rs in tmsg.resource_spans for ss in rs.scope_spans)
    return logs, spans


@pytest.mark.slow
@pytest.mark.parametrize("sizes", ["ours", "environment"])
def test_a_burst_while_the_receiver_is_slow_keeps_every_record(
    sizes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 runs finish while the OTLP receiver answers nothing: with the queue sizes
    ``configure()`` gives its batch processors, all 6,000 lifecycle records and 3,000 spans
    arrive once it answers (the SDK's default queues of 2,048 dropped a third of them). A
    user's ``OTEL_BLRP_*`` sizes are the SDK's to apply, drops included."""
    if sizes == "environment":
        monkeypatch.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "1000")
        monkeypatch.setenv("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "500")
    gate = threading.Event()
    requests: list[tuple[str, str, bytes, float]] = []
    handler = type("Handler", (_GatedReceiver,), {"requests": requests, "gate": gate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # polled every 0.05 s: shutdown() below waits for the poll (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        chaperone.configure(otlp_endpoint=f"http://127.0.0.1:{server.server_port}")

        @supervised(name="burst.job")
        def job() -> None:
            return None

        for _ in range(3_000):
            job()
        gate.set()
        chaperone.shutdown()
    finally:
        gate.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
    logs, spans = _items(requests)
    if sizes == "ours":
        assert (logs, spans) == (6_000, 3_000)
    else:
        assert logs <= 1_000 + 500  # the queue, and the batch the exporter held
        assert spans == 3_000


def _log_events(requests: list[tuple[str, str, bytes, float]]) -> list[tuple[str, float]]:
    out = []
    for path, _ctype, body, at in list(requests):
        if path != "/v1/logs":
            continue
        msg = ExportLogsServiceRequest()
        msg.ParseFromString(body)
        for rl in msg.resource_logs:
            for sl in rl.scope_logs:
                out.extend((rec.event_name, at) for rec in sl.log_records)
    return out


@pytest.mark.slow
def test_real_otlp_export_lifecycle_logs_arrive_while_running(
    receiver: tuple[str, list[tuple[str, str, bytes, float]]],
) -> None:
    """In a fresh process with the real SDK: lifecycle logs reach the receiver before the
    span ends (the live channel), then the span arrives with the run's attributes."""
    url, requests = receiver
    script = f"""
import os, time, chaperone_otel as c
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
c.configure(otlp_endpoint={url!r}, service_name="svc-test", heartbeat_interval=1,
            flush_period=0.1)
import opentelemetry._logs as logs
# Export logs quickly so the live channel is visible within the run.
for p in logs.get_logger_provider()._multi_log_record_processor._log_record_processors:
    p._batch_processor._schedule_delay = 0.05
print("PID", os.getpid(), flush=True)
with c.supervised("otlp.job") as run:
    for i in range(30):
        run.heartbeat(i=i)
        time.sleep(0.05)
    print("ENDED", time.monotonic(), flush=True)
c.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ended = float(proc.stdout.split("ENDED", 1)[1].split()[0])
    events = _log_events(requests)
    names = [name for name, _ in events]
    assert names[0] == sc.EVENT_JOB_STARTED
    assert sc.EVENT_JOB_HEARTBEAT in names
    assert names[-1] == sc.EVENT_JOB_FINISHED
    before_end = [n for n, at in events if at < ended]
    assert sc.EVENT_JOB_STARTED in before_end
    assert sc.EVENT_JOB_HEARTBEAT in before_end
    spans = []
    for path, ctype, body, _ in requests:
        assert ctype == "application/x-protobuf"
        if path == "/v1/traces":
            msg = ExportTraceServiceRequest()
            msg.ParseFromString(body)
            for rs in msg.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}
                assert service["service.name"] == "svc-test"
                spans.extend(s for ss in rs.scope_spans for s in ss.spans)
    assert [s.name for s in spans] == ["otlp.job"]
    attrs = {a.key: a.value for a in spans[0].attributes}
    assert attrs[sc.ATTR_HEARTBEAT_COUNT].int_value == 30
    # The process is described once, by the resource configure() made; records don't repeat it.
    pid = int(proc.stdout.split("PID", 1)[1].split()[0])
    for path, _ctype, body, _ in requests:
        if path != "/v1/logs":
            continue
        msg = ExportLogsServiceRequest()
        msg.ParseFromString(body)
        for rl in msg.resource_logs:
            resource = {a.key: a.value for a in rl.resource.attributes}
            assert resource[sc.ATTR_PROCESS_PID].int_value == pid
            assert resource[sc.ATTR_HOST_NAME].string_value
            assert resource[sc.ATTR_SERVICE_INSTANCE_ID].string_value
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    keys = {a.key for a in rec.attributes}
                    assert sc.ATTR_JOB_RUN_ID in keys
                    assert not keys & {sc.ATTR_PROCESS_PID, sc.ATTR_HOST_NAME}, keys


def test_records_repeat_process_attributes_their_resource_does_not_say() -> None:
    """A record leaves host, pid and instance to its logger's resource only when the
    resource says the same: a forked child whose resource names its parent, or a provider
    without them, keeps them on every record (the sink reads either place)."""
    own = {
        sc.ATTR_HOST_NAME: _process.HOST,
        sc.ATTR_PROCESS_PID: os.getpid(),
        sc.ATTR_SERVICE_INSTANCE_ID: _process.instance_id,
    }
    cases = {
        "same": own,
        "parent's": {**own, sc.ATTR_PROCESS_PID: os.getpid() + 1},
        "none": {},
    }
    keys = set(own)
    for case, resource_attributes in cases.items():
        exporter = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=Resource(resource_attributes))
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        with capture(logger_provider=provider):
            with supervised("resource.case"):
                pass
        logs = exporter.get_finished_logs()
        assert [r.log_record.event_name for r in logs] == [
            sc.EVENT_JOB_STARTED,
            sc.EVENT_JOB_FINISHED,
        ]
        for r in logs:
            attributes = dict(r.log_record.attributes or {})
            on_record = {k: attributes[k] for k in keys if k in attributes}
            if case == "same":
                assert on_record == {}, case
            elif case == "parent's":
                assert on_record == {sc.ATTR_PROCESS_PID: os.getpid()}, case
            else:
                assert on_record == own, case


@pytest.mark.slow
def test_a_forked_child_counts_only_its_own_runs() -> None:
    """A child forked while the parent has ended runs and a live one, exporting through the
    parent's meter provider (one it was given, or an OTLP reader): its run counters start
    from zero. Before, it reported the parent's totals as its own (counted twice across the
    fleet), and the parent's live run stayed in its ``runs.active`` for its whole life."""
    script = r"""
import json, os, sys
import chaperone_otel as c
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
c.configure(meter_provider=MeterProvider(metric_readers=[reader]))

def counts():
    found = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name in ("chaperone.job.runs.active", "chaperone.job.runs.started"):
                    found[m.name] = sorted(
                        (dict(p.attributes)["chaperone.job.name"], p.value)
                        for p in m.data.data_points if p.value
                    )
    return found

for _ in range(3):
    with c.supervised("parent.done"):
        pass
r, w = os.pipe()
with c.supervised("parent.live"):
    before = counts()  # collected: the parent's totals are in the counters at the fork
    pid = os.fork()
    if pid == 0:
        with c.supervised("child.job"):
            pass
        os.write(w, json.dumps(counts()).encode())
        os._exit(0)
    os.close(w)
    child = json.loads(os.read(r, 65536))
    os.waitpid(pid, 0)
print(json.dumps({"child": child, "parent": counts(), "before": before}))
c.shutdown()
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    import json

    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["child"] == {
        "chaperone.job.runs.started": [["child.job", 1]],
        "chaperone.job.runs.active": [],
    }
    assert dict(map(tuple, seen["parent"]["chaperone.job.runs.started"])) == {
        "parent.done": 3,
        "parent.live": 1,
    }
    assert seen["before"]["chaperone.job.runs.active"] == [["parent.live", 1]]


@pytest.mark.slow
def test_monitor_restarts_after_fork() -> None:
    """A forked child (Celery prefork) gets its own monitor thread and instance id."""
    script = r"""
import os, threading, chaperone_otel as c
from chaperone_otel._events import add_listener
from chaperone_otel import _process
got = []
class L:
    def on_record(self, r): got.append(r)
add_listener(L())
c.configure(flush_period=0.05)
with c.supervised("parent"): pass
parent_instance = _process.instance_id
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    done = threading.Event()
    with c.supervised("child", heartbeat_interval=1) as run:
        run.heartbeat()
        for _ in range(200):
            if any(x.event_name == "chaperone.job.heartbeat" and x.attributes["chaperone.job.name"] == "child" for x in got):
                break
            done.wait(0.02)
    names = [t.name for t in threading.enumerate()]
    ok = ("chaperone-monitor" in names
          and _process.instance_id != parent_instance
          and any(x.attributes["chaperone.job.name"] == "child" and x.event_name == "chaperone.job.heartbeat" for x in got))
    os.write(w, b"OK" if ok else b"NO")
    os._exit(0)
os.close(w)
result = os.read(r, 2)
os.waitpid(pid, 0)
print(result.decode())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


@pytest.mark.slow
def test_console_exporter_prints_spans_and_events() -> None:
    """console=True prints the span and the lifecycle events to stdout (debugging aid)."""
    script = (
        "import chaperone_otel as c\n"
        "c.configure(console=True, otlp=False)\n"
        "with c.supervised('console.job'): pass\n"
        "c.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    assert '"name": "console.job"' in out
    assert sc.EVENT_JOB_FINISHED in out


@pytest.mark.slow
def test_second_configure_keeps_telemetry_working() -> None:
    """configure() twice in a fresh process (the global providers can be set only once):
    spans, lifecycle logs and /metrics still work after the second call, and the run
    counters stay continuous for a run that lived across it."""
    script = r"""
import urllib.request, chaperone_otel as c
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
trace.set_tracer_provider(TracerProvider())  # the application's
setup = c.configure(prometheus_port=0)
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
with c.supervised("before"): pass
across = c.supervised("across", heartbeat_interval=5).start()
setup = c.configure(prometheus_port=0)
with c.supervised("after"): pass
live = urllib.request.urlopen(setup.prometheus_url, timeout=10).read().decode()
across.finish()
done = urllib.request.urlopen(setup.prometheus_url, timeout=10).read().decode()
def value(text, name, job):
    for line in text.splitlines():
        if line.startswith(name + "{") and f'chaperone_job_name="{job}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None
print("SPANS", sorted(s.name for s in exporter.get_finished_spans()))
print("LIVE_HB", value(live, "chaperone_job_last_heartbeat_timestamp_seconds", "across") is not None)
print("ACTIVE_LIVE", value(live, "chaperone_job_runs_active", "across"))
print("ACTIVE_DONE", value(done, "chaperone_job_runs_active", "across"))
print("STARTED", value(done, "chaperone_job_runs_started_total", "after"))
c.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env, check=True)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["SPANS"] == "['across', 'after', 'before']", out.stdout + out.stderr
    assert lines["LIVE_HB"] == "True"
    assert lines["ACTIVE_LIVE"] == "1.0"
    assert lines["ACTIVE_DONE"] == "0.0"
    assert lines["STARTED"] == "1.0"
    assert "shutdown" not in out.stderr.lower(), out.stderr


def test_configure_while_a_run_finishes_leaves_no_live_ghost() -> None:
    """configure() on another thread while a run is publishing its finished record: the
    run is not "live" in the new runtime (its gauges would freeze and page as stuck)."""
    from chaperone_otel._events import add_listener, remove_listener
    from chaperone_otel._runtime import runtime

    in_finish, proceed = threading.Event(), threading.Event()

    class Gate:
        def on_record(self, record: object) -> None:
            if getattr(record, "event_name", None) == sc.EVENT_JOB_FINISHED:
                in_finish.set()
                proceed.wait(10)

    chaperone.configure(tracer_provider=TracerProvider())
    gate = Gate()
    add_listener(gate)
    runs: list[object] = []

    def job() -> None:
        with supervised("reconfigure.finish") as run:
            runs.append(run)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert in_finish.wait(10)
        chaperone.configure(tracer_provider=TracerProvider())
    finally:
        proceed.set()
        thread.join(10)
        remove_listener(gate)
    assert not thread.is_alive()
    (run,) = runs
    assert run not in runtime().live_runs()


def test_configure_while_a_run_starts_keeps_it_monitored() -> None:
    """configure() on another thread while a run is starting: the new monitor flushes the
    run's heartbeats while it runs (else the sink would call a beating run lost)."""
    from chaperone_otel._events import add_listener, remove_listener

    in_start, proceed = threading.Event(), threading.Event()

    class SlowTracerProvider(TracerProvider):
        def get_tracer(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def,override]
            in_start.set()
            proceed.wait(10)
            return super().get_tracer(*args, **kwargs)  # type: ignore[arg-type]

    beats: list[object] = []
    seen_running = threading.Event()

    class Beats:
        def on_record(self, record: object) -> None:
            attrs = getattr(record, "attributes", {})
            if (
                getattr(record, "event_name", None) == sc.EVENT_JOB_HEARTBEAT
                and attrs.get(sc.ATTR_JOB_STATUS) == "running"
            ):
                beats.append(record)
                seen_running.set()

    chaperone.configure(heartbeat_interval=0.4, tracer_provider=TracerProvider())
    listener = Beats()
    add_listener(listener)
    stop = threading.Event()

    def job() -> None:
        with supervised("reconfigure.start", tracer_provider=SlowTracerProvider()) as run:
            while not stop.is_set():
                run.heartbeat()
                stop.wait(0.02)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert in_start.wait(10)
        chaperone.configure(heartbeat_interval=0.4, tracer_provider=TracerProvider())
        proceed.set()
        assert seen_running.wait(10), "no heartbeat record while the run was running"
    finally:
        proceed.set()
        stop.set()
        thread.join(10)
        remove_listener(listener)
    assert not thread.is_alive()
    assert beats


@pytest.mark.slow
def test_fork_while_another_thread_configures_does_not_deadlock_the_child() -> None:
    """A fork while another thread is inside configure() (waiting for a slow hook): the
    child's own configure() (Celery's worker_process_init) returns; the locks it needs are
    new in the child, not copies held by a thread that does not exist there."""
    script = r"""
import os, threading, time
import chaperone_otel as c

hook_running = threading.Event()
def slow_on_complete(state):
    hook_running.set()
    time.sleep(1.5)  # a webhook POST

c.configure(on_complete=slow_on_complete)
with c.supervised("job"):
    pass
assert hook_running.wait(10)
again = threading.Thread(target=c.configure)  # waits for the hooks thread, holding locks
again.start()
while not again.is_alive():
    time.sleep(0.01)
time.sleep(0.3)
pid = os.fork()
if pid == 0:
    c.configure()
    with c.supervised("child.job"):
        pass
    os._exit(0)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise SystemExit("child configure() hung")
again.join(10)
c.shutdown()
print("CHILD", os.waitstatus_to_exitcode(status))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHILD 0" in proc.stdout


@pytest.mark.slow
def test_forked_child_of_an_app_serving_metrics_exits_without_hanging() -> None:
    """A child forked from an app with ``prometheus_port`` exits normally (``sys.exit``, so
    ``shutdown()`` runs at its exit): it closes only its copy of the server's socket. (It
    hung for ever: ``server.shutdown()`` waited for a serving thread that only the parent
    has.)"""
    script = r"""
import os, sys, time
import chaperone_otel as c
c.configure(prometheus_port=0)
pid = os.fork()
if pid == 0:
    sys.exit(0)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("CHILD", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("CHILD HUNG")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHILD 0" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.02, 0.15])
def test_fork_during_another_threads_first_configure_does_not_hang_the_child(
    delay: float,
) -> None:
    """A fork while another thread is in its first ``configure(otlp_endpoint=...)`` (which
    imports the SDK and the exporters): the fork waits for it to finish, so the child's own
    ``configure()`` and a run return. (Before: the child inherited those modules' import
    locks, held by the configuring thread, and hung for ever on its first import of them,
    at every delay tried.)"""
    script = r"""
import os, sys, threading, time
import chaperone_otel as c
delay = float(sys.argv[1])
t = threading.Thread(target=lambda: c.configure(otlp_endpoint="http://127.0.0.1:9/"))
t.start()
time.sleep(delay)
pid = os.fork()
if pid == 0:
    import faulthandler  # a hang shows where: every thread's stack, before the kill below
    faulthandler.dump_traceback_later(15)
    c.configure(otlp_endpoint="http://127.0.0.1:9/")
    with c.supervised("child.job"):
        pass
    os._exit(0)
deadline = time.monotonic() + 20
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("CHILD", os.waitstatus_to_exitcode(status))
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("CHILD HUNG")
        break
    time.sleep(0.02)
t.join(20)
os._exit(0)  # nothing listens on port 9: skip the exit-time flush's retries
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(delay)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert "CHILD 0" in proc.stdout, proc.stdout + proc.stderr


def test_a_store_that_cannot_load_is_a_configuration_error(tmp_path: Path) -> None:
    """``configure(sink=...)`` where the store's modules do not import (a pyarrow that
    refuses the environment's numpy): a bare ImportError traceback from deep in the package;
    a ``ConfigurationError`` naming the option, the import error and what must import."""
    from tests.processes import run_python

    out = run_python(
        "import sys\n"
        "sys.modules['chaperone_otel.export._sink'] = None  # a store that cannot load\n"
        "import chaperone_otel as c\n"
        "try:\n"
        "    c.configure(sink=sys.argv[1])\n"
        "except c.ConfigurationError as e:\n"
        "    print('refused:', e)\n",
        tmp_path / "jobs.duckdb",
    ).stdout
    assert out.startswith("refused: sink="), out
    assert "cannot be loaded" in out
    assert "duckdb, pyarrow" in out


def test_configure_moving_a_live_run_elsewhere_warns_and_leaves_its_latest_state(
    tmp_path: Path,
) -> None:
    """``configure()`` pointing records at another store while a run is live: the run goes
    on (and ends) in the new one, the old one keeps its latest state (its progress, flushed
    before the old pipeline closed; before, what the last heartbeat record had said), and a
    warning names the run, since the old store will call it lost."""
    from chaperone_otel.sink import open_sink

    first, second = tmp_path / "first.duckdb", tmp_path / "second.duckdb"
    chaperone.configure(sink=str(first), heartbeat_interval=60)
    try:
        with supervised("etl.moved") as run:
            run.report_progress(5, 10)
            with pytest.warns(RuntimeWarning, match=r"while 1 run\(s\) were running \(etl\.moved\)"):
                chaperone.configure(sink=str(second), heartbeat_interval=60)
            run.report_progress(8, 10)
    finally:
        chaperone.shutdown()
    with open_sink(first) as sink:
        (old,) = sink.jobs.all()
    with open_sink(second) as sink:
        (new,) = sink.jobs.all()
    assert (old.status, old.progress) == ("running", 50.0)
    assert (new.status, new.progress, new.id) == ("completed", 80.0, old.id)


def test_configure_keeping_the_destinations_does_not_warn_about_live_runs(tmp_path: Path) -> None:
    """Another ``configure()`` with the same store (a new heartbeat interval) while a run is
    live: nothing moves, no warning (the suite's warnings are errors), the run completes."""
    from chaperone_otel.sink import open_sink

    path = tmp_path / "jobs.duckdb"
    chaperone.configure(sink=str(path), heartbeat_interval=60)
    try:
        with supervised("etl.stays") as run:
            run.report_progress(5, 10)
            chaperone.configure(sink=str(path), heartbeat_interval=30)
    finally:
        chaperone.shutdown()
    with open_sink(path) as sink:
        (stored,) = sink.jobs.all()
    assert (stored.status, stored.progress) == ("completed", 50.0)


_RUNS_UNCONFIGURED = """
import sys
if sys.argv[1] == "app-provider":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
import chaperone_otel
if sys.argv[1] == "configured":
    chaperone_otel.configure()
for i in range(3):
    with chaperone_otel.supervised("cron.nightly") as run:
        run.heartbeat()
    chaperone_otel.shutdown()  # the next run makes a new runtime: no second warning
"""


@pytest.mark.parametrize(
    ("setup", "env", "hinted"),
    [
        ("bare", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("bare", {"CHAPERONE_OTEL_SINK": "{tmp}/jobs.duckdb"}, "CHAPERONE_OTEL_SINK"),
        ("bare", {}, None),
        ("configured", {"CHAPERONE_OTEL_SINK": "{tmp}/jobs.duckdb"}, None),
        ("app-provider", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, None),
    ],
)
def test_runs_before_any_configure_with_a_destination_named_say_so_once(
    tmp_path: Path, setup: str, env: dict[str, str], hinted: str | None
) -> None:
    """A cron script with only ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (no ``configure()``)
    recorded nothing, silently: its first run now logs one warning naming the variable.
    Not when configure() ran, nothing names a destination, or the application set up its
    own SDK providers (its runs go there)."""
    from tests.processes import run_python

    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    done = run_python(_RUNS_UNCONFIGURED, setup, env=env, timeout=60)
    said = done.stderr.count("configure() was never called")
    if hinted is None:
        assert said == 0, done.stderr
    else:
        assert said == 1, done.stderr
        assert f"{hinted} is set, but only configure() reads it" in done.stderr
