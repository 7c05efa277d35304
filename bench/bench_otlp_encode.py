"""OTLP encoding: chaperone's hand-written encoders against the OTel SDK's, per item.

What the OTLP/HTTP log exporter spends per batch before sending: the SDK's
``encode_logs(batch).SerializeToString()`` (upb message objects built from Python, one per
attribute, value and record) against ``chaperone_otel.export._otlp_logs.encode_logs`` (the
same bytes written directly; ``tests/export/test_otlp_logs_differential.py`` proves them
equal). CPU time (``time.process_time``) per record, batches of 1,024 (the log batch size
``configure()`` gives its processor), interleaved rounds, medians, the ratio fast / SDK in
the same rounds. The bytes of the two are compared before timing.

Workloads, each captured from the real SDK (nothing rebuilt by hand):

* ``chaperone runs``: what real supervised runs send today (the OTel log writer's slim
  ``started`` and ``finished`` records, with the run span's context);
* ``full run state``: ``bench_sink_otlp.py``'s older records (~28 attributes each);
* ``user log record``: a ``logging.info(...)`` call through the SDK's ``LoggingHandler``
  inside a span (body, the code location and thread attributes the handler adds);
* ``run span``: the span of a real supervised run (10 attributes), against the SDK's
  ``encode_spans(spans).SerializePartialToString()`` (what its span exporter sends);
* ``user span``: an application's HTTP-server-like span (a parent, 6 attributes, an event).

Run: ``.venv/bin/python bench/bench_otlp_encode.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence

from bench_sink_otlp import make_logs, runtime_logs, runtime_runs
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_spans
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chaperone_otel.export._otlp_logs import encode_logs as fast_encode
from chaperone_otel.export._otlp_spans import encode_spans as fast_spans

BATCH = 1_024


def user_logs(n: int) -> list:
    """``n`` records of an application's ``logging`` calls through the SDK's handler."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    log = logging.getLogger("bench.app")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("bench")
    for i in range(n):
        with tracer.start_as_current_span("request"):
            log.info("user %s logged in from %s", f"user{i % 50}", "10.0.0.1")
    log.removeHandler(handler)
    provider.shutdown()
    return list(exporter.get_finished_logs())


def run_spans(n: int) -> list:
    """The spans of ``n`` real supervised runs (``configure()``'s resource)."""
    return runtime_runs(n)[1]


def user_spans(n: int) -> list:
    """``n`` spans of an application: a server span with the usual HTTP attributes and an
    event, each under a parent."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench.app", "1.0")
    with tracer.start_as_current_span("parent"):
        for i in range(n):
            with tracer.start_as_current_span(
                "GET /users/{id}",
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "GET",
                    "url.path": f"/users/{i}",
                    "http.route": "/users/{id}",
                    "http.response.status_code": 200,
                    "server.address": "api.example.com",
                    "user_agent.original": "curl/8.5.0",
                },
            ) as span:
                span.add_event("cache.miss", {"key": f"user:{i}"})
    provider.shutdown()
    return [s for s in exporter.get_finished_spans() if s.name != "parent"][:n]


def _per_record(encode: Callable[[Sequence], object], logs: list) -> float:
    t0 = time.process_time()
    for i in range(0, len(logs), BATCH):
        encode(logs[i : i + BATCH])
    return (time.process_time() - t0) / len(logs) * 1e6


def _attributes(item: object) -> object:
    record = getattr(item, "log_record", item)  # a log record's, or a span's
    return record.attributes  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    args = parser.parse_args()
    n = 2_048 if args.quick else 10_240
    workloads = {
        "chaperone runs": runtime_logs(n // 2),
        "full run state": make_logs(n // 10, 10),
        "user log record": user_logs(n),
        "run span": run_spans(n),
        "user span": user_spans(n),
    }
    log_cases: tuple[Callable[[Sequence], object], Callable[[Sequence], object]] = (
        lambda b: sdk_encode(b).SerializeToString(),
        fast_encode,
    )
    span_cases: tuple[Callable[[Sequence], object], Callable[[Sequence], object]] = (
        lambda b: sdk_spans(b).SerializePartialToString(),
        fast_spans,
    )
    encoders = {w: span_cases if "span" in w else log_cases for w in workloads}
    for name, logs in workloads.items():
        sdk_case, fast_case = encoders[name]
        for i in range(0, len(logs), BATCH):
            batch = logs[i : i + BATCH]
            if fast_case(batch) != sdk_case(batch):
                raise SystemExit(f"{name}: the encoders disagree")
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {w: [] for w in workloads}
    for _ in range(args.rounds):
        for w, logs in workloads.items():
            sdk_case, fast_case = encoders[w]
            sdk = _per_record(sdk_case, logs)
            fast = _per_record(fast_case, logs)
            times.setdefault((w, "sdk"), []).append(sdk)
            times.setdefault((w, "fast"), []).append(fast)
            ratios[w].append(fast / sdk)
    print(
        f"{n} records (spans) a workload, batches of {BATCH}, CPU time, "
        f"medians of {args.rounds} rounds"
    )
    print(f"{'workload':<18}{'attrs':>7}{'SDK us':>9}{'fast us':>9}{'fast / SDK':>12}")
    ok = True
    for w, logs in workloads.items():
        attrs = sum(len(_attributes(r) or {}) for r in logs) / len(logs)
        ratio = statistics.median(ratios[w])
        ok = ok and ratio <= 0.5
        print(
            f"{w:<18}{attrs:>7.1f}{statistics.median(times[w, 'sdk']):>9.1f}"
            f"{statistics.median(times[w, 'fast']):>9.1f}{ratio:>12.2f}"
        )
    verdict = "met" if ok else "NOT met"
    print(f"shipping bar (at least ~2x cheaper per record, every workload): {verdict}")


if __name__ == "__main__":
    main()
