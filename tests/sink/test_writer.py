"""A write failure is reported to the request (or batch) whose records failed, and to no other.

Several requests share one group commit. When that commit fails, the writer retries the
requests without the one that cannot be stored: that request alone gets an error status and
none of its records are stored (no partial rows); the others are committed and acknowledged.

Real server on 127.0.0.1 (port 0), real DuckDB file. The failures are real DuckDB errors: a
NOT NULL constraint added to ``jobs.name`` (a record without a job name is then refused: the
data's fault, so 400, not retried) and the ``jobs`` table renamed away (every write fails:
the store's fault, so 503 + Retry-After, and the retry succeeds once the table is back).
Every wait polls with a deadline; the server is stopped in ``finally``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._writer import RecordsDroppedError, Writer
from tests.sink.store_factory import record, store_writer
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


def started(run_id: str, *, named: bool = True) -> dict[str, Any]:
    now = time.time()
    attrs: dict[str, Any] = {
        sc.ATTR_JOB_RUN_ID: run_id, sc.ATTR_JOB_STATUS: "running", sc.ATTR_JOB_SEQUENCE: 1,
        sc.ATTR_JOB_STARTED_AT: now, sc.ATTR_HEARTBEAT_LAST: now,
        sc.ATTR_HEARTBEAT_INTERVAL: 60.0}
    if named:
        attrs[sc.ATTR_JOB_NAME] = "ack.job"
    return attrs


def otlp_json(*records: dict[str, Any]) -> bytes:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": str(v)}

    logs = [{"timeUnixNano": str(time.time_ns()), "eventName": sc.EVENT_JOB_STARTED,
             "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()]}
            for attrs in records]
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()


def post(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/logs", body=body, headers=JSON)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SinkServer]:
    srv = SinkServer(str(tmp_path / "ack.duckdb"), port=0, advertise=False).start()
    try:
        yield srv
    finally:
        srv.stop(15)


def stored_runs(srv: SinkServer) -> set[str]:
    cur = srv.writer.store.cursor()
    try:
        return {row[0] for row in cur.execute("SELECT run_id FROM jobs").fetchall()}
    finally:
        cur.close()


def shared_commit(srv: SinkServer, before: Callable[[], None],
                  requests: dict[str, bytes]) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Post ``requests`` so that they are written in ONE transaction, after ``before()`` ran.

    With the store's write lock held, a first request X is taken by the writer thread (which
    then blocks on the lock); the others queue behind it, so the thread takes them together
    as its next transaction once the lock is released.
    """
    writer = srv.writer
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
    threads = []

    def send(key: str, body: bytes) -> None:
        t = threading.Thread(target=lambda: answers.__setitem__(key, post(srv.url, body)),
                             daemon=True)
        t.start()
        threads.append(t)

    with srv.paused():
        before()
        send("X", otlp_json(started("x")))
        wait_until(lambda: writer.stats.accepted >= 1 and writer.stats.queue_depth == 0, 20,
                   "the writer to take X", every=0.01)
        queued = 0
        for key, body in requests.items():
            send(key, body)
            queued += body.count(sc.ATTR_JOB_RUN_ID.encode())
            wait_until(lambda q=queued: writer.stats.queue_depth == q, 20, f"{key} queued",
                       every=0.01)
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a request did not get an answer"
    return answers


def test_refused_request_alone_gets_400_and_stores_nothing_its_partner_gets_200(
        server: SinkServer) -> None:
    """G and B share one commit; B holds a record the store refuses. G: 200 and stored. B:
    400 (not retryable: the same data would be refused again) and NONE of its records stored,
    not even its good one. Before the fix, the error went to whichever request woke first, and
    B's good record was committed anyway."""

    def refuse_nameless_runs() -> None:
        cur = server.writer.store.cursor()
        try:
            cur.execute("ALTER TABLE jobs ALTER COLUMN name SET NOT NULL")
        finally:
            cur.close()

    answers = shared_commit(server, refuse_nameless_runs, {
        "G": otlp_json(started("g")),
        "B": otlp_json(started("b-good"), started("b-bad", named=False)),
    })
    statuses = {key: answer[0] for key, answer in answers.items()}
    assert statuses == {"X": 200, "G": 200, "B": 400}
    message = json.loads(answers["B"][2])["message"]
    assert "NOT NULL" in message
    assert "2 record(s)" in message
    assert "retry-after" not in answers["B"][1]
    assert stored_runs(server) == {"x", "g"}  # no partial rows of B
    stats = server.writer.stats
    assert (stats.written, stats.dropped) == (2, 2)
    assert server.stats().rejected == {400: 1}
    assert server.stats().ingested == {"otlp.logs": 2}  # X and G, acknowledged


def test_store_failure_gets_503_for_every_request_and_the_retry_is_stored(
        server: SinkServer) -> None:
    """The store itself fails (its jobs table is gone): every request in the commit gets 503 +
    Retry-After, nothing is stored; once the store is back, resending succeeds."""

    def break_store() -> None:
        cur = server.writer.store.cursor()
        try:
            cur.execute("ALTER TABLE jobs RENAME TO jobs_away")
        finally:
            cur.close()

    bodies = {"G": otlp_json(started("g")), "H": otlp_json(started("h1"), started("h2"))}
    answers = shared_commit(server, break_store, bodies)
    assert {key: answer[0] for key, answer in answers.items()} == {"X": 503, "G": 503, "H": 503}
    assert all(answer[1].get("retry-after") == "1" for answer in answers.values())
    with server.paused():
        cur = server.writer.store.cursor()
        try:
            assert cur.execute("SELECT count(*) FROM jobs_away").fetchone() == (0,)
            cur.execute("ALTER TABLE jobs_away RENAME TO jobs")
        finally:
            cur.close()
    for body in bodies.values():  # what an OTLP exporter does after a 503
        assert post(server.url, body)[0] == 200
    assert stored_runs(server) == {"g", "h1", "h2"}


