"""Values a remote sender (or a job) can send but the store cannot hold as sent.

DESIGN §6: bad input to the sink gets a clear status and nothing acknowledged is lost. A
value a column cannot hold becomes NULL (counted in ``coerced``) without touching any other
value of the batch; a record that cannot identify a run is counted (``invalid``) or, through
``sink serve``, reported as rejected; a payload that is malformed gets a 400 — never a 503,
which OTLP exporters retry forever for a payload that will never get better.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from chaperone_otel import semconv as sc
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._server import SinkServer
from tests.sink.store_factory import T0, record, store_writer, write_all
from tests.stores import empty_store

COLUMNS = ("pid", "open_fds", "fd_limit", "violation_count", "memory_bytes", "cpu_percent",
           "rate", "duration", "heartbeat_count", "phase", "seq", "attempt", "attributes",
           "error_message")


def row(sink: Any, run_id: str) -> dict[str, Any]:
    names, rows = sink.sql(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE run_id = ?", [run_id])
    assert len(rows) == 1, (run_id, rows)
    return dict(zip(names, rows[0], strict=True))


def heartbeat_memory(sink: Any) -> dict[str, Any]:
    _, rows = sink.sql("SELECT run_id, memory_bytes FROM heartbeats")
    return dict(rows)


INNOCENT = {sc.ATTR_PROCESS_PID: 4242, sc.ATTR_OPEN_FDS: 17, sc.ATTR_LIMIT_FDS: 1024,
            sc.ATTR_VIOLATION_COUNT: 2, sc.ATTR_MEMORY_USAGE: 123_456_789,
            sc.ATTR_CPU_PERCENT: 12.5, sc.ATTR_PROGRESS_RATE: 3.0,
            sc.ATTR_JOB_DURATION: 9.0, sc.ATTR_PROGRESS_PHASE: "load"}


# ---- the writer (in-process and remote records alike) ------------------------------------


def test_values_beyond_an_integer_column_become_null_and_the_record_is_stored(tmp_path):
    """int32 columns (pid, open_fds, fd_limit, violation_count) and int64 columns
    (memory_bytes, heartbeat_count): an out-of-range value is NULL, counted; the record and
    the other run in the same batch are stored whole (the bug: the final cast failed the
    batch, the record was dropped and flush() raised)."""
    bad = record(run_id="big", seq=1, **{
        sc.ATTR_PROCESS_PID: -(2**31) - 1, sc.ATTR_OPEN_FDS: 2**31, sc.ATTR_LIMIT_FDS: 2**40,
        sc.ATTR_VIOLATION_COUNT: 2**63, sc.ATTR_MEMORY_USAGE: 2**64,
        sc.ATTR_HEARTBEAT_COUNT: -(2**70)})
    good = record(run_id="innocent", seq=1, **INNOCENT)
    with store_writer(tmp_path / "int.duckdb", linger=0.2) as (writer, sink):
        write_all(writer, [bad, good])  # one batch: one column array per attribute
        stats = writer.stats
        assert (stats.written, stats.invalid, stats.dropped) == (2, 0, 0)
        # 6 in the jobs row, plus memory_bytes and count in the heartbeat row
        assert stats.coerced == 8
        b = row(sink, "big")
        assert [b[c] for c in ("pid", "open_fds", "fd_limit", "violation_count",
                               "memory_bytes", "heartbeat_count")] == [None] * 6
        assert b["seq"] == 1
        g = row(sink, "innocent")
        assert (g["pid"], g["open_fds"], g["fd_limit"], g["violation_count"],
                g["memory_bytes"]) == (4242, 17, 1024, 2, 123_456_789)
        assert heartbeat_memory(sink) == {"big": None, "innocent": 123_456_789}


def test_one_value_beyond_int64_nulls_only_that_value_not_the_column(tmp_path):
    """The bug: the last fallback nulled the whole column, i.e. every run's memory_bytes in a
    group commit (jobs and heartbeats)."""
    good = record(run_id="innocent", seq=2, **{sc.ATTR_MEMORY_USAGE: 123_456_789})
    bad = record(run_id="sender-bug", seq=2, **{sc.ATTR_MEMORY_USAGE: 2**64})
    with store_writer(tmp_path / "col.duckdb", linger=0.5) as (writer, sink):
        assert writer.submit([good])
        assert writer.submit([bad])
        assert writer.flush(30)
        assert writer.stats.batches == 1  # both in one write, as in a group commit
        assert row(sink, "innocent")["memory_bytes"] == 123_456_789
        assert row(sink, "sender-bug")["memory_bytes"] is None
        assert heartbeat_memory(sink) == {"innocent": 123_456_789, "sender-bug": None}
        assert writer.stats.coerced == 2


def test_nan_infinity_and_booleans_in_number_columns_become_null(tmp_path):
    """Arrow stores NaN/inf as sent and takes True as 1.0 in a DOUBLE column; DuckDB sorts
    NaN above every number (a NaN cpu_percent would be over any limit). Numbers only."""
    bad = record(run_id="odd", seq=1, **{
        sc.ATTR_CPU_PERCENT: math.nan, sc.ATTR_PROGRESS_RATE: math.inf,
        sc.ATTR_JOB_DURATION: True, sc.ATTR_HEARTBEAT_COUNT: True,
        sc.ATTR_MEMORY_USAGE: "1e400", sc.ATTR_OPEN_FDS: float("-inf")})
    good = record(run_id="innocent", seq=1, **INNOCENT)
    with store_writer(tmp_path / "nan.duckdb", linger=0.2) as (writer, sink):
        write_all(writer, [bad, good])
        o = row(sink, "odd")
        assert [o[c] for c in ("cpu_percent", "rate", "duration", "heartbeat_count",
                               "memory_bytes", "open_fds")] == [None] * 6
        g = row(sink, "innocent")
        assert (g["cpu_percent"], g["rate"], g["duration"]) == (12.5, 3.0, 9.0)
        stats = writer.stats
        # 6 in jobs; in the heartbeat row: cpu, memory and count
        assert (stats.written, stats.coerced, stats.dropped) == (2, 9, 0)
        assert sink.jobs.named("etl.import").cpu_above(50).count() == 0


def test_unusable_sequence_or_attempt_never_fails_the_batch(tmp_path):
    """A NaN/inf/huge sequence orders the record as the first one (counted); an attempt that
    is not an int32 integer cannot identify a run: the record is invalid (counted). Either
    way the rest of the batch is stored and nothing is dropped."""
    records = [
        record(run_id="seq-nan", seq=math.nan),  # type: ignore[arg-type]
        record(run_id="seq-inf", seq=math.inf),  # type: ignore[arg-type]
        record(run_id="seq-big", seq=2**64),
        record(run_id="att-inf", attempt=math.inf),  # type: ignore[arg-type]
        record(run_id="att-big", attempt=2**31),
        record(run_id="innocent", seq=5),
    ]
    with store_writer(tmp_path / "seq.duckdb", linger=0.2) as (writer, sink):
        write_all(writer, records)
        stats = writer.stats
        assert (stats.written, stats.invalid, stats.dropped) == (4, 2, 0)
        # the sequence, and heartbeat_count (the factory sets it to seq) in jobs and heartbeats
        assert stats.coerced == 9
        _, rows = sink.sql("SELECT run_id, seq FROM jobs ORDER BY run_id")
        assert rows == [("innocent", 5), ("seq-big", 1), ("seq-inf", 1), ("seq-nan", 1)]


def test_lone_surrogates_are_replaced_and_a_run_id_with_one_is_invalid(tmp_path):
    """A Python string may hold a lone surrogate; UTF-8 cannot. Text values and user
    attribute keys are stored with U+FFFD in its place; a run id is never altered (it would
    file the record under another run): that record is invalid."""
    bad = record(run_id="text", seq=1, **{
        sc.ATTR_PROGRESS_PHASE: "load \ud800 step",
        sc.ATTR_USER_PREFIX + "k\udfff": "v\ud801",
        sc.ATTR_ERROR_MESSAGE: "bad \udc00"})
    broken_id = record(run_id="run-\ud800", seq=1)
    good = record(run_id="innocent", seq=1, **INNOCENT)
    with store_writer(tmp_path / "sur.duckdb", linger=0.2) as (writer, sink):
        write_all(writer, [bad, broken_id, good])
        stats = writer.stats
        assert (stats.written, stats.invalid, stats.dropped) == (2, 1, 0)
        t = row(sink, "text")
        assert t["phase"] == "load \ufffd step"
        assert json.loads(t["attributes"]) == {"k\ufffd": "v\ufffd"}
        assert t["error_message"] == "bad \ufffd"
        assert row(sink, "innocent")["phase"] == "load"


# ---- through `sink serve`: real server on 127.0.0.1, real HTTP ---------------------------


def post(url: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def json_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v if math.isfinite(v) else str(v).replace("inf", "Infinity")
                .replace("nan", "NaN")}
    return {"stringValue": v}


def json_attrs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": json_value(v)} for k, v in attrs.items()]


def log_json(run_id: str, *, resource: dict[str, Any] | None = None,
             time_ns: Any = None, **attrs: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "resource": {"attributes": json_attrs(resource or {})},
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": str(int(now * 1e9)) if time_ns is None else time_ns,
            "eventName": sc.EVENT_JOB_STARTED,
            "attributes": json_attrs({
                sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_NAME: "remote.job",
                sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_SEQUENCE: 1,
                sc.ATTR_JOB_STARTED_AT: now, sc.ATTR_HEARTBEAT_LAST: now,
                sc.ATTR_HEARTBEAT_INTERVAL: 60.0, **attrs}),
        }]}],
    }


def logs_request(*resource_logs: dict[str, Any]) -> bytes:
    return json.dumps({"resourceLogs": list(resource_logs)}).encode()


def run_span_json(run_id: str, **attrs: Any) -> bytes:
    now = time.time_ns()
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "ab" * 16, "spanId": "cd" * 8, "name": "run",
        "startTimeUnixNano": str(now - 10**9), "endTimeUnixNano": str(now),
        "attributes": json_attrs({sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_NAME: "remote.job",
                                  **attrs}),
    }]}]}]}).encode()


def test_server_answers_200_and_stores_null_for_numbers_no_column_can_hold(tmp_path: Path):
    """OTLP JSON: a resource pid beyond int32, open_fds beyond int32, memory beyond int64,
    NaN/Infinity doubles. The bug: 503 on every retry (the exporter retries forever)."""
    path = str(empty_store(tmp_path / "num.duckdb"))
    body = logs_request(
        log_json("remote-big", resource={sc.ATTR_PROCESS_PID: 2**40},
                 **{sc.ATTR_OPEN_FDS: 2**31, sc.ATTR_MEMORY_USAGE: 2**64,
                    sc.ATTR_CPU_PERCENT: math.nan, sc.ATTR_PROGRESS_RATE: -math.inf}),
        log_json("remote-ok", **INNOCENT))
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        codes = [post(srv.url, "/v1/logs", body, "application/json")[0] for _ in range(2)]
        assert codes == [200, 200]
        with open_sink(path) as sink:  # same process: shares the server's connection
            big = row(sink, "remote-big")
            assert [big[c] for c in ("pid", "open_fds", "memory_bytes", "cpu_percent",
                                     "rate")] == [None] * 5
            ok = row(sink, "remote-ok")
            assert (ok["pid"], ok["open_fds"], ok["memory_bytes"]) == (4242, 17, 123_456_789)
        assert srv.writer.stats.dropped == 0
    finally:
        srv.stop(15)


def test_server_protobuf_int64_beyond_an_int32_column_is_null(tmp_path: Path):
    """Protobuf int64 always fits BIGINT, but pid/open_fds/fd_limit/violation_count are
    INTEGER: a pid of 2**40 is NULL, the record is stored, the answer is 200 (not 503)."""
    def kv(key: str, value: Any) -> common_pb2.KeyValue:
        if isinstance(value, str):
            return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
        if isinstance(value, float):
            return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))

    now = time.time()
    attrs = {sc.ATTR_JOB_RUN_ID: "pb-big", sc.ATTR_JOB_NAME: "remote.job",
             sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_SEQUENCE: 1,
             sc.ATTR_JOB_STARTED_AT: now, sc.ATTR_PROCESS_PID: 2**40,
             sc.ATTR_LIMIT_FDS: -(2**33), sc.ATTR_CPU_PERCENT: math.inf,
             sc.ATTR_MEMORY_USAGE: 2**62}
    request = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(
            time_unix_nano=int(now * 1e9), event_name=sc.EVENT_JOB_STARTED,
            attributes=[kv(k, v) for k, v in attrs.items()])])])])
    path = str(empty_store(tmp_path / "pb.duckdb"))
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        status, _ = post(srv.url, "/v1/logs", request.SerializeToString(),
                         "application/x-protobuf")
        assert status == 200
        with open_sink(path) as sink:
            r = row(sink, "pb-big")
            assert (r["pid"], r["fd_limit"], r["cpu_percent"], r["memory_bytes"]) == (
                None, None, None, 2**62)
    finally:
        srv.stop(15)


def test_server_replaces_lone_surrogates_and_rejects_run_ids_holding_one(tmp_path: Path):
    """OTLP JSON "\\ud800" (what JSON.stringify writes for a broken string) is accepted by
    json.loads but cannot be stored as UTF-8. The bug: 503 forever, 0 rows. Now: values and
    keys get U+FFFD; a record whose run id holds one is rejected through partial success
    (200, not retried) and the other records of the request are stored."""
    path = str(empty_store(tmp_path / "sur.duckdb"))
    body = logs_request(
        log_json("remote-text", **{sc.ATTR_PROGRESS_PHASE: "load \ud800 step",
                                   sc.ATTR_USER_PREFIX + "k\udc00": "v"}),
        log_json("remote-\ud800"),
        log_json(""),  # empty run id: was acknowledged, then skipped by the writer
    )
    assert b"\\ud800" in body
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        for _ in range(2):
            status, payload = post(srv.url, "/v1/logs", body, "application/json")
            assert status == 200
            partial = json.loads(payload)["partialSuccess"]
            assert partial["rejectedLogRecords"] == "2"
            assert sc.ATTR_JOB_RUN_ID in partial["errorMessage"]
        with open_sink(path) as sink:
            assert [r.id for r in sink.jobs.all()] == ["remote-text"]
            text = row(sink, "remote-text")
            assert text["phase"] == "load \ufffd step"
            assert json.loads(text["attributes"]) == {"k\ufffd": "v"}
        assert srv.writer.stats.dropped == 0
        assert srv.writer.stats.invalid == 0  # refused up front, never acknowledged
    finally:
        srv.stop(15)


def test_server_rejects_run_spans_that_cannot_identify_a_run(tmp_path: Path):
    """A run span whose run id is not valid text or whose attempt is out of range is
    rejected (partialSuccess.rejectedSpans), not acknowledged and then skipped."""
    path = str(empty_store(tmp_path / "spans.duckdb"))
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        cases = [run_span_json("span-\udfff"),
                 run_span_json("span-big", **{sc.ATTR_JOB_ATTEMPT: 2**31})]
        for body in cases:
            status, payload = post(srv.url, "/v1/traces", body, "application/json")
            assert status == 200
            assert json.loads(payload)["partialSuccess"]["rejectedSpans"] == "1"
        status, payload = post(srv.url, "/v1/traces", run_span_json("span-ok"),
                               "application/json")
        assert (status, json.loads(payload)) == (200, {})
        with open_sink(path) as sink:
            assert [r.id for r in sink.jobs.all()] == ["span-ok"]
    finally:
        srv.stop(15)


def test_server_answers_400_for_a_time_that_is_not_a_fixed64(tmp_path: Path):
    """timeUnixNano is a fixed64: negative or beyond 2**64 is malformed (400). The bug: a
    number too large for a float raised OverflowError in the decoder (500)."""
    path = str(empty_store(tmp_path / "time.duckdb"))
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        for time_ns in (str(10**400), "-1", str(2**64)):
            body = logs_request(log_json("bad-time", time_ns=time_ns))
            status, payload = post(srv.url, "/v1/logs", body, "application/json")
            assert status == 400, time_ns
            assert "timeUnixNano" in json.loads(payload)["message"]
        with open_sink(path) as sink:
            assert sink.jobs.count() == 0
    finally:
        srv.stop(15)


def test_time_attributes_far_out_of_range_are_null_not_a_failure(tmp_path):
    """A time attribute beyond any timestamp (or beyond a float) is NULL, counted."""
    bad = record(run_id="far", seq=1, ts=T0, **{sc.ATTR_JOB_STARTED_AT: 10**400,
                                                 sc.ATTR_JOB_TIMEOUT_AT: 1e300})
    with store_writer(tmp_path / "far.duckdb") as (writer, sink):
        write_all(writer, [bad])
        _, rows = sink.sql("SELECT started_at, timeout_at FROM jobs")
        assert rows == [(None, None)]
        assert writer.stats.dropped == 0
