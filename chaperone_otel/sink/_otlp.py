"""OTLP/HTTP payloads → :class:`~chaperone_otel._events.LifecycleRecord` objects.

The sink server receives what any OTel SDK or Collector exports: ``ExportLogsServiceRequest``
and ``ExportTraceServiceRequest``, as binary protobuf (``application/x-protobuf``) or OTLP
JSON (``application/json``), optionally gzip/deflate-compressed. This module turns those
bytes into the *same* lifecycle records the in-process path publishes, so the store has one
ingest code path after decoding:

* a log record whose event name (the ``event_name`` field, or the older ``event.name``
  attribute) is one of :data:`chaperone_otel.semconv.LIFECYCLE_EVENTS` becomes one record;
* a span carrying ``chaperone.job.run.id`` (a finished run span) becomes one
  ``chaperone.job.finished`` record flagged with
  :data:`~chaperone_otel.sink._records.SPAN_FLAG` — the post-hoc view of the run (start/end,
  status, error with its stack trace) that completes what the log records said;
* everything else in the payload (other services' logs and spans) is skipped silently.

Malformed input raises :class:`OTLPDecodeError` (the server answers 400); a body that
inflates past the configured limit raises :class:`PayloadTooLargeError` (413); an unknown
content type or encoding raises :class:`UnsupportedMediaTypeError` (415). Decoding is pure
(no I/O, no store), so it is unit-testable and benchmarkable on its own.

The JSON mapping follows the OTLP specification, which departs from protobuf's canonical
JSON in two ways this decoder honours: trace and span ids are hex strings (not base64), and
enums are integers. 64-bit integers may be strings or numbers; field names are lowerCamelCase
(snake_case is accepted too, as protobuf JSON parsers do).

Values that can never be stored as sent (DESIGN §6: a clear status, never a retryable 503
for a payload that will not get better, and nothing acknowledged lost):

* a chaperone record whose run id or attempt cannot identify a run (run id missing, empty,
  not a string, or not valid Unicode; attempt not an integer in int32) is *rejected*: left out
  and reported through OTLP partial success (HTTP 200 with ``rejectedLogRecords`` /
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

import base64
import json
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import semconv as sc
from .._events import AttributeValue, LifecycleRecord
from ..exceptions import SinkError
from ._records import record_from_span, record_key, text

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_DECOMPRESSED",
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

DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
"""Largest accepted request body as sent (compressed), bytes."""

DEFAULT_MAX_DECOMPRESSED: Final = 64 * 1024 * 1024
"""Largest accepted body after decompression, bytes (the gzip-bomb guard)."""

_LIFECYCLE: Final = frozenset(sc.LIFECYCLE_EVENTS)
_EVENT_NAME_ATTR: Final = "event.name"  # pre-1.5 OTLP: event name as an attribute
_EXCEPTION_EVENT: Final = "exception"  # OTel span event written by record_exception()

_PROTOBUF_TYPES: Final = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPES: Final = frozenset({"application/json"})


class OTLPDecodeError(SinkError, ValueError):
    """The payload is not a valid OTLP request of the expected signal (HTTP 400)."""


class PayloadTooLargeError(SinkError):
    """The body, or what it inflates to, is larger than the configured limit (HTTP 413)."""


class UnsupportedMediaTypeError(SinkError):
    """The content type or content encoding is not one OTLP/HTTP defines (HTTP 415)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of decoding one request.

    Attributes:
        records: lifecycle records, in payload order.
        ignored: log records / spans that are not chaperone's (skipped, not an error).
        rejected: chaperone-named items that could not be used (e.g. no run id); reported
            back through OTLP partial success.
        error: a short reason for ``rejected`` (empty when nothing was rejected).
    """

    records: list[LifecycleRecord]
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
# Shared record building.
# --------------------------------------------------------------------------------------------


def _severity(number: int, text: str) -> str:
    if text:
        upper = text.upper()
        if upper.startswith("WARN"):
            return "WARN"
        if upper in ("ERROR", "FATAL") or upper.startswith(("ERROR", "FATAL")):
            return "ERROR"
        return "INFO" if upper.startswith("INFO") else upper
    if number >= 17:
        return "ERROR"
    if number >= 13:
        return "WARN"
    return "INFO"


def _log_record(
    event: str,
    attrs: dict[str, AttributeValue],
    resource: Mapping[str, Any],
    time_ns: int,
    observed_ns: int,
    trace_id: int,
    span_id: int,
    severity: str,
    body: str,
) -> LifecycleRecord:
    _add_resource(attrs, resource)
    ts = time_ns or observed_ns
    return LifecycleRecord(
        event_name=event,
        timestamp=ts / 1e9 if ts else time.time(),
        attributes=attrs,
        trace_id=trace_id,
        span_id=span_id,
        severity=severity,
        body=body,
    )


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


def _span_record(
    attrs: dict[str, AttributeValue],
    resource: Mapping[str, Any],
    start_ns: int,
    end_ns: int,
    trace_id: int,
    span_id: int,
    status_code: int,
    exception: Mapping[str, Any] | None,
) -> LifecycleRecord:
    """A finished run span as a record, built by the store's own
    :func:`~chaperone_otel.sink._records.record_from_span` (flagged so the writer only fills
    what the log records left empty); adds what only OTLP tells us here: the resource, the
    exception event's type, and a terminal status derived from the span status."""
    _add_resource(attrs, resource)
    if exception and sc.ATTR_ERROR_TYPE not in attrs:
        exc_type = exception.get(sc.ATTR_ERROR_TYPE)
        if exc_type is not None:
            attrs[sc.ATTR_ERROR_TYPE] = exc_type
    if sc.ATTR_JOB_STATUS not in attrs:  # a span that ended is no longer running
        attrs[sc.ATTR_JOB_STATUS] = "failed" if status_code == 2 else "completed"
    end = end_ns / 1e9 if end_ns else time.time()
    message = exception.get(sc.ATTR_ERROR_MESSAGE) if exception else None
    trace = exception.get(sc.ATTR_ERROR_STACKTRACE) if exception else None
    return record_from_span(
        attrs,
        start_time=start_ns / 1e9 if start_ns else end,
        end_time=end,
        trace_id=trace_id,
        span_id=span_id,
        error_message=message if isinstance(message, str) else None,
        error_stacktrace=trace if isinstance(trace, str) else None,
    )


