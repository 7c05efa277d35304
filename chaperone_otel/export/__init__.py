"""In-process wiring that needs the OTel SDK: OTLP, console, Prometheus ``/metrics``, sink.

``chaperone_otel.configure()`` calls :func:`setup` lazily, so ``import chaperone_otel`` never
loads the SDK. The rule for existing providers: if the application already installed an SDK
``TracerProvider`` / ``LoggerProvider`` / ``MeterProvider``, chaperone-otel *adds* its
processors and readers to it (but no OTLP exporter that only the environment implies: the
application's own pipeline exports it, :func:`_skip_implied`); only where the global is
still the API's no-op proxy, and only for a signal something here exports, does it create a
provider and install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import (
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider, MetricsTimeoutError
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from .. import _process
from .. import semconv as sc
from .._config import Config as _Config
from .._safety import handle_internal_errors as _handle_internal_errors
from .._safety import record_internal_error as _record_internal_error
from ..exceptions import ConfigurationError as _ConfigurationError
from . import _forksafe
from ._otlp_env import check_otlp_environment as _check_otlp_environment
from ._providers import sdk_provider as _sdk_provider
from ._providers import skip_implied as _skip_implied
from ._queue_drops import count_queue_drops as _count_queue_drops

_logger = logging.getLogger("chaperone_otel")

_BATCHING: Final = {
    # signal: (environment variables that size the SDK's batch processor, our sizes)
    "logs": (("OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"), (16_384, 1_024)),
    "traces": (("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), (8_192, 1_024)),
}
"""Queue and batch sizes of the batch processors ``configure()`` installs for OTLP.

The SDK's defaults (queue 2,048, batches of 512) drop records at a few thousand a second:
in one process running 2,000 trivial runs/s with OTLP export to ``sink serve``, half the
lifecycle records were dropped ("Queue full, dropping Log."), because each export pays a
request round trip (and, at the sink, a commit) for only 512 records. Batches of 1,024
(about 2 MiB of OTLP protobuf, a quarter of the sink's and well under a Collector's request
limits) halve those round trips, and a deeper queue absorbs bursts (about 2 KB per queued
item: 32 MiB for a full log queue, empty in steady state). Logs get the deeper queue: they
are the live channel (DESIGN §2). Setting either of a signal's ``OTEL_B*P_*`` variables
hands both sizes back to the SDK (which reads them), so the two stay consistent.
``bench/bench_burst.py`` measures it."""


def _batch_sizes(signal: str) -> tuple[int | None, int | None]:
    """(max_queue_size, max_export_batch_size) for a batch processor (None: the SDK's)."""
    names, (queue, batch) = _BATCHING[signal]
    if any(os.environ.get(name) for name in names):
        return None, None
    return queue, batch


_OTLP_SIGNALS: Final = ("traces", "logs", "metrics")


_Result = TypeVar("_Result", SpanExportResult, LogRecordExportResult, MetricExportResult)
_Exporter = TypeVar("_Exporter")


def _counted_export(
    signal: str,
    results: type[_Result],
    export: Callable[[], _Result],
    inner: object = None,
    size: int | None = None,
) -> _Result:
    """Run one export of a counting exporter (counted under ``export:<signal>s``): a raise
    is counted and becomes ``FAILURE``, a result other than ``SUCCESS`` is counted and
    returned (so the SDK still sees it). The error logged for a failed result says what
    was lost and where it was going (``inner``'s endpoint, an OTLP exporter's): a worker
    whose sink was down saw only "log export FAILURE"."""
    try:
        result = export()
    except Exception as exc:
        _record_internal_error(f"export:{signal}s", exc)
        return results.FAILURE
    if result is not results.SUCCESS:
        _record_internal_error(f"export:{signal}s", _failed(signal, result.name, inner, size))
    return result


def _failed(signal: str, result: str, inner: object, size: int | None) -> RuntimeError:
    endpoint = _without_credentials(getattr(inner, "_endpoint", None))
    what = f"a batch of {size} {signal} item(s)" if size is not None else f"a {signal} batch"
    where = f" to {endpoint}" if isinstance(endpoint, str) and endpoint else ""
    return RuntimeError(
        f"{signal} export {result}: {what} not delivered{where}, dropped. The exporter's "
        "own log line says why; an endpoint down for longer than the exporter retries (5 "
        "minutes for those configure() installs, else OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by "
        "default) loses what it was sent meanwhile"
    )


def _without_credentials(endpoint: object) -> str | None:
    """The endpoint URL as it may be logged: any ``user:password@`` dropped."""
    if not isinstance(endpoint, str) or not endpoint:
        return None
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    try:
        parts = urlsplit(endpoint)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))
    except ValueError:
        return None


