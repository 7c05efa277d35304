"""Differential test of chaperone's OTLP log encoder against the OTel SDK's.

``chaperone_otel.export._otlp_logs.encode_logs`` writes the protobuf bytes of an
``ExportLogsServiceRequest`` by hand (issue 16: the SDK's encoder is most of what a
supervised run costs its process with OTLP export). It must send exactly what the SDK's
``encode_logs(batch).SerializeToString()`` sends. Random batches of real SDK log records
(seeded, reproducible): several resources and scopes (equal but distinct objects too, which
the SDK groups together), every ``AnyValue`` kind nested, int64 extremes, NaN, infinities
and -0.0, unicode and empty strings, empty and set trace and span ids, flags, event names,
severities, dropped attributes, schema urls. Both are parsed and compared as messages
(upb's equality: ``-0.0`` is not ``0.0``, a present empty message is not an absent one), and
the bytes must be identical too. The fast path must really be taken (no fallback).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import TraceFlags

from chaperone_otel.export import _otlp_logs
from chaperone_otel.export._otlp_logs import encode_logs, encode_logs_or_sdk

BATCHES = 300

_WORDS = ("etl", "é", "ß", "日本", "🦆", "", "a b", '"q"', "\\", "x" * 130, "y" * 300)
_FLOATS = (0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, math.nan, math.inf, -math.inf, 5e-324)
_INTS = (0, 1, -1, 127, 128, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 300, -300)


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS) + (str(rng.randrange(3)) if rng.random() < 0.7 else "")


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return _word(rng)
    if kind == 1:
        return rng.choice(_INTS)
    if kind == 2:
        return rng.choice(_FLOATS)
    if kind == 3:
        return rng.random() < 0.5
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 200))))
    if kind == 5:
        return None
    if kind in (6, 7):
        values = [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
        return values if kind == 6 else tuple(values)
    if kind == 8:
        return {_word(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_word(rng) for _ in range(rng.randrange(200))]  # a long array: 2-byte lengths


def _attributes(rng: random.Random, most: int) -> dict[str, Any]:
    return {_word(rng): _value(rng) for _ in range(rng.randrange(most))}


def _resource(rng: random.Random) -> Resource:
    return Resource(_attributes(rng, 5), schema_url=rng.choice(("", "https://s/1", "")))


def _scope(rng: random.Random) -> InstrumentationScope | None:
    if rng.random() < 0.15:
        return None
    return InstrumentationScope(
        rng.choice(("chaperone_otel", "app", "")),
        rng.choice((None, "1.0", "")),
        rng.choice((None, "https://s/2", "")),
        _attributes(rng, 3) if rng.random() < 0.5 else None,
    )


def _record(rng: random.Random, resource: Resource, scope: Any) -> ReadableLogRecord:
    attributes: Any = _attributes(rng, 12)
    if rng.random() < 0.3:  # what the SDK does past its attribute limit: a dropped count
        attributes = BoundedAttributes(maxlen=rng.randrange(4), attributes=attributes)
    record = LogRecord(
        timestamp=rng.choice((None, 0, 1, 1_700_000_000_123_456_789, 2**64 - 1)),
        observed_timestamp=rng.choice((0, 1_700_000_001_000_000_000)),
        trace_id=rng.choice((0, 1, 2**128 - 1, rng.getrandbits(128))),
        span_id=rng.choice((0, 1, 2**64 - 1, rng.getrandbits(64))),
        trace_flags=TraceFlags(rng.choice((0, 1, 255))),
        severity_text=rng.choice((None, "", "INFO", "Error")),
        severity_number=rng.choice((None, *SeverityNumber)),
        body=_value(rng) if rng.random() < 0.8 else None,
        attributes=attributes,
        event_name=rng.choice((None, "", "chaperone.job.started", "évent")),
    )
    return ReadableLogRecord(log_record=record, resource=resource, instrumentation_scope=scope)


def random_batch(rng: random.Random) -> list[ReadableLogRecord]:
    resources = [_resource(rng) for _ in range(rng.randrange(1, 4))]
    # An equal resource in another object: the SDK groups by equality, not identity.
    resources.append(Resource(dict(resources[0].attributes), resources[0].schema_url))
    scopes = [_scope(rng) for _ in range(rng.randrange(1, 4))]
    if scopes[0] is not None:  # equal (name, version, schema url), other attributes
        first = scopes[0]
        scopes.append(InstrumentationScope(first.name, first.version, first.schema_url, {"o": 1}))
    return [
        _record(rng, rng.choice(resources), rng.choice(scopes)) for _ in range(rng.randrange(0, 40))
    ]


def _batches() -> Iterator[list[ReadableLogRecord]]:
    rng = random.Random(20261206)
    for _ in range(BATCHES):
        yield random_batch(rng)


def _mismatch(batch: Sequence[ReadableLogRecord]) -> str | None:
    """Why the two encoders disagree on ``batch``, or None when they agree."""
    expected = sdk_encode(batch).SerializeToString()
    fast = encode_logs(batch)
    if fast is None:
        return "fell back to the SDK's encoder"
    try:
        parsed = ExportLogsServiceRequest.FromString(fast)
    except Exception as exc:  # a malformed encoding: a disagreement too
        return f"not a valid request: {exc!r}"
    if parsed != ExportLogsServiceRequest.FromString(expected):
        return "different messages"
    if fast != expected:
        return "different bytes"
    return None


def test_random_batches_encode_as_the_sdk_encodes_them() -> None:
    batches = list(_batches())
    assert sum(len(b) for b in batches) > 3_000
    groups = [len(sdk_encode(b).resource_logs) for b in batches]
    assert max(groups) >= 3  # several resources and scopes per request were exercised
    for n, batch in enumerate(batches):
        assert _mismatch(batch) is None, f"batch {n}: {_mismatch(batch)}"


def test_real_records_encode_as_the_sdk_encodes_them() -> None:
    """Records emitted through a real SDK logger (the path every exported record takes)."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("chaperone_otel", "0.1")
    for n in range(50):
        logger.emit(
            timestamp=1_700_000_000_000_000_000 + n,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=f"run {n}",
            attributes={"chaperone.job.run.id": f"r{n}", "chaperone.job.attempt": n, "x": 0.5},
            event_name="chaperone.job.finished",
        )
    provider.shutdown()
    assert _mismatch(exporter.get_finished_logs()) is None


