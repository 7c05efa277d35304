"""OTLP decoding: real SDK payloads (protobuf and OTLP JSON, gzip or not) become the same
lifecycle records the in-process path publishes; foreign telemetry is skipped; bad input
raises a typed error."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from chaperone_otel import current_job, heartbeat, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._implied import slim
from chaperone_otel.sink import _otlp
from chaperone_otel.sink._otlp import (
    OTLPDecodeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    decode,
    decode_logs,
    decode_traces,
    decompress,
    encode_error,
    encode_response,
    media_type,
)
from chaperone_otel.sink._records import SpanRecord
from chaperone_otel.testing import capture


def to_otlp_json(message: Any) -> bytes:
    """OTLP JSON per the spec: camelCase, enums as ints, ids as hex (protobuf's own JSON
    printer writes base64 ids, which OTLP forbids)."""
    tree = MessageToDict(message, use_integers_for_enums=True)

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                is_id = key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str)
                out[key] = base64.b64decode(value).hex() if is_id else fix(value)
            return out
        if isinstance(node, list):
            return [fix(x) for x in node]
        return node

    return json.dumps(fix(tree)).encode()


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def workload() -> dict[str, Any]:
    """Two real runs (completed with progress, failed) captured with the real SDK."""
    with capture() as cap:
        @supervised(name="etl.ok", queue="q1", heartbeat_interval=5)
        def ok() -> None:
            job = current_job(required=True)
            for i in range(3):
                job.heartbeat({"i": i})
                job.report_progress(i + 1, 3)
            cap.tick()

        @supervised(name="etl.bad", heartbeat_interval=5)
        def bad() -> None:
            heartbeat()
            raise Boom("kaput")

        ok()
        with pytest.raises(Boom):
            bad()
        records = list(cap.records)
        logs = cap.log_records()
        spans = cap.spans()
        assert len(logs) == len(records) >= 5
        return {
            "records": records,
            "logs_pb": encode_logs(logs),
            "spans_pb": encode_spans(spans),
            "spans": spans,
        }


def _comparable(record: Any) -> tuple[Any, ...]:
    attrs = dict(record.attributes)
    attrs.pop(sc.ATTR_SERVICE_NAME, None)  # added from the resource by the decoder
    return (record.event_name, round(record.timestamp, 6), attrs, record.trace_id,
            record.span_id, record.severity, record.body)


def _comparable_span(record: SpanRecord) -> tuple[Any, ...]:
    return (record.start_time, record.end_time, dict(record.attributes), record.trace_id,
            record.span_id)


def _normalise(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


def test_protobuf_logs_decode_to_the_in_process_records(workload: dict[str, Any]) -> None:
    """Every lifecycle record the runtime published comes back identical from OTLP protobuf,
    less what the OTel writer leaves out of started/finished records (``_implied.slim``)."""
    body = workload["logs_pb"].SerializeToString()
    decoded = decode_logs(body, "protobuf")
    expected = [_comparable(r) for r in workload["records"]]
    got = [_comparable(r) for r in decoded]
    assert [g[0] for g in got] == [e[0] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[0] == e[0]
        assert abs(g[1] - e[1]) < 1e-6
        assert g[2] == _normalise(dict(slim(e[0], e[2])))
        assert g[3:] == e[3:]
    resource = workload["logs_pb"].resource_logs[0].resource
    service = next(kv.value.string_value for kv in resource.attributes
                   if kv.key == sc.ATTR_SERVICE_NAME)
    assert service
    assert all(r.attributes[sc.ATTR_SERVICE_NAME] == service for r in decoded)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", None])
def test_json_and_compression_give_the_same_records(workload: dict[str, Any],
                                                    encoding: str | None) -> None:
    """OTLP JSON (hex ids, string int64) and protobuf decode to equal records, compressed
    or not."""
    reference = decode_logs(workload["logs_pb"].SerializeToString(), "protobuf")
    body = to_otlp_json(workload["logs_pb"])
    assert b'"intValue": "' in body  # int64 as strings, as the spec's JSON mapping writes
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    decoded = decode_logs(body, "json", encoding)
    assert [_comparable(r) for r in decoded] == [_comparable(r) for r in reference]


def test_snake_case_json_and_enum_names_are_accepted(workload: dict[str, Any]) -> None:
    """Protobuf-style JSON (snake_case keys, enum names) is tolerated."""
    reference = decode_logs(workload["logs_pb"].SerializeToString(), "protobuf")
    tree = MessageToDict(workload["logs_pb"], preserving_proto_field_name=True)
    for rl in tree["resource_logs"]:
        for sl in rl["scope_logs"]:
            for lr in sl["log_records"]:
                lr["trace_id"] = base64.b64decode(lr["trace_id"]).hex()
                lr["span_id"] = base64.b64decode(lr["span_id"]).hex()
                assert lr["severity_number"].startswith("SEVERITY_NUMBER_")
    decoded = decode_logs(json.dumps(tree).encode(), "json")
    assert [_comparable(r) for r in decoded] == [_comparable(r) for r in reference]


def test_run_spans_become_span_records_with_error_trace(workload: dict[str, Any]) -> None:
    """A finished run span yields one span record (not a lifecycle record): times, status
    and the exception's message and stack trace; JSON gives the same."""
    records = decode_traces(workload["spans_pb"].SerializeToString())
    assert [type(r) for r in records] == [SpanRecord] * 2
    by_name = {r.attributes[sc.ATTR_JOB_NAME]: r for r in records}
    ok, bad = by_name["etl.ok"], by_name["etl.bad"]
    assert ok.attributes[sc.ATTR_JOB_STATUS] == "completed"
    assert bad.attributes[sc.ATTR_JOB_STATUS] == "failed"
    assert bad.attributes[sc.ATTR_ERROR_MESSAGE] == "kaput"
    assert "Boom" in str(bad.attributes[sc.ATTR_ERROR_TYPE])
    assert "raise Boom" in str(bad.attributes[sc.ATTR_ERROR_STACKTRACE])
    span = next(s for s in workload["spans"] if s.name == "etl.bad")
    assert bad.trace_id == span.context.trace_id
    assert bad.span_id == span.context.span_id
    assert bad.attributes[sc.ATTR_JOB_STARTED_AT] == pytest.approx(span.start_time / 1e9)
    assert bad.attributes[sc.ATTR_JOB_FINISHED_AT] == pytest.approx(span.end_time / 1e9)
    again = decode_traces(to_otlp_json(workload["spans_pb"]), "json")
    assert [_comparable_span(r) for r in again] == [_comparable_span(r) for r in records]