# --------------------------------------------------------------------------------------------
# Protobuf.
# --------------------------------------------------------------------------------------------


def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return json.dumps(
            {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values},
            separators=(",", ":"),
            default=str,
        )
    if kind == "array_value":
        return tuple(_pb_value(x) for x in v.array_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, kind)


_PB_SCALARS: Final = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _pb_attrs(kvs: Iterable[Any]) -> dict[str, AttributeValue]:
    # The hot loop of the sink (~28 attributes per record): scalars are read inline, one
    # WhichOneof per value; every access to a upb message costs a wrapper object.
    out: dict[str, AttributeValue] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind in _PB_SCALARS:
            out[kv.key] = getattr(v, kind)
        elif kind is not None:
            value = _pb_value(v)
            if value is not None:
                out[kv.key] = value
    return out


def _pb_id(raw: bytes, size: int) -> int:
    if not raw:
        return 0
    if len(raw) != size:
        raise OTLPDecodeError(f"id of {len(raw)} bytes, expected {size}")
    return int.from_bytes(raw, "big")


def _pb_logs(data: bytes) -> Decoded:
    request = logs_service_pb2.ExportLogsServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OTLPDecodeError(f"malformed ExportLogsServiceRequest protobuf: {e}") from e
    records: list[LifecycleRecord] = []
    ignored = rejected = 0
    for rl in request.resource_logs:
        resource: dict[str, Any] | None = None
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                event = lr.event_name
                attrs = _pb_attrs(lr.attributes)
                if not event:
                    named = attrs.pop(_EVENT_NAME_ATTR, None)
                    event = named if isinstance(named, str) else ""
                if event not in _LIFECYCLE:
                    ignored += 1
                    continue
                if record_key(attrs) is None:
                    rejected += 1
                    continue
                if resource is None:
                    resource = _pb_attrs(rl.resource.attributes)
                body = lr.body.string_value if lr.body.WhichOneof("value") == "string_value" else ""
                records.append(
                    _log_record(
                        event,
                        attrs,
                        resource,
                        lr.time_unix_nano,
                        lr.observed_time_unix_nano,
                        _pb_id(lr.trace_id, 16),
                        _pb_id(lr.span_id, 8),
                        _severity(lr.severity_number, lr.severity_text),
                        body,
                    )
                )
    return Decoded(records, ignored, rejected, _rejected_reason(rejected, "lifecycle record"))


