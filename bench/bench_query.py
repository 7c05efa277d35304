"""Scope query latency over 1,000,000 stored runs, against a raw GROUP BY status.

Budget (DESIGN §9): < 100 ms per scope query at 1 M runs. The store is filled with synthetic
runs directly in SQL (the schema is the real one, created by the store's migrations): 97 %
completed, 2 % failed, 1 % running of which a slice is stuck, lost or overtime. Running runs
are the most recent ones (runs finish; the file is appended in start order), plus a few old
ones that were never finished (lost). ``--scattered`` spreads the running runs uniformly over
the whole history instead: the worst case for DuckDB, which then cannot skip any vector.
Each query is run ``repeats`` times after one warm-up; medians are printed next to the reference
``SELECT status, count(*) FROM jobs GROUP BY status`` measured in the same run.

Issue 16, goal 1: every scope query (bulk fetches excluded) at most 1x the reference, with the
file at most 1.2x the size without the stored verdicts. The store is filled as a store of
today's layout (``settled_health`` NULL, the size baseline), then the real migration's backfill
(:data:`BACKFILL_SETTLED`) stores the finished runs' verdicts, as upgrading an old store does;
the writer computes the same SQL per row (``sink/_ingest.py``). The per-verdict totals of
the finished runs (``verdict_totals``) are filled from those verdicts as their migration does;
the bench prints the verdict counts beside the full rule's count over every row.

Run: ``.venv/bin/python bench/bench_query.py [--quick] [--runs N] [--store PATH] [--only W]``.
``--store PATH`` keeps the filled store at ``PATH`` and reuses it on the next run (a 10 M
store takes minutes to fill); the evaluation time is then the fill's (``max(ingested_at)``),
and the size baseline is the file's size before the backfill, kept in ``PATH.baseline``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chaperone_otel.sink import open_sink
from chaperone_otel.sink._schema import (
    BACKFILL_SETTLED,
    VERDICT_TOTALS,
    predicate,
    verdict_totals_statements,
)
from chaperone_otel.sink._store import acquire, release

FILL = """
INSERT INTO jobs (run_id, attempt, seq, name, queue, status, host, pid, started_at,
    finished_at, duration, timeout_at, heartbeat_interval, heartbeat_count, last_heartbeat_at,
    last_seen_at, progress, memory_bytes, memory_peak_bytes, cpu_percent, violation_count,
    error_type, error_message, error_trace, span_seen, heartbeat_rows, ingested_at)
SELECT
    'run-' || i, 1, 10, 'etl.job' || (i % 50), CASE WHEN i % 7 = 0 THEN 'high' ELSE 'default' END,
    CASE WHEN {running} THEN 'running' WHEN i % 50 = 1 THEN 'failed' ELSE 'completed' END,
    'host-' || (i % 16), 1000 + i % 64,
    make_timestamp(CAST(($t0 - ($n - i) * 2.0) * 1e6 AS BIGINT)),
    CASE WHEN {running} THEN NULL
         ELSE make_timestamp(CAST(($t0 - ($n - i) * 2.0 + 60) * 1e6 AS BIGINT)) END,
    CASE WHEN {running} THEN NULL ELSE 60.0 END,
    CASE WHEN i % 300 = 0 THEN make_timestamp(CAST(($t0 - 10) * 1e6 AS BIGINT)) END,
    10.0, 100,
    make_timestamp(CAST(($t0 - CASE WHEN i % 200 = 0 THEN 100 ELSE 1 END) * 1e6 AS BIGINT)),
    make_timestamp(CAST(($t0 - CASE WHEN i % 500 = 0 THEN 100 ELSE 1 END) * 1e6 AS BIGINT)),
    CASE WHEN {running} THEN 50.0 ELSE 100.0 END,
    100000000 + (i % 1000) * 1000000, 200000000, (i % 100) * 1.0, 0,
    CASE WHEN i % 50 = 1 THEN 'builtins.ValueError' END,
    CASE WHEN i % 50 = 1 THEN 'bad row' END,
    CASE WHEN i % 50 = 1 THEN 'Traceback ...' END,
    FALSE, 0, make_timestamp(CAST($t0 * 1e6 AS BIGINT))