def _log(event: str | None = None, attrs: dict[str, Any] | None = None,
         **fields: Any) -> logs_pb2.LogRecord:
    kvs = [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
           for k, v in (attrs or {}).items()]
    return logs_pb2.LogRecord(event_name=event or "", attributes=kvs, **fields)


def _request(*records: logs_pb2.LogRecord) -> bytes:
    req = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[
        logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=list(records))])])
    return req.SerializeToString()


def _kv(key: str, value: Any) -> common_pb2.KeyValue:
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def _span(attrs: dict[str, Any], *, code: int = 0, events: dict[str, dict[str, Any]] | None = None,
          **fields: Any) -> trace_pb2.Span:
    return trace_pb2.Span(
        name="s", trace_id=b"\1" * 16, span_id=b"\2" * 8,
        start_time_unix_nano=1_000_000_000, end_time_unix_nano=4_000_000_000,
        attributes=[_kv(k, v) for k, v in attrs.items()],
        status=trace_pb2.Status(code=code),  # type: ignore[arg-type]
        events=[trace_pb2.Span.Event(name=n, attributes=[_kv(k, v) for k, v in a.items()])
                for n, a in (events or {}).items()],
        **fields)


def test_span_state_comes_from_status_and_exception_event_in_both_encodings() -> None:
    """Each encoding gives the same span records: a foreign span is ignored, a run span with
    an unusable attempt rejected; the exception event's ``exception.type`` becomes the
    error type, the span's ERROR status a ``failed`` run (an OK span a ``completed`` one),
    unless the span's own attributes say otherwise; the resource adds ``service.name``."""
    run = {sc.ATTR_JOB_RUN_ID: "r1", sc.ATTR_JOB_NAME: "n"}
    exception = {"exception.type": "mod.Boom", sc.ATTR_ERROR_MESSAGE: "kaput",
                 sc.ATTR_ERROR_STACKTRACE: "Traceback ..."}
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(_kv(sc.ATTR_SERVICE_NAME, "svc"))
    rs.scope_spans.add().spans.extend([
        _span({"http.route": "/"}),
        _span({**run, sc.ATTR_JOB_ATTEMPT: "x"}),
        _span(run, code=2, events={"other": {"exception.type": "no"}, "exception": exception}),
        _span({**run, sc.ATTR_JOB_RUN_ID: "r2"}, code=1),
        _span({**run, sc.ATTR_JOB_RUN_ID: "r3", sc.ATTR_JOB_STATUS: "cancelled"}, code=2),
    ])
    pb = decode("traces", request.SerializeToString(), "protobuf")
    js = decode("traces", to_otlp_json(request), "json")
    for out in (pb, js):
        assert (out.ignored, out.rejected) == (1, 1)
        assert sc.ATTR_JOB_ATTEMPT in out.error
        assert all(isinstance(r, SpanRecord) for r in out.records)
        failed, ok, cancelled = (dict(r.attributes) for r in out.records)
        assert failed[sc.ATTR_JOB_STATUS] == "failed"
        assert failed[sc.ATTR_ERROR_TYPE] == "mod.Boom"
        assert failed[sc.ATTR_ERROR_MESSAGE] == "kaput"
        assert failed[sc.ATTR_ERROR_STACKTRACE] == "Traceback ..."
        assert failed[sc.ATTR_SERVICE_NAME] == "svc"
        assert (failed[sc.ATTR_JOB_STARTED_AT], failed[sc.ATTR_JOB_FINISHED_AT]) == (1.0, 4.0)
        assert failed[sc.ATTR_JOB_DURATION] == 3.0
        assert ok[sc.ATTR_JOB_STATUS] == "completed"
        assert sc.ATTR_ERROR_TYPE not in ok
        assert cancelled[sc.ATTR_JOB_STATUS] == "cancelled"
    assert [_comparable_span(r) for r in js.records] == [  # type: ignore[arg-type]
        _comparable_span(r) for r in pb.records]  # type: ignore[arg-type]


