"""Telemetry never breaks the job: failures are logged once, counted and swallowed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel._events import LifecycleRecord, add_listener, remove_listener
from chaperone_otel._resources import ProcessSampler
from chaperone_otel._safety import internal_error_counts, set_raise_internal_errors
from chaperone_otel.testing import Capture, capture


@pytest.fixture
def production_mode() -> Iterator[None]:
    """Swallowed errors stay swallowed here: that is what these tests check."""
    old = set_raise_internal_errors(False)
    try:
        yield
    finally:
        set_raise_internal_errors(old)


class ExplodingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise RuntimeError("collector is down")

    def shutdown(self) -> None:
        return None


class ExplodingTracerProvider(TracerProvider):
    """A provider whose tracer itself raises: the worst a broken SDK can do."""

    def get_tracer(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def,override]
        raise RuntimeError("tracer broken")


def test_broken_tracer_never_reaches_the_job(production_mode: None) -> None:
    """A tracer that raises on every call: the job still returns; the errors are counted."""
    with capture(raise_internal_errors=False, tracer_provider=ExplodingTracerProvider()) as cap:

        @supervised(name="survives")
        def job() -> int:
            chaperone.heartbeat()
            return 7

        assert job() == 7
        assert job() == 7
        counts = internal_error_counts()
        assert counts.get("run.start") == 2
        metrics = cap.metrics()
        points = metrics[sc.METRIC_INTERNAL_ERRORS.name]
        assert (
            sum(v for attrs, v in points if attrs["chaperone.internal.where"] == "run.start") == 2
        )


def test_exporter_raising_on_every_call(production_mode: None) -> None:
    """An exporter that raises on every export: the job returns, the counter shows each."""
    from chaperone_otel.export import CountingSpanExporter

    exporter = ExplodingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(CountingSpanExporter(exporter)))
    with capture(raise_internal_errors=False, tracer_provider=provider) as cap:

        @supervised(name="exported")
        def job() -> str:
            return "value"

        assert [job() for _ in range(3)] == ["value"] * 3
        assert exporter.calls == 3
        assert internal_error_counts()["export:spans"] == 3
        points = cap.metrics()[sc.METRIC_INTERNAL_ERRORS.name]
        assert sum(v for attrs, v in points if attrs["chaperone.internal.where"] == "export") == 3


@pytest.mark.slow
def test_metric_exporter_failures_are_counted_and_its_temporality_kept(
    production_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure() wraps its OTLP metric exporter too: a failing export is counted, never
    raised, and the wrapper keeps the exporter's preferred temporality (delta stays delta)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    from chaperone_otel.export import CountingMetricExporter

    class Exploding(MetricExporter):
        calls = 0

        def export(self, metrics_data: object, timeout_millis: float = 10_000, **_: object):  # type: ignore[no-untyped-def,override]
            Exploding.calls += 1
            raise RuntimeError("collector is down")

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **_: object) -> None:
            return None

    reader = PeriodicExportingMetricReader(
        CountingMetricExporter(Exploding()), export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("c").add(1)
    before = internal_error_counts().get("export:metrics", 0)
    reader.force_flush()  # exports, fails, is counted: nothing raised
    assert Exploding.calls == 1
    assert internal_error_counts()["export:metrics"] == before + 1
    provider.shutdown()

    delta = OTLPMetricExporter(
        endpoint="http://127.0.0.1:9/v1/metrics",
        preferred_temporality={Counter: AggregationTemporality.DELTA},
    )
    wrapped = CountingMetricExporter(delta)
    assert wrapped._preferred_temporality is not None
    assert wrapped._preferred_temporality[Counter] is AggregationTemporality.DELTA

    # configure() installs it: its OTLP metric export to a closed port is counted.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds: give up on the closed port fast
    setup = chaperone.configure(otlp_endpoint="http://127.0.0.1:9")
    try:
        with supervised("metrics.export"):
            pass
        (installed,) = setup.metric_readers
        installed.force_flush()
        assert internal_error_counts().get("export:metrics", 0) >= 1
    finally:
        chaperone.shutdown()


def test_failing_hook_and_listener(production_mode: None, caplog: pytest.LogCaptureFixture) -> None:
    """A raising hook and a raising listener: the job completes, each failure logged once."""
    caplog.set_level(logging.WARNING, logger="chaperone_otel")

    class BadListener:
        def on_record(self, record: object) -> None:
            raise ValueError("listener bug")

    bad = BadListener()
    with capture(raise_internal_errors=False) as cap:
        add_listener(bad)
        try:

            def bad_hook(state: object) -> None:
                raise ZeroDivisionError("hook bug")

            @supervised(name="hooked", on_complete=bad_hook)
            def job() -> int:
                return 1

            assert job() == 1
            assert job() == 1
            cap.tick()
        finally:
            remove_listener(bad)
        assert cap.last_run("hooked").completed  # other listeners still got every record
        deadline = time.monotonic() + 10  # hooks run on their own thread: poll, bounded
        while internal_error_counts().get("hook:on_complete", 0) < 2:
            assert time.monotonic() < deadline, internal_error_counts()
            threading.Event().wait(0.01)
        counts = internal_error_counts()
        assert counts["listener:BadListener"] >= 4
        assert counts["hook:on_complete"] == 2
    logged = [r for r in caplog.records if "listener:BadListener" in r.getMessage()]
    assert len(logged) == 1, "logged once, then only counted"


def test_a_hook_calling_sys_exit_does_not_stop_later_hooks(production_mode: None) -> None:
    """A hook that calls ``sys.exit()`` ("stop the worker when a job fails") ended the
    hooks thread: every later hook of the process was queued and never called. It is an
    internal error of that hook; later hooks still run."""
    import sys

    later = threading.Event()

    def exits(state: object) -> None:
        sys.exit(1)

    with capture(raise_internal_errors=False):

        @supervised(name="exits.hook", on_failure=exits)
        def fails() -> None:
            raise RuntimeError("boom")

        @supervised(name="later.hook", on_complete=lambda state: later.set())
        def works() -> None:
            pass

        with pytest.raises(RuntimeError):
            fails()
        deadline = time.monotonic() + 10  # hooks run on their own thread: poll, bounded
        while internal_error_counts().get("hook:on_failure", 0) < 1:
            assert time.monotonic() < deadline, internal_error_counts()
            threading.Event().wait(0.01)
        works()
        assert later.wait(10), "the hook after the one that called sys.exit() never ran"


def test_failing_sampler(production_mode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resource sampling that raises is swallowed; the run goes on without samples."""

    def broken(self: ProcessSampler, now: float) -> None:
        raise OSError("procfs unavailable")

    monkeypatch.setattr(ProcessSampler, "sample", broken)
    with capture(raise_internal_errors=False) as cap:
        with supervised("no.samples") as run:
            cap.tick()
            run.heartbeat()
        assert cap.run(run.id).completed
        assert run.memory is None
        assert internal_error_counts()["resources.sample"] >= 1


