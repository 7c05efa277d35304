"""In-process sink ingest: records/s through the single writer, against row-at-a-time INSERT.

Budget (DESIGN §9): >= 100k records/s in-process. Both paths are measured in the same run on
the same machine and the ratio is printed:

* ``writer.submit(batch)`` — the sink server's path (batches of 1,000 decoded records);
* ``EmbeddedSink.on_record(record)`` — the embedded listener's path (one record per call);
* the reference: one ``INSERT … VALUES (?, …)`` per record into an equivalent table.

The workload is realistic: many concurrent runs, each with a started record, heartbeats
(every one carrying the run's full state) and a finished record.

Run: ``.venv/bin/python bench/bench_sink_ingest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel.export._sink import EmbeddedSink
from chaperone_otel.sink._owner import StoreOwner

T0 = 1_767_225_600.0


def workload(runs: int, beats: int) -> list[LifecycleRecord]:
    """Records interleaved across runs, as a busy fleet would send them."""
    out: list[LifecycleRecord] = []
    for step in range(beats + 2):
        for r in range(runs):
            ts = T0 + step * 5.0 + r * 0.001
            event = (
                sc.EVENT_JOB_STARTED
                if step == 0
                else sc.EVENT_JOB_FINISHED
                if step == beats + 1
                else sc.EVENT_JOB_HEARTBEAT
            )
            attrs = {
                sc.ATTR_JOB_RUN_ID: f"run-{r:06d}",
                sc.ATTR_JOB_ATTEMPT: 1,
                sc.ATTR_JOB_SEQUENCE: step + 1,
                sc.ATTR_JOB_NAME: f"etl.job{r % 20}",
                sc.ATTR_JOB_QUEUE: "default",
                sc.ATTR_JOB_STATUS: "completed" if step == beats + 1 else "running",
                sc.ATTR_JOB_HEALTH: "healthy",
                sc.ATTR_JOB_STUCK: False,
                sc.ATTR_JOB_STARTED_AT: T0 + r * 0.001,
                sc.ATTR_HEARTBEAT_INTERVAL: 60.0,
                sc.ATTR_HEARTBEAT_COUNT: step * 100,
                sc.ATTR_HEARTBEAT_LAST: ts,
                sc.ATTR_PROGRESS_RATIO: step / (beats + 1),
                sc.ATTR_PROGRESS_UPDATED_AT: ts,
                sc.ATTR_PROGRESS_CURRENT: step * 100,
                sc.ATTR_PROGRESS_TOTAL: (beats + 1) * 100,
                sc.ATTR_VIOLATION_COUNT: 0,
                sc.ATTR_LIMIT_POLICY: "record",
                sc.ATTR_HOST_NAME: "host-a",
                sc.ATTR_PROCESS_PID: 1000 + r % 8,
                sc.ATTR_SERVICE_INSTANCE_ID: "abc",
                sc.ATTR_MEMORY_USAGE: 100_000_000 + r,
                sc.ATTR_CPU_PERCENT: 12.5,
                sc.ATTR_METADATA: '{"batch": 7}',
            }
            if event == sc.EVENT_JOB_HEARTBEAT:
                attrs[sc.ATTR_HEARTBEAT_CALLS] = 100
                attrs[sc.ATTR_HEARTBEAT_KIND] = "heartbeat"
            if event == sc.EVENT_JOB_FINISHED:
                attrs[sc.ATTR_JOB_FINISHED_AT] = ts
                attrs[sc.ATTR_JOB_DURATION] = ts - T0
            out.append(LifecycleRecord(event, ts, attrs, trace_id=r + 1, span_id=r + 1))
    return out


def bench_writer(records: list[LifecycleRecord], tmp: Path, i: int) -> float:
    with StoreOwner(tmp / f"w{i}.duckdb", capacity=len(records) + 1) as owner:
        writer = owner.writer
        t = time.perf_counter()
        for k in range(0, len(records), 1000):
            assert writer.submit(records[k : k + 1000])
        assert writer.flush(600)
        elapsed = time.perf_counter() - t
        assert writer.stats.written == len(records), writer.stats
    return len(records) / elapsed


def bench_listener(records: list[LifecycleRecord], tmp: Path, i: int) -> float:
    sink = EmbeddedSink(tmp / f"l{i}.duckdb", serve=False, capacity=len(records) + 1)
    t = time.perf_counter()
    for r in records:
        sink.on_record(r)
    assert sink.flush(600)
    elapsed = time.perf_counter() - t
    sink.close()
    return len(records) / elapsed


def bench_row_insert(records: list[LifecycleRecord], tmp: Path, i: int) -> float:
    con = duckdb.connect(str(tmp / f"r{i}.duckdb"))
    con.execute(
        "CREATE TABLE heartbeats (run_id VARCHAR, attempt INTEGER, seq BIGINT, "
        "recorded_at TIMESTAMP, calls BIGINT, progress DOUBLE, memory BIGINT, "
        "metadata VARCHAR)"
    )
    t = time.perf_counter()
    for r in records:
        a = r.attributes
        con.execute(
            "INSERT INTO heartbeats VALUES (?, ?, ?, make_timestamp(?), ?, ?, ?, ?)",
            [
                a[sc.ATTR_JOB_RUN_ID],
                a[sc.ATTR_JOB_ATTEMPT],
                a[sc.ATTR_JOB_SEQUENCE],
                int(r.timestamp * 1e6),
                a.get(sc.ATTR_HEARTBEAT_CALLS),
                a[sc.ATTR_PROGRESS_RATIO],
                a[sc.ATTR_MEMORY_USAGE],
                a[sc.ATTR_METADATA],
            ],
        )
    elapsed = time.perf_counter() - t
    con.close()
    return len(records) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workload, 3 repeats")
    args = parser.parse_args()
    runs, beats, repeats = (500, 18, 3) if args.quick else (2000, 48, 5)
    records = workload(runs, beats)
    reference = records[: 1000 if args.quick else 3000]
    print(
        f"workload: {len(records):,} records ({runs} runs x {beats + 2}); "
        f"reference sample {len(reference):,} rows; {repeats} repeats; medians"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        batch = statistics.median(bench_writer(records, tmp, i) for i in range(repeats))
        single = statistics.median(bench_listener(records, tmp, i) for i in range(repeats))
        row = statistics.median(bench_row_insert(reference, tmp, i) for i in range(repeats))
    print(f"writer.submit(1000-record batches): {batch:12,.0f} records/s")
    print(f"EmbeddedSink.on_record (per record): {single:12,.0f} records/s")
    print(f"row-at-a-time INSERT (reference):    {row:12,.0f} records/s")
    print(f"ratio batched / row-at-a-time:  {batch / row:8.1f}x")
    print(f"ratio listener / row-at-a-time: {single / row:8.1f}x")
    budget = 100_000
    print(
        f"budget >= {budget:,}/s in-process: batched {'OK' if batch >= budget else 'MISSED'}, "
        f"listener {'OK' if single >= budget else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
