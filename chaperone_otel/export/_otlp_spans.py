"""A cheaper OTLP span encoder for the OTLP/HTTP span exporter ``configure()`` installs.

The span twin of :mod:`._otlp_logs` (read its docstring: the same rules, the same
guards). Once the log records were encoded by :mod:`._otlp_logs`, a supervised run's span
was the largest encoding left on the exporter threads: the SDK's ``encode_spans`` builds a
``upb`` object per attribute, event, link and the status, ~50-80 us for a run's span.
This writes the same ``ExportTraceServiceRequest`` bytes as the SDK's
``encode_spans(spans).SerializePartialToString()`` (``tests/export/
test_otlp_spans_differential.py``), and answers None for a batch holding anything it does
not write (the exporter then uses the SDK's encoder for that batch).

Layer: ``export``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as _sdk_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from ._otlp_http import send
from ._otlp_logs import (
    _UINT32_MAX,
    _Attributes,
    _field,
    _fixed64,
    _grouped,
    _pack_fixed32,
    _string,
    _Unusual,
    _varint,
    attempt,
)

_sdk_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")

_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
"""Span.kind (field 6) of each SDK kind, as the SDK's ``_SPAN_KIND_MAP``."""

_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def _flags(parent: Any) -> int:
    """The SDK's ``_span_flags``: "is remote" known, and set when the parent is remote."""
    if parent and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _id(value: Any, size: int) -> bytes:
    """A trace (16) or span (8) id as the SDK writes it, zero included."""
    if type(value) is not int or not 0 <= value < (1 << (8 * size)):
        raise _Unusual
    return value.to_bytes(size, "big")


def _count(tag: bytes, value: Any) -> bytes:
    """A uint32 dropped count (left out at zero)."""
    if type(value) is not int or not 0 <= value <= _UINT32_MAX:
        raise _Unusual
    return tag + _varint(value) if value else b""


def _trace_state(state: Any) -> bytes:
    if state is None:
        return b""
    return _string(b"\x1a", ",".join([f"{key}={value}" for key, value in state.items()]))


def _event(event: Any, attributes: _Attributes) -> bytes:
    """Span.Event: time 1 (fixed64), name 2, attributes 3, dropped 4."""
    return (
        _fixed64(b"\x09", event.timestamp)
        + _string(b"\x12", event.name)
        + attributes.encode(event.attributes, b"\x1a")
        + _count(b"\x20", event.dropped_attributes)
    )


def _link(link: Any, attributes: _Attributes) -> bytes:
    """Span.Link: trace id 1, span id 2, attributes 4, dropped 5, flags 6 (fixed32); the
    SDK writes no trace state for a link."""
    context = link.context
    return (
        _field(b"\x0a", _id(context.trace_id, 16))
        + _field(b"\x12", _id(context.span_id, 8))
        + attributes.encode(link.attributes, b"\x22")
        + _count(b"\x28", link.dropped_attributes)
        + b"\x35"
        + _pack_fixed32(_flags(context))
    )


def _status(status: Any) -> bytes:
    """Status (message 2, code 3), present whenever the span has one."""
    if status is None:
        return b""
    code = status.status_code.value
    if type(code) is not int or not 0 <= code < 128:
        raise _Unusual
    payload = _string(b"\x12", status.description) + (bytes((0x18, code)) if code else b"")
    return _field(b"\x7a", payload)


def _span(span: Any, attributes: _Attributes) -> bytes:
    """One Span message's payload, as the SDK's ``_encode_span`` builds it."""
    context = span.get_span_context()
    parent = span.parent
    kind = _KIND.get(span.kind)
    if kind is None:
        raise _Unusual
    parts = [
        b"\x0a\x10" + _id(context.trace_id, 16),
        b"\x12\x08" + _id(context.span_id, 8),
        _trace_state(context.trace_state),
        b"\x22\x08" + _id(parent.span_id, 8) if parent else b"",
        _string(b"\x2a", span.name),
        kind,
        _fixed64(b"\x39", span.start_time),
        _fixed64(b"\x41", span.end_time),
        attributes.encode(span.attributes, b"\x4a"),
        _count(b"\x50", span.dropped_attributes),
    ]
    for event in span.events:
        parts.append(_field(b"\x5a", _event(event, attributes)))
    parts.append(_count(b"\x60", span.dropped_events))
    for link in span.links:
        parts.append(_field(b"\x6a", _link(link, attributes)))
    parts.append(_count(b"\x70", span.dropped_links))
    parts.append(_status(span.status))
    parts.append(b"\x85\x01" + _pack_fixed32(_flags(parent)))  # flags, field 16, fixed32
    return b"".join(parts)


def _encode(batch: Sequence[Any]) -> bytes:
    return _grouped(batch, _span)


def encode_spans(batch: Sequence[ReadableSpan]) -> bytes | None:
    """The serialized ``ExportTraceServiceRequest`` of ``batch``, the same as the SDK's
    ``encode_spans(batch).SerializePartialToString()``; None when the batch holds something
    this encoder does not write (encode it with the SDK's)."""
    return attempt(_encode, batch)


def encode_spans_or_sdk(batch: Sequence[ReadableSpan]) -> bytes:
    """:func:`encode_spans`, or the SDK's encoder for a batch it does not write."""
    data = encode_spans(batch)
    return _sdk_encode_spans(batch).SerializePartialToString() if data is None else data


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with :func:`encode_spans` as its encoder: its
    ``export()`` is the SDK's (1.45) with only the encoding replaced, as
    :class:`~._otlp_logs.FastOTLPLogExporter`'s."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return send(
            self,
            spans,
            encode_spans_or_sdk,
            (SpanExportResult.SUCCESS, SpanExportResult.FAILURE),
            "span",
            _sdk_logger,
        )

    def shutdown(self) -> None:
        """The SDK's, after ending a wait for the endpoint (:func:`._otlp_http.stop_waiting`)."""
        event = getattr(self, "chaperone_stop_waiting", None)
        if event is not None:
            event.set()
        super().shutdown()  # type: ignore[no-untyped-call]