def test_foreign_telemetry_is_ignored_and_old_event_attribute_is_accepted() -> None:
    """Other logs are skipped without error; ``event.name`` as an attribute (older SDKs)
    counts; a chaperone event without a run id is rejected via partial success."""
    run = {sc.ATTR_JOB_RUN_ID: "r1", sc.ATTR_JOB_NAME: "n"}
    body = _request(
        _log(None, {"msg": "unrelated"}),
        _log("some.other.event", run),
        _log(None, {"event.name": sc.EVENT_JOB_STARTED, **run}, time_unix_nano=2_000_000_000),
        _log(sc.EVENT_JOB_HEARTBEAT, {sc.ATTR_JOB_NAME: "n"}),
    )
    out = decode("logs", body, "protobuf")
    assert [r.event_name for r in out.records] == [sc.EVENT_JOB_STARTED]
    assert out.records[0].timestamp == 2.0
    assert "event.name" not in out.records[0].attributes
    assert (out.ignored, out.rejected) == (2, 1)
    assert sc.ATTR_JOB_RUN_ID in out.error
    spans = trace_service_pb2.ExportTraceServiceRequest()
    spans.resource_spans.add().scope_spans.add().spans.add(name="http", trace_id=b"\1" * 16,
                                                           span_id=b"\2" * 8)
    assert decode("traces", spans.SerializeToString(), "protobuf").ignored == 1
    assert decode("logs", b"", "protobuf").records == []
    assert decode("logs", b"{}", "json").records == []


@pytest.mark.parametrize("body", [
    b"\xff\xff\xff\xff",  # invalid varint / wire type
    b"\x0a\x05\x0a",  # length-delimited field truncated
    _request(_log(sc.EVENT_JOB_STARTED, {sc.ATTR_JOB_RUN_ID: "r"}, trace_id=b"abc")),
])
def test_malformed_protobuf_raises(body: bytes) -> None:
    """Garbage, truncated messages and wrong-length ids are OTLPDecodeError (→ 400)."""
    with pytest.raises(OTLPDecodeError):
        decode("logs", body, "protobuf")


_GOOD_LOG = {"eventName": sc.EVENT_JOB_STARTED, "attributes": [
    {"key": sc.ATTR_JOB_RUN_ID, "value": {"stringValue": "r"}}]}


def _json_req(log: dict[str, Any]) -> bytes:
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [log]}]}]}).encode()


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b'{"resourceLogs": {}}',
    b"\xff\xfe",
    _json_req({**_GOOD_LOG, "traceId": "zz" * 16}),
    _json_req({**_GOOD_LOG, "spanId": "abcd"}),
    _json_req({**_GOOD_LOG, "spanId": "-000000000000001"}),
    _json_req({**_GOOD_LOG, "spanId": " +0_0_0_0_0_0_1 "}),
    _json_req({**_GOOD_LOG, "traceId": "0x" + "0" * 29 + "1"}),
    _json_req({**_GOOD_LOG, "timeUnixNano": "soon"}),
    _json_req({**_GOOD_LOG, "attributes": [{"key": 1, "value": {"stringValue": "x"}}]}),
    _json_req({**_GOOD_LOG, "attributes": [{"key": "k", "value": {"intValue": "x"}}]}),
    _json_req({**_GOOD_LOG, "attributes": [{"key": "k", "value": {"boolValue": "yes"}}]}),
    b"[" * 100_000,
])
def test_malformed_json_raises(body: bytes) -> None:
    """Syntax errors, wrong shapes and bad field values are OTLPDecodeError, before any
    record is produced."""
    with pytest.raises(OTLPDecodeError):
        decode("logs", body, "json")