def _pb_traces(data: bytes) -> Decoded:
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OTLPDecodeError(f"malformed ExportTraceServiceRequest protobuf: {e}") from e
    records: list[LifecycleRecord] = []
    ignored = rejected = 0
    for rs in request.resource_spans:
        resource: dict[str, Any] | None = None
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = _pb_attrs(span.attributes)
                if sc.ATTR_JOB_RUN_ID not in attrs:  # another service's span
                    ignored += 1
                    continue
                if record_key(attrs) is None:
                    rejected += 1
                    continue
                if resource is None:
                    resource = _pb_attrs(rs.resource.attributes)
                exception = next(
                    (_pb_attrs(ev.attributes) for ev in span.events if ev.name == _EXCEPTION_EVENT),
                    None,
                )
                if exception is not None and sc.ATTR_ERROR_TYPE not in exception:
                    exc_type = exception.get("exception.type")
                    if exc_type is not None:
                        exception[sc.ATTR_ERROR_TYPE] = exc_type
                records.append(
                    _span_record(
                        attrs,
                        resource,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        _pb_id(span.trace_id, 16),
                        _pb_id(span.span_id, 8),
                        span.status.code,
                        exception,
                    )
                )
    return Decoded(records, ignored, rejected, _rejected_reason(rejected, "span"))


# --------------------------------------------------------------------------------------------
# OTLP JSON.
# --------------------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OTLPDecodeError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OTLPDecodeError(f"{what} must be a JSON array, got {type(value).__name__}")
    return value


