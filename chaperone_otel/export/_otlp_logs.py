"""A cheaper OTLP log encoder for the OTLP/HTTP log exporter ``configure()`` installs.

Why: with OTLP export, most of the CPU a supervised run adds to its process is the OTel
SDK's protobuf encoding of the run's two lifecycle records on the exporter's thread
(``encode_logs`` builds one ``upb`` message object per attribute, value and record from
Python, ~10 us a record plus ~4-5 us an attribute; issue 16 goal 2). This module writes the
same ``ExportLogsServiceRequest`` bytes directly: the protobuf wire format is a handful of
rules (tags, varints, length prefixes), and the values a log record may carry are few.

What it guarantees, and what guards it:

* **The same request as the SDK's.** It groups records by resource and by scope exactly
  as ``opentelemetry.exporter.otlp.proto.common._log_encoder`` does (dicts keyed by the
  ``Resource`` and ``InstrumentationScope`` objects, so by their equality, in first-seen
  order, the first-seen key encoded), writes every field the SDK sets, with the same
  presence rules (proto3 scalars left out at zero, ``oneof`` members and sub-messages
  always written), in field-number order. ``tests/export/test_otlp_logs_differential.py``
  encodes many random batches with both encoders and requires the parsed requests to be
  equal (and the bytes identical).
* **Only the common value kinds.** ``str``, ``bool``, ``int`` (int64), ``float``,
  ``bytes``, ``None``, and lists, tuples and ``str``-keyed dicts of these, checked by exact
  type. Anything else (a subclass such as an ``IntEnum``, an int beyond int64, another
  sequence or mapping type, a non-int timestamp or id) makes :func:`encode_logs` answer
  ``None`` and the exporter encodes *that whole batch* with the SDK's encoder, so unusual
  records keep the SDK's behaviour exactly (including how it logs and skips a bad
  attribute).
* **The exporter is the SDK's.** :class:`FastOTLPLogExporter` subclasses the SDK's
  ``OTLPLogExporter`` and replaces only the encoding step of ``export()``: the request
  size check, the HTTP client (retries, timeouts, compression, headers), the exporter's
  own metrics and ``shutdown()`` are the SDK's. The override is the SDK 1.45 ``export()``
  (:func:`._otlp_http.send`), used only when the installed SDK's ``export()`` is that one
  (:mod:`._otlp_http` says how it is checked); ``configure()`` installs the SDK's own
  exporter otherwise.

Layer: ``export`` (imports the OTel SDK and the OTLP/HTTP exporter).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common._log_encoder import (
    encode_logs as _sdk_encode_logs,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult

from ._fast_logs import readable as _readable
from ._otlp_http import send

_sdk_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http._log_exporter")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

_SMALL = [bytes((n,)) for n in range(128)]
"""Varints of 0..127: one byte each (nearly every length in a log request)."""


class _Unusual(Exception):
    """A value this encoder does not write: the batch goes to the SDK's encoder."""


