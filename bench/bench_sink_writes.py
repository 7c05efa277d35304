"""Issue 13: what the sink's ingest of a supervised task costs, per write and per record.

The runs' real records: ``--runs`` trivial runs (``start_run`` + ``finish``, as the Celery
integration makes them) are captured from SDK providers, encoded with the OTLP encoders the
exporters use (log batches of ``--batches`` sizes, span batches of 1,024), then decoded and
written by the sink's own code in this process (``_otlp.decode``, the store's ``Writer``),
one write per request, as ``sink serve`` does under ``ack=commit``. Printed per task (a
task = one run = two lifecycle records + one span): the decode's thread CPU and the write's
process CPU (the writer's thread and DuckDB's), for each log batch size, and a least-squares
split of the write into a cost per write and a cost per task. ``--statements`` also prints
the writer thread's CPU in each DuckDB call of a write.

``--stored 100000,1000000`` also times the write's first statement (the ``DELETE … USING`` of
the batch's 500 runs' rows, with its ``RETURNING`` fetched) over a store already holding that
many runs: the ``jobs`` table has no index (``sink/_schema.py``), so the join reads every row.

Run: ``.venv/bin/python bench/bench_sink_writes.py [--runs 6000] [--statements]
[--stored 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import chaperone_otel as chaperone
from chaperone_otel.sink import _ingest, _writer
from chaperone_otel.sink._otlp import decode
from chaperone_otel.sink._owner import StoreOwner

SPAN_BATCH = 1024


def capture(runs: int) -> tuple[list[Any], list[Any]]:
    """The log records and spans of ``runs`` trivial runs, as the SDK hands them to exporters."""
    resource = Resource.create({"service.name": "bench", "host.name": "h", "process.pid": 1})
    logs, spans = InMemoryLogRecordExporter(), InMemorySpanExporter()
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(spans))
    chaperone.configure(logger_provider=lp, tracer_provider=tp, service_name="bench")
    for i in range(runs):
        run = chaperone.start_run(
            "bench_app.noop",
            run_id=f"task-{i:08d}",
            execution_id=f"exec-{i:08d}",
            attempt=1,
            queue="celery",
            lease="liveness",
        )
        run.finish()
    chaperone.shutdown()
    return list(logs.get_finished_logs()), list(spans.get_finished_spans())


def requests(logs: list[Any], spans: list[Any], batch: int) -> list[tuple[str, bytes]]:
    """The request bodies, log batches with the span batches spread among them."""
    log_bodies = [
        encode_logs(logs[i : i + batch]).SerializeToString() for i in range(0, len(logs), batch)
    ]
    span_bodies = [
        encode_spans(spans[i : i + SPAN_BATCH]).SerializeToString()
        for i in range(0, len(spans), SPAN_BATCH)
    ]
    every = max(1, len(log_bodies) // max(1, len(span_bodies)))
    out: list[tuple[str, bytes]] = []
    for k, body in enumerate(log_bodies):
        out.append(("logs", body))
        if (k + 1) % every == 0 and span_bodies:
            out.append(("traces", span_bodies.pop(0)))
    return out + [("traces", body) for body in span_bodies]


def ingest(path: str, bodies: list[tuple[str, bytes]], tasks: int) -> tuple[float, float]:
    """(decode, write) CPU microseconds per task, one write per request."""
    decoding = writing = 0.0
    with StoreOwner(path) as owner:
        writer = owner.writer
        for signal, body in bodies:
            t0 = time.thread_time()
            records = decode(signal, body, "protobuf").records  # type: ignore[arg-type]
            decoding += time.thread_time() - t0
            t0 = time.process_time()
            while not writer.submit(records):
                writer.flush()
            writer.flush()
            writing += time.process_time() - t0
    return decoding * 1e6 / tasks, writing * 1e6 / tasks


class _Timed:
    """A cursor whose DuckDB calls add their thread CPU to ``spent`` (by statement)."""

    def __init__(self, cursor: Any, spent: collections.Counter[str]) -> None:
        self._cursor = cursor
        self._spent = spent

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._cursor, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            what = f"{name} {args[0][:34]}" if args and isinstance(args[0], str) else name
            t0 = time.thread_time()
            result = target(*args, **kwargs)
            if name == "sql":  # DELETE ... RETURNING: the rows are fetched by the caller
                result = result.to_arrow_table()
                what += " (and fetch)"
                table = result
                result = type("Fetched", (), {"to_arrow_table": lambda self: table})()
            self._spent[what] += time.thread_time() - t0
            return result

        return timed


def delete_over_stored(sizes: list[int], tmp: str) -> None:
    """CPU and wall time of the writer's ``DELETE … RETURNING`` for 500 runs, by stored runs."""
    import duckdb
    import pyarrow as pa

    path = os.path.join(tmp, "stored.duckdb")
    with StoreOwner(path):
        pass  # creates the schema
    con = duckdb.connect(path)
    keys = pa.table(
        {
            "run_id": [f"r{i}" for i in range(500)],
            "attempt": [1] * 500,
            "execution_id": [f"e{i}" for i in range(500)],
        }
    )
    con.register("chaperone_stage_keys", keys)
    stored = 0
    print("\nthe write's DELETE ... RETURNING of 500 runs' rows, by runs already stored:")
    for size in [0, *sizes]:
        if size > stored:
            con.execute(
                "INSERT INTO jobs (run_id, attempt, execution_id, name, status) "
                f"SELECT 'r' || (i + {stored}), 1, 'e' || (i + {stored}), 'x', 'completed' "
                f"FROM range({size - stored}) t(i)"
            )
            stored = size
        con.execute("BEGIN TRANSACTION")
        t0, c0 = time.perf_counter(), time.process_time()
        con.sql(_ingest.DELETE_JOBS).to_arrow_table()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        con.execute("ROLLBACK")
        print(f"  {stored:>10,} runs stored: {cpu * 1000:7.1f} ms CPU, {wall * 1000:7.1f} ms wall")
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--batches", default="200,400,1024,2048", help="log batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--stored", default="", help="store sizes for the DELETE's cost")
    args = parser.parse_args()
    logs, spans = capture(args.runs)
    tmp = tempfile.mkdtemp()
    points: list[tuple[float, float]] = []
    print(f"{args.runs:,} runs: {len(logs):,} log records, {len(spans):,} spans")
    print(f"{'log batch':>9} {'writes/task':>12} {'decode us/task':>15} {'write us/task':>14}")
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            bodies = requests(logs, spans, batch)
            got = [
                ingest(os.path.join(tmp, f"{batch}-{k}.duckdb"), bodies, args.runs)
                for k in range(args.rounds)
            ]
            dec = statistics.median(g[0] for g in got)
            wri = statistics.median(g[1] for g in got)
            per = len(bodies) / args.runs
            points.append((per, wri))
            print(f"{batch:9} {per:12.5f} {dec:15.1f} {wri:14.1f}")
        if len(points) >= 2:  # write = per_task + per_write * writes/task
            n = len(points)
            mx = sum(p[0] for p in points) / n
            my = sum(p[1] for p in points) / n
            slope = sum((x - mx) * (y - my) for x, y in points) / sum(
                (x - mx) ** 2 for x, _ in points
            )
            print(
                f"fit: {slope / 1000:.1f} ms of CPU per write + {my - slope * mx:.1f} us per task"
            )
        if args.statements:
            spent: collections.Counter[str] = collections.Counter()
            real = _ingest.write

            def timed_write(cur: Any, staged: Any, **kwargs: Any) -> Any:
                t0 = time.thread_time()
                result = real(_Timed(cur, spent), staged, **kwargs)
                spent["the whole write (writer thread)"] += time.thread_time() - t0
                spent["writes"] += 1
                return result

            _writer.write = timed_write  # type: ignore[assignment]
            bodies = requests(logs, spans, 400)
            ingest(os.path.join(tmp, "statements.duckdb"), bodies, args.runs)
            _writer.write = real
            writes = spent.pop("writes")
            print(f"\nwriter thread CPU per write, log batches of 400 ({writes:.0f} writes):")
            for what, cpu in spent.most_common():
                print(f"  {cpu * 1000 / writes:6.2f} ms  {what}")
        if args.stored:
            delete_over_stored([int(n) for n in args.stored.split(",")], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