def test_json_value_kinds() -> None:
    """Every AnyValue kind maps to a flat attribute value."""
    attrs = [
        {"key": sc.ATTR_JOB_RUN_ID, "value": {"stringValue": "r"}},
        {"key": "i", "value": {"intValue": "9007199254740993"}},
        {"key": "i2", "value": {"intValue": 7}},
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
        {"key": "kv", "value": {"kvlistValue": {"values": [
            {"key": "n", "value": {"intValue": "1"}}]}}},
        {"key": "bytes", "value": {"bytesValue": "AAE="}},
        {"key": "empty", "value": {}},
    ]
    (record,) = decode_logs(_json_req({**_GOOD_LOG, "attributes": attrs}), "json")
    a = record.attributes
    assert a["i"] == 9007199254740993
    assert a["i2"] == 7
    assert a["d"] == 1.5
    assert a["nan"] != a["nan"]
    assert a["b"] is True
    assert a["a"] == ("x",)
    assert json.loads(str(a["kv"])) == {"n": 1}
    assert a["bytes"] == "AAE="
    assert "empty" not in a


def _nested_pb(depth: int) -> bytes:
    request = logs_service_pb2.ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.event_name = sc.EVENT_JOB_STARTED
    record.attributes.add(key=sc.ATTR_JOB_RUN_ID).value.string_value = "r"
    value = record.attributes.add(key="meta").value
    for _ in range(depth):
        value = value.kvlist_value.values.add(key="k").value
    value.string_value = 'a "quoted" \\ leaf'
    return request.SerializeToString()


def _nested_json(depth: int) -> bytes:
    value: dict[str, Any] = {"stringValue": 'a "quoted" \\ leaf'}
    for _ in range(depth):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    attributes = [*_GOOD_LOG["attributes"], {"key": "meta", "value": value}]
    return _json_req({**_GOOD_LOG, "attributes": attributes})


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_nested_key_value_lists_are_written_as_json_once(encoding: str) -> None:
    """A key-value list inside a key-value list is nested JSON data, not a JSON string
    escaped again at every level: its size doubled per level, so ~300 bytes of nesting
    decoded to 16 M characters (and ~2 KB took a server past 900 MiB)."""
    body = _nested_pb if encoding == "protobuf" else _nested_json
    (record,) = decode_logs(body(3), encoding)
    assert json.loads(str(record.attributes["meta"])) == {
        "k": {"k": {"k": 'a "quoted" \\ leaf'}}
    }
    (deep,) = decode_logs(body(20), encoding)
    assert len(str(deep.attributes["meta"])) < 300  # linear: 20 levels of {"k": and the leaf


def test_decompress_limits_and_errors() -> None:
    """A gzip bomb stops at the cap; corrupt or truncated streams and unknown encodings are
    typed errors; concatenated gzip members are one body."""
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    with pytest.raises(PayloadTooLargeError):
        decompress(bomb, "gzip", max_size=1024 * 1024)
    assert len(decompress(bomb, "gzip", max_size=8 * 1024 * 1024)) == 8 * 1024 * 1024
    with pytest.raises(PayloadTooLargeError):
        decompress(b"x" * 11, None, max_size=10)
    with pytest.raises(OTLPDecodeError):
        decompress(b"\x1f\x8b garbage", "gzip")
    with pytest.raises(OTLPDecodeError):
        decompress(gzip.compress(b"hello")[:-6], "gzip")
    with pytest.raises(UnsupportedMediaTypeError):
        decompress(b"x", "br")
    assert decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip") == b"abcd"
    assert decompress(b"plain", "identity") == b"plain"


def test_media_type() -> None:
    """Content types map to encodings; parameters and case are ignored; others are 415."""
    assert media_type("application/x-protobuf") == "protobuf"
    assert media_type("Application/JSON; charset=utf-8") == "json"
    for bad in (None, "", "text/plain", "application/xml"):
        with pytest.raises(UnsupportedMediaTypeError):
            media_type(bad)