def _counted_flush(signal: str, flush: Callable[[], object]) -> bool:
    """Flush a counting exporter's inner exporter; a failure is counted (under
    ``export:<signal>s``) and answers False."""
    with _handle_internal_errors(f"export:{signal}s"):
        return bool(flush())
    return False


class CountingSpanExporter(SpanExporter):
    """Wraps a span exporter so its failures (raised or returned) are counted, never raised.

    ``setup()`` wraps every exporter it installs; wrap your own the same way to see export
    failures in ``chaperone.internal.errors{where="export"}``.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failures = 0  # exports that did not succeed: flush() reports them

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = _counted_export(
            "span", SpanExportResult, lambda: self.inner.export(spans), self.inner, len(spans)
        )
        self.failures += result is not SpanExportResult.SUCCESS
        return result

    def shutdown(self) -> None:
        with _handle_internal_errors("export:spans"):
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return _counted_flush("span", lambda: self.inner.force_flush(timeout_millis))


class CountingLogExporter(LogRecordExporter):
    """The log-record twin of :class:`CountingSpanExporter`."""

    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.failures = 0

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        result = _counted_export(
            "log", LogRecordExportResult, lambda: self.inner.export(batch), self.inner, len(batch)
        )
        self.failures += result is not LogRecordExportResult.SUCCESS
        return result

    def shutdown(self) -> None:
        with _handle_internal_errors("export:logs"):
            self.inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return _counted_flush("log", lambda: self.inner.force_flush(timeout_millis))


def _ours(item: Any) -> bool:
    """A span or log record of chaperone-otel's own instrumentation scope."""
    scope = getattr(item, "instrumentation_scope", None)
    return getattr(scope, "name", None) == sc.INSTRUMENTATION_SCOPE


class _OwnSpansPrinted(SimpleSpanProcessor):
    """``console=True``'s span printer: chaperone-otel's own spans only. On the
    application's provider it printed every span of the whole application."""

    def on_end(self, span: ReadableSpan) -> None:
        if _ours(span):
            super().on_end(span)


class _OwnRecordsPrinted(SimpleLogRecordProcessor):
    """``console=True``'s record printer: chaperone-otel's lifecycle records only."""

    def on_emit(self, log_record: Any) -> None:
        if _ours(log_record):
            super().on_emit(log_record)


