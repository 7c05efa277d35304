"""What the fast OTLP/HTTP exporters share: the SDK's ``export()`` with the encoding step
replaced, and the check that the installed SDK's ``export()`` is the one it copies.

``FastOTLPLogExporter`` (:mod:`._otlp_logs`) and ``FastOTLPSpanExporter``
(:mod:`._otlp_spans`) subclass the SDK's OTLP/HTTP exporters and change one line of their
``export()``: where the request bytes come from. The SDK offers no seam for that (its
``export()`` calls a module-level ``encode_…`` function), so :func:`send` is the SDK's
``export()`` body (``opentelemetry-exporter-otlp-proto-http`` 1.45) with the encoder passed
in. A copy can silently miss a step a later SDK adds, so the fast exporters are used only
when the installed SDK's ``export()`` is, character for character, one whose body
:func:`send` was checked against (:data:`CHECKED_EXPORT_SOURCES`); with any other version
``configure()`` installs the SDK's own exporter, which encodes as before (slower, never
wrong). After an SDK upgrade, compare the new ``export()`` with :func:`send` and add its
digest (``tests/export/test_otlp_exporters.py`` prints it).

Layer: ``export``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

_logger = logging.getLogger("chaperone_otel")

CHECKED_EXPORT_SOURCES: Final = frozenset(
    {
        # opentelemetry-exporter-otlp-proto-http 1.45: OTLPLogExporter.export
        "c3f79a48d091f8870f5f6fb2e342bae9d42458b540787580fccd826070befbec",
        # ... OTLPSpanExporter.export
        "0968825cd72fb0bde91a72f0607e4e71d622816a087107f6a7053d679aa02f8e",
    }
)
"""SHA-256 of the source of the SDK ``export()`` methods :func:`send` reproduces."""

_PARTS: Final = ("_shutdown", "_metrics", "_max_request_size", "_client")
"""The SDK exporter's private attributes :func:`send` uses."""

Result = TypeVar("Result")


@functools.cache
def export_source_digest(method: Callable[..., Any]) -> str | None:
    """SHA-256 of ``method``'s source, or None when its source cannot be read."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):  # no source shipped (a frozen or compiled install)
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def fast_exporter_supported(exporter: Any, sdk_class: type[Any]) -> bool:
    """Whether ``exporter`` (a fast subclass of ``sdk_class``) can run :func:`send`: the
    SDK's ``export()`` is a checked one and the private parts it uses are there."""
    return (
        export_source_digest(sdk_class.export) in CHECKED_EXPORT_SOURCES
        and all(hasattr(exporter, name) for name in _PARTS)
        and hasattr(exporter._metrics, "export_operation")
    )