class _Color(enum.IntEnum):
    RED = 1


class _Floaty(float):
    pass


class _Seq(Sequence[int]):
    def __getitem__(self, i: Any) -> Any:
        return [1, 2][i]

    def __len__(self) -> int:
        return 2


@pytest.mark.parametrize(
    "value",
    [_Color.RED, 2**63, -(2**63) - 1, _Floaty(1.0), {1, 2}, _Seq(), bytearray(b"ab"), {1: "a"}],
    ids=[
        "IntEnum",
        "int64+1",
        "int64-1",
        "float subclass",
        "set",
        "Sequence",
        "bytearray",
        "int key",
    ],
)
def test_an_unusual_value_sends_the_whole_batch_through_the_sdks_encoder(value: Any) -> None:
    rng = random.Random(1)
    batch = random_batch(rng)
    resource = Resource({"service.name": "svc"})
    record = LogRecord(timestamp=1, observed_timestamp=2, attributes={"odd": value, "k": "v"})
    batch.append(ReadableLogRecord(log_record=record, resource=resource))
    assert encode_logs(batch) is None
    # What the SDK does with it (skip the attribute, or encode it its way) is what is sent.
    assert encode_logs_or_sdk(batch) == sdk_encode(batch).SerializeToString()


_BROKEN: dict[str, Callable[[pytest.MonkeyPatch], None]] = {}


def _broken(name: str) -> Callable[[Callable[[pytest.MonkeyPatch], None]], Any]:
    def register(fn: Callable[[pytest.MonkeyPatch], None]) -> Any:
        _BROKEN[name] = fn
        return fn

    return register


@_broken("bool as int")
def _bool_as_int(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(_otlp_logs, "_T_BOOL_TRUE", b"\x18\x01")


@_broken("-0.0 as 0.0")
def _negative_zero(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._any_value
    mp.setattr(
        _otlp_logs, "_any_value", lambda v: real(0.0) if type(v) is float and v == 0 else real(v)
    )


@_broken("last attribute dropped")
def _drop_last(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._Attributes.encode
    mp.setattr(
        _otlp_logs._Attributes,
        "encode",
        lambda self, a, tag: real(self, dict(list(a.items())[:-1]) if a else a, tag),
    )


@_broken("attributes reordered")
def _reorder(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._Attributes.encode
    mp.setattr(
        _otlp_logs._Attributes,
        "encode",
        lambda self, a, tag: real(self, dict(reversed(list(a.items()))) if a else a, tag),
    )


@_broken("event name left out")
def _no_event_name(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._string
    mp.setattr(_otlp_logs, "_string", lambda tag, v: b"" if tag == b"\x62" else real(tag, v))


@_broken("negative ints as zigzag")
def _zigzag(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._any_value

    def encode(v: Any) -> bytes:
        if type(v) is int and v < 0:
            return b"\x18" + _otlp_logs._varint((-v << 1) - 1)
        return real(v)

    mp.setattr(_otlp_logs, "_any_value", encode)


@_broken("resources grouped by identity")
def _by_identity(mp: pytest.MonkeyPatch) -> None:
    class _Id:
        def __init__(self, r: Any) -> None:
            self.r = r
            self.attributes, self.schema_url = r.attributes, r.schema_url

    real = _otlp_logs._encode

    def encode(batch: Sequence[Any]) -> bytes:
        wrapped = {id(b.resource): _Id(b.resource) for b in batch}
        return real(
            [
                ReadableLogRecord(b.log_record, wrapped[id(b.resource)], b.instrumentation_scope)
                for b in batch
            ]
        )

    mp.setattr(_otlp_logs, "_encode", encode)


@_broken("dropped attributes count left out")
def _no_dropped(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(_otlp_logs, "_L_DROPPED", b"\x40")  # field 8 as a varint: the wrong field


@_broken("empty body left out")
def _no_empty_body(mp: pytest.MonkeyPatch) -> None:
    real = _otlp_logs._field
    mp.setattr(
        _otlp_logs, "_field", lambda tag, p: b"" if tag == b"\x2a" and not p else real(tag, p)
    )


@pytest.mark.parametrize("breakage", sorted(_BROKEN))
def test_the_comparison_fails_when_the_fast_encoder_is_broken(
    breakage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _BROKEN[breakage](monkeypatch)
    assert any(_mismatch(batch) for batch in _batches()), breakage
