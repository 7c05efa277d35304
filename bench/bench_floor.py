"""The floor of issue 16 goal 2: what a run must do through the SDK, case by case.

``bench_runtime.py --floor`` (or this script): CPU per run with OTLP export, job thread
(``time.thread_time``) and whole process (``time.process_time``, the exporter threads
flushed inside it), measured as ``bench_runtime.py --cpu`` measures, in interleaved rounds
of one process (each round starting one case further on), median. Each case adds the next
thing a supervised run must do through the SDK, replaying what one real run sends, built
beforehand: its span's start and end attributes, its context current while it runs, its
two lifecycle records through the direct log path ``configure()`` installs, its deferred
metrics (the monitor's). Case 5 is the floor of any implementation that keeps the span's
attributes and the two records; case 6 is the supervised run as ``configure()`` exports it,
so case 6 - case 5 is the runtime's own code.
The ratios are to ``--cpu``'s reference, a bare span encoded by the SDK's OTLP encoder (what
plain OTel pays); a bare span encoded by chaperone's encoder is shown too (the stricter one).
After every case the exporters must have encoded one span per run, and from case 4 on two
records per run that came by the direct path: else the script stops.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_runtime.py --floor`` (``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from bench_runtime import (
    DIRECT_LOGS,
    _batched,
    _capture_run,
    _EncodingSpanExporter,
    _FastEncodingLogExporter,
    _FastEncodingSpanExporter,
    _NullLogExporter,
    _resource,
)
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

import chaperone_otel as chaperone
from chaperone_otel import _record, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._otel import _logs as _otel_logs
from chaperone_otel._otel._metrics import Instruments, RunCounters
from chaperone_otel._runtime import runtime as _runtime
from chaperone_otel.export._fast_logs import LifecycleLogProcessor, LightLogRecord, direct_emitter

_FAST_BARE = "   bare span, chaperone's span encoder"
FLOOR_CASES = (
    "1. bare exported span",
    _FAST_BARE,
    "2. + start and end attributes",
    "3. + context current while it runs",
    "4. + its two records (direct path)",
    "5. + its deferred metrics (floor)",
    "6. " + DIRECT_LOGS,
    "7. case 6, its records' attributes given",
)
"""``--floor``: each case adds the next thing a run must do through the SDK; the last is the
supervised run itself. The reference (case 1) is ``--cpu``'s: a bare span exported by the
SDK's OTLP span encoder (what plain OTel pays); cases 2-6 are encoded as ``configure()``
exports (chaperone's encoders), and so is the second reference row, the stricter one.
Case 7 is case 6 with its two records' attributes given ready-made (the full state and the
slimmed wire form copied from one real run): what building the records slim directly, instead
of the full state then :func:`~chaperone_otel._implied.slim`, could at most save."""


class _CountingSdkSpanExporter(_EncodingSpanExporter):
    """The SDK's span encoding (``--cpu``'s reference), counting what it encoded."""

    count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return super().export(spans)


class _CountingSpanExporter(_FastEncodingSpanExporter):
    """``configure()``'s span encoding, counting what it encoded (the floor's honesty check)."""

    count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return super().export(spans)


class _CountingLogExporter(_FastEncodingLogExporter):
    """``configure()``'s log encoding, counting the light records (direct path) it encoded."""

    count = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        records: Sequence[object] = batch  # light records, when they came the direct path
        self.count += sum(type(r) is LightLogRecord for r in records)
        return super().export(batch)


