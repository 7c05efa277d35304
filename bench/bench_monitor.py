"""Issue 16 goal 5: the monitor's cost per live run stays flat, and a worker's /metrics is
no dearer than prometheus_client's own.

* **monitor pass**: one ``tick()`` of the runtime over N live runs (each started, idle, with
  a heartbeat lease), per run, for N = 100 and N = 10,000; the budget is the per-run cost
  at 10,000 <= 2 x the per-run cost at 100. Rounds interleave the two sizes.
* **/metrics**: a worker (``configure(prometheus_port=0)``) with 1,000 live runs past the
  long-run threshold (so each carries its run id: the most series a worker serves), one
  HTTP scrape, against the reference: a plain prometheus_client registry holding the same
  number of gauge samples, scraped over HTTP by its own ``start_http_server`` in the same
  process, interleaved. Budget: <= 1x. Printed beside it: the ratio to prometheus_client's
  own ``make_wsgi_app`` serving the worker's very registry (what ``/metrics`` was before
  the live-run lines were written by ``export/_exposition``), to prometheus_client serving
  the very same series (its own ``Gauge`` children with our names, label sets and values),
  and the text of the live-run samples alone, by prometheus_client and by our writer.

Run: ``.venv/bin/python bench/bench_monitor.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import prometheus_client
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

import chaperone_otel as chaperone
from chaperone_otel._runtime import runtime as _runtime
from chaperone_otel.export import _prometheus_reader
from chaperone_otel.export._exposition import render


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


def _timed(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _same_series(text: str) -> prometheus_client.CollectorRegistry:
    """A prometheus_client registry serving exactly the samples of ``text`` (names, label
    sets, values), each a child of a plain ``Gauge``: what an application exposing the same
    series with prometheus_client's own metrics would serve."""
    registry = prometheus_client.CollectorRegistry()
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append((sample.labels, sample.value))
    for name, samples in by_name.items():
        labelnames = sorted({key for labels, _ in samples for key in labels})
        gauge = prometheus_client.Gauge(name, "same series", labelnames, registry=registry)
        for labels, value in samples:
            if labelnames:
                gauge.labels(*(labels.get(k, "") for k in labelnames)).set(value)
            else:
                gauge.set(value)
    return registry


def scrape_cost(live: int, rounds: int) -> dict[str, float]:
    """Median seconds of one scrape, keyed: ``ours`` (worker /metrics), ``ref`` (the
    prometheus_client reference with as many samples), ``same`` (prometheus_client serving
    the very same series), each also as ``*_cpu`` (the process's CPU time for the scrape,
    client and server threads: steadier than wall time on a loaded machine), plus, in
    process without HTTP, ``text_live`` (prometheus_client's
    text of the live-run families alone, already collected) and ``text_ref`` (the
    reference's whole ``generate_latest``); ``series`` is the number of samples."""
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
    same = _same_series(text)
    same_server, _ = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=same)
    same_url = f"http://127.0.0.1:{same_server.server_port}/metrics"
    # prometheus_client's app over the worker's own (default) registry: the /metrics before.
    theirs_server, _ = prometheus_client.start_http_server(0, addr="127.0.0.1")
    theirs_url = f"http://127.0.0.1:{theirs_server.server_port}/metrics"

    out: dict[str, list[float]] = {k: [] for k in ("ours", "ref", "same", "theirs")}
    for key in list(out):
        out[f"{key}_cpu"] = []
    for _ in range(rounds):
        for target, key in ((url, "ours"), (ref_url, "ref"), (same_url, "same"),
                            (theirs_url, "theirs")):
            t0, c0 = time.perf_counter(), time.process_time()
            urllib.request.urlopen(target, timeout=60).read()
            out[key].append(time.perf_counter() - t0)
            out[f"{key}_cpu"].append(time.process_time() - c0)
    reader = _prometheus_reader(setup.meter_provider)
    live_families = reader.worker_collector.live_run_families()
    only_live = prometheus_client.CollectorRegistry(auto_describe=False)
    only_live.register(_Fixed(live_families))
    text_live = _timed(lambda: prometheus_client.generate_latest(only_live), rounds)
    ours_live = _timed(lambda: render(_Live(reader), prometheus_client.generate_latest), rounds)
    text_ref = _timed(lambda: prometheus_client.generate_latest(registry), rounds)
    server.shutdown()
    same_server.shutdown()
    theirs_server.shutdown()
    for run in runs:
        run.finish()
    chaperone.shutdown()
    result = {key: statistics.median(times) for key, times in out.items()}
    return {**result, "text_live": text_live, "ours_live": ours_live, "text_ref": text_ref,
            "series": series}