def test_user_exception_unchanged_even_when_telemetry_fails(production_mode: None) -> None:
    """With a broken tracer, the user's exception is still the same object, re-raised."""
    error = LookupError("the user's own error")
    with capture(raise_internal_errors=False, tracer_provider=ExplodingTracerProvider()):

        @supervised(name="raises")
        def job() -> None:
            raise error

        with pytest.raises(LookupError) as info:
            job()
        assert info.value is error


def test_internal_errors_fail_tests_when_switch_on(chaperone: Capture) -> None:
    """In test mode (the default here) a broken listener surfaces instead of hiding."""

    class BadListener:
        def on_record(self, record: object) -> None:
            raise ValueError("surface me")

    bad = BadListener()
    add_listener(bad)
    try:
        with pytest.raises(ValueError, match="surface me"), supervised("loud"):
            pass
    finally:
        remove_listener(bad)


def test_run_finishes_even_when_its_exception_cannot_be_printed(production_mode: None) -> None:
    """An exception whose __str__ raises: re-raised unchanged, and the run still finishes
    (finished record, span ended, no longer live) instead of staying "running" for ever."""
    from chaperone_otel._runtime import runtime

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot print me")

    error = Unprintable()
    with capture(raise_internal_errors=False) as cap:

        @supervised(name="unprintable")
        def job() -> None:
            raise error

        with pytest.raises(Unprintable) as info:
            job()
        assert info.value is error
        run = cap.last_run("unprintable")
        assert run.failed
        assert run.records[-1].event_name == sc.EVENT_JOB_FINISHED
        assert "str() failed" in str(run.latest[sc.ATTR_ERROR_MESSAGE])
        assert run.span is not None  # the span was ended and exported
        assert runtime().live_runs() == []


