"""The wire between a forwarding process and the owner of a store (``sink/_forward.py``)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette

from chaperone_otel import semconv as sc
from chaperone_otel.sink._forward import (
    decode_records,
    encode_records,
    post_records,
    records_route,
)
from chaperone_otel.sink._owner import BackgroundServer, StoreOwner
from tests.sink.store_factory import lifecycle, record
from tests.stores import empty_store


def test_records_survive_the_round_trip() -> None:
    """Every field the store reads comes back equal, attribute types included (a tuple of
    strings, bools, ints, floats); what is in-process only (the OTel context) is dropped."""
    sent = [
        *lifecycle("run-a", beats=2, status="failed"),
        record(run_id="run-b", **{sc.ATTR_JOB_NAME: "x", "chaperone.test.tags": ("a", "b")}),
    ]
    sent[0].context = object()
    back = decode_records(encode_records(sent))
    assert [
        (r.event_name, r.timestamp, dict(r.attributes), r.trace_id, r.span_id) for r in back
    ] == [(r.event_name, r.timestamp, dict(r.attributes), r.trace_id, r.span_id) for r in sent]
    assert [r.severity for r in back] == [r.severity for r in sent]
    assert back[0].context is None


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[1]",
        b'[["e", 1.0, {}, 0, 0, "INFO"]]',
        b'[["e", "now", {}, 0, 0, "INFO", ""]]',
        b'[["e", 1.0, {"k": {"nested": 1}}, 0, 0, "INFO", ""]]',
        b'[["e", 1.0, {}, -1, 0, "INFO", ""]]',
        b"not json",
    ],
)
def test_a_malformed_batch_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_records(body)


def _conn(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)


def test_the_owner_stores_a_forwarded_batch_before_it_answers(tmp_path: Path) -> None:
    """200 means committed: the runs are in the store when the answer arrives. Without the
    token of the sidecar: 401 and nothing stored; a malformed batch: 400."""
    with StoreOwner(empty_store(tmp_path / "jobs.duckdb")) as owner:
        url = owner.serve()
        conn = _conn(url)
        try:
            batch = lifecycle("run-1") + lifecycle("run-2", status="failed")
            assert post_records(conn, "wrong", encode_records(batch)) == 401
            assert owner.view.jobs.count() == 0
            assert post_records(conn, owner.token, b'{"not": "a batch"}') == 400
            assert post_records(conn, owner.token, encode_records(batch)) == 200
            # No flush, no wait: the answer came after the commit.
            stored = {j.id: j.status for j in owner.view.jobs.all()}
            assert stored == {"run-1": "completed", "run-2": "failed"}
            # The same batch again (a forwarder that missed the answer) changes nothing.
            assert post_records(conn, owner.token, encode_records(batch)) == 200
            assert owner.view.jobs.count() == 2
        finally:
            conn.close()


def test_an_owner_without_a_writer_answers_503() -> None:
    """While the owner closes (its writer gone), a forwarded batch gets 503 + Retry-After:
    the forwarder keeps it and tries the next owner; never a 200 for records not stored."""
    server = BackgroundServer(Starlette(routes=[records_route(lambda: None, None)])).start()
    conn = _conn(server.url)
    try:
        conn.request("POST", "/api/records", body=encode_records(lifecycle("run-1")))
        answer = conn.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 503
        assert answer.getheader("retry-after") == "1"
        assert "closing" in body["error"]
    finally:
        conn.close()
        server.stop()


def test_a_non_finite_value_is_left_out_not_a_dead_forwarder() -> None:
    """JSON has no NaN: a record carrying one (a CPU reading, a user attribute) is sent
    without it, as the store would keep it NULL; before, encoding raised and the
    forwarding thread died with every later record of the process."""
    sent = record(run_id="nan", **{sc.ATTR_CPU_PERCENT: float("nan"), "chaperone.test.x": 1.5})
    (back,) = decode_records(encode_records([sent]))
    assert sc.ATTR_CPU_PERCENT not in back.attributes
    assert back.attributes["chaperone.test.x"] == 1.5
    assert back.attributes[sc.ATTR_JOB_RUN_ID] == "nan"
