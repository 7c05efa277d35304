"""OTLP/HTTP payloads → the records the store ingests.

The sink server receives what any OTel SDK or Collector exports: ``ExportLogsServiceRequest``
and ``ExportTraceServiceRequest``, as binary protobuf (``application/x-protobuf``) or OTLP
JSON (``application/json``), optionally gzip/deflate-compressed. This module turns those
bytes into the *same* records the in-process path produces, so the store has one ingest code
path after decoding:

* a log record whose event name (the ``event_name`` field, or the older ``event.name``
  attribute) is one of :data:`chaperone_otel.semconv.LIFECYCLE_EVENTS` becomes one
  :class:`~chaperone_otel._events.LifecycleRecord`;
* a span carrying ``chaperone.job.run.id`` (a finished run span) becomes one
  :class:`~chaperone_otel.sink._records.SpanRecord` — the post-hoc view of the run
  (start/end, status, error with its stack trace) that completes what the log records said;
* everything else in the payload (other services' logs and spans) is skipped silently.

One decode path: each encoding has an *accessor* per signal (:mod:`._otlp_fields`) that only
reads fields, and one *builder* per signal here (:func:`_build_logs`, :func:`_build_spans`)
decides what is kept, ignored or rejected, adds the resource and reads the exception event,
for both encodings. A change to what a record is goes in a builder; a change to how OTLP
spells a field goes in an accessor.

Malformed input raises :class:`OTLPDecodeError` (the server answers 400); a body that
inflates past the configured limit raises :class:`PayloadTooLargeError` (413); an unknown
content type or encoding raises :class:`UnsupportedMediaTypeError` (415). Decoding is pure
(no I/O, no store), so it is unit-testable and benchmarkable on its own.

The JSON mapping follows the OTLP specification (hex ids, integer enums; see
:mod:`._otlp_fields`).

Values that can never be stored as sent (DESIGN §6: a clear status, never a retryable 503
for a payload that will not get better, and nothing acknowledged lost):

* a chaperone record whose run id or attempt cannot identify a run (run id missing, empty,
  not a string, or not valid Unicode; attempt not an integer from 1 to int32) is *rejected*:
  left out and reported through OTLP partial success (HTTP 200 with ``rejectedLogRecords`` /
  ``rejectedSpans`` and a reason; exporters do not retry it). A run id is never repaired:
  an altered id would silently file the record under another run;
* OTLP JSON strings (values, keys, bodies) may carry a lone UTF-16 surrogate escape
  (``"\\ud800"``, what JavaScript's ``JSON.stringify`` emits for a broken string), which
  ``json.loads`` accepts but UTF-8 (hence DuckDB) cannot hold: each lone surrogate is replaced
  by U+FFFD, the Unicode replacement character (the rest of the text is kept). Protobuf
  string fields with invalid UTF-8 fail the parse: 400 for the request;
* a time (``timeUnixNano`` …) that is not a valid ``fixed64`` (negative, or beyond 2^64) is
  malformed: 400 for the request;
* an ``intValue`` beyond int64 (JSON numbers have no size limit) or a NaN/infinite double is
  passed on: the store turns what its column cannot hold into NULL, counted (see
  :mod:`._records`), without touching the rest of the record.

Example::

    from chaperone_otel.sink._otlp import decode, media_type
    records = decode("logs", body, media_type("application/x-protobuf"), "gzip")
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import semconv as sc
from .._events import AttributeValue, LifecycleRecord
from ..exceptions import SinkError
from ._otlp_fields import (
    LOG_ACCESSORS,
    SPAN_ACCESSORS,
    Budget,
    LogAccessor,
    OTLPDecodeError,
    PayloadTooLargeError,
    SpanAccessor,
    budget,
)
from ._records import (
    IngestRecord,
    SpanRecord,
    record_from_span,
    record_key,
    schedule_record_ok,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_DECOMPRESSED",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_MAX_VALUES",
    "Decoded",
    "Encoding",
    "OTLPDecodeError",
    "PayloadTooLargeError",
    "Signal",
    "UnsupportedMediaTypeError",
    "decode",
    "decode_logs",
    "decode_traces",
    "decompress",
    "encode_error",
    "encode_response",
    "media_type",
]

Signal = Literal["logs", "traces"]
Encoding = Literal["protobuf", "json"]

DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
"""Largest accepted request body as sent (compressed), bytes (no more than what it may
inflate to: a larger compressed body could never pass)."""

DEFAULT_MAX_DECOMPRESSED: Final = 8 * 1024 * 1024
"""Largest accepted body after decompression, bytes (the gzip-bomb guard). It also bounds
the parse: protobuf parsing costs per message, and 8 MiB of empty messages (4 M of them)
parse in ~0.3 s of CPU (64 MiB took 9 s and 4.4 GB). An SDK batch of 512 records is ~1 MiB;
a Collector batch of 8192 chaperone records fits."""

DEFAULT_MAX_RECORDS: Final = 100_000
"""Items per request at most: records or spans, plus resource and scope groups and span
events (413 beyond). Charged from the parsed lengths before any loop walks them."""

DEFAULT_MAX_VALUES: Final = 500_000
"""Attribute values per request at most (of records, resources, events, and the elements of
array and key-value-list values; 413 beyond). A chaperone record has ~28."""

DEFAULT_MAX_ATTRIBUTES: Final = 1024
"""Attributes of one record, resource or event (and elements of one array value) at most."""

_SCHEDULE_EVENTS: Final = frozenset((sc.EVENT_SCHEDULE_DECLARED, sc.EVENT_SCHEDULE_DISPATCHED))
_LIFECYCLE: Final = frozenset((*sc.LIFECYCLE_EVENTS, *_SCHEDULE_EVENTS))
_EVENT_NAME_ATTR: Final = "event.name"  # pre-1.5 OTLP: event name as an attribute
_EXCEPTION_EVENT: Final = "exception"  # OTel span event written by record_exception()
_EXCEPTION_TYPE: Final = "exception.type"  # its attribute naming the class (ours: error.type)
_STATUS_ERROR: Final = 2  # STATUS_CODE_ERROR

_PROTOBUF_TYPES: Final = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPES: Final = frozenset({"application/json"})


class UnsupportedMediaTypeError(SinkError):
    """The content type or content encoding is not one OTLP/HTTP defines (HTTP 415)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of decoding one request.

    Attributes:
        records: lifecycle records (logs) or span records (traces), in payload order.
        ignored: log records / spans that are not chaperone's (skipped, not an error).
        rejected: chaperone-named items that could not be used (e.g. no run id); reported
            back through OTLP partial success.
        error: a short reason for ``rejected`` (empty when nothing was rejected).
    """

    records: Sequence[IngestRecord]
    ignored: int = 0
    rejected: int = 0
    error: str = ""


# --------------------------------------------------------------------------------------------
# Transport: content type and content encoding.
# --------------------------------------------------------------------------------------------


def media_type(content_type: str | None) -> Encoding:
    """The OTLP encoding of a ``Content-Type`` header value.

    Raises:
        UnsupportedMediaTypeError: not protobuf or JSON.
    """
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base in _PROTOBUF_TYPES:
        return "protobuf"
    if base in _JSON_TYPES:
        return "json"
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {content_type!r}: send application/x-protobuf or "
        "application/json"
    )


def decompress(
    body: bytes, content_encoding: str | None, *, max_size: int = DEFAULT_MAX_DECOMPRESSED
) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate) without inflating past ``max_size``.

    The inflater is fed with an output cap, so a small gzip bomb is stopped after at most
    ``max_size`` bytes of output instead of exhausting memory.

    Raises:
        PayloadTooLargeError: the inflated body would exceed ``max_size``.
        OTLPDecodeError: the compressed stream is corrupt or truncated.
        UnsupportedMediaTypeError: an encoding other than identity, gzip, deflate.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity", "none"):
        if len(body) > max_size:
            raise PayloadTooLargeError(f"body of {len(body)} bytes exceeds {max_size}")
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = 32 + zlib.MAX_WBITS  # zlib or gzip header, auto-detected (as Go's reader does)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Encoding {content_encoding!r}: use gzip, deflate or none"
        )
    out = bytearray()
    data = body
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while data:
                chunk = inflater.decompress(data, max_size + 1 - len(out))
                out += chunk
                if len(out) > max_size:
                    raise PayloadTooLargeError(f"body inflates past {max_size} bytes")
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                raise OTLPDecodeError(f"truncated {encoding} body")
            data = inflater.unused_data  # concatenated gzip members are one stream
            if not data:
                return bytes(out)
    except zlib.error as e:
        raise OTLPDecodeError(f"corrupt {encoding} body: {e}") from e


# --------------------------------------------------------------------------------------------
# One record builder per signal. The encodings differ only in how a field is read, so each
# provides an accessor (._otlp_fields); what is kept, rejected or ignored, what the resource
# adds and what the exception event says is decided here, once.
# --------------------------------------------------------------------------------------------


def _add_resource(attrs: dict[str, AttributeValue], resource: Mapping[str, Any]) -> None:
    # Records repeat host/pid/instance; the resource adds service.name (and fills gaps when a
    # Collector or another SDK moved attributes to the resource).
    for key in (
        sc.ATTR_SERVICE_NAME,
        sc.ATTR_HOST_NAME,
        sc.ATTR_PROCESS_PID,
        sc.ATTR_SERVICE_INSTANCE_ID,
    ):
        if key not in attrs and key in resource:
            attrs[key] = resource[key]


def _seconds(ns: int) -> float:
    """An OTLP time (ns) in Unix seconds; 0 (unset) is "now", when the sink heard of it."""
    return ns / 1e9 if ns else time.time()


def _build_logs(access: LogAccessor, data: bytes) -> tuple[list[LifecycleRecord], int, int]:
    """The lifecycle records of a logs request: (records, ignored, rejected)."""
    records: list[LifecycleRecord] = []
    ignored = rejected = 0
    # Bound once: this loop runs for every record of the fleet.
    attributes, event_name, ids, times = (
        access.attributes,
        access.event_name,
        access.ids,
        access.times,
    )
    severity, body = access.severity, access.body
    for get_resource, items in access.groups(data):
        resource: Mapping[str, Any] | None = None
        for item in items:
            attrs = attributes(item)
            event = event_name(item) or ""
            if not event:
                named = attrs.pop(_EVENT_NAME_ATTR, None)
                event = named if isinstance(named, str) else ""
            if not isinstance(event, str):
                raise OTLPDecodeError("eventName must be a string")
            if event not in _LIFECYCLE:
                ignored += 1
                continue
            time_ns, observed_ns = times(item)
            timestamp = _seconds(time_ns or observed_ns)
            if event in _SCHEDULE_EVENTS:
                if not schedule_record_ok(event, attrs, timestamp):
                    rejected += 1
                    continue
            elif record_key(attrs) is None:
                rejected += 1
                continue
            if resource is None:
                resource = get_resource()
            _add_resource(attrs, resource)
            trace_id, span_id = ids(item)
            records.append(
                LifecycleRecord(
                    event_name=event,
                    timestamp=timestamp,
                    attributes=attrs,
                    trace_id=trace_id,
                    span_id=span_id,
                    severity=severity(item),
                    body=body(item),
                )
            )
    return records, ignored, rejected


def _build_spans(access: SpanAccessor, data: bytes) -> tuple[list[SpanRecord], int, int]:
    """The run spans of a traces request: (records, ignored, rejected). A span is a run's
    when it carries ``chaperone.job.run.id``; the run state it tells is built by the store's
    :func:`~chaperone_otel.sink._records.record_from_span`, with what only OTLP tells here:
    the resource, the exception event and the span status."""
    records: list[SpanRecord] = []
    ignored = rejected = 0
    for get_resource, items in access.groups(data):
        resource: Mapping[str, Any] | None = None
        for item in items:
            attrs = access.attributes(item)
            if sc.ATTR_JOB_RUN_ID not in attrs:  # another service's span
                ignored += 1
                continue
            if record_key(attrs) is None:
                rejected += 1
                continue
            if resource is None:
                resource = get_resource()
            _add_resource(attrs, resource)
            exception = next(
                (
                    access.event_attributes(event)
                    for name, event in access.events(item)
                    if name == _EXCEPTION_EVENT
                ),
                None,
            )
            start_ns, end_ns = access.times(item)
            end = _seconds(end_ns)
            trace_id, span_id = access.ids(item)
            records.append(
                record_from_span(
                    attrs,
                    start_time=start_ns / 1e9 if start_ns else end,
                    end_time=end,
                    trace_id=trace_id,
                    span_id=span_id,
                    failed=access.status_code(item) == _STATUS_ERROR,
                    **_exception_fields(exception),
                )
            )
    return records, ignored, rejected


def _exception_fields(exception: Mapping[str, Any] | None) -> dict[str, Any]:
    """``record_from_span``'s error arguments from the attributes of an ``exception`` span
    event (OTel names ``exception.type``; our ``error.type`` wins when the event has both)."""
    if exception is None:
        return {}
    message = exception.get(sc.ATTR_ERROR_MESSAGE)
    trace = exception.get(sc.ATTR_ERROR_STACKTRACE)
    return {
        "error_type": exception.get(sc.ATTR_ERROR_TYPE, exception.get(_EXCEPTION_TYPE)),
        "error_message": message if isinstance(message, str) else None,
        "error_stacktrace": trace if isinstance(trace, str) else None,
    }


def _rejected_reason(rejected: int, what: str) -> str:
    if not rejected:
        return ""
    return (
        f"{rejected} chaperone {what}(s) rejected: {sc.ATTR_JOB_RUN_ID} must be a non-empty "
        f"string of valid Unicode and {sc.ATTR_JOB_ATTEMPT} an integer from 1 to 2**31 - 1; "
        f"a schedule record needs {sc.ATTR_SCHEDULE_NAME}, a valid declaration (an interval "
        "of at least 1 s) and times within years 1-9999"
    )


# --------------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _nesting_guard() -> Iterator[None]:
    try:
        yield
    except RecursionError as e:  # absurdly nested JSON/protobuf
        raise OTLPDecodeError("payload nested too deeply") from e


def decode(
    signal: Signal,
    body: bytes,
    encoding: Encoding,
    content_encoding: str | None = None,
    *,
    max_size: int = DEFAULT_MAX_DECOMPRESSED,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_values: int = DEFAULT_MAX_VALUES,
    max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
) -> Decoded:
    """Decode one OTLP/HTTP request body of ``signal``: lifecycle records from logs, span
    records from traces.

    Args:
        signal: ``logs`` or ``traces`` (the URL path).
        body: the request body as received.
        encoding: ``protobuf`` or ``json`` (see :func:`media_type`).
        content_encoding: the ``Content-Encoding`` header, if any.
        max_size: cap on the decompressed size, bytes.
        max_records: items (records or spans, groups, span events) at most.
        max_values: attribute values in total at most.
        max_attributes: attributes of one record, resource or event at most.

    Raises:
        OTLPDecodeError: malformed payload (nothing of it may be stored).
        PayloadTooLargeError: the body inflates past ``max_size``, or holds more items or
            attribute values than allowed (refused before they are walked).
        UnsupportedMediaTypeError: unknown content encoding.
    """
    data = decompress(body, content_encoding, max_size=max_size)
    token = budget().set(Budget(max_records, max_values, max_attributes))
    try:
        return _decode(signal, data, encoding)
    finally:
        budget().reset(token)


def _decode(signal: Signal, data: bytes, encoding: Encoding) -> Decoded:
    records: Sequence[IngestRecord]
    with _nesting_guard():
        if signal == "logs":
            records, ignored, rejected = _build_logs(LOG_ACCESSORS[encoding], data)
            what = "lifecycle record"
        else:
            records, ignored, rejected = _build_spans(SPAN_ACCESSORS[encoding], data)
            what = "span"
    return Decoded(records, ignored, rejected, _rejected_reason(rejected, what))


def decode_logs(
    body: bytes, encoding: Encoding = "protobuf", content_encoding: str | None = None
) -> list[LifecycleRecord]:
    """The lifecycle records in an ``ExportLogsServiceRequest`` (convenience for tests)."""
    with _nesting_guard():
        return _build_logs(LOG_ACCESSORS[encoding], decompress(body, content_encoding))[0]


def decode_traces(
    body: bytes, encoding: Encoding = "protobuf", content_encoding: str | None = None
) -> list[SpanRecord]:
    """The run spans in an ``ExportTraceServiceRequest`` (convenience for tests)."""
    with _nesting_guard():
        return _build_spans(SPAN_ACCESSORS[encoding], decompress(body, content_encoding))[0]


def encode_response(
    signal: Signal, encoding: Encoding, *, rejected: int = 0, error: str = ""
) -> bytes:
    """The OTLP success response body (``Export…ServiceResponse``), with partial success
    when some items were rejected."""
    if encoding == "json":
        if not rejected and not error:
            return b"{}"
        key = "rejectedLogRecords" if signal == "logs" else "rejectedSpans"
        return json.dumps({"partialSuccess": {key: str(rejected), "errorMessage": error}}).encode()
    if signal == "logs":
        logs = logs_service_pb2.ExportLogsServiceResponse()
        if rejected or error:
            logs.partial_success.rejected_log_records = rejected
            logs.partial_success.error_message = error
        return bytes(logs.SerializeToString())
    spans = trace_service_pb2.ExportTraceServiceResponse()
    if rejected or error:
        spans.partial_success.rejected_spans = rejected
        spans.partial_success.error_message = error
    return bytes(spans.SerializeToString())


_GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 503: 14, 500: 13}


def encode_error(status: int, message: str, encoding: Encoding) -> bytes:
    """An OTLP error body: a ``google.rpc.Status`` (as the spec asks), protobuf or JSON."""
    code = _GRPC_CODES.get(status, 2)
    if encoding == "json":
        return json.dumps({"code": code, "message": message}).encode()
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())