def _varint(n: int) -> bytes:
    """Unsigned LEB128 of ``0 <= n < 2**64``."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


# AnyValue fields (opentelemetry/proto/common/v1/common.proto).
_T_STRING = b"\x0a"  # 1, string_value
_T_BOOL_TRUE = b"\x10\x01"  # 2, bool_value
_T_BOOL_FALSE = b"\x10\x00"
_T_INT = b"\x18"  # 3, int_value (int64 varint)
_T_DOUBLE = b"\x21"  # 4, double_value (fixed64)
_T_ARRAY = b"\x2a"  # 5, array_value
_T_KVLIST = b"\x32"  # 6, kvlist_value
_T_BYTES = b"\x3a"  # 7, bytes_value
_T_VALUES = b"\x0a"  # ArrayValue.values / KeyValueList.values: 1
_T_KEY = b"\x0a"  # KeyValue.key: 1
_T_VALUE = b"\x12"  # KeyValue.value: 2


def _any_value(value: Any) -> bytes:
    """The AnyValue message of ``value`` (its payload, without tag or length), as the SDK's
    ``_encode_value`` builds it; :class:`_Unusual` for anything else."""
    kind = type(value)
    if kind is str:
        return _field(_T_STRING, value.encode("utf-8"))
    if kind is bool:
        return _T_BOOL_TRUE if value else _T_BOOL_FALSE
    if kind is int:
        if value >= 0:
            if value > _INT64_MAX:
                raise _Unusual
            return _T_INT + _varint(value)
        if value < _INT64_MIN:
            raise _Unusual
        return _T_INT + _varint(value + (1 << 64))
    if kind is float:
        return _T_DOUBLE + _pack_double(value)
    if value is None:
        return b""
    if kind is bytes:
        return _field(_T_BYTES, value)
    if kind is list or kind is tuple:
        return _field(_T_ARRAY, b"".join([_field(_T_VALUES, _any_value(v)) for v in value]))
    if kind is dict:
        return _field(
            _T_KVLIST, b"".join([_field(_T_VALUES, _key_value(k, v)) for k, v in value.items()])
        )
    raise _Unusual


def _key_value(key: Any, value: Any) -> bytes:
    if type(key) is not str:
        raise _Unusual
    head = _field(_T_KEY, key.encode("utf-8")) if key else b""
    return head + _field(_T_VALUE, _any_value(value))


_T_ATTRIBUTE = b"\x32"  # LogRecord.attributes: 6


class _Attributes:
    """Encodes the attribute mappings of one batch, keeping each key's ``KeyValue.key``
    bytes (the keys repeat on every record) and each scalar attribute's whole field (most
    values repeat too: a job's name, queue, attempt, lease, status, the resource's)."""

    __slots__ = ("_fields", "_keys")

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._fields: dict[bytes, dict[tuple[Any, type, Any], bytes]] = {}

    def encode(self, attributes: Any, tag: bytes) -> bytes:
        """Every attribute as a repeated ``KeyValue`` field with ``tag``.

        The common kinds are written out inline (one concatenation, no nested calls): this
        loop is most of the encoder's time. A str, int, bool or non-zero float attribute's
        field is kept by (key, type, value) for the rest of the batch: equal values of one
        type encode alike, except 0.0 and -0.0, which are equal and differ in their sign
        bit (so zero is never kept); the type keeps 1, 1.0 and True apart. A batch's
        distinct values are at most its attributes, so this grows with the batch only."""
        if not attributes:
            return b""
        keys = self._keys
        seen = self._fields.get(tag)
        if seen is None:
            seen = self._fields[tag] = {}
        small = _SMALL
        out = []
        for key, value in _items(attributes):
            kind = type(value)
            if kind is str or kind is int or kind is bool or (kind is float and value):
                known = (key, kind, value)
                field = seen.get(known)
                if field is not None:
                    out.append(field)
                    continue
            else:
                known = None
            head = keys.get(key)
            if head is None:
                if type(key) is not str:
                    raise _Unusual
                head = _field(_T_KEY, key.encode("utf-8")) if key else b""
                keys[key] = head
            kind = type(value)
            if kind is str:
                data = value.encode("utf-8")
                n = len(data)
                kv = (
                    head + bytes((0x12, n + 2, 0x0A, n)) + data
                    if n < 126
                    else head + _field(_T_VALUE, _field(_T_STRING, data))
                )
            elif kind is float:
                kv = head + b"\x12\x09\x21" + _pack_double(value)
            elif kind is bool:
                kv = head + (b"\x12\x02\x10\x01" if value else b"\x12\x02\x10\x00")
            elif kind is int and 0 <= value < 128:
                kv = head + bytes((0x12, 2, 0x18, value))
            else:
                kv = head + _field(_T_VALUE, _any_value(value))
            n = len(kv)
            field = tag + (small[n] if n < 128 else _varint(n)) + kv
            out.append(field)
            if known is not None:
                seen[known] = field
        return b"".join(out)


def _items(attributes: Any) -> Any:
    """The (key, value) pairs of an attribute mapping, in order. The SDK's
    ``BoundedAttributes`` iterates through the ``Mapping`` mixins (a key list copied under
    its lock, then a lookup per key); its own dict, copied under the same lock, gives the
    same pairs in a fraction of the time."""
    if type(attributes) is BoundedAttributes:
        lock, pairs = getattr(attributes, "_lock", None), getattr(attributes, "_dict", None)
        if lock is not None and type(pairs) is dict:
            with lock:
                return list(pairs.items())
    return attributes.items()


# LogRecord fields (opentelemetry/proto/logs/v1/logs.proto).
_L_TIME = b"\x09"  # 1, time_unix_nano, fixed64
_L_SEVERITY_NUMBER = b"\x10"  # 2, enum
_L_SEVERITY_TEXT = b"\x1a"  # 3
_L_BODY = b"\x2a"  # 5
_L_DROPPED = b"\x38"  # 7, uint32
_L_FLAGS = b"\x45"  # 8, fixed32
_L_TRACE_ID = b"\x4a"  # 9
_L_SPAN_ID = b"\x52"  # 10
_L_OBSERVED = b"\x59"  # 11, fixed64
_L_EVENT_NAME = b"\x62"  # 12


def _fixed64(tag: bytes, value: Any) -> bytes:
    if value is None:
        return b""
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        raise _Unusual
    return tag + _pack_fixed64(value) if value else b""


def _string(tag: bytes, value: Any) -> bytes:
    if value is None:
        return b""
    if type(value) is not str:
        raise _Unusual
    return _field(tag, value.encode("utf-8")) if value else b""


def _log_record(readable: Any, attributes: _Attributes) -> bytes:
    """One LogRecord message's payload, as the SDK's ``_encode_log`` builds it."""
    record = readable.log_record
    parts = [_fixed64(_L_TIME, record.timestamp)]
    severity = record.severity_number
    if severity is not None:
        number = getattr(severity, "value", None)
        if number is not None:
            if type(number) is not int or not 0 <= number <= _INT64_MAX:
                raise _Unusual
            if number:
                parts.append(_L_SEVERITY_NUMBER + _varint(number))
    parts.append(_string(_L_SEVERITY_TEXT, record.severity_text))
    parts.append(_field(_L_BODY, _any_value(record.body)))
    parts.append(attributes.encode(record.attributes, _T_ATTRIBUTE))
    dropped = readable.dropped_attributes
    if type(dropped) is not int or not 0 <= dropped <= _UINT32_MAX:
        raise _Unusual
    if dropped:
        parts.append(_L_DROPPED + _varint(dropped))
    flags = record.trace_flags
    if not isinstance(flags, int) or not 0 <= flags <= _UINT32_MAX:  # TraceFlags is an int
        raise _Unusual
    if flags:
        parts.append(_L_FLAGS + _pack_fixed32(int(flags)))
    trace_id, span_id = record.trace_id, record.span_id
    if type(trace_id) is not int or type(span_id) is not int:
        raise _Unusual
    if trace_id:
        if not 0 < trace_id < (1 << 128):
            raise _Unusual
        parts.append(_L_TRACE_ID + b"\x10" + trace_id.to_bytes(16, "big"))
    if span_id:
        if not 0 < span_id < (1 << 64):
            raise _Unusual
        parts.append(_L_SPAN_ID + b"\x08" + span_id.to_bytes(8, "big"))
    parts.append(_fixed64(_L_OBSERVED, record.observed_timestamp))
    parts.append(_string(_L_EVENT_NAME, record.event_name))
    return b"".join(parts)


def _scope(scope: Any, attributes: _Attributes) -> bytes:
    """InstrumentationScope's payload (name 1, version 2, attributes 3)."""
    if scope is None:
        return b""
    return (
        _string(b"\x0a", scope.name)
        + _string(b"\x12", scope.version)
        + attributes.encode(scope.attributes, b"\x1a")
    )


