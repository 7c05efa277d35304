"""Fleet ``/metrics`` scrape time as history grows, against a raw GROUP BY status.

The sink's fleet ``/metrics`` (issue 14) read only *active* runs (pending or running) and the
``job_totals`` summary of ended runs, so a scrape should cost the same with 100,000 or
1,000,000 stored runs. The store is filled with synthetic ended runs directly in SQL (the
real schema, from the store's migrations) plus a fixed number of running runs (``--live``,
200 by default, a tenth of them past the long-run threshold, some stuck, overtime or lost)
in 50 jobs on 2 queues; ``job_totals`` is filled by the
migration's own backfill statement. Each size is measured in the same process:

* the scrape (``generate_latest`` over a :class:`FleetCollector`, text exposition included);
* the reference ``SELECT status, count(*) FROM jobs GROUP BY status`` (grows with history);
* the fleet query before issue 14 (runs by name, queue, status and health over every row).

Medians of ``repeats`` runs after one warm-up. ``--scattered`` spreads the running runs over
the whole history (DuckDB cannot skip a vector of the status column then).

Run: ``.venv/bin/python bench/bench_fleet_scrape.py [--quick] [--scattered]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from chaperone_otel.sink._fleet import FleetCollector, IngestStats
from chaperone_otel.sink._schema import MIGRATIONS, health_case
from chaperone_otel.sink._store import acquire, release

FILL = """
INSERT INTO jobs (run_id, attempt, seq, name, queue, status, started_at, finished_at,
    timeout_at, heartbeat_interval, last_heartbeat_at, last_seen_at, memory_bytes,
    memory_limit_bytes, cpu_percent, violation_count, ingested_at)
SELECT
    'run-' || i, 1, 10, 'etl.job' || (i % 50), CASE WHEN i % 7 = 0 THEN 'high' ELSE 'default' END,
    CASE WHEN {live} THEN 'running' WHEN i % 50 = 1 THEN 'failed' ELSE 'completed' END,
    make_timestamp(CAST(($t0 - CASE WHEN {live} AND i % 10 <> 0 THEN 30 ELSE ($n - i) * 2.0 END)
        * 1e6 AS BIGINT)),
    CASE WHEN {live} THEN NULL
         ELSE make_timestamp(CAST(($t0 - ($n - i) * 2.0 + 60) * 1e6 AS BIGINT)) END,
    CASE WHEN i % 30 = 0 THEN make_timestamp(CAST(($t0 - 10) * 1e6 AS BIGINT)) END,
    10.0,
    make_timestamp(CAST(($t0 - CASE WHEN i % 20 = 0 THEN 100 ELSE 1 END) * 1e6 AS BIGINT)),
    make_timestamp(CAST(($t0 - CASE WHEN i % 50 = 0 THEN 100 ELSE 1 END) * 1e6 AS BIGINT)),
    100000000 + (i % 1000) * 1000000, 2000000000, (i % 100) * 1.0, 0,
    make_timestamp(CAST($t0 * 1e6 AS BIGINT))
FROM range($n) t(i)
"""
RECENT = "(i >= $n - $live)"
SCATTERED = "(i % ($n // $live) = 0)"


def fill(path: Path, runs: int, live: int, now: float, *, scattered: bool) -> None:
    store = acquire(path, read_only=False)
    cur = store.cursor()
    cur.execute(
        FILL.replace("{live}", SCATTERED if scattered else RECENT),
        {"n": runs, "t0": now, "live": live},
    )
    cur.execute("DELETE FROM job_totals")
    backfill = [
        s for m in MIGRATIONS for s in m.statements if s.startswith("INSERT INTO job_totals")
    ]
    for statement in backfill:
        cur.execute(statement)
    cur.execute("CHECKPOINT")
    cur.close()
    release(store)


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(
    runs: int, live: int, repeats: int, *, scattered: bool
) -> tuple[float, float, float, int]:
    now = time.time()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.duckdb"
        fill(path, runs, live, now, scattered=scattered)
        store = acquire(path, read_only=True)
        try:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(FleetCollector(store.cursor, stats=IngestStats, clock=lambda: now))
            cur = store.cursor()
            old = (
                "SELECT coalesce(name, ''), coalesce(queue, ''), coalesce(status, ''), "
                f"CASE WHEN status = 'running' THEN {health_case()} ELSE '' END AS health, "
                "count(*) FROM jobs GROUP BY ALL"
            )
            scrape = median_ms(lambda: generate_latest(registry), repeats)
            samples = sum(1 for m in registry.collect() for _ in m.samples)
            reference = median_ms(
                lambda: cur.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall(),
                repeats,
            )
            before = median_ms(lambda: cur.execute(old, {"now": now}).fetchall(), repeats)
            cur.close()
        finally:
            release(store)
    return scrape, reference, before, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k runs, 3 repeats")
    parser.add_argument("--live", type=int, default=200, help="running runs (default 200)")
    parser.add_argument(
        "--scattered",
        action="store_true",
        help="running runs spread over the whole history (worst case)",
    )
    args = parser.parse_args()
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    repeats = 3 if args.quick else 9
    layout = "scattered" if args.scattered else "recent"
    print(f"{args.live} running runs ({layout}); {repeats} repeats, medians")
    print(
        f"{'stored runs':>12s} {'samples':>8s} {'scrape':>10s} {'GROUP BY status':>16s} "
        f"{'ratio':>7s} {'old fleet query':>16s}"
    )
    for runs in sizes:
        scrape, reference, before, samples = measure(
            runs, args.live, repeats, scattered=args.scattered
        )
        print(
            f"{runs:12,d} {samples:8d} {scrape:8.1f}ms {reference:14.1f}ms "
            f"{scrape / reference:6.2f}x {before:14.1f}ms"
        )


if __name__ == "__main__":
    main()
