"""Which OTel providers ``configure()`` writes through, and the ones it creates.

The application's own SDK providers are used as they are (processors and readers added);
a provider is created, and installed as the OTel global, only for a signal something in
``configure()`` exports (:func:`sdk_provider`); and an OTLP exporter that only the
environment implies is not added to the application's providers, whose own pipeline
exports chaperone-otel's telemetry (:func:`skip_implied`). The providers created here get
no attribute limits: a record or span cut by ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` names
another run (``testing.Capture`` gives its own providers the same limits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from .._config import Config as _Config

_logger = logging.getLogger("chaperone_otel")

_created_here: list[Any] = []
"""The providers ``configure()`` created and installed as the OTel globals: a later
``configure()`` finds them as the globals, and must not take them for the application's."""


def _the_applications(provider: Any) -> bool:
    """``provider`` is an SDK provider the application set up (not one of ours)."""
    sdk = isinstance(provider, (TracerProvider, LoggerProvider, MeterProvider))
    return sdk and not any(provider is ours for ours in _created_here)


def skip_implied(
    config: _Config, otlp: frozenset[str], providers: dict[str, Any]
) -> frozenset[str]:
    """``otlp`` without the signals that only the environment asks for and whose provider
    is the application's own: its own pipeline (``opentelemetry-instrument``, an SDK set up
    from the same ``OTEL_EXPORTER_OTLP_*`` variables) exports chaperone's spans, records and
    metrics already; a processor of ours beside it sent every span, record and metric of the
    whole application twice. ``otlp=True`` or ``otlp_endpoint`` still add ours."""
    if config.otlp is not None or config.otlp_endpoint:
        return otlp
    skipped = {signal for signal in otlp if _the_applications(providers[signal])}
    if skipped:
        _logger.info(
            "chaperone-otel: OTEL_EXPORTER_OTLP_* is set and the application has its own "
            "OTel providers for %s: chaperone-otel's telemetry goes through their exporters "
            "(configure(otlp=True) adds chaperone-otel's own)",
            ", ".join(sorted(skipped)),
        )
    return otlp - skipped


def no_record_limits() -> LogRecordLimits:
    """The limits of the ``LoggerProvider`` ``configure()`` creates (and a test capture's):
    none, whatever ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` / ``OTEL_*ATTRIBUTE_COUNT_LIMIT``
    say (the SDK reads them when no limits are given). Cut, a lifecycle record's run id
    named another run, its metadata was not JSON, and past the count the SDK dropped the
    run id and name (the oldest attributes) first. The direct path (``_fast_logs``) reads
    the same limits."""
    unset = LogRecordLimits.UNSET
    return LogRecordLimits(
        max_attributes=unset,
        max_attribute_length=unset,
        max_log_record_attributes=unset,
        max_log_record_attribute_length=unset,
    )


def no_span_limits() -> SpanLimits:
    """The span attribute limits of the ``TracerProvider`` ``configure()`` creates (and a
    test capture's): none (as :func:`no_record_limits`: a cut run id names another run).
    Events and links keep the SDK's bounds."""
    unset = SpanLimits.UNSET
    return SpanLimits(max_span_attributes=unset, max_span_attribute_length=unset)


_SDK_PROVIDERS: Final[dict[str, tuple[type[Any], Callable[[Any], None], Callable[[Any], Any]]]] = {
    "traces": (
        TracerProvider,
        trace.set_tracer_provider,
        lambda resource: TracerProvider(resource=resource, span_limits=no_span_limits()),
    ),
    "logs": (
        LoggerProvider,
        _logs.set_logger_provider,
        lambda resource: LoggerProvider(resource=resource, log_record_limits=no_record_limits()),
    ),
    "metrics": (
        MeterProvider,
        metrics.set_meter_provider,
        lambda resource: MeterProvider(resource=resource),
    ),
}
"""Per signal: the SDK's provider class, how it becomes the global, how ``configure()``
makes one."""


def sdk_provider(
    signal: str, current: Any, explicit: Any, wanted: bool, resource: Resource, created: list[Any]
) -> tuple[Any, bool]:
    """(the provider ``signal`` goes through, whether it is an SDK one that takes
    processors): ``current`` when it is; else, when something here exports ``signal``
    (``wanted``) and no provider was passed (``explicit``), a new one, installed as the
    global (and added to ``created``, what ``configure()`` made); else ``current``, taking
    nothing."""
    kind, install, make = _SDK_PROVIDERS[signal]
    if isinstance(current, kind):
        return current, True
    if not wanted or explicit is not None:
        return current, False
    provider = make(resource)
    install(provider)
    created.append(provider)
    _created_here.append(provider)
    return provider, True
