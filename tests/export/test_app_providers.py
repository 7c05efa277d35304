"""``configure()`` beside an application's own OpenTelemetry setup: it neither doubles the
application's export nor takes the OTel globals it does not need.

Each case runs in a fresh interpreter (the OTel globals can be set once per process),
exporting to a real OTLP/HTTP receiver on loopback when it exports at all."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.loopback import Request, recording
from tests.processes import CLEAN_ENV


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Request]]]:
    with recording() as received:
        yield received


def _names(requests: list[Request], signal: str) -> Counter[str]:
    """The span names (``traces``) or record event names (``logs``) received."""
    names: Counter[str] = Counter()
    for path, _, body, _ in requests:
        if path == "/v1/traces" and signal == "traces":
            request = ExportTraceServiceRequest.FromString(body)
            names.update(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
        elif path == "/v1/logs" and signal == "logs":
            logs = ExportLogsServiceRequest.FromString(body)
            names.update(r.event_name for rl in logs.resource_logs for sl in rl.scope_logs for r in sl.log_records)
    return names


def _spans(requests: list[Request]) -> Counter[str]:
    return _names(requests, "traces")


def _events(requests: list[Request]) -> Counter[str]:
    return _names(requests, "logs")


def _run(script: str, *args: object, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**CLEAN_ENV, **env},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


_APP_WITH_ITS_OWN_PIPELINE = r"""
import sys
from opentelemetry import _logs, trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# What opentelemetry-instrument (or an app's own setup) does from OTEL_EXPORTER_OTLP_*.
tp, lp = TracerProvider(), LoggerProvider()
tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
lp.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
trace.set_tracer_provider(tp)
_logs.set_logger_provider(lp)

import chaperone_otel as c
c.configure(**({"otlp": True} if sys.argv[1] == "asked" else {}))
with trace.get_tracer("app").start_as_current_span("app.request"):
    with c.supervised("app.job"):
        pass
c.flush()
tp.force_flush()
lp.force_flush()
"""


def test_the_environments_endpoint_does_not_double_the_applications_export(
    receiver: tuple[str, list[Request]],
) -> None:
    """An application exporting through its own providers from ``OTEL_EXPORTER_OTLP_*``
    (``opentelemetry-instrument``), then ``configure()``: the same variable made
    chaperone-otel add its own OTLP processors to those providers, and every span and
    record of the whole application reached the backend twice. Its pipeline exports
    chaperone-otel's telemetry once; ``otlp=True`` still adds chaperone-otel's own."""
    url, bodies = receiver
    _run(_APP_WITH_ITS_OWN_PIPELINE, "implied", OTEL_EXPORTER_OTLP_ENDPOINT=url)
    assert _spans(bodies) == {"app.request": 1, "app.job": 1}
    assert _events(bodies) == {"chaperone.job.started": 1, "chaperone.job.finished": 1}

    bodies.clear()
    _run(_APP_WITH_ITS_OWN_PIPELINE, "asked", OTEL_EXPORTER_OTLP_ENDPOINT=url)
    assert _spans(bodies) == {"app.request": 2, "app.job": 2}  # asked for: both pipelines


_STORE_ONLY_THEN_THE_APP = r"""
import sys, warnings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import chaperone_otel as c

c.configure(sink=sys.argv[1])  # the README's order: configure() first, the app's OTel later
app = TracerProvider()
exporter = InMemorySpanExporter()
app.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(app)
assert trace.get_tracer_provider() is app, "the application could not install its provider"
with c.supervised("stored.job"):
    pass
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_a_store_only_configure_leaves_the_otel_globals_to_the_application(
    tmp_path: Path,
) -> None:
    """``configure(sink=...)`` exports nothing over OTel, yet installed SDK providers as
    the three OTel globals: the application's own setup afterwards was refused ("Overriding
    of current TracerProvider is not allowed") and its spans went nowhere. The globals are
    left alone; chaperone-otel's spans follow the provider the application installs."""
    from chaperone_otel import open_sink

    store = tmp_path / "jobs.duckdb"
    proc = _run(_STORE_ONLY_THEN_THE_APP, store)
    assert "Overriding" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "['stored.job']"
    with open_sink(str(store)) as sink:
        assert [j.status for j in sink.jobs.named("stored.job").all()] == ["completed"]


_PER_SIGNAL = r"""
import chaperone_otel as c
c.configure()
with c.supervised("env.job"):
    pass
c.flush()
"""


def test_a_signal_whose_exporter_variable_says_none_is_not_exported(
    receiver: tuple[str, list[Request]],
) -> None:
    """``OTEL_TRACES_EXPORTER=none`` (the standard per-signal switch) was ignored: with
    the endpoint set, all three signals were exported. It turns its signal off; the others
    go on."""
    url, bodies = receiver
    _run(_PER_SIGNAL, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_EXPORTER="none")
    paths = {path for path, *_ in bodies}
    assert "/v1/traces" not in paths
    assert _events(bodies) == {"chaperone.job.started": 1, "chaperone.job.finished": 1}


_CONSOLE_ON_THE_APPS_PROVIDER = r"""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
import chaperone_otel as c
c.configure(console=True)
with trace.get_tracer("app").start_as_current_span("app.request"):
    with c.supervised("printed.job"):
        pass
c.flush()
"""


def test_console_prints_only_chaperones_own_telemetry() -> None:
    """``configure(console=True)`` on the application's provider printed every span of the
    application, not only chaperone-otel's spans and records."""
    out = _run(_CONSOLE_ON_THE_APPS_PROVIDER).stdout
    assert '"name": "printed.job"' in out
    assert "chaperone.job.finished" in out
    assert "app.request" not in out


_EXPLICIT_NO_OP = r"""
import sys
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
import chaperone_otel as c
c.configure(tracer_provider=NoOpTracerProvider(), otlp_endpoint=sys.argv[1])
assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider), trace.get_tracer_provider()
with trace.get_tracer("app").start_as_current_span("app.request"):
    with c.supervised("quiet.job"):
        pass
c.flush()
"""


def test_an_explicit_non_sdk_provider_takes_nothing_and_installs_no_global(
    receiver: tuple[str, list[Request]],
) -> None:
    """``configure(tracer_provider=NoOpTracerProvider(), otlp_endpoint=...)``: the no-op
    provider made ``configure()`` create an SDK provider and install it as the global, so
    the application's own spans were exported though it asked for none, while
    chaperone-otel's went to the no-op. Nothing is installed; no span is sent."""
    url, bodies = receiver
    _run(_EXPLICIT_NO_OP, url)
    assert _spans(bodies) == {}
    assert _events(bodies) == {"chaperone.job.started": 1, "chaperone.job.finished": 1}


_APP_PROMETHEUS_READER = r"""
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
import chaperone_otel as c
from chaperone_otel.exceptions import ConfigurationError
metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
try:
    c.configure(prometheus_port=0)
except ConfigurationError as e:
    print("refused:", e)
"""


def test_prometheus_port_beside_the_applications_own_prometheus_reader_is_refused() -> None:
    """The application's MeterProvider with its own ``PrometheusMetricReader`` (whose
    collector serves every metric of the provider), then ``prometheus_port``: a second
    collector made every chaperone family appear twice on both endpoints, an exposition
    promtool rejects. Refused, saying which endpoint to scrape."""
    out = _run(_APP_PROMETHEUS_READER).stdout
    assert out.startswith("refused:"), out
    assert "PrometheusMetricReader" in out
    assert "prometheus_port" in out