FROM range($n) t(i)
"""


RECENT = "(i >= $n - $n // 100 OR i % 50000 = 7)"
SCATTERED = "(i % 100 = 0)"


def fill(path: Path, runs: int, now: float, *, scattered: bool = False,
         settle: bool = True) -> int:
    """Fill the store; returns its size in bytes before the verdicts were stored."""
    store = acquire(path, read_only=False)
    cur = store.cursor()
    # Internal constants only; the values are bound.
    cur.execute(FILL.replace("{running}", SCATTERED if scattered else RECENT),
                {"n": runs, "t0": now})
    cur.execute("CHECKPOINT")
    baseline = path.stat().st_size
    if settle:
        cur.execute(BACKFILL_SETTLED)
        # the totals as the migration fills them from the stored verdicts (the store was
        # created empty, so the migration found none)
        cur.execute(f"DELETE FROM {VERDICT_TOTALS}")
        cur.execute(verdict_totals_statements()[1])
        cur.execute("CHECKPOINT")
    cur.close()
    release(store)
    return baseline


@contextlib.contextmanager
def bench_store(
    args: argparse.Namespace, runs: int, now: float
) -> Iterator[tuple[Path, float, int, float]]:
    """(path, evaluation time, size baseline, fill seconds) of a filled store: a new one in a
    temporary directory, or ``--store``'s, filled on first use and reused after."""
    if args.store is None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "bench.duckdb"
            t = time.perf_counter()
            baseline = fill(path, runs, now, scattered=args.scattered,
                            settle=not args.no_settle)
            yield path, now, baseline, time.perf_counter() - t
        return
    path = Path(args.store)
    side = path.with_name(path.name + ".baseline")
    t = time.perf_counter()
    if not path.exists():
        side.write_text(str(fill(path, runs, now, scattered=args.scattered,
                                 settle=not args.no_settle)))
    store = acquire(path, read_only=False)  # migrates a store filled by older code
    cur = store.cursor()
    row = cur.execute("SELECT epoch(max(ingested_at)), count(*) FROM jobs").fetchone()
    cur.close()
    release(store)
    assert row is not None
    if row[1] != runs:
        raise SystemExit(f"{path} holds {row[1]:,} runs, not {runs:,}: pass --runs {row[1]}")
    yield path, float(row[0]), int(side.read_text()), time.perf_counter() - t


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def paired_ms(fn: Callable[[], Any], reference: Callable[[], Any],
              repeats: int) -> tuple[float, float]:
    """Medians of ``fn`` and of ``reference`` run alternately: on a shared machine the load
    changes between cases, so each case's ratio is to a reference measured beside it."""
    fn()
    reference()
    ours, theirs = [], []
    for _ in range(repeats):
        for out, call in ((ours, fn), (theirs, reference)):
            t = time.perf_counter()
            call()
            out.append((time.perf_counter() - t) * 1000)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k runs, 3 repeats")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--scattered", action="store_true",
                        help="running runs spread over the whole history (worst case)")
    parser.add_argument("--no-settle", action="store_true",
                        help="leave settled_health NULL: every run judged by the full rule "
                             "(the query cost before issue 16)")
    parser.add_argument("--store", default=None,
                        help="keep the store at this path and reuse it (fill once)")
    parser.add_argument("--only", default=None,
                        help="run only the cases whose label contains one of these "
                             "comma-separated words (e.g. near_limit,stuck)")
    args = parser.parse_args()
    runs = args.runs or (100_000 if args.quick else 1_000_000)
    repeats = 3 if args.quick else 7
    now = time.time()
    with bench_store(args, runs, now) as (path, now, baseline, seconds):
        size = path.stat().st_size
        layout = "scattered" if args.scattered else "recent"
        print(f"{runs:,} runs stored in {seconds:.1f} s ({size / 2**20:.1f} MiB,"
              f" {baseline / 2**20:.1f} MiB before the verdicts were stored: "
              f"{size / baseline:.3f}x; running runs {layout}); {repeats} repeats, medians")
        with open_sink(path) as sink:
            jobs = sink.jobs.at(now)
            def group_by_status() -> Any:
                return sink.sql("SELECT status, count(*) FROM jobs GROUP BY status")

            reference = median_ms(group_by_status, repeats)
            cases: list[tuple[str, Callable[[], Any]]] = [
                ("running().count()", lambda: jobs.running().count()),
                ("failed().count()", lambda: jobs.failed().count()),
                ("healthy().count()", lambda: jobs.healthy().count()),
                ("unhealthy().count()", lambda: jobs.unhealthy().count()),
                ("degraded().count()", lambda: jobs.degraded().count()),
                ("stuck().count()", lambda: jobs.stuck().count()),
                ("lost().count()", lambda: jobs.lost().count()),
                ("overtime().count()", lambda: jobs.overtime().count()),
                ("stalled().count()", lambda: jobs.stalled().count()),
                ("heartbeat_missed().count()", lambda: jobs.heartbeat_missed().count()),
                ("violated().count()", lambda: jobs.violated().count()),
                ("near_limit().count()", lambda: jobs.near_limit().count()),
                ("pending().count()", lambda: jobs.pending().count()),
                ("healthy().limit(20).all()", lambda: jobs.healthy().limit(20).all()),
                ("running().stuck().limit(100).all()",
                 lambda: jobs.running().stuck().limit(100).all()),
                ("running().stuck().all()  [bulk: every row -> JobRecord]",
                 lambda: jobs.running().stuck().all()),
                ("running().named(x).on_queue(q).all()",
                 lambda: jobs.running().named("etl.job0").on_queue("high").all()),
                ("since('1h').count()", lambda: jobs.since("1h").count()),
                ("memory_above('1GiB').count()", lambda: jobs.memory_above("1GiB").count()),
                ("failed().order_by(started_at desc).limit(20).all()",
                 lambda: jobs.failed().order_by("started_at", desc=True).limit(20).all()),
                ("running().to_arrow()  [bulk]", lambda: jobs.running().to_arrow()),
                ("job(run_id)", lambda: sink.job(f"run-{runs // 2}")),
            ]
            if args.only is not None:
                words = [w for w in args.only.split(",") if w]
                cases = [(lbl, fn) for lbl, fn in cases if any(w in lbl for w in words)]
            print(f"{'reference GROUP BY status':55s} {reference:8.1f} ms")
            for verdict in ("healthy", "unhealthy"):  # the counts are exact, not estimates
                full = sink.sql(f"SELECT count(*) FROM jobs WHERE {predicate(verdict)}",
                                {"now": now})[1][0][0]
                fast = getattr(jobs, verdict)().count()
                print(f"{verdict}().count() = {fast:,}: the full rule over every row gives "
                      f"{full:,} ({'equal' if fast == full else 'DIFFERENT'})")
            print(f"{'':55s} {'':>11s}  (x the reference run alternately with it)")
            worst, worst_label, ratio = 0.0, "", 0.0
            for label, fn in cases:
                ms, ref = paired_ms(fn, group_by_status, repeats)
                mark = ""
                if "[bulk" not in label:
                    if ms > worst:
                        worst, worst_label = ms, label
                    ratio = max(ratio, ms / ref)
                    mark = "  ok" if ms <= ref else "  OVER 1x"
                print(f"{label:55s} {ms:8.1f} ms  ({ms / ref:5.2f}x, ref {ref:6.1f} ms){mark}")
    print(f"slowest scope query (bulk fetches excluded): {worst_label} {worst:.1f} ms; "
          f"budget < 100 ms at 1 M runs: {'OK' if worst < 100 else 'MISSED'}")
    grown = size / baseline
    met = ratio <= 1.0 and grown <= 1.2
    print(f"issue 16 goal 1: highest scope ratio {ratio:.2f}x reference (goal <= 1x), file "
          f"{grown:.3f}x its size without stored verdicts (goal <= 1.2x): "
          f"{'NOT MET' if not met else 'MET' if args.only is None else 'met by the cases run'}")


if __name__ == "__main__":
    main()