def _encode(batch: Sequence[Any]) -> bytes:
    return _grouped(batch, _log_record)


def _grouped(batch: Sequence[Any], encode_one: Callable[[Any, _Attributes], bytes]) -> bytes:
    """The request of ``batch``: its items (log records or spans, ``encode_one``) under
    their scopes under their resources. ``ExportLogsServiceRequest`` and
    ``ExportTraceServiceRequest`` share these field numbers: resource_logs/resource_spans 1;
    resource 1, scope_logs/scope_spans 2, schema_url 3; scope 1, log_records/spans 2,
    schema_url 3."""
    attributes = _Attributes()
    # Grouped as the SDK groups them: dicts keyed by the resource and the scope objects
    # (their equality, first-seen order, the first-seen key kept). A Resource hashes by
    # serializing its attributes to JSON, so each distinct object is looked up once.
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    by_identity: dict[tuple[int, int], list[bytes]] = {}  # the batch keeps the objects alive
    for readable in batch:
        resource = readable.resource
        scope = readable.instrumentation_scope or None
        records = by_identity.get((id(resource), id(scope)))
        if records is None:
            records = groups.setdefault(resource, {}).setdefault(scope, [])
            by_identity[id(resource), id(scope)] = records
        records.append(_field(b"\x12", encode_one(readable, attributes)))
    out = []
    for resource, scopes in groups.items():
        parts = [_field(b"\x0a", attributes.encode(resource.attributes, b"\x0a"))]
        for scope, records in scopes.items():
            scope_logs = _field(b"\x0a", _scope(scope, attributes)) + b"".join(records)
            if scope is not None:
                scope_logs += _string(b"\x1a", scope.schema_url)
            parts.append(_field(b"\x12", scope_logs))
        parts.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(parts)))
    return b"".join(out)


