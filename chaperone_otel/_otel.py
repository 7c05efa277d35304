"""The OTel log writer: lifecycle records become OTel log records with an event name.

This is the *live* channel of DESIGN §2. The run span is exported only when it ends, so a
hung or killed run would be invisible in spans alone; these log records are exported as
they happen (by whatever LoggerProvider the application has, or the one ``configure()``
sets up), correlated to the run span by the trace and span ids of the record's context.

Only ``opentelemetry-api`` is used (``opentelemetry._logs`` is the API's logs bridge; the
SDK implements it).
"""

from __future__ import annotations

from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger_provider

from . import semconv as sc
from ._events import LifecycleRecord
from ._version import __version__

_SEVERITY = {
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
}


class OTelLogWriter:
    """A record listener that emits each lifecycle record through an OTel ``Logger``."""

    def __init__(self, logger_provider: Any = None) -> None:
        self._provider = logger_provider
        self._logger: Any = None
        self._enabled: Any = None  # the logger's bound enabled(): asked twice per run

    def _get_logger(self) -> Any:
        if self._logger is None:
            provider = self._provider if self._provider is not None else get_logger_provider()
            self._logger = provider.get_logger(sc.INSTRUMENTATION_SCOPE, __version__)
            self._enabled = self._logger.enabled
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

        The logger's ``enabled()`` was asked for this record by :func:`_events.receivers`
        (the API asks callers to check it first: building an SDK log record cleans every
        attribute even with no processor attached); records it declined never get here.
        """
        logger = self._get_logger()
        kwargs: dict[str, Any] = {
            "timestamp": int(record.timestamp * 1e9),
            "severity_number": _SEVERITY.get(record.severity, SeverityNumber.INFO),
            "severity_text": record.severity,
            "body": record.body,
            # Not copied: the SDK builds its own attribute mapping from it (validated, one
            # value at a time) and never writes to ours.
            "attributes": record.attributes,
            "event_name": record.event_name,
        }
        if record.context is not None:
            kwargs["context"] = record.context
        logger.emit(**kwargs)
