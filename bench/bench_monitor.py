"""Issue 16 goal 5: the monitor's cost per live run stays flat, and a worker's /metrics is
no dearer than prometheus_client's own.

* **monitor pass**: one ``tick()`` of the runtime over N live runs (each started, idle, with
  a heartbeat lease), per run, for N = 100 and N = 10,000; the budget is the per-run cost
  at 10,000 <= 2 x the per-run cost at 100. Rounds interleave the two sizes.
* **/metrics**: a worker (``configure(prometheus_port=0)``) with 1,000 live runs past the
  long-run threshold (so each carries its run id: the most series a worker serves), one
  HTTP scrape, against the reference: a plain prometheus_client registry holding the same
  number of gauge samples, scraped over HTTP by its own ``start_http_server`` in the same
  process, interleaved. Budget: <= 1x.

Run: ``.venv/bin/python bench/bench_monitor.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request

import prometheus_client
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

import chaperone_otel as chaperone
from chaperone_otel._runtime import runtime as _runtime


def monitor_pass(sizes: tuple[int, ...], rounds: int) -> dict[int, float]:
    """Median seconds per live run of one monitor pass, for each number of live runs."""
    per_run: dict[int, list[float]] = {n: [] for n in sizes}
    chaperone.configure(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        logger_provider=LoggerProvider(),
        heartbeat_interval=3600,
        sample_interval=3600,
    )
    runtime = _runtime()
    runtime.stop()  # passes are driven here, not by the thread
    for _ in range(rounds):
        for n in sizes:
            runs = [chaperone.supervised(f"bench.monitor{i % 50}").start() for i in range(n)]
            runtime.tick()  # first pass: each run's first observation, records
            t0 = time.perf_counter()
            passes = max(1, 20_000 // n)
            for _ in range(passes):
                runtime.tick()
            per_run[n].append((time.perf_counter() - t0) / passes / n)
            for run in runs:
                run.finish()
            runtime.tick()
    chaperone.shutdown()
    return {n: statistics.median(v) for n, v in per_run.items()}


def scrape_cost(live: int, rounds: int) -> tuple[float, float, int]:
    """Median seconds of one scrape: (worker /metrics, prometheus_client reference, series)."""
    setup = chaperone.configure(
        prometheus_port=0, heartbeat_interval=3600, long_run_threshold=0.001
    )
    assert setup is not None
    assert setup.prometheus_url is not None
    url = setup.prometheus_url
    runs = [chaperone.supervised(f"bench.scrape{i % 50}").start() for i in range(live)]
    time.sleep(0.01)  # past the long-run threshold: every run carries its run id
    _runtime().tick()
    text = urllib.request.urlopen(url, timeout=60).read().decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge(
        "bench_series", "reference", ["name", "queue", "run_id"], registry=registry
    )
    for i in range(series):
        gauge.labels(f"bench.scrape{i % 50}", "default", f"run-{i}").set(i)
    server, _thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    ref_url = f"http://127.0.0.1:{server.server_port}/metrics"

    ours: list[float] = []
    ref: list[float] = []
    for _ in range(rounds):
        for target, out in ((url, ours), (ref_url, ref)):
            t0 = time.perf_counter()
            urllib.request.urlopen(target, timeout=60).read()
            out.append(time.perf_counter() - t0)
    server.shutdown()
    for run in runs:
        run.finish()
    chaperone.shutdown()
    return statistics.median(ours), statistics.median(ref), series


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    small, large = 100, 10_000
    costs = monitor_pass((small, large), rounds)
    ratio = costs[large] / costs[small]
    print(f"monitor pass, per live run: {small:,} runs {costs[small] * 1e6:.2f} us, "
          f"{large:,} runs {costs[large] * 1e6:.2f} us: {ratio:.2f}x (budget <= 2x)")
    live = 200 if args.quick else 1_000
    ours, ref, series = scrape_cost(live, rounds * 3)
    scrape_ratio = ours / ref
    print(f"/metrics with {live:,} live runs ({series:,} samples): {ours * 1e3:.1f} ms, "
          f"prometheus_client with as many samples {ref * 1e3:.1f} ms: {scrape_ratio:.2f}x "
          "(budget <= 1x)")
    met = ratio <= 2 and scrape_ratio <= 1
    print("within budget" if met else "OVER BUDGET")


if __name__ == "__main__":
    main()