def attempt(encode: Callable[[Sequence[Any]], bytes], batch: Sequence[Any]) -> bytes | None:
    """``encode(batch)``, or None when the batch holds something the fast encoders do not
    write (:class:`_Unusual`) or is shaped otherwise (the SDK's encoder then decides what
    it means). Shared with :mod:`._otlp_spans`."""
    try:
        return encode(batch)
    except (_Unusual, AttributeError, TypeError, ValueError, OverflowError, RecursionError):
        return None


def encode_logs(batch: Sequence[ReadableLogRecord]) -> bytes | None:
    """The serialized ``ExportLogsServiceRequest`` of ``batch``, the same as
    ``encode_logs(batch).SerializeToString()`` of the SDK; None when the batch holds
    something this encoder does not write (encode it with the SDK's)."""
    return attempt(_encode, batch)


def encode_logs_or_sdk(batch: Sequence[ReadableLogRecord]) -> bytes:
    """:func:`encode_logs`, or the SDK's encoder for a batch it does not write (given
    ``ReadableLogRecord`` objects for the light records of ``_fast_logs``)."""
    data = encode_logs(batch)
    return _sdk_encode_logs(_readable(batch)).SerializeToString() if data is None else data


class FastOTLPLogExporter(OTLPLogExporter):
    """The SDK's OTLP/HTTP log exporter with :func:`encode_logs` as its encoder.

    ``export()`` is the SDK's (``opentelemetry-exporter-otlp-proto-http`` 1.45) with only
    the request bytes made by :func:`encode_logs_or_sdk` (:func:`._otlp_http.send`): the
    shutdown check, the exporter's own metrics, the request size limit, the HTTP client
    (retries, backoff, timeouts, compression, headers) and its result handling are
    unchanged. ``tests/export/test_otlp_exporters.py`` runs it and the SDK's exporter
    against the same local HTTP server and requires the same requests and results.
    """

    takes_light_records = True
    """Its encoder writes ``_fast_logs.LightLogRecord`` objects as the ``ReadableLogRecord``
    the SDK would have queued (the SDK's encoder, for an odd batch, gets those)."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return send(
            self,
            batch,
            encode_logs_or_sdk,
            (LogRecordExportResult.SUCCESS, LogRecordExportResult.FAILURE),
            "logs",
            _sdk_logger,
        )

    def shutdown(self) -> None:
        """The SDK's, after ending a wait for the endpoint (:func:`._otlp_http.stop_waiting`)."""
        event = getattr(self, "chaperone_stop_waiting", None)
        if event is not None:
            event.set()
        super().shutdown()  # type: ignore[no-untyped-call]