def per_run_floor(runs_n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median CPU seconds per run, (job thread, process), of :data:`FLOOR_CASES`.

    Measured as ``bench_runtime.per_run_cpu`` measures (batch processors of ``configure()``'s sizes,
    chaperone's encoders, the log processor ``configure()`` installs, exporter threads
    flushed inside the process's measurement, deferred metrics drained after the job
    thread's). Cases 2-5 replay what one real run sends (its span attributes, its two
    records as the OTel log writer slims them), built beforehand, through the calls the
    runtime makes; case 5's counters and duration histogram are a real ``RunCounters``
    (the job thread queues, the drain after ``t1`` adds and records, as the monitor does).
    After every case the exporters must have encoded one span per run, and two light
    records per run from case 4 on.
    """
    resource = _resource()
    spans, logs = _CountingSpanExporter(), _CountingLogExporter()
    tracer_provider, span_processor, unused_logs, _ = _batched(resource, spans, _NullLogExporter())
    unused_logs.shutdown()
    sdk_spans = _CountingSdkSpanExporter()
    sdk_tracer_provider, sdk_span_processor, unused_logs, _ = _batched(
        resource, sdk_spans, _NullLogExporter()
    )
    unused_logs.shutdown()
    logger_provider = LoggerProvider(resource=resource)
    log_processor = LifecycleLogProcessor(
        logs, takes_light_records=True, max_queue_size=16_384, max_export_batch_size=1_024
    )
    logger_provider.add_log_record_processor(log_processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=[InMemoryMetricReader()])

    @supervised(name="bench.run")
    def job() -> None:
        return None

    full: dict[str, dict[str, Any]] = {}
    wire: dict[str, dict[str, Any]] = {}
    build, slim = _record.record_attributes, _otel_logs.slim

    def keep_full(run: Any, now: float) -> dict[str, Any]:
        out = build(run, now)
        full["finished" if run.finished_at is not None else "started"] = dict(out)
        return out

    def keep_wire(event_name: str, attributes: Any, resource: Any = None) -> Any:
        out = slim(event_name, attributes, resource)
        wire[event_name] = dict(out)
        return out

    _record.record_attributes, _otel_logs.slim = keep_full, keep_wire  # type: ignore[assignment]
    try:
        span, records = _capture_run(job)
    finally:
        _record.record_attributes, _otel_logs.slim = build, slim  # type: ignore[assignment]
    assert set(full) == {"started", "finished"}, full
    assert set(wire) == {"chaperone.job.started", "chaperone.job.finished"}, wire

    def given_full(run: Any, now: float) -> dict[str, Any]:
        return dict(full["finished" if run.finished_at is not None else "started"])

    def given_wire(event_name: str, attributes: Any, resource: Any = None) -> Any:
        return dict(wire[event_name])

    attributes = dict(span.attributes or {})
    start_keys = (
        sc.ATTR_JOB_NAME,
        sc.ATTR_JOB_QUEUE,
        sc.ATTR_JOB_RUN_ID,
        sc.ATTR_JOB_ATTEMPT,
        sc.ATTR_JOB_EXECUTION_ID,
        sc.ATTR_HEARTBEAT_INTERVAL,
    )  # _otel/_spans.SpanWriter.start's, then finish's
    end_keys = (
        sc.ATTR_JOB_STATUS,
        sc.ATTR_JOB_HEALTH,
        sc.ATTR_HEARTBEAT_COUNT,
        sc.ATTR_PROGRESS_RATIO,
    )
    # The peak memory goes on only when the monitor sampled during the run (rare for a
    # run this short); every other key goes on every run.
    assert list(attributes)[:10] == [*start_keys, *end_keys], attributes
    assert set(attributes) <= {*start_keys, *end_keys, sc.ATTR_MEMORY_PEAK}, attributes
    start_attrs = {k: attributes[k] for k in start_keys}
    end_attrs = {k: attributes[k] for k in end_keys}
    started, finished = records
    assert (started.event_name, finished.event_name) == (
        "chaperone.job.started",
        "chaperone.job.finished",
    )

    chaperone.configure(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        heartbeat_interval=60,
    )
    tracer = tracer_provider.get_tracer(sc.INSTRUMENTATION_SCOPE, chaperone.__version__)
    direct = direct_emitter(
        logger_provider.get_logger(sc.INSTRUMENTATION_SCOPE, chaperone.__version__)
    )
    assert direct is not None, "the direct log path does not apply to this SDK"
    counters = RunCounters(
        Instruments(
            MeterProvider(resource=resource, metric_readers=[InMemoryMetricReader()]),
            lambda: (),
            3600.0,
            time.time,
        )
    )
    current: ContextVar[object] = ContextVar("bench_current_run", default=None)
    handle = object()
    name, queue = str(start_attrs[sc.ATTR_JOB_NAME]), str(start_attrs[sc.ATTR_JOB_QUEUE])
    time_ns = time.time_ns

    sdk_tracer = sdk_tracer_provider.get_tracer("bench")

    def bare(k: int) -> None:
        for _ in range(k):
            sdk_tracer.start_span("bare").end()

    def fast_bare(k: int) -> None:
        for _ in range(k):
            tracer.start_span("bare").end()

    def attributed(k: int) -> None:
        for _ in range(k):
            span = tracer.start_span(
                name, kind=SpanKind.INTERNAL, attributes=start_attrs, start_time=time_ns()
            )
            if span.is_recording():
                span.set_attributes(end_attrs)
            span.end(end_time=time_ns())

    def current_while_running(k: int) -> None:
        for _ in range(k):
            span = tracer.start_span(
                name, kind=SpanKind.INTERNAL, attributes=start_attrs, start_time=time_ns()
            )
            ctx = trace.set_span_in_context(span)
            token = current.set(handle)
            otel_token = otel_context.attach(ctx)
            otel_context.detach(otel_token)
            current.reset(token)
            if span.is_recording():
                span.set_attributes(end_attrs)
            span.end(end_time=time_ns())

    def run_shape(k: int, *, metrics: bool) -> None:
        # Cases 4 and 5 written out once: the flag costs one test a record, not a call.
        emit, enabled = direct.emit, direct.enabled
        s_event, f_event = str(started.event_name), str(finished.event_name)
        s_attrs, f_attrs = dict(started.attributes or {}), dict(finished.attributes or {})
        s_body, f_body = str(started.body), str(finished.body)
        info = SeverityNumber.INFO
        for _ in range(k):
            if metrics:
                counters.started(name, queue)
            span = tracer.start_span(
                name, kind=SpanKind.INTERNAL, attributes=start_attrs, start_time=time_ns()
            )
            ctx = trace.set_span_in_context(span)
            if enabled(event_name=s_event):
                emit(time_ns(), info, "INFO", s_body, s_attrs, s_event, ctx)
            token = current.set(handle)
            otel_token = otel_context.attach(ctx)
            otel_context.detach(otel_token)
            current.reset(token)
            if enabled(event_name=f_event):
                emit(time_ns(), info, "INFO", f_body, f_attrs, f_event, ctx)
            if span.is_recording():
                span.set_attributes(end_attrs)
            span.end(end_time=time_ns())
            if metrics:
                counters.finished(name, queue, "completed", "", 0.001)

    def supervised_runs(k: int) -> None:
        for _ in range(k):
            job()

    def records_given(k: int) -> None:
        _record.record_attributes, _otel_logs.slim = given_full, given_wire  # type: ignore[assignment]
        try:
            supervised_runs(k)
        finally:
            _record.record_attributes, _otel_logs.slim = build, slim  # type: ignore[assignment]

    cases: dict[str, Callable[[int], None]] = dict(
        zip(
            FLOOR_CASES,
            (
                bare,
                fast_bare,
                attributed,
                current_while_running,
                lambda k: run_shape(k, metrics=False),
                lambda k: run_shape(k, metrics=True),
                supervised_runs,
                records_given,
            ),
            strict=True,
        )
    )
    monitor = {
        FLOOR_CASES[5]: counters.drain,
        FLOOR_CASES[6]: _runtime().flush_metrics,
        FLOOR_CASES[7]: _runtime().flush_metrics,
    }
    records_per_run = dict(zip(FLOOR_CASES, (0, 0, 0, 0, 2, 2, 2, 2), strict=True))

    def flush() -> None:
        sdk_span_processor.force_flush()
        span_processor.force_flush()
        log_processor.force_flush()

    thread: dict[str, list[float]] = {name: [] for name in cases}
    process: dict[str, list[float]] = {name: [] for name in cases}
    drained = 0
    order = list(cases.items())
    for r in range(rounds):
        # Each round starts one case further on: no case always follows the same one.
        for case, fn_ in order[r % len(order) :] + order[: r % len(order)]:
            _runtime().flush_metrics()
            flush()
            spans_before, logs_before = spans.count + sdk_spans.count, logs.count
            p0, t0 = time.process_time(), time.thread_time()
            fn_(runs_n)
            t1 = time.thread_time()
            if case in monitor:
                monitor[case]()  # the monitor's share: the process's, not the thread's
            flush()
            p1 = time.process_time()
            thread[case].append((t1 - t0) / runs_n)
            process[case].append((p1 - p0) / runs_n)
            # Every case did what it names: its spans and records were encoded.
            got = spans.count + sdk_spans.count - spans_before
            assert got == runs_n, (case, got)
            got = logs.count - logs_before
            assert got == records_per_run[case] * runs_n, (case, got)
        drained += runs_n
    chaperone.shutdown()
    labels = {sc.ATTR_JOB_NAME: name, sc.ATTR_JOB_QUEUE: queue}
    assert counters.instruments.runs_started.value(labels) == drained  # case 5's counters
    return {
        case: (statistics.median(thread[case]), statistics.median(process[case])) for case in cases
    }


def print_floor(floor: dict[str, tuple[float, float]]) -> tuple[bool, bool]:
    """Print the floor table and its verdict: whether the floor (case 5) is within goal 2's
    job thread and process targets."""
    span_thread, span_process = floor[FLOOR_CASES[0]]
    print(
        f"\n{'CPU per run, exporting: the floor':44} {'thread us':>9} {'x span':>7}"
        f" {'process us':>10} {'x span':>7}"
    )
    for case, (t, p) in floor.items():
        print(
            f"{case:44} {t * 1e6:9.1f} {t / span_thread:7.2f}"
            f" {p * 1e6:10.1f} {p / span_process:7.2f}"
        )
    thread, process = floor[FLOOR_CASES[5]]
    run_thread, run_process = floor[FLOOR_CASES[6]]
    thread_ok, process_ok = thread <= 2 * span_thread, process <= 3 * span_process
    own_thread, own_process = run_thread - thread, run_process - process
    print(
        f"floor (case 5: span with its attributes, context, two records, metrics): job thread "
        f"{thread / span_thread:.2f} x (<= 2): {'within' if thread_ok else 'ABOVE'}; process "
        f"{process / span_process:.2f} x (<= 3): {'within' if process_ok else 'ABOVE'}"
    )
    fast_thread, fast_process = floor[_FAST_BARE]
    print(
        f"the same floor against a bare span encoded by chaperone's encoder: job thread "
        f"{thread / fast_thread:.2f} x, process {process / fast_process:.2f} x"
    )
    print(
        f"runtime's own share (case 6 - case 5): job thread {own_thread * 1e6:.1f} us"
        f" ({own_thread / span_thread:.2f} x span), process {own_process * 1e6:.1f} us"
        f" ({own_process / span_process:.2f} x span)"
    )
    given_thread, given_process = floor[FLOOR_CASES[7]]
    print(
        f"the most building the records slim could save (case 6 - case 7): job thread "
        f"{(run_thread - given_thread) * 1e6:.1f} us, process "
        f"{(run_process - given_process) * 1e6:.1f} us; case 7 is "
        f"{given_process / span_process:.2f} x span (process)"
    )
    return thread_ok, process_ok


def floor_main(runs_n: int, rounds: int) -> None:
    """Measure and print the floor table and its verdict."""
    print(f"python {sys.version.split()[0]}, {rounds} interleaved rounds, median per run")
    thread_ok, process_ok = print_floor(per_run_floor(runs_n, rounds))
    print(
        "goal 2 over this floor: job thread "
        f"{'reachable' if thread_ok else 'NOT reachable'}, process "
        f"{'reachable' if process_ok else 'NOT reachable'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    floor_main(300 if args.quick else 3_000, 3 if args.quick else 9)


if __name__ == "__main__":
    main()
