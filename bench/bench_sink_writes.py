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

``--stored 100000,1000000`` also times the write's key probe (the ``DELETE … RETURNING`` of
the batch's 500 runs' rows) over a store already holding that many ended runs, appended in
end order, and 1,000 live ones: side by side, the full join with every stored row (the
``jobs`` table has no index, ``sink/_schema.py``: the writer's statement before the open
runs were kept) and the narrowed probe the writer uses (``sink/_probe.py``: the batch's open
runs at their last write, the others from their start time), for three kinds of batch, and
the one-off read of the open runs by a writer's first write.

Run: ``.venv/bin/python bench/bench_sink_writes.py [--runs 6000] [--statements]
[--stored 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
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
from chaperone_otel.sink import _ingest, _probe, _writer
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


LIVE = 1000
"""Live runs in the ``--stored`` store: started across its whole history, written last."""


def _stored(con: Any, stored: int, size: int) -> None:
    """Grow the store to ``size`` ended runs, one ending a second, appended in end order (as
    a writer leaves them), with ``LIVE`` running runs written after them."""
    if size > stored:
        con.execute("DELETE FROM jobs WHERE status = 'running'")
        con.execute(
            "INSERT INTO jobs (run_id, attempt, execution_id, name, status, started_at, "
            "finished_at, ingested_at) SELECT md5('r' || i), 1, md5('e' || i), 'x', 'completed', "
            "TIMESTAMP '2026-01-01' + to_seconds(i), TIMESTAMP '2026-01-01' + to_seconds(i + 1), "
            f"TIMESTAMP '2026-01-01' + to_seconds(i + 2) FROM range({stored}, {size}) t(i)"
        )
    con.execute("DELETE FROM jobs WHERE status = 'running'")
    con.execute(
        "INSERT INTO jobs (run_id, attempt, execution_id, name, status, started_at, "
        "ingested_at) SELECT md5('live' || i), 1, md5('e' || i), 'x', 'running', "
        f"TIMESTAMP '2026-01-01' + to_seconds(i * {max(size, LIVE)} // {LIVE}), "
        f"TIMESTAMP '2026-01-01' + to_seconds({size + 3}) FROM range({LIVE}) t(i)"
    )
    con.execute("CHECKPOINT")


def _batch(size: int, shape: str) -> Any:
    """500 keys as ``_probe.probe_keys`` gives them: new runs starting now, and per shape
    20 live runs (started anywhere in the past), the oldest ended run (a late record), or a
    pending record (no start time)."""
    import datetime as dt

    import pyarrow as pa

    now = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=size + 5)

    def md5(text: str) -> str:  # run ids are random (UUIDs): no min/max of them prunes
        return hashlib.md5(text.encode()).hexdigest()

    keys = [(md5(f"new{i}"), 1, md5(f"n{i}"), now) for i in range(500)]
    if shape == "live":
        keys[:20] = [(md5(f"live{i * 50}"), 1, md5(f"e{i * 50}"), None) for i in range(20)]
    elif shape == "late" and size:
        keys[0] = (md5("r0"), 1, md5("e0"), dt.datetime(2026, 1, 1))
    elif shape == "pending":
        keys[0] = (keys[0][0], 1, keys[0][2], None)
    names = ("run_id", "attempt", "execution_id", "started")
    types = (pa.string(), pa.int64(), pa.string(), pa.timestamp("us"))
    return pa.table(
        [pa.array([k[i] for k in keys], type=t) for i, t in enumerate(types)], names=list(names)
    )


SHAPES = {
    "live": "480 new runs + 20 live ones",
    "late": "499 new runs + a late record of the oldest ended run",
    "pending": "499 new runs + a pending record (no start: the full join)",
}


def probe_over_stored(sizes: list[int], tmp: str, rounds: int) -> None:
    """CPU and wall time of a write's key probe for 500 runs, by stored runs: the full join
    (``_probe.FULL_DELETE``, the writer's statement before it kept the open runs) against
    the narrowed probe (``_probe.take_current``, with the write's update of the open runs),
    side by side in the same rounds (median of ``rounds``)."""
    import duckdb
    import pyarrow as pa

    path = os.path.join(tmp, "stored.duckdb")
    with StoreOwner(path):
        pass  # creates the schema
    con = duckdb.connect(path)
    registered: list[str] = []

    def register(name: str, table: Any) -> None:
        con.register(name, table)
        registered.append(name)

    def timed(work: Any) -> tuple[float, float]:
        con.execute("BEGIN TRANSACTION")
        t0, c0 = time.perf_counter(), time.process_time()
        work()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        con.execute("ROLLBACK")
        return cpu * 1000, wall * 1000

    stored = 0
    print(f"\na write's key probe for 500 runs, by ended runs stored ({LIVE:,} live runs too);")
    print("ms per write, median of the rounds: CPU (wall)")
    print(f"{'stored':>10}  {'batch':<55} {'full join':>16} {'narrowed':>16} {'ratio':>6}")
    for size in [0, *sizes]:
        _stored(con, stored, size)
        stored = size
        opened = _probe.OpenRuns()
        c0 = time.process_time()
        known = opened.load(con)  # once per process, by the first write
        loaded = (time.process_time() - c0) * 1000
        print(f"{size:>10,}  (the first write reads the {len(known):,} open runs: {loaded:.1f} ms)")
        for shape, label in SHAPES.items():
            keys = _batch(size, shape)
            before: list[tuple[float, float]] = []
            after: list[tuple[float, float]] = []
            # the rows the write puts back, as the open runs learn them: all 500 running
            at = keys.column("started")
            written = (
                keys.select([0, 1, 2])
                .append_column("status", pa.array(["running"] * keys.num_rows))
                .append_column("started_at", at)
                .append_column("ingested_at", at)
            )
            for _ in range(rounds):

                def full(keys: Any = keys) -> None:  # the write's probe before
                    register("chaperone_stage_keys", keys.select([0, 1, 2]))
                    con.sql(_probe.FULL_DELETE).to_arrow_table()

                def narrowed(keys: Any = keys, written: Any = written, known: Any = known) -> None:
                    _probe.take_current(con, keys, register, known)
                    _probe.open_changes(written)  # applied after the commit (a dict update)

                before.append(timed(full))
                after.append(timed(narrowed))
            b_cpu = statistics.median(c for c, _w in before)
            b_wall = statistics.median(w for _c, w in before)
            a_cpu = statistics.median(c for c, _w in after)
            a_wall = statistics.median(w for _c, w in after)
            print(
                f"{size:>10,}  {label:<55} {b_cpu:7.1f} ({b_wall:6.1f}) "
                f"{a_cpu:7.1f} ({a_wall:6.1f}) {a_cpu / b_cpu:5.2f}x"
            )
    for name in registered:
        con.unregister(name)
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--batches", default="200,400,1024,2048", help="log batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--stored", default="", help="store sizes for the key probe's cost")
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
            probe_over_stored([int(n) for n in args.stored.split(",")], tmp, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
