"""A direct way into the log pipeline ``configure()`` builds, for chaperone's own records.

Why: with OTLP export, a supervised run's two lifecycle records cost its job thread more
than the run's span. The SDK's ``Logger.emit`` (~15 us a record) builds an API
``LogRecord``, then a ``ReadWriteLogRecord`` whose ``BoundedAttributes`` cleans every
attribute one value at a time, then the batch processor shallow-copies the record into a
``ReadableLogRecord`` to queue it (issue 16 goal 2). A lifecycle record's attributes are
already clean (flat ``str``/``bool``/``int``/``float`` values under ``str`` keys), so the
cleaning cannot change them, and when the only processors are chaperone's own batch
processors whose exporter is chaperone's OTLP exporter, the intermediate objects are seen
by nobody. :class:`DirectEmitter` then puts one :class:`LightLogRecord` (the fields the
exporter encodes, already resolved) into the batch processor's queue, through the SDK's
``BatchProcessor.emit``: queue size, "Queue full" drops, batching, flushes, shutdown and
fork handling stay the SDK's.

When it applies, checked so that it cannot change what is exported (else the SDK's
``logger.emit``, the same record as before):

* the logger is the SDK's ``Logger`` on a ``SynchronousMultiLogRecordProcessor`` whose
  processors are exactly :class:`LifecycleLogProcessor` objects that take light records
  (their exporter, chaperone's ``FastOTLPLogExporter``, encodes them): checked per record
  by the identity of the processor tuple (a processor added later, a console processor, a
  user's processor: the SDK path), and the logger is enabled;
* the SDK's pieces this reproduces are, character for character, ones it was checked
  against (:data:`CHECKED_PIPELINE_SOURCES`, a SHA-256 of their source, as
  ``_otlp_http.CHECKED_EXPORT_SOURCES`` does for the exporters), and the private
  attributes it reads exist;
* the record fits the logger's ``LogRecordLimits`` (attribute count, string length), its
  keys are non-empty ``str`` and its values exact ``str``/``bool``/``int``/``float`` or
  ``None``: what ``BoundedAttributes`` keeps unchanged. Anything else (a list, an enum, a
  string the limits would cut) is emitted by the SDK, which cleans it its way.

What it produces is what the SDK path produces: the same timestamps (the observed one
taken at emit, as ``LogRecord`` does), severity, body, attributes in order, event name,
trace and span ids and flags (from the record's context, else the current one), resource
and scope; ``tests/export/test_fast_logs.py`` sends the same real runs' records both ways
to a local HTTP receiver and requires identical request bodies. A batch the fast encoder
does not write goes to the SDK's encoder, which gets real ``ReadableLogRecord`` objects
(:meth:`LightLogRecord.readable`).

Layer: ``export``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from time import time_ns
from typing import Any, Final

from opentelemetry import _logs as _api_logs
from opentelemetry._logs import SeverityNumber
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context, get_current
from opentelemetry.sdk._logs import (
    Logger,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
    SynchronousMultiLogRecordProcessor,
)
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.trace import get_current_span

from .._otel._logs import add_direct_emitter
from .._safety import internal_error

CHECKED_PIPELINE_SOURCES: Final = frozenset(
    {
        # opentelemetry-api and opentelemetry-sdk 1.45
        "6de2bef84fd379ef91bc378e7264269b7ee9945fb348c9fcf4f2bf019eeb5259",
    }
)
"""SHA-256 of the source of the SDK pieces :class:`DirectEmitter` reproduces
(:func:`pipeline_digest`)."""


def _pieces() -> tuple[Any, ...]:
    """What the direct path stands in for or relies on, in the SDK and the API: building
    the record (``Logger.emit``, the API ``LogRecord``, the exception merge), cleaning its
    attributes (``BoundedAttributes``), handing it to the processors and queueing it, the
    ``enabled()`` answer, and what the exporter reads of a queued record."""
    from opentelemetry.attributes import _clean_attribute_value  # noqa: PLC0415
    from opentelemetry.sdk._logs._internal import _exceptions  # noqa: PLC0415
    from opentelemetry.sdk._shared_internal import BatchProcessor  # noqa: PLC0415

    return (
        _api_logs.LogRecord.__init__,
        Logger.emit,
        Logger.enabled,
        Logger._is_enabled,
        _exceptions._create_log_record_with_exception,
        _exceptions._get_attributes_with_exception,
        ReadWriteLogRecord.__post_init__,
        ReadWriteLogRecord._from_api_log_record,
        BoundedAttributes.__init__,
        BoundedAttributes._set_items,
        BoundedAttributes._setitem_locked,
        _clean_attribute_value,
        SynchronousMultiLogRecordProcessor.on_emit,
        SynchronousMultiLogRecordProcessor.enabled,
        LogRecordProcessor.enabled,
        BatchLogRecordProcessor.on_emit,
        BatchProcessor.emit,
        ReadableLogRecord,
        get_current_span,
    )


_digested: tuple[Any, ...] = ()
"""The piece objects :func:`pipeline_digest` read (compared by identity later: a piece
wrapped or replaced after the digest was taken is not the piece that was checked)."""


@functools.cache
def pipeline_digest() -> str | None:
    """SHA-256 of the sources of :func:`_pieces`, or None when one cannot be read or is a
    wrapper (``inspect.getsource`` reads through ``functools.wraps`` to the wrapped
    function, so a wrapped ``Logger.emit`` would hash as the SDK's own)."""
    global _digested
    digest = hashlib.sha256()
    try:
        pieces = _pieces()
        if any(hasattr(piece, "__wrapped__") for piece in pieces):
            return None
        for piece in pieces:
            digest.update(inspect.getsource(piece).encode())
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    _digested = pieces
    return digest.hexdigest()


def _pieces_unchanged() -> bool:
    """Whether every piece is still the object that was digested (none patched since)."""
    try:
        pieces = _pieces()
    except (ImportError, AttributeError):
        return False
    # ``==``: a classmethod piece is a new bound method at each lookup, equal while its
    # function is the same; a function or a class is equal only to itself.
    return len(pieces) == len(_digested) and all(
        a == b for a, b in zip(pieces, _digested, strict=True)
    )


def pipeline_supported() -> bool:
    """Whether the installed SDK's log pipeline is one the direct path was checked against,
    unpatched since (and :class:`LifecycleLogProcessor` takes records and answers
    ``enabled()`` as the pieces checked say).

    Called by ``configure()`` when it installs the processor, so the digest (reading ~19
    pieces' source files) is taken then, not on the first run's job thread.
    """
    return (
        pipeline_digest() in CHECKED_PIPELINE_SOURCES
        and _pieces_unchanged()
        and LifecycleLogProcessor.on_emit is BatchLogRecordProcessor.on_emit
        and LifecycleLogProcessor.enabled is LogRecordProcessor.enabled
    )


_SDK_EMIT: Final = Logger.emit
"""The SDK's ``Logger.emit`` as imported: the direct path stands in for this one only (a
wrapper an application or an instrumentation puts on it later must see every record)."""
_SDK_ENABLED: Final = Logger.enabled
"""The SDK's ``Logger.enabled`` as imported (the same, for a wrapper deciding what is kept)."""


class LightLogRecord:
    """A queued lifecycle record: what the OTLP exporter encodes of a ``ReadableLogRecord``
    (its ``log_record`` is itself), resolved at emit. Read-only by convention."""

    __slots__ = (
        "attributes",
        "body",
        "event_name",
        "instrumentation_scope",
        "limits",
        "observed_timestamp",
        "resource",
        "severity_number",
        "severity_text",
        "span_id",
        "timestamp",
        "trace_flags",
        "trace_id",
    )

    dropped_attributes: Final = 0
    """Never any: a record the limits would cut takes the SDK's path."""

    def __init__(
        self,
        timestamp: int,
        observed_timestamp: int,
        severity_number: SeverityNumber,
        severity_text: str,
        body: Any,
        attributes: dict[str, Any],
        event_name: str,
        span_context: Any,
        resource: Any,
        instrumentation_scope: Any,
        limits: Any,
    ) -> None:
        self.timestamp = timestamp
        self.observed_timestamp = observed_timestamp
        self.severity_number = severity_number
        self.severity_text = severity_text
        self.body = body
        self.attributes = attributes
        self.event_name = event_name
        self.trace_id = span_context.trace_id
        self.span_id = span_context.span_id
        self.trace_flags = span_context.trace_flags
        self.resource = resource
        self.instrumentation_scope = instrumentation_scope
        self.limits = limits

    @property
    def log_record(self) -> LightLogRecord:
        return self

    def readable(self) -> ReadableLogRecord:
        """The ``ReadableLogRecord`` the SDK path queues for this record (for anything but
        chaperone's encoder: the SDK's encoder of an odd batch)."""
        record = _api_logs.LogRecord(
            timestamp=self.timestamp,
            observed_timestamp=self.observed_timestamp,
            context=Context(),
            severity_text=self.severity_text,
            severity_number=self.severity_number,
            body=self.body,
            attributes=BoundedAttributes(
                maxlen=self.limits.max_log_record_attributes,
                attributes=self.attributes,
                immutable=False,
                max_value_len=self.limits.max_log_record_attribute_length,
            ),
            event_name=self.event_name,
        )
        # As the SDK copies a record: ids set after (the empty context names no span).
        record.trace_id = self.trace_id
        record.span_id = self.span_id
        record.trace_flags = self.trace_flags
        return ReadableLogRecord(
            log_record=record,
            resource=self.resource,
            instrumentation_scope=self.instrumentation_scope,
            limits=self.limits,
        )


def readable(batch: Any) -> list[Any]:
    """``batch`` with every :class:`LightLogRecord` made a ``ReadableLogRecord``."""
    return [r.readable() if type(r) is LightLogRecord else r for r in batch]


class LifecycleLogProcessor(BatchLogRecordProcessor):
    """The SDK's ``BatchLogRecordProcessor`` as ``configure()`` installs it for OTLP: the
    same, plus a direct entry for chaperone's lifecycle records when its exporter encodes
    :class:`LightLogRecord` objects (``takes_light_records``: chaperone's OTLP exporter).
    """

    def __init__(
        self, exporter: LogRecordExporter, *, takes_light_records: bool, **options: Any
    ) -> None:
        super().__init__(exporter, **options)
        self.takes_light_records = takes_light_records


_SCALARS: Final = frozenset({str, bool, int, float, type(None)})
"""The value types ``BoundedAttributes`` keeps as they are (strings within the limit), and
that cannot change after the record is queued."""
_STR: Final = frozenset({str})


class DirectEmitter:
    """Emits lifecycle records into ``logger``'s pipeline as ``logger.emit`` would, when
    that pipeline is only chaperone's (see the module doc); otherwise declines (False)."""

    __slots__ = ("_logger", "_multi", "_verdict")

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._multi = logger._multi_log_record_processor
        # The processor tuple last judged, and the emit() of its processors' batch
        # processors (None: not only chaperone's). One attribute, read in one step, so a
        # thread never pairs one tuple with another's targets.
        self._verdict: tuple[Any, tuple[Any, ...] | None] = (None, None)

    def _targets(self, processors: Any) -> tuple[Any, ...] | None:
        """Where a light record goes for ``processors`` (the logger's processor tuple):
        their batch processors' ``emit``, or None unless all are chaperone's and take light
        records. Judged once per tuple (the SDK replaces the tuple when one is added),
        and None at once whenever ``Logger.emit`` or ``enabled`` is no longer the SDK's
        checked one (wrapped or replaced on the class or on this logger, at any time): what
        wraps them must see every record."""
        if (
            Logger.emit is not _SDK_EMIT
            or Logger.enabled is not _SDK_ENABLED
            or "emit" in (own := self._logger.__dict__)
            or "enabled" in own
        ):
            return None
        judged, targets = self._verdict
        if processors is judged:
            return targets
        targets = None
        if (
            type(processors) is tuple
            and processors
            and _pieces_unchanged()
            and all(
                type(p) is LifecycleLogProcessor
                and p.takes_light_records is True
                and "on_emit" not in vars(p)
                and callable(getattr(getattr(p, "_batch_processor", None), "emit", None))
                for p in processors
            )
        ):
            targets = tuple(p._batch_processor.emit for p in processors)
        self._verdict = (processors, targets)
        return targets

    def enabled(self, *, event_name: str) -> bool:
        """``logger.enabled(event_name=...)``: chaperone's processors want every record.

        Never raises for the direct path's sake: should reading the SDK's private state
        fail, the error is counted and the logger's own ``enabled()`` answers (the record
        then takes the SDK's path, as :meth:`emit` falls back)."""
        logger = self._logger
        try:
            if self._targets(self._multi._log_record_processors) is not None:
                return bool(logger._logger_config.is_enabled)
        except Exception as exc:
            internal_error("logs.direct", exc)
        return bool(logger.enabled(event_name=event_name))

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
        """Queue the record as a :class:`LightLogRecord`, or answer False (nothing done)."""
        logger = self._logger
        targets = self._targets(self._multi._log_record_processors)
        if targets is None or not logger._logger_config.is_enabled:
            return False
        limits = logger._log_record_limits
        most = limits.max_log_record_attributes
        if most is not None and len(attributes) > most:
            return False
        values = attributes.values()
        if not _SCALARS.issuperset(map(type, values)):
            return False
        if "" in attributes or not _STR.issuperset(map(type, attributes)):
            return False
        longest = limits.max_log_record_attribute_length
        if longest is not None and any(type(v) is str and len(v) > longest for v in values):
            return False
        resource = logger._resource
        if resource is None:
            return False
        if not context:  # as the API's LogRecord: no context (or an empty one), the current
            context = get_current()
        record = LightLogRecord(
            timestamp,
            time_ns(),
            severity_number,
            severity_text,
            body,
            attributes,
            event_name,
            get_current_span(context).get_span_context(),
            resource,
            logger._instrumentation_scope,
            limits,
        )
        logger._logger_metrics.emit_log()
        for emit in targets:
            emit(record)
        return True


_PARTS: Final = (
    "_multi_log_record_processor",
    "_logger_config",
    "_log_record_limits",
    "_resource",
    "_instrumentation_scope",
    "_logger_metrics",
)
"""The SDK logger's private attributes :class:`DirectEmitter` reads."""


def direct_emitter(logger: Any) -> DirectEmitter | None:
    """A :class:`DirectEmitter` for ``logger`` when it is an SDK logger of a checked SDK
    version whose processors can be chaperone's, else None (``logger.emit`` it is)."""
    if type(logger) is not Logger or not all(hasattr(logger, name) for name in _PARTS):
        return None
    multi = logger._multi_log_record_processor
    if type(multi) is not SynchronousMultiLogRecordProcessor:
        return None
    if not hasattr(multi, "_log_record_processors") or not pipeline_supported():
        return None
    return DirectEmitter(logger)


add_direct_emitter(direct_emitter)
