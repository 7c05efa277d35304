"""Hot-path and per-run costs of the supervision runtime, as ratios to references.

Everything is measured side by side in one process (these machines are noisy): each
measurement is repeated, rounds are interleaved, and the median per-operation time is
reported with its ratio to the reference named in the budget (DESIGN §9):

* ``heartbeat()`` and ``report_progress()`` ≤ 1 x a tqdm ``update(1)`` (tqdm enabled,
  writing to a buffer);
* a whole supervised run ≤ 3 x a bare OTel span (start + end), both on SDK providers.

Run: ``.venv/bin/python bench/bench_runtime.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

import chaperone_otel as chaperone
from chaperone_otel import supervised


def per_op(fn: Callable[[int], None], n: int, rounds: int) -> list[float]:
    """Seconds per operation for ``rounds`` runs of ``fn(n)``."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t0) / n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    runs_n = 300 if args.quick else 3_000
    rounds = 3 if args.quick else 9

    tracer_provider = TracerProvider()
    chaperone.configure(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(),
        logger_provider=LoggerProvider(),
        heartbeat_interval=60,
    )
    tracer = tracer_provider.get_tracer("bench")

    import prometheus_client
    from tqdm import tqdm

    class Obj:
        def method(self) -> None:
            return None

    obj = Obj()
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("bench_gauge", "bench", registry=registry)
    span = tracer.start_span("reference")
    sink = io.StringIO()

    def empty(k: int) -> None:
        m = obj.method
        for _ in range(k):
            m()

    def tqdm_update(k: int) -> None:
        bar = tqdm(total=k, file=sink, mininterval=0.1)
        u = bar.update
        for _ in range(k):
            u(1)
        bar.close()

    def gauge_set(k: int) -> None:
        s = gauge.set
        for i in range(k):
            s(i)

    def add_event(k: int) -> None:
        for _ in range(k // 20):  # 20x fewer: it is slow; per-op is still per call
            span.add_event("e", {"i": 1})

    run = chaperone.supervised("bench.hot").start()

    def heartbeat(k: int) -> None:
        h = run.heartbeat
        for _ in range(k):
            h()

    def heartbeat_meta(k: int) -> None:
        h = run.heartbeat
        for i in range(k):
            h(None, i=i)

    def report_progress(k: int) -> None:
        r = run.report_progress
        for i in range(k):
            r(i, k)

    def module_heartbeat(k: int) -> None:
        h = chaperone.heartbeat
        for _ in range(k):
            h()

    def track(k: int) -> None:
        for _ in run.track(range(k)):
            pass

    def bare_loop(k: int) -> None:
        for _ in range(k):
            pass

    @supervised(name="bench.run")
    def job() -> None:
        return None

    def whole_run(k: int) -> None:
        for _ in range(k):
            job()

    def bare_span(k: int) -> None:
        for _ in range(k):
            tracer.start_span("bare").end()

    start_attrs = {
        "chaperone.job.name": "bench.run",
        "chaperone.job.queue": "default",
        "chaperone.job.run.id": "0f8e6c3a-8a3c-4b8e-9a55-0a6c1c8e2d11",
        "chaperone.job.attempt": 1,
        "chaperone.job.heartbeat.interval": 60.0,
    }
    end_attrs = {
        "chaperone.job.status": "completed",
        "chaperone.job.health": "healthy",
        "chaperone.job.heartbeat.count": 0,
        "chaperone.job.progress.ratio": 0.0,
    }

    def span_with_our_attributes(k: int) -> None:
        # What the SDK alone costs for the span a run makes: the floor of any implementation.
        for _ in range(k):
            sp = tracer.start_span("bench.run", attributes=start_attrs)
            sp.set_attributes(end_attrs)
            sp.end()

    hot = {
        "empty method call": empty,
        "tqdm update(1)": tqdm_update,
        "prometheus Gauge.set": gauge_set,
        "OTel span.add_event": add_event,
        "heartbeat()": heartbeat,
        "heartbeat(i=...)": heartbeat_meta,
        "report_progress()": report_progress,
        "module heartbeat()": module_heartbeat,
        "track() per item": track,
        "bare for-loop item": bare_loop,
    }
    results: dict[str, list[float]] = {k: [] for k in hot}
    for _ in range(rounds):  # interleave: every reference sees the same machine weather
        for name, fn in hot.items():
            k = n // 20 if name == "OTel span.add_event" else n
            t = per_op(fn, k, 1)[0]
            if name == "OTel span.add_event":
                t = t * k / (k // 20)
            results[name].extend([t])
    per_run: dict[str, list[float]] = {
        "bare OTel span": [],
        "span with a run's attributes": [],
        "supervised run": [],
    }
    for _ in range(rounds):
        per_run["bare OTel span"].extend(per_op(bare_span, runs_n, 1))
        per_run["span with a run's attributes"].extend(per_op(span_with_our_attributes, runs_n, 1))
        per_run["supervised run"].extend(per_op(whole_run, runs_n, 1))
    run.finish()
    chaperone.shutdown()

    med = {k: statistics.median(v) for k, v in {**results, **per_run}.items()}
    tq = med["tqdm update(1)"]
    print(f"python {sys.version.split()[0]}, {rounds} interleaved rounds, median per op\n")
    print(f"{'operation':28} {'ns/op':>10} {'x tqdm update(1)':>18}")
    for name in hot:
        print(f"{name:28} {med[name] * 1e9:10.0f} {med[name] / tq:18.2f}")
    span_t = med["bare OTel span"]
    print(f"\n{'per run':28} {'us/run':>10} {'x bare OTel span':>18}")
    for name in per_run:
        print(f"{name:28} {med[name] * 1e6:10.1f} {med[name] / span_t:18.2f}")
    print(
        "\nbudgets: heartbeat() and report_progress() <= 1.00 x tqdm update(1); "
        "supervised run <= 3.00 x bare OTel span"
    )
    ok = (
        med["heartbeat()"] <= tq
        and med["report_progress()"] <= tq
        and med["supervised run"] <= 3 * span_t
    )
    print("within budget" if ok else "OVER BUDGET")


if __name__ == "__main__":
    main()
