"""Python logging bridged to OTel, as an application does it: the SDK's ``LoggingHandler``
on the ``chaperone_otel`` logger, writing to an in-memory exporter."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor


@contextlib.contextmanager
def bridged_logs() -> Iterator[InMemoryLogRecordExporter]:
    """The ``chaperone_otel`` logger's lines as OTel log records (with the trace and span
    ids of the OTel context current when each was logged), in the exporter yielded."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        # Deprecated in the SDK for opentelemetry-instrumentation-logging's handler, which
        # reads the context the same way (and is not a test dependency).
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("chaperone_otel")
    logger.addHandler(handler)
    try:
        yield exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def lines(exporter: InMemoryLogRecordExporter, text: str) -> list[Any]:
    """The exported log records whose body contains ``text``."""
    return [r.log_record for r in exporter.get_finished_logs() if text in str(r.log_record.body)]
