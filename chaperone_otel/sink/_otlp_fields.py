"""How each OTLP encoding spells the fields of a log record and a span: one accessor per
(encoding, signal), and nothing else.

:mod:`._otlp` builds records with one builder per signal; the builders read fields only
through the accessors here (:data:`LOG_ACCESSORS`, :data:`SPAN_ACCESSORS`), so what a record
is (filter, reject, resource, exception) is written once, and a change to how OTLP spells a
field (a new JSON alias, a new ``AnyValue`` kind) goes here.

* Protobuf: parsing the message validates its structure; trace and span ids are checked for
  kept items only.
* OTLP JSON (the spec's mapping, not protobuf's canonical JSON): trace and span ids are hex
  strings, enums are integers (their names are accepted too, as some Collectors' debug paths
  write them), 64-bit integers may be strings or numbers, keys are lowerCamelCase (snake_case
  accepted). Every item's attributes, ids and times are checked whether it is kept or not:
  a bad item fails the whole request (400), never half of it. Lone UTF-16 surrogates in
  strings are replaced by U+FFFD, except in the run id (see :mod:`._otlp`).
"""

from __future__ import annotations

import base64
import contextvars
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import semconv as sc
from .._events import AttributeValue
from ..exceptions import SinkError
from ._records import text

__all__ = [
    "LOG_ACCESSORS",
    "SPAN_ACCESSORS",
    "Budget",
    "Group",
    "LogAccessor",
    "OTLPDecodeError",
    "PayloadTooLargeError",
    "SpanAccessor",
    "budget",
]


class OTLPDecodeError(SinkError, ValueError):
    """The payload is not a valid OTLP request of the expected signal (HTTP 400)."""


class PayloadTooLargeError(SinkError):
    """The body, what it inflates to, or the work it holds (records, attributes) is over
    the configured limit (HTTP 413)."""


class Budget:
    """The work one request may cost, charged *before* each loop over a repeated field (from
    its length, which parsing already knows), so a request of millions of tiny items is
    refused after a bounded number of steps instead of being walked.

    Args:
        items: resource groups, scopes, records/spans and span events, in total.
        values: attribute values in total (of records, resources, events, and the elements
            of array and key-value-list values).
        per_record: attributes of one record, resource or event (and elements of one array
            or key-value list) at most.
    """

    __slots__ = ("items", "per_record", "values")

    def __init__(self, items: int, values: int, per_record: int) -> None:
        self.items = items
        self.values = values
        self.per_record = per_record

    def charge_items(self, n: int) -> None:
        self.items -= n
        if self.items < 0:
            raise PayloadTooLargeError(
                "request holds too many records (resource and scope groups and span events "
                "count too); send smaller batches"
            )

    def charge_values(self, n: int) -> None:
        if n > self.per_record:
            raise PayloadTooLargeError(
                f"{n} attributes (or array elements) in one item, over the limit of "
                f"{self.per_record}"
            )
        self.values -= n
        if self.values < 0:
            raise PayloadTooLargeError(
                "request holds too many attribute values; send smaller batches"
            )


_UNLIMITED: Final = Budget(2**62, 2**62, 2**62)
_BUDGET: contextvars.ContextVar[Budget] = contextvars.ContextVar("otlp_budget")


def budget() -> contextvars.ContextVar[Budget]:
    """The budget of the request being decoded in this context (set by ``_otlp.decode``;
    unlimited when none is set)."""
    return _BUDGET


def _charge_items(n: int) -> None:
    _BUDGET.get(_UNLIMITED).charge_items(n)


def _charge_values(n: int) -> None:
    _BUDGET.get(_UNLIMITED).charge_values(n)


Group = tuple[Callable[[], Mapping[str, Any]], Iterable[Any]]
"""One resource's items: a getter of the resource's attributes (called only when an item of
the group is kept) and the items (log records or spans) of all its scopes."""


class LogAccessor(NamedTuple):
    """How one encoding reads an ``ExportLogsServiceRequest``: ``groups`` parses the request
    and checks what must be valid in every item, kept or not; ``attributes`` and
    ``event_name`` are read for every item (the builder's filter needs them), the other
    fields for kept items only."""

    groups: Callable[[bytes], Iterator[Group]]
    attributes: Callable[[Any], dict[str, AttributeValue]]
    event_name: Callable[[Any], Any]
    ids: Callable[[Any], tuple[int, int]]
    times: Callable[[Any], tuple[int, int]]
    severity: Callable[[Any], str]
    body: Callable[[Any], str]


