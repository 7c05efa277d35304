"""The OTel log writer: lifecycle records become OTel log records with an event name.

This is the *live* channel of DESIGN §2. The run span is exported only when it ends, so a
hung or killed run would be invisible in spans alone; these log records are exported as
they happen (by whatever LoggerProvider the application has, or the one ``configure()``
sets up), correlated to the run span by the trace and span ids of the record's context.

Only ``opentelemetry-api`` is used (``opentelemetry._logs`` is the API's logs bridge; the
SDK implements it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from opentelemetry._logs import SeverityNumber, get_logger_provider

from .. import semconv as sc
from .._events import LifecycleRecord
from .._implied import slim
from .._safety import internal_error
from .._version import __version__

_PROCESS_ATTRIBUTES = (sc.ATTR_HOST_NAME, sc.ATTR_PROCESS_PID, sc.ATTR_SERVICE_INSTANCE_ID)
"""Per-process record attributes that OTel conventions place on the resource."""

_SEVERITY = {
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
}


class DirectEmitter(Protocol):
    """A cheaper way into a logger's pipeline that exports exactly what ``logger.emit``
    would (``export/_fast_logs.py`` has the one there is, and says when it applies)."""

    def enabled(self, *, event_name: str) -> bool:
        """The logger's ``enabled(event_name=...)``, answered the same."""

    def emit(
        self,
        timestamp: int,
        severity_number: SeverityNumber,
        severity_text: str,
        body: str,
        attributes: dict[str, Any],
        event_name: str,
        context: Any,
    ) -> bool:
        """Emit the record as ``logger.emit`` would, or answer False having done nothing
        (the caller then calls ``logger.emit``). ``attributes`` is the caller's to give
        away: it is never changed after the call."""


DirectEmitterFactory = Callable[[Any], "DirectEmitter | None"]
"""Given an OTel logger: a :class:`DirectEmitter` for it, or None (use ``logger.emit``)."""

_direct_emitters: tuple[DirectEmitterFactory, ...] = ()


def add_direct_emitter(factory: DirectEmitterFactory) -> None:
    """Offer ``factory`` to the log writers resolving their logger from now on (idempotent).

    How the export layer, which may use the SDK, gives this API-only layer a cheaper path
    into the pipelines ``configure()`` builds, without this layer importing it."""
    global _direct_emitters
    if factory not in _direct_emitters:
        _direct_emitters = (*_direct_emitters, factory)


def _direct_emitter(logger: Any) -> DirectEmitter | None:
    for factory in _direct_emitters:
        try:
            emitter = factory(logger)
        except Exception as exc:  # then the SDK's emit(), which exports the same
            internal_error("logs.direct", exc)
            continue
        if emitter is not None:
            return emitter
    return None


class LogWriter:
    """Emits lifecycle records through an OTel ``Logger`` (a part of ``OTelWriter``)."""

    def __init__(self, logger_provider: Any = None) -> None:
        self._provider = logger_provider
        self._logger: Any = None
        self._enabled: Any = None  # the logger's bound enabled(): asked twice per run
        self._direct: DirectEmitter | None = None
        self._implied: dict[str, Any] = {}

    def _get_logger(self) -> Any:
        if self._logger is None:
            provider = self._provider if self._provider is not None else get_logger_provider()
            logger = provider.get_logger(sc.INSTRUMENTATION_SCOPE, __version__)
            # What the logger's resource already says of this process (an SDK logger has
            # one; ``configure()`` puts host, pid and instance in it): a record need not
            # repeat a value its resource carries. Compared per record, so a forked child
            # whose resource still names its parent keeps its own values on its records.
            resource = getattr(getattr(logger, "resource", None), "attributes", None) or {}
            self._implied = {k: resource[k] for k in _PROCESS_ATTRIBUTES if k in resource}
            direct = _direct_emitter(logger)
            self._direct = direct
            self._enabled = logger.enabled if direct is None else direct.enabled
            self._logger = logger
        return self._logger

    def wants(self, event_name: str) -> bool:
        """Whether the logger would keep such a record (the API's ``enabled()``)."""
        enabled = self._enabled
        if enabled is None:
            self._get_logger()
            enabled = self._enabled
        return bool(enabled(event_name=event_name))

    def on_record(self, record: LifecycleRecord) -> None:
        """Emit ``record`` as a log record with ``event_name`` set.

        The logger's ``enabled()`` was asked for this record first (:meth:`wants`, through
        ``OTelWriter``; the API asks callers to check it first: building an SDK log record
        cleans every attribute even with no processor attached); records it declined never
        get here.
        """
        logger = self._get_logger()
        # The SDK validates every attribute (~0.5 us each) and its OTLP encoder spends
        # several us on each: send fewer. Left out: what the sink restores exactly
        # (``_implied``: defaults at a start, the spec on a finish) and what the
        # resource already says.
        attributes = slim(record.event_name, record.attributes, self._implied)
        timestamp = int(record.timestamp * 1e9)
        severity_number = _SEVERITY.get(record.severity, SeverityNumber.INFO)
        direct = self._direct
        if direct is not None:
            # Given away: slim() made a new dict for a started or finished record; any
            # other record's own mapping, which listeners share, is copied.
            own = dict(attributes) if attributes is record.attributes else attributes
            try:
                if type(own) is dict and direct.emit(
                    timestamp,
                    severity_number,
                    record.severity,
                    record.body,
                    own,
                    record.event_name,
                    record.context,
                ):
                    return
            except Exception as exc:  # counted; the SDK's emit() still sends the record
                internal_error("logs.direct", exc)
        kwargs: dict[str, Any] = {
            "timestamp": timestamp,
            "severity_number": severity_number,
            "severity_text": record.severity,
            "body": record.body,
            # Not copied otherwise: the SDK builds its own attribute mapping from it
            # (validated, one value at a time) and never writes to ours.
            "attributes": attributes,
            "event_name": record.event_name,
        }
        if record.context is not None:
            kwargs["context"] = record.context
        logger.emit(**kwargs)