def test_responses_are_otlp_messages() -> None:
    """Success bodies parse as Export…ServiceResponse; partial success is reported; error
    bodies are google.rpc.Status."""
    from google.rpc import status_pb2

    ok = logs_service_pb2.ExportLogsServiceResponse.FromString(encode_response("logs", "protobuf"))
    assert not ok.HasField("partial_success")
    partial = trace_service_pb2.ExportTraceServiceResponse.FromString(
        encode_response("traces", "protobuf", rejected=2, error="why"))
    assert partial.partial_success.rejected_spans == 2
    assert json.loads(encode_response("logs", "json")) == {}
    assert json.loads(encode_response("logs", "json", rejected=1, error="e")) == {
        "partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "e"}}
    status = status_pb2.Status.FromString(encode_error(400, "bad", "protobuf"))
    assert (status.code, status.message) == (3, "bad")
    assert json.loads(encode_error(503, "busy", "json"))["code"] == 14
    assert _otlp.DEFAULT_MAX_DECOMPRESSED >= _otlp.DEFAULT_MAX_BODY


@pytest.mark.parametrize(
    ("attempt", "stored"),
    [(1.5, None), ("3", None), (-7, None), (0, None), (True, None), (3.0, 3), (2, 2)],
)
def test_an_attempt_is_an_integer_of_one_or_more_or_the_record_is_rejected(
    attempt: Any, stored: int | None
) -> None:
    """An attempt that is not an integer >= 1 is rejected (partial success), not filed
    under another attempt (1.5 was attempt 1, "3" attempt 3, -7 a row no run can have);
    a JSON sender's 3.0 is attempt 3."""
    value = (
        {"boolValue": attempt} if isinstance(attempt, bool)
        else {"intValue": attempt} if isinstance(attempt, int)
        else {"doubleValue": attempt} if isinstance(attempt, float)
        else {"stringValue": attempt}
    )
    attributes = [*_GOOD_LOG["attributes"], {"key": sc.ATTR_JOB_ATTEMPT, "value": value}]
    out = decode("logs", _json_req({**_GOOD_LOG, "attributes": attributes}), "json")
    if stored is None:
        assert (out.records, out.rejected) == ([], 1)
    else:
        (record,) = out.records
        assert record.attributes[sc.ATTR_JOB_ATTEMPT] == stored


def _schedule_log(event: str, attributes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eventName": event, "timeUnixNano": "1767225600000000000", "attributes": attributes}


@pytest.mark.parametrize(
    ("event", "attributes"),
    [
        (sc.EVENT_SCHEDULE_DISPATCHED, []),  # no schedule name
        (
            sc.EVENT_SCHEDULE_DECLARED,
            [
                {"key": sc.ATTR_SCHEDULE_NAME, "value": {"stringValue": "s"}},
                {"key": sc.ATTR_SCHEDULE_INTERVAL, "value": {"doubleValue": -1}},
            ],
        ),
        (
            sc.EVENT_SCHEDULE_DISPATCHED,
            [
                {"key": sc.ATTR_SCHEDULE_NAME, "value": {"stringValue": "s"}},
                {"key": sc.ATTR_SCHEDULE_SCHEDULED_FOR, "value": {"doubleValue": "NaN"}},
            ],
        ),
        (
            sc.EVENT_SCHEDULE_DISPATCHED,
            [
                {"key": sc.ATTR_SCHEDULE_NAME, "value": {"stringValue": "s"}},
                {"key": sc.ATTR_SCHEDULE_SCHEDULED_FOR, "value": {"doubleValue": 1e20}},
            ],
        ),
        (
            sc.EVENT_SCHEDULE_DECLARED,
            [
                {"key": sc.ATTR_SCHEDULE_NAME, "value": {"stringValue": "s"}},
                {"key": sc.ATTR_SCHEDULE_INTERVAL, "value": {"doubleValue": 60}},
                {"key": sc.ATTR_SCHEDULE_FAILURE_THRESHOLD, "value": {"intValue": 2**40}},
            ],
        ),
    ],
)
def test_a_schedule_record_that_cannot_be_stored_is_rejected_not_dropped_or_fatal(
    event: str, attributes: list[dict[str, Any]]
) -> None:
    """A schedule record with no name, an invalid declaration or a time the store cannot
    hold is rejected through partial success, and the good record beside it is kept.
    Before, some were dropped behind a plain 200, and the others failed the whole request
    (400), the good record with them."""
    good = {**_GOOD_LOG, "timeUnixNano": "1767225600000000000"}
    body = json.dumps(
        {"resourceLogs": [{"scopeLogs": [{"logRecords": [_schedule_log(event, attributes), good]}]}]}
    ).encode()
    out = decode("logs", body, "json")
    assert out.rejected == 1
    assert [r.event_name for r in out.records] == [sc.EVENT_JOB_STARTED]
    assert "schedule record" in out.error
