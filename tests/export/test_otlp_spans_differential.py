"""Differential test of chaperone's OTLP span encoder against the OTel SDK's.

``chaperone_otel.export._otlp_spans.encode_spans`` must send exactly what the SDK's
``encode_spans(spans).SerializePartialToString()`` sends. Random batches of SDK spans
(seeded): several resources and scopes (equal objects grouped), every ``AnyValue`` kind
nested in span, event and link attributes (``test_otlp_logs_differential``'s values), ids
at their extremes, trace states, local and remote parents, every kind, every status with and
without a description, events and links with dropped attributes, dropped attributes, events
and links, unset times. Parsed messages must be equal and the bytes identical, and a broken
encoder must fail the comparison.
"""

from __future__ import annotations

import inspect
import random
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from chaperone_otel.export import _otlp_spans
from chaperone_otel.export._otlp_spans import encode_spans, encode_spans_or_sdk

from .test_otlp_logs_differential import _attributes, _resource, _scope, _word

BATCHES = 200


def _bounded(rng: random.Random, attributes: dict[str, Any]) -> Any:
    if rng.random() < 0.3:
        return BoundedAttributes(maxlen=rng.randrange(3), attributes=attributes)
    return attributes


def _context(rng: random.Random) -> SpanContext:
    state = TraceState([("k", _word(rng) or "v"), ("vendor", "x")]) if rng.random() < 0.3 else None
    return SpanContext(
        trace_id=rng.choice((0, 1, 2**128 - 1, rng.getrandbits(128))),
        span_id=rng.choice((0, 1, 2**64 - 1, rng.getrandbits(64))),
        is_remote=rng.random() < 0.3,
        trace_state=state,
    )


def _listed(rng: random.Random, items: list[Any]) -> Any:
    if rng.random() < 0.3:  # past the SDK's limit: a dropped count
        bounded = BoundedList(maxlen=rng.randrange(3))
        bounded.extend(items)
        return bounded
    return items


def _span(rng: random.Random, resource: Resource, scope: Any) -> ReadableSpan:
    events = [
        Event(
            rng.choice(("exception", "", "é")),
            _bounded(rng, _attributes(rng, 4)),
            rng.choice((None, 0, 1_700_000_000_000_000_000)),
        )
        for _ in range(rng.randrange(4))
    ]
    links = [
        Link(_context(rng), _bounded(rng, _attributes(rng, 3))) for _ in range(rng.randrange(3))
    ]
    code = rng.choice(tuple(StatusCode))
    description = rng.choice((None, "", "boom é")) if code is StatusCode.ERROR else None
    return ReadableSpan(
        name=rng.choice(("run", "", "job é", "x" * 200)),
        context=_context(rng),
        parent=_context(rng) if rng.random() < 0.6 else None,
        resource=resource,
        attributes=_bounded(rng, _attributes(rng, 12)),
        events=_listed(rng, events),
        links=_listed(rng, links),
        kind=rng.choice(tuple(SpanKind)),
        instrumentation_scope=scope,
        status=Status(code, description),
        start_time=rng.choice((None, 0, 1_700_000_000_000_000_000)),
        end_time=rng.choice((None, 2**64 - 1, 1_700_000_000_500_000_000)),
    )


def random_spans(rng: random.Random) -> list[ReadableSpan]:
    resources = [_resource(rng) for _ in range(rng.randrange(1, 4))]
    resources.append(Resource(dict(resources[0].attributes), resources[0].schema_url))
    scopes = [_scope(rng) for _ in range(rng.randrange(1, 4))]
    return [_span(rng, rng.choice(resources), rng.choice(scopes)) for _ in range(rng.randrange(30))]


def _batches() -> Iterator[list[ReadableSpan]]:
    rng = random.Random(20261207)
    for _ in range(BATCHES):
        yield random_spans(rng)