class SpanAccessor(NamedTuple):
    """How one encoding reads an ``ExportTraceServiceRequest`` (see :class:`LogAccessor`;
    ``events`` gives (name, event) pairs, read until the exception event)."""

    groups: Callable[[bytes], Iterator[Group]]
    attributes: Callable[[Any], dict[str, AttributeValue]]
    ids: Callable[[Any], tuple[int, int]]
    times: Callable[[Any], tuple[int, int]]
    status_code: Callable[[Any], int]
    events: Callable[[Any], Iterator[tuple[Any, Any]]]
    event_attributes: Callable[[Any], dict[str, AttributeValue]]


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


# --------------------------------------------------------------------------------------------
# Protobuf accessors. Parsing the message validates its structure; the hot loop of the sink is
# the attribute read (~28 per record).
# --------------------------------------------------------------------------------------------


def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return json.dumps(_pb_plain(v), separators=(",", ":"), default=str)
    if kind == "array_value":
        _charge_values(len(v.array_value.values))
        return tuple(_pb_value(x) for x in v.array_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, kind)


def _pb_plain(v: Any) -> Any:
    """A value inside a key-value list, as plain JSON data: the list is written as JSON once,
    at its top. (Each nested list was a JSON string that the list above escaped again: its
    size doubled per level, and ~300 bytes of nesting decoded to 16 M characters.)"""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        _charge_values(len(v.kvlist_value.values))
        return {kv.key: _pb_plain(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        _charge_values(len(v.array_value.values))
        return [_pb_plain(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, kind)


_PB_SCALARS: Final = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _pb_attrs(kvs: Sequence[Any]) -> dict[str, AttributeValue]:
    # Scalars are read inline, one WhichOneof per value; every access to a upb message costs
    # a wrapper object.
    _charge_values(len(kvs))
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


def _pb_parse(message: Any, data: bytes) -> Any:
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        name = type(message).__name__
        raise OTLPDecodeError(f"malformed {name} protobuf: {e}") from e
    return message


def _pb_items(scopes: Any, field: str) -> Iterator[Any]:
    """The items of a group's scopes, each list charged to the budget before it is walked."""
    _charge_items(len(scopes))
    for scope in scopes:
        items = getattr(scope, field)
        _charge_items(len(items))
        yield from items


def _pb_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the position after it (IndexError past the end)."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _pb_count_items(data: bytes) -> None:
    """Count resource groups, scopes and items (log records or spans) on the wire, before
    the parse, and stop once there are more than the budget allows: parsing builds every
    message (4 M empty records, 8 MiB, took ~0.35 s), counting does not descend into the
    items. Export requests of both signals nest the same field numbers (resource lists 1,
    scope lists 2, items 2). Anything malformed is left to the parser.

    Raises:
        PayloadTooLargeError: more items than the budget allows.
    """
    limit = _BUDGET.get(_UNLIMITED).items
    count = 0
    # (start, end, depth) of the messages still to walk: 0 request, 1 resource, 2 scope.
    stack = [(0, len(data), 0)]
    try:
        while stack:
            at, end, depth = stack.pop()
            while at < end:
                tag, at = _pb_varint(data, at)
                wire = tag & 7
                if wire == 0:
                    _, at = _pb_varint(data, at)
                    continue
                if wire in {1, 5}:
                    at += 8 if wire == 1 else 4
                    continue
                if wire != 2:
                    return  # groups or garbage: the parser decides
                size, at = _pb_varint(data, at)
                field = tag >> 3
                if (depth == 0 and field == 1) or (depth > 0 and field == 2):
                    count += 1
                    if count > limit:
                        _charge_items(count)  # raises, with the one message
                    if depth < 2:
                        stack.append((at, min(at + size, end), depth + 1))
                at += size
    except (IndexError, ValueError):
        return


def _pb_log_groups(data: bytes) -> Iterator[Group]:
    _pb_count_items(data)
    request = _pb_parse(logs_service_pb2.ExportLogsServiceRequest(), data)
    _charge_items(len(request.resource_logs))
    for rl in request.resource_logs:
        yield _pb_resource(rl.resource), _pb_items(rl.scope_logs, "log_records")


def _pb_span_groups(data: bytes) -> Iterator[Group]:
    _pb_count_items(data)
    request = _pb_parse(trace_service_pb2.ExportTraceServiceRequest(), data)
    _charge_items(len(request.resource_spans))
    for rs in request.resource_spans:
        yield _pb_resource(rs.resource), _pb_items(rs.scope_spans, "spans")


def _pb_events(span: Any) -> Iterator[tuple[Any, Any]]:
    _charge_items(len(span.events))
    return ((ev.name, ev) for ev in span.events)


def _pb_resource(resource: Any) -> Callable[[], Mapping[str, Any]]:
    return lambda: _pb_attrs(resource.attributes)


def _pb_item_attrs(item: Any) -> dict[str, AttributeValue]:
    return _pb_attrs(item.attributes)


def _pb_ids(item: Any) -> tuple[int, int]:
    """Trace and span id of a log record or span (checked for kept items only)."""
    return _pb_id(item.trace_id, 16), _pb_id(item.span_id, 8)


def _pb_body(lr: Any) -> str:
    return str(lr.body.string_value) if lr.body.WhichOneof("value") == "string_value" else ""


_PB_LOGS: Final = LogAccessor(
    groups=_pb_log_groups,
    attributes=_pb_item_attrs,
    event_name=operator.attrgetter("event_name"),
    ids=_pb_ids,
    times=operator.attrgetter("time_unix_nano", "observed_time_unix_nano"),
    severity=lambda lr: _severity(lr.severity_number, lr.severity_text),
    body=_pb_body,
)
_PB_SPANS: Final = SpanAccessor(
    groups=_pb_span_groups,
    attributes=_pb_item_attrs,
    ids=_pb_ids,
    times=operator.attrgetter("start_time_unix_nano", "end_time_unix_nano"),
    status_code=lambda span: int(span.status.code),
    events=_pb_events,
    event_attributes=_pb_item_attrs,
)


# --------------------------------------------------------------------------------------------
# OTLP JSON accessors (ids are hex, enums are integers or names; see the module doc).
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
    if _HEX.fullmatch(value) is None:  # int(x, 16) also takes a sign, "0x", "_", spaces
        raise OTLPDecodeError(f"{what} must be hex, got {value!r}")
    return int(value, 16)


_HEX: Final = re.compile(r"[0-9a-fA-F]+")


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
            elements = _list(_obj(value, key).get("values"), key)
            _charge_values(len(elements))
            return tuple(_json_value(x) for x in elements)
        if key in ("kvlistValue", "kvlist_value"):
            inner = _json_plain_kvlist(_obj(value, key).get("values"))
            return json.dumps(inner, separators=(",", ":"), default=str)
        if key in ("bytesValue", "bytes_value"):
            if not isinstance(value, str):
                raise OTLPDecodeError("bytesValue must be a base64 string")
            return value
    return None  # an unknown value kind from a newer OTLP: skip the attribute


def _json_plain(v: Any) -> Any:
    """A value inside a key-value list, as plain JSON data (see :func:`_pb_plain`)."""
    v = _obj(v, "AnyValue")
    for key, value in v.items():  # the first kind known wins, as in _json_value
        if key in ("arrayValue", "array_value"):
            elements = _list(_obj(value, key).get("values"), key)
            _charge_values(len(elements))
            return [_json_plain(x) for x in elements]
        if key in ("kvlistValue", "kvlist_value"):
            return _json_plain_kvlist(_obj(value, key).get("values"))
        if key in _JSON_SCALARS:
            return _json_value(v)
    return None


_JSON_SCALARS: Final = frozenset(
    {
        "stringValue",
        "string_value",
        "boolValue",
        "bool_value",
        "intValue",
        "int_value",
        "doubleValue",
        "double_value",
        "bytesValue",
        "bytes_value",
    }
)


def _json_pairs(kvs: Any, what: str) -> Iterator[tuple[str, Any]]:
    """(key, raw AnyValue) of a JSON ``KeyValue`` list, checked and charged."""
    kv_list = _list(kvs, what)
    _charge_values(len(kv_list))
    for raw_kv in kv_list:
        kv = _obj(raw_kv, "KeyValue")
        key = kv.get("key")
        if not isinstance(key, str):
            raise OTLPDecodeError("attribute key must be a string")
        yield key, kv.get("value")


def _json_plain_kvlist(kvs: Any) -> dict[str, Any]:
    # An entry without a value is null, as from protobuf.
    return {text(key): _json_plain(value) for key, value in _json_pairs(kvs, "kvlistValue")}


def _json_attrs(kvs: Any) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, raw in _json_pairs(kvs, "attributes"):
        value = _json_value(raw, repair=key != sc.ATTR_JOB_RUN_ID)
        if value is not None:
            out[text(key)] = value
    return out


def _json_load(data: bytes) -> Mapping[str, Any]:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise OTLPDecodeError(f"malformed JSON: {e}") from e
    return _obj(parsed, "request")


class _JsonItem(NamedTuple):
    """A JSON log record or span with the fields every item must have valid already read:
    a bad item fails the whole request (400, nothing stored), never half of it, even when
    the item itself would have been skipped."""

    raw: Mapping[str, Any]
    attributes: dict[str, AttributeValue]
    ids: tuple[int, int]
    times: tuple[int, int]
    events: list[Any]


def _json_ids(obj: Mapping[str, Any]) -> tuple[int, int]:
    return (
        _json_id(_field(obj, "traceId", "trace_id"), 16, "traceId"),
        _json_id(_field(obj, "spanId", "span_id"), 8, "spanId"),
    )


def _json_groups(
    data: bytes,
    names: tuple[str, str, str],
    item: Callable[[Any], _JsonItem],
) -> Iterator[Group]:
    """The resource groups of a JSON request; ``names``: the lowerCamelCase keys of the
    resource, scope and item lists (``resourceLogs``, ``scopeLogs``, ``logRecords``)."""
    resources, scopes, items = names
    request = _json_load(data)
    for raw in _charged(_list(_field(request, resources, _snake(resources)), resources)):
        group = _obj(raw, resources)
        resource = _json_attrs(_obj(group.get("resource"), "resource").get("attributes"))
        yield (
            _constant(resource),
            (
                item(x)
                for scope in _charged(_list(_field(group, scopes, _snake(scopes)), scopes))
                for x in _charged(_list(_field(_obj(scope, scopes), items, _snake(items)), items))
            ),
        )


def _charged(values: list[Any]) -> list[Any]:
    _charge_items(len(values))
    return values


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


def _constant(value: Mapping[str, Any]) -> Callable[[], Mapping[str, Any]]:
    return lambda: value


def _json_log(raw: Any) -> _JsonItem:
    lr = _obj(raw, "LogRecord")
    times = (
        _json_time(_field(lr, "timeUnixNano", "time_unix_nano"), "timeUnixNano"),
        _json_time(
            _field(lr, "observedTimeUnixNano", "observed_time_unix_nano"), "observedTimeUnixNano"
        ),
    )
    return _JsonItem(lr, _json_attrs(lr.get("attributes")), _json_ids(lr), times, [])


def _json_span(raw: Any) -> _JsonItem:
    span = _obj(raw, "Span")
    times = (
        _json_time(_field(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano"),
        _json_time(_field(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano"),
    )
    events = _charged(_list(span.get("events"), "events"))
    return _JsonItem(span, _json_attrs(span.get("attributes")), _json_ids(span), times, events)


def _json_severity(item: _JsonItem) -> str:
    number = _field(item.raw, "severityNumber", "severity_number")
    text = _field(item.raw, "severityText", "severity_text") or ""
    return _severity(
        _json_enum(number, _SEVERITY_NAMES, "severityNumber"),
        text if isinstance(text, str) else "",
    )


def _json_body(item: _JsonItem) -> str:
    body = _json_value(item.raw.get("body"))
    return body if isinstance(body, str) else ""


def _json_status(item: _JsonItem) -> int:
    return _json_enum(
        _obj(item.raw.get("status"), "status").get("code"), _STATUS_NAMES, "status.code"
    )


def _json_events(item: _JsonItem) -> Iterator[tuple[Any, Any]]:
    for raw in item.events:
        event = _obj(raw, "Event")
        yield event.get("name"), event


_JSON_LOGS: Final = LogAccessor(
    groups=lambda data: _json_groups(data, ("resourceLogs", "scopeLogs", "logRecords"), _json_log),
    attributes=operator.attrgetter("attributes"),
    event_name=lambda item: _field(item.raw, "eventName", "event_name"),
    ids=operator.attrgetter("ids"),
    times=operator.attrgetter("times"),
    severity=_json_severity,
    body=_json_body,
)
_JSON_SPANS: Final = SpanAccessor(
    groups=lambda data: _json_groups(data, ("resourceSpans", "scopeSpans", "spans"), _json_span),
    attributes=operator.attrgetter("attributes"),
    ids=operator.attrgetter("ids"),
    times=operator.attrgetter("times"),
    status_code=_json_status,
    events=_json_events,
    event_attributes=lambda event: _json_attrs(event.get("attributes")),
)


LOG_ACCESSORS: Final[Mapping[str, LogAccessor]] = {"protobuf": _PB_LOGS, "json": _JSON_LOGS}
"""The logs accessor of each encoding (``protobuf``, ``json``)."""

SPAN_ACCESSORS: Final[Mapping[str, SpanAccessor]] = {"protobuf": _PB_SPANS, "json": _JSON_SPANS}
"""The traces accessor of each encoding."""