def test_wait_reports_only_the_batch_that_failed(tmp_path: Path) -> None:
    """Writer level (the embedded sink and the server share it): two batches in one
    transaction, one refused. wait() on the good ticket returns True; on the bad one it raises
    RecordsDroppedError(permanent) and none of that batch is stored; flush() reports the
    drop once."""
    with store_writer(tmp_path / "w.duckdb") as (writer, _):
        assert isinstance(writer, Writer)
        store = writer.store
        cur = store.cursor()
        cur.execute("ALTER TABLE jobs ALTER COLUMN name SET NOT NULL")
        nameless = record(sc.EVENT_JOB_STARTED, run_id="bad")
        del nameless.attributes[sc.ATTR_JOB_NAME]
        with store.write_lock:  # hold the thread so both batches are taken together
            first = writer.submit([record(sc.EVENT_JOB_STARTED, run_id="first")])
            assert first is not None
            wait_until(lambda: writer.stats.queue_depth == 0, 20, "the first batch taken",
                       every=0.01)
            good = writer.submit([record(sc.EVENT_JOB_STARTED, run_id="good")])
            bad = writer.submit([record(sc.EVENT_JOB_STARTED, run_id="bad-sibling"), nameless])
            assert good is not None
            assert bad is not None
            assert (good.first, good.end, bad.first, bad.end) == (1, 2, 2, 4)
        assert writer.wait(good, 30) is True
        with pytest.raises(RecordsDroppedError) as info:
            writer.wait(bad, 30)
        assert info.value.permanent
        assert info.value.ticket is bad
        assert writer.wait(first, 30) is True
        ids = {row[0] for row in cur.execute("SELECT run_id FROM jobs").fetchall()}
        assert ids == {"first", "good"}
        assert writer.flush(30, report=False) is True  # a reader's barrier: neither raises
        with pytest.raises(SinkError, match="NOT NULL"):  # nor takes the report
            writer.flush(30)
        assert writer.flush(30) is True  # reported once
        cur.close()


def test_waiting_requests_park_no_thread_and_are_answered_at_the_ack_timeout(
    tmp_path: Path,
) -> None:
    """More requests waiting for their commit than the server's thread pool has threads
    (40), the store stalled: every one is answered 503 at its ack timeout (not at a
    multiple of it, queued behind the others), and /metrics answers meanwhile."""
    ack_timeout = 1.0
    srv = SinkServer(str(tmp_path / "stall.duckdb"), port=0, advertise=False,
                     ack_timeout=ack_timeout).start()
    host, port = srv.url.removeprefix("http://").split(":")
    answers: dict[int, tuple[int, float]] = {}
    try:
        with srv.paused():
            def send(i: int) -> None:
                t0 = time.monotonic()
                status, _, _ = post(srv.url, otlp_json(started(f"stall-{i}")))
                answers[i] = (status, time.monotonic() - t0)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(60)]
            for t in threads:
                t.start()
            wait_until(lambda: srv.writer.stats.queue_depth + srv.writer.stats.accepted >= 60,
                       10, "all 60 requests queued", every=0.01)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            t0 = time.monotonic()
            conn.request("GET", "/metrics")
            assert conn.getresponse().status == 200
            scrape = time.monotonic() - t0
            conn.close()
            for t in threads:
                t.join(30)
                assert not t.is_alive()
    finally:
        srv.stop(15)
    assert sorted(status for status, _ in answers.values()) == [503] * 60
    slowest = max(elapsed for _, elapsed in answers.values())
    assert slowest < 1.8 * ack_timeout, f"answered after {slowest:.2f}s"
    assert scrape < ack_timeout, f"/metrics took {scrape:.2f}s during the stall"


def test_when_done_calls_back_once_the_batch_is_processed(tmp_path: Path) -> None:
    """Writer.when_done: called on commit (then wait(ticket, 0) is True), at once for a
    batch already processed, and on a drop (then wait(ticket, 0) raises)."""
    with store_writer(tmp_path / "cb.duckdb") as (writer, _sink):
        calls: list[str] = []
        fired = threading.Event()
        with writer._store.write_lock:  # hold the commit: the callback must wait for it
            ticket = writer.submit([record(sc.EVENT_JOB_STARTED, run_id="cb-1")])
            assert ticket is not None
            writer.when_done(ticket, lambda: (calls.append("committed"), fired.set()))
            assert not fired.wait(0.2)
        assert fired.wait(10)
        assert writer.wait(ticket, 0) is True
        writer.when_done(ticket, lambda: calls.append("already"))
        assert calls == ["committed", "already"]

        writer._store.cursor().execute("ALTER TABLE jobs ALTER COLUMN name SET NOT NULL")
        dropped = threading.Event()
        bad = writer.submit([record(sc.EVENT_JOB_STARTED, run_id="cb-2", name=None)])
        assert bad is not None
        writer.when_done(bad, dropped.set)
        assert dropped.wait(10)
        with pytest.raises(RecordsDroppedError):
            writer.wait(bad, 0)