class _StartedOnlyFilter(SimpleLogRecordProcessor):
    """A processor that filters by event name through the logs API's ``enabled()``."""

    def enabled(self, *, event_name: str | None = None, **_: object) -> bool:  # type: ignore[override]
        return event_name != sc.EVENT_JOB_STARTED


def test_records_go_only_to_listeners_that_want_them(production_mode: None) -> None:
    """The logger's enabled() decides per record: a processor declining started records
    gets the finished one only; a listener without wants() gets both; a wants() that
    raises is counted and leaves the other listeners their records."""
    exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(_StartedOnlyFilter(exporter))

    class Everything:
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_record(self, record: LifecycleRecord) -> None:
            self.events.append(record.event_name)

    class BrokenWants(Everything):
        def wants(self, event_name: str) -> bool:
            raise RuntimeError("wants broken")

    everything, broken = Everything(), BrokenWants()
    with capture(raise_internal_errors=False, logger_provider=logger_provider):
        add_listener(everything)
        add_listener(broken)
        try:

            @supervised(name="filtered")
            def job() -> int:
                return 1

            assert job() == 1
            assert internal_error_counts()["listener:BrokenWants"] == 2
        finally:
            remove_listener(everything)
            remove_listener(broken)
    exported = [r.log_record.event_name for r in exporter.get_finished_logs()]
    assert exported == [sc.EVENT_JOB_FINISHED]
    assert everything.events == [sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED]
    assert broken.events == []


class _InterruptOnce:
    """A listener that raises KeyboardInterrupt the first time it gets ``event``: Ctrl-C
    landing in the middle of the runtime's own start or finish of a run."""

    def __init__(self, event: str) -> None:
        self.event, self.fired = event, False

    def on_record(self, record: LifecycleRecord) -> None:
        if record.event_name == self.event and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def _run_once(form: str) -> None:
    if form == "decorator":
        supervised(name="interrupted")(lambda: None)()
    else:
        with supervised("interrupted"):
            pass


@pytest.mark.parametrize("event", [sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED])
@pytest.mark.parametrize("form", ["decorator", "with"])
def test_an_interrupt_inside_the_runtime_still_finishes_the_run(event: str, form: str) -> None:
    """Ctrl-C landing in the runtime's own code at a run's start or finish (not in the
    job's) left the run live in the runtime and ``running`` in the store for ever (its
    finish half done, or never begun): later judged stuck, then lost, in a process that
    goes on (a worker loop, a notebook). The interrupt goes through, after the run is
    finished, ``cancelled`` when it landed at the start."""
    from chaperone_otel._runtime import runtime

    interrupt = _InterruptOnce(event)
    later: list[LifecycleRecord] = []  # a listener after the interrupted one (a store)
    after = type("After", (), {"on_record": lambda self, r: later.append(r)})()
    with capture(background=False) as cap:
        add_listener(interrupt)
        add_listener(after)
        try:
            with pytest.raises(KeyboardInterrupt):
                _run_once(form)
        finally:
            remove_listener(interrupt)
            remove_listener(after)
        assert interrupt.fired
        assert sc.EVENT_JOB_FINISHED in [r.event_name for r in later]
        assert runtime().live_runs() == []
        run = cap.last_run("interrupted")
        assert run.events(sc.EVENT_JOB_FINISHED)
        expected = "cancelled" if event == sc.EVENT_JOB_STARTED else "completed"
        assert run.status == expected
        assert [s.name for s in cap.spans()] == ["interrupted"]
