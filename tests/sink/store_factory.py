"""Builders of lifecycle records and stores for the sink tests (explicit times, no clock)."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._store import acquire, release
from chaperone_otel.sink._writer import Writer
from tests.stores import empty_store

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def record(
    event: str = sc.EVENT_JOB_HEARTBEAT,
    *,
    run_id: str = "run-1",
    attempt: int = 1,
    seq: int = 1,
    ts: float = T0,
    status: str = "running",
    name: str = "etl.import",
    queue: str = "default",
    started_at: float = T0,
    interval: float = 10.0,
    last_heartbeat: float | None = None,
    trace_id: int = 0xABC,
    span_id: int = 0xDEF,
    **extra: Any,
) -> LifecycleRecord:
    """One record carrying a run's full state, as the runtime emits it."""
    attrs: dict[str, Any] = {
        sc.ATTR_JOB_RUN_ID: run_id,
        sc.ATTR_JOB_ATTEMPT: attempt,
        sc.ATTR_JOB_SEQUENCE: seq,
        sc.ATTR_JOB_NAME: name,
        sc.ATTR_JOB_QUEUE: queue,
        sc.ATTR_JOB_STATUS: status,
        sc.ATTR_JOB_STARTED_AT: started_at,
        sc.ATTR_HEARTBEAT_INTERVAL: interval,
        sc.ATTR_HEARTBEAT_LAST: ts if last_heartbeat is None else last_heartbeat,
        sc.ATTR_HEARTBEAT_COUNT: seq,
        sc.ATTR_PROGRESS_RATIO: 0.0,
        sc.ATTR_VIOLATION_COUNT: 0,
        sc.ATTR_HOST_NAME: "host-a",
        sc.ATTR_PROCESS_PID: 4242,
    }
    if event == sc.EVENT_JOB_HEARTBEAT:
        attrs[sc.ATTR_HEARTBEAT_CALLS] = 1
        attrs[sc.ATTR_HEARTBEAT_KIND] = "heartbeat"
    for key, value in extra.items():
        attrs[key] = value
    return LifecycleRecord(event_name=event, timestamp=ts, attributes=attrs,
                           trace_id=trace_id, span_id=span_id)


def lifecycle(run_id: str = "run-1", *, beats: int = 3, status: str = "completed",
              start: float = T0, step: float = 5.0, **kw: Any) -> list[LifecycleRecord]:
    """started, ``beats`` heartbeats, finished — a whole run's records in order."""
    out = [record(sc.EVENT_JOB_STARTED, run_id=run_id, seq=1, ts=start, started_at=start, **kw)]
    for i in range(beats):
        ts = start + step * (i + 1)
        out.append(record(run_id=run_id, seq=i + 2, ts=ts, started_at=start,
                          **{sc.ATTR_PROGRESS_RATIO: (i + 1) / (beats + 1)}, **kw))
    end = start + step * (beats + 1)
    final: dict[str, Any] = {sc.ATTR_JOB_FINISHED_AT: end, sc.ATTR_JOB_DURATION: end - start,
                             sc.ATTR_PROGRESS_RATIO: 1.0 if status == "completed" else 0.5}
    if status == "failed":
        final.update({sc.ATTR_ERROR_TYPE: "builtins.ValueError",
                      sc.ATTR_ERROR_MESSAGE: "bad row 7",
                      sc.ATTR_ERROR_STACKTRACE: "Traceback (most recent call last):\n"
                                                "ValueError: bad row 7\n"})
    out.append(record(sc.EVENT_JOB_FINISHED, run_id=run_id, seq=beats + 2, ts=end,
                      started_at=start, status=status, **final, **kw))
    return out


@contextmanager
def store_writer(path: Any, **options: Any) -> Iterator[tuple[Writer, LocalSink]]:
    """A writable store with its writer and a read-only sink over it; closed after. A new
    path starts as a copy of the empty template store (``tests/stores.py``)."""
    if not os.path.exists(path):
        empty_store(path)
    store = acquire(path, read_only=False)
    writer = Writer(store, **options)
    sink = LocalSink(acquire(path, read_only=True), read_only=True)
    try:
        yield writer, sink
    finally:
        writer.close(30)
        sink.close()
        release(store)


def write_all(writer: Writer, *batches: Sequence[LifecycleRecord]) -> None:
    """Submit each batch and wait until all are committed."""
    for batch in batches:
        assert writer.submit(list(batch))
    assert writer.flush(30)


def table(sink: LocalSink, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query (sorted, for order-independent comparisons)."""
    return sorted(sink.sql(sql)[1], key=repr)


def post_sql(url: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``url``'s ``/api/sql``: (status, decoded JSON answer)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/api/sql", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