def _json_int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise OTLPDecodeError(f"{what} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise OTLPDecodeError(f"{what} must be an integer (or a decimal string), got {value!r}")


_FIXED64_MAX: Final = 2**64 - 1


def _json_time(value: Any, what: str) -> int:
    """A ``fixed64`` time in nanoseconds: out of range is malformed (a number this large would
    also overflow the float of the record time)."""
    ns = _json_int(value, what)
    if not 0 <= ns <= _FIXED64_MAX:
        raise OTLPDecodeError(f"{what} must be an unsigned 64-bit integer, got {value!r}")
    return ns


def _json_float(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # proto3 JSON: "NaN", "Infinity", "-Infinity" or a number
        try:
            return float(value)
        except ValueError:
            pass
    raise OTLPDecodeError(f"{what} must be a number, got {value!r}")


_SEVERITY_NAMES: Final = {
    "SEVERITY_NUMBER_" + name + (str(i + 1) if i else ""): base + i
    for name, base in (
        ("TRACE", 1),
        ("DEBUG", 5),
        ("INFO", 9),
        ("WARN", 13),
        ("ERROR", 17),
        ("FATAL", 21),
    )
    for i in range(4)
}
_STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _json_enum(value: Any, names: Mapping[str, int], what: str) -> int:
    # The OTLP spec says integers; protobuf JSON printers (some Collectors' debug paths)
    # write the enum's name. Accept both.
    if isinstance(value, str) and value in names:
        return names[value]
    return _json_int(value, what)


def _json_id(value: Any, size: int, what: str) -> int:
    if value is None or value == "":
        return 0
    if not isinstance(value, str) or len(value) != size * 2:
        raise OTLPDecodeError(f"{what} must be {size * 2} hex digits, got {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise OTLPDecodeError(f"{what} must be hex, got {value!r}") from None


def _json_value(v: Any, *, repair: bool = True) -> Any:
    """An ``AnyValue`` as an attribute value; ``repair``: replace lone surrogates in a string
    by U+FFFD (off for the run id, which is rejected instead: see the module doc)."""
    v = _obj(v, "AnyValue")
    if not v:
        return None
    for key, value in v.items():
        if key in ("stringValue", "string_value"):
            if not isinstance(value, str):
                raise OTLPDecodeError("stringValue must be a string")
            return text(value) if repair else value
        if key in ("boolValue", "bool_value"):
            if not isinstance(value, bool):
                raise OTLPDecodeError("boolValue must be true or false")
            return value
        if key in ("intValue", "int_value"):
            return _json_int(value, "intValue")
        if key in ("doubleValue", "double_value"):
            return _json_float(value, "doubleValue")
        if key in ("arrayValue", "array_value"):
            return tuple(_json_value(x) for x in _list(_obj(value, key).get("values"), key))
        if key in ("kvlistValue", "kvlist_value"):
            inner = {
                k: _jsonable(x) for k, x in _json_attrs(_obj(value, key).get("values")).items()
            }
            return json.dumps(inner, separators=(",", ":"), default=str)
        if key in ("bytesValue", "bytes_value"):
            if not isinstance(value, str):
                raise OTLPDecodeError("bytesValue must be a base64 string")
            return value
    return None  # an unknown value kind from a newer OTLP: skip the attribute


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _json_attrs(kvs: Any) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for raw_kv in _list(kvs, "attributes"):
        kv = _obj(raw_kv, "KeyValue")
        key = kv.get("key")
        if not isinstance(key, str):
            raise OTLPDecodeError("attribute key must be a string")
        value = _json_value(kv.get("value"), repair=key != sc.ATTR_JOB_RUN_ID)
        if value is not None:
            out[text(key)] = value
    return out


def _json_load(data: bytes) -> Mapping[str, Any]:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise OTLPDecodeError(f"malformed JSON: {e}") from e
    return _obj(parsed, "request")


def _json_logs(data: bytes) -> Decoded:
    request = _json_load(data)
    records: list[LifecycleRecord] = []
    ignored = rejected = 0
    # Validate everything before producing anything: a bad item fails the whole request
    # (400, nothing stored), never half of it.
    for raw_rl in _list(_field(request, "resourceLogs", "resource_logs"), "resourceLogs"):
        rl = _obj(raw_rl, "ResourceLogs")
        resource = _json_attrs(_obj(rl.get("resource"), "resource").get("attributes"))
        for sl in _list(_field(rl, "scopeLogs", "scope_logs"), "scopeLogs"):
            for raw_lr in _list(
                _field(_obj(sl, "ScopeLogs"), "logRecords", "log_records"), "logRecords"
            ):
                lr = _obj(raw_lr, "LogRecord")
                attrs = _json_attrs(lr.get("attributes"))
                event = _field(lr, "eventName", "event_name") or ""
                if not event:
                    named = attrs.pop(_EVENT_NAME_ATTR, None)
                    event = named if isinstance(named, str) else ""
                if not isinstance(event, str):
                    raise OTLPDecodeError("eventName must be a string")
                trace_id = _json_id(_field(lr, "traceId", "trace_id"), 16, "traceId")
                span_id = _json_id(_field(lr, "spanId", "span_id"), 8, "spanId")
                time_ns = _json_time(_field(lr, "timeUnixNano", "time_unix_nano"), "timeUnixNano")
                observed_ns = _json_time(
                    _field(lr, "observedTimeUnixNano", "observed_time_unix_nano"),
                    "observedTimeUnixNano",
                )
                if event not in _LIFECYCLE:
                    ignored += 1
                    continue
                if record_key(attrs) is None:
                    rejected += 1
                    continue
                severity_text = _field(lr, "severityText", "severity_text") or ""
                body = _json_value(lr.get("body"))
                records.append(
                    _log_record(
                        event,
                        attrs,
                        resource,
                        time_ns,
                        observed_ns,
                        trace_id,
                        span_id,
                        _severity(
                            _json_enum(
                                _field(lr, "severityNumber", "severity_number"),
                                _SEVERITY_NAMES,
                                "severityNumber",
                            ),
                            severity_text if isinstance(severity_text, str) else "",
                        ),
                        body if isinstance(body, str) else "",
                    )
                )
    return Decoded(records, ignored, rejected, _rejected_reason(rejected, "lifecycle record"))


def _json_traces(data: bytes) -> Decoded:
    request = _json_load(data)
    records: list[LifecycleRecord] = []
    ignored = rejected = 0
    for raw_rs in _list(_field(request, "resourceSpans", "resource_spans"), "resourceSpans"):
        rs = _obj(raw_rs, "ResourceSpans")
        resource = _json_attrs(_obj(rs.get("resource"), "resource").get("attributes"))
        for ss in _list(_field(rs, "scopeSpans", "scope_spans"), "scopeSpans"):
            for raw_span in _list(_field(_obj(ss, "ScopeSpans"), "spans", "spans"), "spans"):
                span = _obj(raw_span, "Span")
                attrs = _json_attrs(span.get("attributes"))
                trace_id = _json_id(_field(span, "traceId", "trace_id"), 16, "traceId")
                span_id = _json_id(_field(span, "spanId", "span_id"), 8, "spanId")
                start_ns = _json_time(
                    _field(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"
                )
                end_ns = _json_time(
                    _field(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"
                )
                events = _list(span.get("events"), "events")
                if sc.ATTR_JOB_RUN_ID not in attrs:  # another service's span
                    ignored += 1
                    continue
                if record_key(attrs) is None:
                    rejected += 1
                    continue
                exception: dict[str, AttributeValue] | None = None
                for raw_ev in events:
                    ev = _obj(raw_ev, "Event")
                    if ev.get("name") == _EXCEPTION_EVENT:
                        exception = _json_attrs(ev.get("attributes"))
                        if sc.ATTR_ERROR_TYPE not in exception and "exception.type" in exception:
                            exception[sc.ATTR_ERROR_TYPE] = exception["exception.type"]
                        break
                status = _obj(span.get("status"), "status")
                records.append(
                    _span_record(
                        attrs,
                        resource,
                        start_ns,
                        end_ns,
                        trace_id,
                        span_id,
                        _json_enum(status.get("code"), _STATUS_NAMES, "status.code"),
                        exception,
                    )
                )
    return Decoded(records, ignored, rejected, _rejected_reason(rejected, "span"))


def _rejected_reason(rejected: int, what: str) -> str:
    if not rejected:
        return ""
    return (
        f"{rejected} chaperone {what}(s) rejected: {sc.ATTR_JOB_RUN_ID} must be a non-empty "
        f"string of valid Unicode and {sc.ATTR_JOB_ATTEMPT} an integer in 32-bit range"
    )


# --------------------------------------------------------------------------------------------
# Entry points.
# --------------------------------------------------------------------------------------------

_DECODERS: Final[Mapping[tuple[str, str], Callable[[bytes], Decoded]]] = {
    ("logs", "protobuf"): _pb_logs,
    ("logs", "json"): _json_logs,
    ("traces", "protobuf"): _pb_traces,
    ("traces", "json"): _json_traces,
}


def decode(
    signal: Signal,
    body: bytes,
    encoding: Encoding,
    content_encoding: str | None = None,
    *,
    max_size: int = DEFAULT_MAX_DECOMPRESSED,
) -> Decoded:
    """Decode one OTLP/HTTP request body of ``signal`` into lifecycle records.

    Args:
        signal: ``logs`` or ``traces`` (the URL path).
        body: the request body as received.
        encoding: ``protobuf`` or ``json`` (see :func:`media_type`).
        content_encoding: the ``Content-Encoding`` header, if any.
        max_size: cap on the decompressed size, bytes.

    Raises:
        OTLPDecodeError: malformed payload (nothing of it may be stored).
        PayloadTooLargeError: the body inflates past ``max_size``.
        UnsupportedMediaTypeError: unknown content encoding.
    """
    data = decompress(body, content_encoding, max_size=max_size)
    try:
        return _DECODERS[signal, encoding](data)
    except RecursionError as e:  # absurdly nested JSON/protobuf
        raise OTLPDecodeError("payload nested too deeply") from e


def decode_logs(
    body: bytes, encoding: Encoding = "protobuf", content_encoding: str | None = None
) -> list[LifecycleRecord]:
    """The lifecycle records in an ``ExportLogsServiceRequest`` (convenience for tests)."""
    return decode("logs", body, encoding, content_encoding).records


def decode_traces(
    body: bytes, encoding: Encoding = "protobuf", content_encoding: str | None = None
) -> list[LifecycleRecord]:
    """The run-span records in an ``ExportTraceServiceRequest`` (convenience for tests)."""
    return decode("traces", body, encoding, content_encoding).records


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