def _mismatch(
    batch: Sequence[ReadableSpan],
    encode: Callable[[Sequence[Any]], bytes | None] = encode_spans,
) -> str | None:
    expected = sdk_encode(batch).SerializePartialToString()
    fast = encode(batch)
    if fast is None:
        return "fell back to the SDK's encoder"
    try:
        parsed = ExportTraceServiceRequest.FromString(fast)
    except Exception as exc:
        return f"not a valid request: {exc!r}"
    if parsed != ExportTraceServiceRequest.FromString(expected):
        return "different messages"
    if fast != expected:
        return "different bytes"
    return None


def test_random_spans_encode_as_the_sdk_encodes_them() -> None:
    batches = list(_batches())
    assert sum(len(b) for b in batches) > 2_000
    for n, batch in enumerate(batches):
        assert _mismatch(batch) is None, f"batch {n}: {_mismatch(batch)}"


def test_real_spans_encode_as_the_sdk_encodes_them() -> None:
    """Spans ended through a real SDK tracer: nested, with events, an exception, links."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("chaperone_otel", "0.1")
    for n in range(20):
        with tracer.start_as_current_span("outer", attributes={"n": n}) as outer:
            outer.add_event("progress", {"ratio": n / 20})
            try:
                with tracer.start_as_current_span(
                    "inner", kind=SpanKind.CONSUMER, links=[Link(outer.get_span_context())]
                ):
                    raise ValueError("boom")
            except ValueError:
                pass
    provider.shutdown()
    assert _mismatch(exporter.get_finished_spans()) is None


def test_an_unusual_attribute_sends_the_whole_batch_through_the_sdks_encoder() -> None:
    batch = random_spans(random.Random(3))
    odd = ReadableSpan(name="odd", context=_context(random.Random(4)), attributes={"s": {1, 2}})
    batch.append(odd)
    assert encode_spans(batch) is None
    assert encode_spans_or_sdk(batch) == sdk_encode(batch).SerializePartialToString()


MUTANTS = {
    "trace state left out": ("_trace_state(context.trace_state),", "b'',"),
    "parent id left out": ('b"\\x22\\x08" + _id(parent.span_id, 8) if parent else b""', "b''"),
    "remote parent not flagged": ("return _HAS_IS_REMOTE | _IS_REMOTE", "return _HAS_IS_REMOTE"),
    "kinds shifted": ('SpanKind.SERVER: b"\\x30\\x02"', 'SpanKind.SERVER: b"\\x30\\x03"'),
    "end time left out": ('_fixed64(b"\\x41", span.end_time),', "b'',"),
    "events left out": (
        'parts.append(_field(b"\\x5a", _event(event, attributes)))',
        "pass",
    ),
    "dropped events left out": ('parts.append(_count(b"\\x60", span.dropped_events))', "pass"),
    "link flags left out": (
        '+ b"\\x35"\n        + _pack_fixed32(_flags(context))',
        "+ b''",
    ),
    "empty status left out": (
        'return _field(b"\\x7a", payload)',
        "return _field(b'\\x7a', payload) if payload else b''",
    ),
    "status description left out": ('_string(b"\\x12", status.description)', "b''"),
    "event dropped count left out": (
        '+ _count(b"\\x20", event.dropped_attributes)',
        "",
    ),
}


def _mutant(old: str, new: str) -> Callable[[Sequence[Any]], bytes | None]:
    source = inspect.getsource(_otlp_spans)
    assert source.count(old) == 1, old
    module = types.ModuleType("_otlp_spans_mutant")
    module.__package__ = "chaperone_otel.export"
    exec(compile(source.replace(old, new), "<mutant>", "exec"), module.__dict__)
    encode: Callable[[Sequence[Any]], bytes | None] = module.encode_spans
    return encode


def test_an_unchanged_copy_of_the_encoder_passes() -> None:
    encode = _mutant("def _flags(", "def _flags(")
    assert not any(_mismatch(batch, encode) for batch in _batches())


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_comparison_fails_when_the_span_encoder_is_broken(mutant: str) -> None:
    encode = _mutant(*MUTANTS[mutant])
    assert any(_mismatch(batch, encode) for batch in _batches()), mutant