class CountingMetricExporter(MetricExporter):
    """The metric twin of :class:`CountingSpanExporter`. Keeps the inner exporter's
    preferred temporality and aggregation (the periodic reader reads them from its
    exporter: OTLP's delta/cumulative choice must survive the wrapping)."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self.failures = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = _counted_export(
            "metric",
            MetricExportResult,
            lambda: self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
            self.inner,
        )
        self.failures += result is not MetricExportResult.SUCCESS
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with _handle_internal_errors("export:metrics"):
            self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return _counted_flush("metric", lambda: self.inner.force_flush(timeout_millis))


@dataclass
class Setup:
    """What :func:`setup` installed, so :func:`teardown` can flush and remove exactly that.

    Attributes:
        tracer_provider: the SDK tracer provider in use.
        logger_provider: the SDK logger provider in use.
        meter_provider: the SDK meter provider in use (None if the app's could not take
            our readers).
        prometheus_url: ``http://127.0.0.1:PORT/metrics`` when the endpoint is served.
        sink: the embedded sink listener, when ``sink=`` was configured.
    """

    tracer_provider: Any = None
    logger_provider: Any = None
    meter_provider: Any = None
    prometheus_url: str | None = None
    sink: Any = None
    span_processors: list[SpanProcessor] = field(default_factory=list)
    log_processors: list[LogRecordProcessor] = field(default_factory=list)
    metric_readers: list[MetricReader] = field(default_factory=list)
    created_providers: list[Any] = field(default_factory=list)
    exporters: list[Any] = field(default_factory=list)
    """The counting exporters installed (their ``failures`` make :func:`flush` False)."""
    prometheus_server: Any = None
    pid: int = field(default_factory=os.getpid)
    """The process that installed all this (a forked child inherits the object)."""

    def counted(self, exporter: _Exporter) -> _Exporter:
        """Keep ``exporter`` (a counting one) for :func:`flush`; returns it."""
        self.exporters.append(exporter)
        return exporter


def otlp_signals(config: _Config) -> frozenset[str]:
    """The signals (``traces``, ``logs``, ``metrics``) exported over OTLP: all of them when
    asked for (``otlp=True``) or ``otlp_endpoint`` is set; else, from the environment, all
    when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, otherwise each signal whose own endpoint
    variable is set (``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` …), less those whose standard
    exporter variable names no ``otlp`` (``OTEL_TRACES_EXPORTER=none``). A signal with no
    endpoint anywhere would go to the SDK's default, ``localhost:4318``, where nothing may
    listen: not exported."""
    if config.otlp is not None:
        return frozenset(_OTLP_SIGNALS) if config.otlp else frozenset()
    if config.otlp_endpoint:
        return frozenset(_OTLP_SIGNALS)
    every = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return frozenset(
        signal
        for signal in _OTLP_SIGNALS
        if (every or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))
        and _otlp_allowed(f"OTEL_{signal.upper()}_EXPORTER")
    )


def _otlp_allowed(variable: str) -> bool:
    """The standard exporter variable ``variable`` is unset or names ``otlp`` among its
    exporters (``none``, ``console``: the signal is not exported over OTLP)."""
    value = os.environ.get(variable, "").strip()
    return not value or "otlp" in {part.strip().lower() for part in value.split(",")}


def otlp_enabled(config: _Config) -> bool:
    """OTLP export is on for at least one signal (see :func:`otlp_signals`)."""
    return bool(otlp_signals(config))


def _endpoint(config: _Config, signal: str) -> str | None:
    if not config.otlp_endpoint:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_* itself
    return config.otlp_endpoint.rstrip("/") + f"/v1/{signal}"


def _resource(config: _Config) -> Resource:
    """The resource of the providers ``configure()`` creates: the service and this process
    (OTel's resource conventions), which lifecycle log records then need not repeat."""
    attrs: dict[str, Any] = {sc.ATTR_SERVICE_INSTANCE_ID: _process.instance_id}
    if config.service_name:
        attrs[sc.ATTR_SERVICE_NAME] = config.service_name
    process = Resource({sc.ATTR_HOST_NAME: _process.HOST, sc.ATTR_PROCESS_PID: os.getpid()})
    # Merges OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, which win over our host and pid.
    return process.merge(Resource.create(attrs))


def setup(config: _Config) -> Setup:
    """Install exporters for ``config``; returns handles for :func:`teardown`.

    Raises:
        ConfigurationError: ``/metrics`` cannot be served where asked (a busy port, an
            address not of this host); what was installed before is removed.
    """
    out = Setup()
    try:
        _install(config, out)
    except BaseException:
        teardown(out)  # no processor left on the providers by a configure() that failed
        raise
    return out


def _install(config: _Config, out: Setup) -> None:
    resource = _resource(config)
    tp = config.tracer_provider or trace.get_tracer_provider()
    lp = config.logger_provider or _logs.get_logger_provider()
    mp = config.meter_provider or metrics.get_meter_provider()
    otlp = _skip_implied(config, otlp_signals(config), {"traces": tp, "logs": lp, "metrics": mp})
    refused = {  # an explicit provider that is not the SDK's takes no exporter (below)
        signal
        for signal, given, sdk in (
            ("traces", config.tracer_provider, TracerProvider),
            ("logs", config.logger_provider, LoggerProvider),
            ("metrics", config.meter_provider, MeterProvider),
        )
        if given is not None and not isinstance(given, sdk)
    }
    _check_otlp_environment(config, otlp - refused)  # before anything is installed
    if otlp:
        _forksafe.preload()  # before any exporter thread starts (a fork would hang)
    # A provider is created (and installed as the global) only for a signal something here
    # exports: a store-only configure() left the application unable to install its own
    # (the SDK allows one global per process) and took its telemetry over. An explicit
    # provider that is not the SDK's (a NoOpTracerProvider) takes nothing.

    # Traces.
    console = {"traces", "logs"} if config.console else set()
    wanted = "traces" in otlp or "traces" in console
    tp, usable = _sdk_provider(
        "traces", tp, config.tracer_provider, wanted, resource, out.created_providers
    )
    if not usable:
        otlp, console = otlp - {"traces"}, console - {"traces"}
    out.tracer_provider = tp
    if "traces" in otlp:
        from ._otlp_http import otlp_span_exporter  # noqa: PLC0415

        queue, batch = _batch_sizes("traces")
        out.span_processors.append(
            BatchSpanProcessor(
                out.counted(
                    CountingSpanExporter(
                        otlp_span_exporter(
                            endpoint=_endpoint(config, "traces"),
                            session=_forksafe.session("traces"),
                        )
                    )
                ),
                max_queue_size=queue,
                max_export_batch_size=batch,
            )
        )
        _count_queue_drops(out.span_processors[-1], "spans")
    if "traces" in console:
        out.span_processors.append(_OwnSpansPrinted(CountingSpanExporter(ConsoleSpanExporter())))
    for sp in out.span_processors:
        tp.add_span_processor(sp)  # an SDK provider whenever there is a processor

    # Logs (the live lifecycle channel).
    wanted = "logs" in otlp or "logs" in console
    lp, usable = _sdk_provider(
        "logs", lp, config.logger_provider, wanted, resource, out.created_providers
    )
    if not usable:
        otlp, console = otlp - {"logs"}, console - {"logs"}
    out.logger_provider = lp
    if "logs" in otlp:
        from ._fast_logs import LifecycleLogProcessor, pipeline_supported  # noqa: PLC0415
        from ._otlp_http import otlp_log_exporter  # noqa: PLC0415

        queue, batch = _batch_sizes("logs")
        log_exporter = otlp_log_exporter(
            endpoint=_endpoint(config, "logs"), session=_forksafe.session("logs")
        )
        # The SDK's batch processor, which also takes chaperone's lifecycle records
        # directly when its exporter encodes them (``_fast_logs``).
        out.log_processors.append(
            LifecycleLogProcessor(
                out.counted(CountingLogExporter(log_exporter)),
                # Asked here, on configure()'s thread: checking the SDK's pipeline reads
                # its source files, too slow for a first run's job thread.
                takes_light_records=getattr(log_exporter, "takes_light_records", False) is True
                and pipeline_supported(),
                max_queue_size=queue,
                max_export_batch_size=batch,
            )
        )
        _count_queue_drops(out.log_processors[-1], "logs")
    if "logs" in console:
        out.log_processors.append(
            _OwnRecordsPrinted(CountingLogExporter(ConsoleLogRecordExporter()))
        )
    for lproc in out.log_processors:
        lp.add_log_record_processor(lproc)  # an SDK provider whenever there is one

    # Metrics.
    readers: list[MetricReader] = []
    if "metrics" in otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter,
        )

        readers.append(
            PeriodicExportingMetricReader(
                out.counted(
                    CountingMetricExporter(
                        OTLPMetricExporter(
                            endpoint=_endpoint(config, "metrics"),
                            session=_forksafe.session("metrics"),
                        )
                    )
                )
            )
        )
    # Readers are added, not passed to the constructor, so teardown can remove them (a
    # constructor reader is shut down again by the provider at exit).
    wanted = bool(readers) or config.prometheus_port is not None
    mp, _ = _sdk_provider(
        "metrics", mp, config.meter_provider, wanted, resource, out.created_providers
    )
    add_reader = getattr(mp, "add_metric_reader", None)
    for reader in readers:
        if add_reader is None:
            _logger.warning(
                "the application's MeterProvider cannot take new readers; "
                "add chaperone-otel's readers when you create it"
            )
            break
        add_reader(reader)
        _forksafe.track_metric_reader(reader)
        out.metric_readers.append(reader)
    out.meter_provider = mp
    if config.prometheus_port is not None:
        _prometheus_reader(mp)
        out.prometheus_server, out.prometheus_url = _serve_prometheus(
            config.prometheus_host, config.prometheus_port
        )

    if config.sink:
        try:
            from ._sink import install_sink  # noqa: PLC0415
        except ImportError as e:  # e.g. a pyarrow that refuses this environment's numpy
            raise _ConfigurationError(
                f"sink={str(config.sink)!r}: the embedded job store cannot be loaded: {e}. "
                "Its dependencies (duckdb, pyarrow and what they import) must import in "
                "this environment"
            ) from e

        # What `sink serve` stores from an OTLP sender's resource, stored here too: the
        # service of configure(service_name=), else of OTEL_SERVICE_NAME /
        # OTEL_RESOURCE_ATTRIBUTES, else of the application's own logger provider. (A
        # provider set by an earlier configure() keeps its first resource: not asked first.)
        provider_resource = getattr(getattr(lp, "resource", None), "attributes", None) or {}
        candidates = (
            config.service_name,
            resource.attributes.get(sc.ATTR_SERVICE_NAME),
            provider_resource.get(sc.ATTR_SERVICE_NAME),
        )
        service = next(
            (
                name
                for name in candidates
                if isinstance(name, str) and name and not name.startswith("unknown_service")
            ),
            None,
        )
        out.sink = install_sink(config.sink, service_name=service)


_prometheus_readers: dict[int, tuple[Any, Any]] = {}


def _prometheus_reader(provider: Any) -> Any:
    """The provider's Prometheus reader, made and registered once per provider.

    What prometheus_client's default registry (the one ``/metrics`` serves) holds is the
    reader's :class:`~._prometheus.WorkerCollector`, which serves the live-run gauges from
    the live runs and everything else from the reader. It lives for the life of the
    provider: a second ``configure()`` only moves the HTTP server (readers cannot be removed
    from a provider; the provider's shutdown at exit shuts the reader down).
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415

    from ._prometheus import WorkerMetricReader  # noqa: PLC0415

    found = _prometheus_readers.get(id(provider))
    if found is not None and found[0] is provider:
        return found[1]
    add_reader = getattr(provider, "add_metric_reader", None)
    if add_reader is None:
        raise _ConfigurationError(
            "prometheus_port needs an SDK MeterProvider that accepts readers "
            "(the SDK's MeterProvider), or pass no meter_provider"
        )
    theirs = [
        r
        for r in getattr(provider, "_metric_readers", ())  # the SDK's list (private: read only)
        if isinstance(r, PrometheusMetricReader) and not isinstance(r, WorkerMetricReader)
    ]
    if theirs:
        # Its collector, in prometheus_client's registry, serves every metric of the
        # provider, chaperone-otel's included: a second one made each family appear twice
        # (an invalid exposition) on both endpoints.
        raise _ConfigurationError(
            "prometheus_port: the application's MeterProvider already has a "
            "PrometheusMetricReader, which serves chaperone-otel's metrics with its own; "
            "scrape the application's endpoint and drop prometheus_port (or "
            "CHAPERONE_OTEL_PROMETHEUS_PORT)"
        )
    reader = WorkerMetricReader(provider)
    add_reader(reader)
    _prometheus_readers[id(provider)] = (provider, reader)
    return reader


_PROMETHEUS_POLL: Final = 0.05
"""How often the Prometheus server's loop looks for a shutdown request, in seconds: what
``shutdown()`` waits for at most (prometheus_client's ``start_http_server`` polls every
0.5 s, so each ``shutdown()`` with ``prometheus_port`` took up to half a second)."""


def _prometheus_error(host: str, port: int, error: OSError) -> _ConfigurationError:
    return _ConfigurationError(
        f"cannot serve /metrics on {host}:{port} (prometheus_host, prometheus_port; "
        f"CHAPERONE_OTEL_PROMETHEUS_HOST/PORT): {error.strerror or error}. Choose a free port "
        "(0 picks one) and an address of this host"
    )


def _serve_prometheus(host: str, port: int) -> tuple[Any, str]:
    """The ``/metrics`` app (prometheus_client's exposition, content negotiation and gzip,
    the live-run sample lines written by :mod:`._exposition`) on a threading stdlib server,
    as ``start_http_server`` does, but polled every :data:`_PROMETHEUS_POLL`, so that
    :func:`teardown` does not wait half a second."""
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415
    from socketserver import ThreadingMixIn  # noqa: PLC0415
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # noqa: PLC0415

    from ._exposition import make_app  # noqa: PLC0415

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise _prometheus_error(host, port, error) from error
    family, _type, _proto, _name, sockaddr = info[0]

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log on the application's stderr."""

    try:
        server = make_server(str(sockaddr[0]), port, make_app(), _Server, handler_class=_Quiet)
    except OSError as error:  # in use, not an address of this host, not permitted
        raise _prometheus_error(host, port, error) from error
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _PROMETHEUS_POLL},
        name="chaperone-otel-prometheus",
        daemon=True,
    ).start()
    bound = server.server_port
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{bound}/metrics"


def teardown(state: Setup) -> None:
    """Flush and remove what :func:`setup` installed. Never raises.

    In a forked child (``shutdown()`` at its exit, or its own ``configure()``) the embedded
    sink and the Prometheus server are the parent's, with no thread of theirs in the child:
    closing the store there would checkpoint the parent's DuckDB file from a stale copy (and
    crash), and ``server.shutdown()`` would wait for ever for a serving loop that does not
    exist. The child lets go of them and flushes only its own SDK processors (which the SDK
    restarts after fork).
    """
    inherited = state.pid != os.getpid()
    with _handle_internal_errors("teardown.exporters"):
        # A batch held for an endpoint that is down gets one last try, not minutes.
        from ._otlp_http import stop_waiting  # noqa: PLC0415

        stop_waiting()
    with _handle_internal_errors("teardown.sink"):
        if state.sink is not None:
            state.sink.close()
    for sp in state.span_processors:
        with _handle_internal_errors("teardown.span"):
            sp.force_flush()
            sp.shutdown()
            _remove_span_processor(state.tracer_provider, sp)
    for lproc in state.log_processors:
        with _handle_internal_errors("teardown.log"):
            lproc.force_flush()
            lproc.shutdown()
            _remove_log_processor(state.logger_provider, lproc)
    remove_reader = getattr(state.meter_provider, "remove_metric_reader", None)
    for reader in state.metric_readers:
        with _handle_internal_errors("teardown.metrics"):
            reader.force_flush()
            if remove_reader is not None:
                # The SDK detaches the reader before shutting it down, and the shutdown's
                # final collect then logs "Cannot call collect on a MetricReader until it is
                # registered": noise after the flush above, so it is filtered out here.
                with _dropping(_SDK_METRICS_EXPORT_LOGGER, _UNREGISTERED_COLLECT):
                    remove_reader(reader)  # detaches and shuts it down, once
            else:
                reader.shutdown()
    # Providers we installed as the OTel globals are flushed, never shut down: a global can
    # be set only once per process, so a shut-down one would silently drop every span, log
    # and metric after a second configure() (the next setup() adds to them instead). The
    # SDK shuts them down itself at exit.
    with _handle_internal_errors("teardown.providers"):
        for provider in state.created_providers:
            provider.force_flush()
    if state.prometheus_server is not None:
        with _handle_internal_errors("teardown.prometheus"):
            if not inherited:
                state.prometheus_server.shutdown()
            state.prometheus_server.server_close()  # the child closes only its copy of the fd


def flush(state: Setup, deadline: float) -> bool:
    """Flush what :func:`setup` installed by ``deadline`` (``time.monotonic()``), in the
    order records travel: span and log processors (their exporters send), the embedded
    sink's writer, then the metric readers (collect and export). Never raises.

    Returns:
        True if every part reported itself flushed before ``deadline`` and no export of
        chaperone's exporters failed meanwhile (the SDK's processors report a batch the
        receiver refused, a 401, as flushed).
    """
    done = True
    failures = [exporter.failures for exporter in state.exporters]

    def millis() -> int:
        return max(0, int((deadline - time.monotonic()) * 1000))

    parts: list[tuple[str, Any]] = [("flush.span", sp) for sp in state.span_processors]
    parts += [("flush.log", lp) for lp in state.log_processors]
    for where, part in parts:
        try:
            done = bool(part.force_flush(millis())) and done
        except Exception as exc:
            _record_internal_error(where, exc)
            done = False
    if state.sink is not None:
        try:
            done = bool(state.sink.flush(millis() / 1000)) and done
        except Exception as exc:
            _record_internal_error("flush.sink", exc)
            done = False
    for reader in state.metric_readers:
        try:
            done = bool(reader.force_flush(timeout_millis=millis())) and done
        except MetricsTimeoutError:  # out of time (the SDK raises it): not flushed, no fault
            done = False
        except Exception as exc:
            _record_internal_error("flush.metrics", exc)
            done = False
    failed = any(e.failures != n for e, n in zip(state.exporters, failures, strict=True))
    return done and not failed and time.monotonic() <= deadline


_SDK_METRICS_EXPORT_LOGGER: Final = "opentelemetry.sdk.metrics._internal.export"
_UNREGISTERED_COLLECT: Final = "Cannot call collect on a MetricReader until it is registered"


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _dropping(logger_name: str, text: str) -> Iterator[None]:
    """Drop one known, harmless log message of ``logger_name`` while the block runs."""
    target = logging.getLogger(logger_name)
    dropper = _DropMessage(text)
    target.addFilter(dropper)
    try:
        yield
    finally:
        target.removeFilter(dropper)


def _remove_span_processor(provider: Any, sp: SpanProcessor) -> None:
    # The SDK has no public removal; the multi-processor keeps a tuple we can rebuild.
    multi = getattr(provider, "_active_span_processor", None)
    procs = getattr(multi, "_span_processors", None)
    if procs is not None and sp in procs:
        multi._span_processors = tuple(p for p in procs if p is not sp)  # type: ignore[union-attr]


def _remove_log_processor(provider: Any, lproc: LogRecordProcessor) -> None:
    multi = getattr(provider, "_multi_log_record_processor", None)
    procs = getattr(multi, "_log_record_processors", None)
    if procs is not None and lproc in procs:
        multi._log_record_processors = tuple(  # type: ignore[union-attr]
            p for p in procs if p is not lproc
        )


__all__ = [
    "CountingLogExporter",
    "CountingMetricExporter",
    "CountingSpanExporter",
    "Setup",
    "flush",
    "otlp_enabled",
    "otlp_signals",
    "setup",
    "teardown",
]
