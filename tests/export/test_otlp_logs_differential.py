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
import inspect
import math
import random
import types
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

_WORDS = ("etl", "é", "ß", "日本", "🦆", "", "a b", '"q"', "\\", "z" * 125, "x" * 130, "y" * 300)
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


def _mismatch(
    batch: Sequence[ReadableLogRecord],
    encode: Callable[[Sequence[Any]], bytes | None] = encode_logs,
) -> str | None:
    """Why ``encode`` (chaperone's encoder) and the SDK's disagree on ``batch``, or None."""
    expected = sdk_encode(batch).SerializeToString()
    fast = encode(batch)
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


MUTANTS = {
    # name: (a line of _otlp_logs, what a broken encoder has instead)
    "bool as int": ('b"\\x12\\x02\\x10\\x01" if value', 'b"\\x12\\x02\\x18\\x01" if value'),
    "nested bool as int": ('_T_BOOL_TRUE = b"\\x10\\x01"', '_T_BOOL_TRUE = b"\\x18\\x01"'),
    "-0.0 as 0.0": (
        'b"\\x12\\x09\\x21" + _pack_double(value)',
        'b"\\x12\\x09\\x21" + _pack_double(value + 0.0)',
    ),
    "nested -0.0 as 0.0": (
        "_T_DOUBLE + _pack_double(value)",
        "_T_DOUBLE + _pack_double(value + 0.0)",
    ),
    "negative ints as zigzag": ("_varint(value + (1 << 64))", "_varint((-value << 1) - 1)"),
    "one-byte ints up to 255": ("0 <= value < 128", "0 <= value < 256"),
    "one-byte string lengths up to 129": ("if n < 126", "if n < 128"),
    "attributes reordered": (
        "for key, value in _items(attributes):",
        "for key, value in reversed(list(_items(attributes))):",
    ),
    "last attribute dropped": (
        "for key, value in _items(attributes):",
        "for key, value in list(_items(attributes))[:-1]:",
    ),
    "bounded attributes: first dropped": (
        "return list(pairs.items())",
        "return list(pairs.items())[1:]",
    ),
    "empty body left out": (
        "parts.append(_field(_L_BODY, _any_value(record.body)))",
        "parts.append(_field(_L_BODY, _any_value(record.body)) if record.body else b'')",
    ),
    "dropped attributes count left out": ("parts.append(_L_DROPPED + _varint(dropped))", "pass"),
    "flags left out": ("parts.append(_L_FLAGS + _pack_fixed32(int(flags)))", "pass"),
    "event name left out": ("parts.append(_string(_L_EVENT_NAME, record.event_name))", "pass"),
    "scope schema url left out": ('scope_logs += _string(b"\\x1a", scope.schema_url)', "pass"),
    "resource schema url left out": (
        'parts.append(_string(b"\\x1a", resource.schema_url))',
        "pass",
    ),
    "scopes grouped with their attributes": (
        "scope = readable.instrumentation_scope or None",
        "scope = readable.instrumentation_scope or None\n"
        "        scope = _Scoped(scope) if scope is not None else None",
    ),
}

_SCOPED = """
class _Scoped:
    def __init__(self, scope):
        self.name, self.version = scope.name, scope.version
        self.schema_url, self.attributes = scope.schema_url, scope.attributes
        self._key = (self.name, self.version, self.schema_url, repr(self.attributes))
    def __eq__(self, other):
        return isinstance(other, _Scoped) and self._key == other._key
    def __hash__(self):
        return hash(self._key)
"""


def _mutant(old: str, new: str) -> Callable[[Sequence[Any]], bytes | None]:
    """``encode_logs`` of a copy of the encoder's source with ``old`` replaced by ``new``."""
    source = inspect.getsource(_otlp_logs)
    assert source.count(old) == 1, old
    module = types.ModuleType("_otlp_logs_mutant")
    module.__package__ = _otlp_logs.__package__  # its relative imports
    code = compile(source.replace(old, new) + _SCOPED, "<mutant>", "exec")
    exec(code, module.__dict__)
    encode: Callable[[Sequence[Any]], bytes | None] = module.encode_logs
    return encode


def test_an_unchanged_copy_of_the_encoder_passes() -> None:
    """The harness itself: the copy (with nothing replaced) agrees everywhere."""
    encode = _mutant("def _varint(", "def _varint(")
    assert not any(_mismatch(batch, encode) for batch in _batches())


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_comparison_fails_when_the_fast_encoder_is_broken(mutant: str) -> None:
    encode = _mutant(*MUTANTS[mutant])
    assert any(_mismatch(batch, encode) for batch in _batches()), mutant


def test_the_comparison_fails_when_resources_are_grouped_by_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two equal resources in distinct objects are one ``ResourceLogs`` for the SDK."""

    class _Id:  # a resource equal to no other object
        def __init__(self, r: Any) -> None:
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

    monkeypatch.setattr(_otlp_logs, "_encode", encode)
    assert any(_mismatch(batch) for batch in _batches())
