"""Ingest is bounded by work, not only bytes: records per request, attributes per record and
attribute values per request are charged from the parsed lengths before anything walks them,
the decompressed size is capped low enough that parsing stays cheap, and decoding runs in
worker thread, never on the event loop (issue 11, item 3)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from chaperone_otel.sink import _otlp
from chaperone_otel.sink._otlp import PayloadTooLargeError, decode
from tests.sink.serve_process import (
    PROTOBUF,
    ServeProcess,
    empty_records,
    lifecycle_logs,
    request,
    timed,
)

# ---- the limits, in process ----------------------------------------------------------------


def _one_record(attributes: int = 0, array: int = 0) -> bytes:
    attrs = [common_pb2.KeyValue(key=f"k{i}") for i in range(attributes)]
    if array:
        values = [common_pb2.AnyValue() for _ in range(array)]
        attrs.append(
            common_pb2.KeyValue(
                key="a",
                value=common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=values)),
            )
        )
    lr = logs_pb2.LogRecord(attributes=attrs)
    req = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=[lr])])]
    )
    return bytes(req.SerializeToString())


def test_records_per_request_are_limited() -> None:
    """Groups + scopes + records count; at the limit it decodes, one more is a 413 error."""
    assert decode("logs", empty_records(2 * 97), "protobuf", max_records=99).ignored == 97
    with pytest.raises(PayloadTooLargeError, match="too many records"):
        decode("logs", empty_records(2 * 98), "protobuf", max_records=99)


def test_attributes_per_record_and_array_elements_are_limited() -> None:
    assert decode("logs", _one_record(attributes=8), "protobuf", max_attributes=8).ignored == 1
    with pytest.raises(PayloadTooLargeError, match="9 attributes"):
        decode("logs", _one_record(attributes=9), "protobuf", max_attributes=8)
    with pytest.raises(PayloadTooLargeError, match="9 attributes"):
        decode("logs", _one_record(array=9), "protobuf", max_attributes=8)


def test_attribute_values_per_request_are_limited() -> None:
    body = _one_record(attributes=5, array=5)  # 6 attributes + 5 elements
    assert decode("logs", body, "protobuf", max_values=11).ignored == 1
    with pytest.raises(PayloadTooLargeError, match="too many attribute values"):
        decode("logs", body, "protobuf", max_values=10)


def test_json_is_charged_the_same_way() -> None:
    many = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{}] * 50}]}]}
    wide = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [{"key": f"k{i}", "value": {}} for i in range(9)]}]}]}]}
    with pytest.raises(PayloadTooLargeError, match="too many records"):
        decode("logs", json.dumps(many).encode(), "json", max_records=40)
    with pytest.raises(PayloadTooLargeError, match="9 attributes"):
        decode("logs", json.dumps(wide).encode(), "json", max_attributes=8)


def test_empty_record_bomb_under_the_inflate_cap_costs_little_cpu() -> None:
    """Just under the decompressed cap, millions of empty records: refused by count after a
    cheap parse (it used to be walked record by record)."""
    body = gzip.compress(empty_records(_otlp.DEFAULT_MAX_DECOMPRESSED - 64))
    start = time.process_time()
    with pytest.raises(PayloadTooLargeError, match="too many records"):
        decode("logs", body, "protobuf", "gzip")
    assert time.process_time() - start < 1.0


# ---- a real server process ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "size",
    [64 * 1024 * 1024, _otlp.DEFAULT_MAX_DECOMPRESSED - 64],
    ids=["64MiB-past-the-cap", "just-under-the-cap"],
)
def test_gzip_bomb_of_empty_records_is_refused_within_a_second_of_cpu(
    tmp_path: Path, size: int
) -> None:
    """The issue's bomb: a ~65 KB gzip body of 64 MiB of empty LogRecords (63 s of CPU and a
    200 before), and the same just under the cap: 413 with a clear message, < 1 s of the
    server's CPU, and the server still ingests afterwards."""
    bomb = gzip.compress(empty_records(size))
    assert len(bomb) < 70_000
    with ServeProcess(tmp_path / "jobs.duckdb") as server:
        before = server.cpu_seconds()
        status, body, _ = request(
            server.port,
            "POST",
            "/v1/logs",
            bomb,
            {**PROTOBUF, "Content-Encoding": "gzip"},
            timeout=60,
        )
        spent = server.cpu_seconds() - before
        assert status == 413, body
        assert b"inflates past" in body or b"too many records" in body
        assert spent < 1.0, f"the bomb cost {spent:.2f} s of server CPU"
        status, body, _ = request(server.port, "POST", "/v1/logs", lifecycle_logs(3), PROTOBUF)
        assert status == 200, body


@pytest.mark.slow
def test_big_bodies_never_block_the_event_loop(tmp_path: Path) -> None:
    """4 senders post 2 MiB uncompressed bodies of real records back to back; meanwhile
    /healthz (answered on the event loop) stays fast. Decoding them inline blocked it for up
    to 4 s."""
    body = lifecycle_logs(1400, extra=100)
    assert 1.9 * 1024 * 1024 < len(body) <= 2 * 1024 * 1024
    stop = threading.Event()
    posted: list[int] = []
    errors: list[BaseException] = []

    def sender(port: int) -> None:
        try:
            while not stop.is_set():
                posted.append(request(port, "POST", "/v1/logs", body, PROTOBUF, timeout=60)[0])
        except BaseException as e:  # reported below
            errors.append(e)

    with ServeProcess(tmp_path / "jobs.duckdb") as server:
        threads = [threading.Thread(target=sender, args=(server.port,)) for _ in range(4)]
        for t in threads:
            t.start()
        latencies = []
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                seconds, status = timed(server.port, "GET", "/healthz")
                assert status == 200
                latencies.append(seconds)
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        assert len(posted) >= 8, posted
        assert set(posted) == {200}, posted
        latencies.sort()
        shown = [round(x * 1000) for x in latencies[-5:]]
        # A few samples may carry scheduling hiccups of a loaded 2-core machine (the probe,
        # the server and 4 senders share it: 176 ms was seen with other tests beside it);
        # inline decoding put every one of the 10 worst over 250 ms, and blocked the loop
        # for most of the run. So: 9 in 10 under 100 ms, none near a decoding's second.
        p90 = latencies[int(len(latencies) * 0.9)]
        assert p90 < 0.1, f"/healthz p90 {p90 * 1000:.0f} ms; worst (ms) {shown}"
        assert latencies[-1] < 0.5, f"/healthz worst times (ms) {shown} of {len(latencies)}"