class _Live:
    """The worker's live-run families, collected anew per render (as a scrape does)."""

    def __init__(self, reader: Any) -> None:
        self.collector = reader.worker_collector

    def collect(self) -> list[Metric]:
        return list(self.collector.live_run_families())


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scrape-only", action="store_true", help="skip the monitor pass")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    small, large = 100, 10_000
    ratio = 0.0
    if not args.scrape_only:
        costs = monitor_pass((small, large), rounds)
        ratio = costs[large] / costs[small]
        print(f"monitor pass, per live run: {small:,} runs {costs[small] * 1e6:.2f} us, "
              f"{large:,} runs {costs[large] * 1e6:.2f} us: {ratio:.2f}x (budget <= 2x)")
    live = 200 if args.quick else 1_000
    cost = scrape_cost(live, rounds * 3)
    scrape_ratio = cost["ours"] / cost["ref"]
    print(f"/metrics with {live:,} live runs ({cost['series']:,.0f} samples): "
          f"{cost['ours'] * 1e3:.1f} ms, prometheus_client with as many samples "
          f"{cost['ref'] * 1e3:.1f} ms: {scrape_ratio:.2f}x (budget <= 1x); in CPU time "
          f"{cost['ours_cpu'] * 1e3:.1f} / {cost['ref_cpu'] * 1e3:.1f} ms: "
          f"{cost['ours_cpu'] / cost['ref_cpu']:.2f}x")
    print(f"  prometheus_client's make_wsgi_app over the worker's registry (/metrics before): "
          f"{cost['theirs'] * 1e3:.1f} ms, {cost['theirs_cpu'] * 1e3:.1f} ms CPU = "
          f"{cost['theirs_cpu'] / cost['ref_cpu']:.2f}x the reference; ours / it in CPU time "
          f"{cost['ours_cpu'] / cost['theirs_cpu']:.2f}x")
    print(f"  prometheus_client serving the very same series (names, labels, values): "
          f"{cost['same'] * 1e3:.1f} ms: {cost['ours'] / cost['same']:.2f}x; in CPU time "
          f"{cost['ours_cpu'] / cost['same_cpu']:.2f}x")
    print(f"  text alone of the live-run samples (6 labels each, collected beforehand): "
          f"{cost['text_live'] * 1e3:.1f} ms = {cost['text_live'] / cost['text_ref']:.2f}x "
          f"the reference's whole generate_latest ({cost['text_ref'] * 1e3:.1f} ms, 3 labels); "
          f"collected and written by ours: {cost['ours_live'] * 1e3:.1f} ms = "
          f"{cost['ours_live'] / cost['text_ref']:.2f}x")
    scrape_cpu = cost["ours_cpu"] / cost["ref_cpu"]
    print(f"goal 5 /metrics, CPU per scrape / the reference's: {scrape_cpu:.2f}x "
          f"({'met' if scrape_cpu <= 1 else 'NOT met'}, budget <= 1x)")
    met = ratio <= 2 and scrape_cpu <= 1
    print("within budget" if met else "OVER BUDGET")

if __name__ == "__main__":
    main()