def send(
    exporter: Any,
    batch: Sequence[Any],
    encode: Callable[[Sequence[Any]], bytes],
    outcomes: tuple[Result, Result],
    what: str,
    sdk_logger: logging.Logger,
) -> Result:
    """The SDK 1.45 exporters' ``export()``, with ``encode`` making the request bytes.

    Args:
        outcomes: the export result type's (SUCCESS, FAILURE).
        what: the SDK's word for the batch in its messages (``logs`` or ``span``).
        sdk_logger: the SDK exporter module's logger, so its messages are where they were.
    """
    success, failure = outcomes
    if exporter._shutdown:
        sdk_logger.warning("Exporter already shutdown, ignoring batch")
        return failure

    # Imported here: a private module of the SDK, present in the versions send() copies.
    from opentelemetry.exporter.otlp.proto.http._common import (  # noqa: PLC0415
        RequestPayloadTooLargeError,
        _is_request_too_large,
    )

    with exporter._metrics.export_operation(len(batch)) as result:
        try:
            serialized_data = encode(batch)
        except Exception as error:  # the SDK's: a batch it cannot encode fails
            sdk_logger.error("Failed to encode %s batch: %s", what, error)
            result.error = error
            return failure

        if _is_request_too_large(serialized_data, exporter._max_request_size):
            sdk_logger.warning(
                "Dropping %s batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                what,
                len(serialized_data),
                exporter._max_request_size,
            )
            result.error = RequestPayloadTooLargeError(
                f"Serialized {what} request size {len(serialized_data)} "
                f"bytes exceeds max_request_size "
                f"{exporter._max_request_size} bytes."
            )
            return failure

        export_result = exporter._client.export(serialized_data)
        if not export_result.success:
            export_result = _patiently(exporter, serialized_data, export_result)
        if not export_result.success:
            result.error = export_result.error
            result.error_attrs = (
                {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                if export_result.status_code is not None
                else None
            )
            return failure
    return success


PATIENCE: Final = 300.0
"""Seconds an exporter ``configure()`` installs keeps a batch while its endpoint refuses
connections or answers 429/502/503/504, after the SDK's own retries (which stop within
``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default) gave up: the OTel Collector's
``retry_on_failure`` default. A sink restarted in a deployment took longer than the SDK's
~7 s, and every batch sent meanwhile was dropped. Not at exit: :func:`stop_waiting`."""
_MAX_PAUSE: Final = 30.0
"""The longest wait between two rounds of the SDK's retries (2, 4, 8 … seconds)."""
_TRANSIENT: Final = frozenset({429, 502, 503, 504})
_patient: weakref.WeakSet[Any] = weakref.WeakSet()


def be_patient(exporter: Any) -> Any:
    """Make a fast exporter keep its batch for :data:`PATIENCE` seconds (see :func:`send`);
    returns it."""
    exporter.chaperone_stop_waiting = threading.Event()
    _patient.add(exporter)
    return exporter


def stop_waiting() -> None:
    """End every patient exporter's waiting (``teardown``, at exit and before a second
    ``configure()``): a batch being held gets one last round of the SDK's retries, so a
    process does not outlive its work by minutes while its endpoint is down."""
    for exporter in list(_patient):
        event = getattr(exporter, "chaperone_stop_waiting", None)
        if event is not None:
            event.set()


def _transient(exporter: Any, result: Any) -> bool:
    """Whether a failed export may succeed later: a retryable status, or no answer at all
    (the SDK's own test, through its transport, where it has one)."""
    code = result.status_code
    if code is not None:
        return code in _TRANSIENT
    check = getattr(getattr(exporter._client, "_transport", None), "is_connection_error", None)
    return result.error is not None and (check is None or bool(check(result.error)))


def _patiently(exporter: Any, data: bytes, result: Any) -> Any:
    """Rounds of the SDK's retries of ``data``, further and further apart, until one
    succeeds, the failure is not transient, :data:`PATIENCE` is spent, or the exporter is
    told to stop waiting or shut down. Meanwhile the batch processor's queue holds the
    records that come in (it drops them only once full, as before)."""
    stop = getattr(exporter, "chaperone_stop_waiting", None)
    if stop is None or not _transient(exporter, result):
        return result
    deadline = time.monotonic() + PATIENCE
    pause = 2.0
    while not (stop.is_set() or exporter._shutdown):
        left = deadline - time.monotonic()
        if left <= 0 or stop.wait(min(pause, left)):
            break
        pause = min(pause * 2, _MAX_PAUSE)
        result = exporter._client.export(data)
        if result.success or not _transient(exporter, result):
            break
    return result


def otlp_log_exporter(**options: Any) -> Any:
    """The OTLP/HTTP log exporter ``configure()`` installs: ``FastOTLPLogExporter`` when
    the installed SDK is one it was checked against, else the SDK's ``OTLPLogExporter``."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # noqa: PLC0415
        OTLPLogExporter,
    )

    return _fast_or_sdk("._otlp_logs", "FastOTLPLogExporter", OTLPLogExporter, options)


def otlp_span_exporter(**options: Any) -> Any:
    """The OTLP/HTTP span exporter ``configure()`` installs (as :func:`otlp_log_exporter`)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return _fast_or_sdk("._otlp_spans", "FastOTLPSpanExporter", OTLPSpanExporter, options)


def _fast_or_sdk(module: str, name: str, sdk_class: type[Any], options: dict[str, Any]) -> Any:
    if export_source_digest(sdk_class.export) in CHECKED_EXPORT_SOURCES:
        import importlib  # noqa: PLC0415

        try:
            fast_class = getattr(importlib.import_module(module, __package__), name)
        except ImportError:  # a private SDK module the encoder uses is not there
            fast_class = None
        if fast_class is not None:
            exporter = fast_class(**options)
            if fast_exporter_supported(exporter, sdk_class):
                return be_patient(exporter)
            # Not shut down: its HTTP client would close the session the SDK's is given.
    _logger.debug("chaperone_otel: the SDK's %s encodes its batches", sdk_class.__name__)
    return sdk_class(**options)
