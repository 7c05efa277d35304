"""Runs of every function kind: spans, statuses, records, exceptions, misuse."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import pytest
from opentelemetry.trace import StatusCode

import chaperone_otel as chaperone
from chaperone_otel import ConfigurationError, Supervised, current_job, supervised
from chaperone_otel import semconv as sc
from chaperone_otel.testing import Capture, FakeClock, capture


def _span_named(cap: Capture, name: str):  # type: ignore[no-untyped-def]
    spans = [s for s in cap.spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in cap.spans()]
    return spans[0]


def test_sync_function_one_span_completed(chaperone: Capture) -> None:
    """A decorated function gives one span named after it, status completed, value returned."""

    @supervised(name="etl.sync", queue="imports")
    def job(x: int) -> int:
        return x * 2

    assert job(21) == 42
    span = _span_named(chaperone, "etl.sync")
    assert span.attributes[sc.ATTR_JOB_STATUS] == "completed"
    assert span.attributes[sc.ATTR_JOB_QUEUE] == "imports"
    assert span.status.status_code is StatusCode.UNSET
    run = chaperone.last_run("etl.sync")
    assert next(r.event_name for r in run.records) == sc.EVENT_JOB_STARTED
    assert run.records[-1].event_name == sc.EVENT_JOB_FINISHED
    assert run.completed


def test_bare_decorator_uses_qualified_name(chaperone: Capture) -> None:
    """Bare @supervised names the job module.qualname."""

    @supervised
    def bare() -> str:
        return "ok"

    assert bare() == "ok"
    assert chaperone.spans()[0].name.endswith(
        "test_bare_decorator_uses_qualified_name.<locals>.bare"
    )


async def test_coroutine(chaperone: Capture) -> None:
    """A coroutine run is current inside the coroutine and completes."""

    @supervised(name="co")
    async def job() -> str:
        await asyncio.sleep(0)
        run = current_job()
        assert run is not None
        run.heartbeat()
        return run.id

    run_id = await job()
    assert chaperone.run(run_id).completed
    assert _span_named(chaperone, "co").attributes[sc.ATTR_HEARTBEAT_COUNT] == 1


def test_generator_run_spans_iteration(chaperone: Capture) -> None:
    """A generator run starts at the first item, ends at exhaustion; current only inside."""
    seen_inside: list[bool] = []

    @supervised(name="gen")
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            seen_inside.append(current_job() is not None)
            yield i

    gen = numbers(3)
    assert chaperone.spans() == []
    out = []
    for item in gen:
        assert current_job() is None  # the consumer never sees the generator's run
        out.append(item)
    assert out == [0, 1, 2]
    assert seen_inside == [True, True, True]
    assert _span_named(chaperone, "gen").attributes[sc.ATTR_JOB_STATUS] == "completed"


def test_generator_send_and_early_close(chaperone: Capture) -> None:
    """send() reaches the generator; closing early records the run as cancelled."""

    @supervised(name="echo")
    def echo() -> Iterator[int]:
        value = 0
        while True:
            value = yield value * 10

    gen = echo()
    assert next(gen) == 0
    assert gen.send(4) == 40
    gen.close()
    assert _span_named(chaperone, "echo").attributes[sc.ATTR_JOB_STATUS] == "cancelled"


def test_generator_exception_propagates(chaperone: Capture) -> None:
    """An exception inside a generator fails the run and reaches the consumer unchanged."""
    boom = RuntimeError("gen failed")

    @supervised(name="bad.gen")
    def bad() -> Iterator[int]:
        yield 1
        raise boom

    with pytest.raises(RuntimeError) as info:
        list(bad())
    assert info.value is boom
    assert chaperone.last_run("bad.gen").failed


async def test_async_generator(chaperone: Capture) -> None:
    """An async generator run covers the iteration and sees its own run."""

    @supervised(name="agen")
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            run = current_job()
            assert run is not None
            run.report_progress(i + 1, n)
            yield i

    assert [x async for x in ticks(4)] == [0, 1, 2, 3]
    run = chaperone.last_run("agen")
    assert run.completed
    assert run.progress == 100


def test_context_manager(chaperone: Capture) -> None:
    """`with supervised(name) as run` supervises the block and restores the outer context."""
    with supervised("block", queue="q1") as run:
        assert current_job() is run
        run.report_progress(5, 10)
    assert current_job() is None
    captured = chaperone.run(run.id)
    assert captured.completed
    assert captured.progress == 50


async def test_async_context_manager(chaperone: Capture) -> None:
    """`async with supervised(...)` works the same inside a task."""
    async with supervised("ablock") as run:
        await asyncio.sleep(0)
        run.heartbeat()
    assert chaperone.run(run.id).completed


def test_nested_runs_parent_child_spans(chaperone: Capture) -> None:
    """A run inside a run is its child span; each sees itself as current."""
    with supervised("outer") as outer:
        with supervised("inner") as inner:
            assert current_job() is inner
        assert current_job() is outer
    inner_span = _span_named(chaperone, "inner")
    outer_span = _span_named(chaperone, "outer")
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id


def test_failure_records_exception_and_reraises_same_object(chaperone: Capture) -> None:
    """A raising job: ERROR span with an exception event, failed record, same exception."""
    error = KeyError("missing row")

    @supervised(name="fails")
    def job() -> None:
        raise error

    with pytest.raises(KeyError) as info:
        job()
    assert info.value is error
    span = _span_named(chaperone, "fails")
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events if e.name == "exception"] == ["exception"]
    run = chaperone.last_run("fails")
    assert run.failed
    finished = run.events(sc.EVENT_JOB_FINISHED)[0]
    assert finished.severity == "ERROR"
    assert finished.attributes[sc.ATTR_ERROR_TYPE] == "KeyError"
    assert "raise error" in str(finished.attributes[sc.ATTR_ERROR_STACKTRACE])


def test_base_exception_passes_through(chaperone: Capture) -> None:
    """KeyboardInterrupt is not swallowed; the run is cancelled."""

    @supervised(name="interrupted")
    def job() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job()
    assert chaperone.last_run("interrupted").status == "cancelled"


@pytest.mark.parametrize(
    ("leaves", "status"),
    [
        ([KeyboardInterrupt()], "cancelled"),
        ([asyncio.CancelledError(), KeyboardInterrupt()], "cancelled"),
        ([asyncio.CancelledError(), SystemExit(1)], "failed"),
        ([asyncio.CancelledError(), ValueError("boom")], "failed"),
    ],
)
def test_an_exception_group_of_cancellations_is_cancelled(
    chaperone: Capture, leaves: list[BaseException], status: str
) -> None:
    """A task group (anyio, trio, 3.11's ``BaseExceptionGroup``) raising only cancellations
    (Ctrl-C reaching its tasks) is a cancelled run, not a failed one; one real error among
    them fails it. The group is re-raised unchanged."""
    import builtins

    group_type = getattr(builtins, "BaseExceptionGroup", None)
    if group_type is None:
        group_type = pytest.importorskip("exceptiongroup").BaseExceptionGroup
    group = group_type("task group", leaves)

    @supervised(name="grouped")
    def job() -> None:
        raise group

    with pytest.raises(group_type) as raised:
        job()
    assert raised.value is group
    assert chaperone.last_run("grouped").status == status


def test_supervised_base_class(chaperone: Capture) -> None:
    """The base class supervises run(); the id is known before and stable across attempts."""

    class Import(Supervised):
        queue = "imports"
        heartbeat_interval = 10

        def run(self, n: int) -> int:
            for i in range(n):
                self.heartbeat({"i": i})
            self.report_progress(n, n)
            return n

    job = Import()
    sid = job.supervision_id
    assert job.get_supervision_id() == sid
    assert job.run(3) == 3
    first = chaperone.run(sid)
    assert first.completed
    assert first.latest[sc.ATTR_JOB_ATTEMPT] == 1
    assert first.latest[sc.ATTR_JOB_QUEUE] == "imports"
    assert first.latest[sc.ATTR_HEARTBEAT_INTERVAL] == 10
    job.run(1)
    assert chaperone.run(sid).latest[sc.ATTR_JOB_ATTEMPT] == 2
    assert Import().supervision_id != sid


async def test_supervised_base_class_async(chaperone: Capture) -> None:
    """An async run() is supervised as a coroutine."""

    class Fetch(Supervised):
        async def run(self) -> str:
            await asyncio.sleep(0)
            self.heartbeat()
            return "done"

    job = Fetch()
    assert await job.run() == "done"
    assert chaperone.run(job.supervision_id).heartbeat_count == 1


def test_subclass_extending_run_with_super_is_one_run(chaperone: Capture) -> None:
    """A subclass whose run() calls super().run() makes one run per call, not a run nested
    in a run of the same id (which would read as a retry)."""

    class Import(Supervised):
        def run(self, rows: list[int]) -> int:
            for i, _ in enumerate(rows, 1):
                self.report_progress(i, len(rows))
            return len(rows)

    class AuditedImport(Import):
        def run(self, rows: list[int]) -> int:
            n = super().run(rows)
            self.heartbeat(audited=n)
            return n

    class AsyncImport(Supervised):
        async def run(self) -> int:
            self.heartbeat()
            return 1

    class AsyncAudited(AsyncImport):
        async def run(self) -> int:
            return await super().run() + 1

    job = AuditedImport()
    assert job.run([1, 2, 3]) == 3
    assert job.run([1]) == 1
    started = [
        r.attributes[sc.ATTR_JOB_ATTEMPT]
        for r in chaperone.records
        if r.event_name == sc.EVENT_JOB_STARTED
        and r.attributes[sc.ATTR_JOB_RUN_ID] == job.supervision_id
    ]
    assert started == [1, 2]
    run = chaperone.run(job.supervision_id)
    assert run.completed
    assert run.heartbeat_count == 1
    assert run.progress == 100
    assert run.metadata == {"audited": 1}

    async_job = AsyncAudited()
    assert asyncio.run(async_job.run()) == 2
    async_starts = [
        r
        for r in chaperone.records
        if r.event_name == sc.EVENT_JOB_STARTED
        and r.attributes[sc.ATTR_JOB_RUN_ID] == async_job.supervision_id
    ]
    assert len(async_starts) == 1


def test_million_heartbeats_coalesce(chaperone: Capture) -> None:
    """1,000,000 heartbeat() calls with a 60 s interval: a handful of events, exact count."""

    @supervised(name="hot", heartbeat_interval=60)
    def job() -> None:
        run = current_job()
        assert run is not None
        for _ in range(1_000_000):
            run.heartbeat()

    job()
    span = _span_named(chaperone, "hot")
    heartbeat_events = [e for e in span.events if e.name == sc.EVENT_JOB_HEARTBEAT]
    assert 1 <= len(heartbeat_events) <= 5
    run = chaperone.last_run("hot")
    assert run.records[-1].attributes[sc.ATTR_HEARTBEAT_COUNT] == 1_000_000
    assert sum(int(r.attributes[sc.ATTR_HEARTBEAT_CALLS]) for r in run.heartbeats) == 1_000_000
    assert len(run.events(sc.EVENT_JOB_HEARTBEAT)) <= 5


def test_metadata_is_merged_not_replaced(chaperone: Capture) -> None:
    """Later heartbeat metadata adds to earlier keys (Chaperone replaced them wholesale)."""
    with supervised("meta") as run:
        run.heartbeat({"phase": "fetch", "batch": 1})
        run.heartbeat(batch=2, errors=0)
    assert chaperone.run(run.id).metadata == {"phase": "fetch", "batch": 2, "errors": 0}


@pytest.mark.parametrize(
    ("current", "total"),
    [(-1, 10), (1, -10), (math.nan, 10), (1, math.nan), (3, 0)],
)
def test_report_progress_rejects_bad_values(
    chaperone: Capture, current: float, total: float
) -> None:
    """Negative, NaN, or total 0 with current > 0 raise ValueError inside and outside a run."""
    with pytest.raises(ValueError, match="report_progress"):
        chaperone_report(current, total)
    with supervised("bad.progress") as run:
        run.report_progress(2, 4)
        with pytest.raises(ValueError, match="report_progress"):
            run.report_progress(current, total)
        assert (run.progress_current, run.progress_total) == (2, 4)  # nothing bad was kept


def chaperone_report(current: float, total: float) -> bool:
    return chaperone.report_progress(current, total)


def test_progress_clamped_and_empty_batch(chaperone: Capture) -> None:
    """current > total clamps to 100 %; (0, 0) means an empty batch, i.e. done."""
    with supervised("clamp") as run:
        run.report_progress(12, 10)
        assert run.progress_ratio == 1.0
    with supervised("empty") as run2:
        run2.report_progress(0, 0)
        assert run2.progress_ratio == 1.0


def test_outside_a_run_helpers_are_noops() -> None:
    """Module-level helpers outside a run: no error, False; current_job() is None."""
    assert current_job() is None
    assert chaperone.heartbeat({"x": 1}) is False
    assert chaperone.report_progress(1, 2) is False
    assert list(chaperone.track([1, 2])) == [1, 2]
    with pytest.raises(chaperone.NoActiveJobError, match="outside a supervised run"):
        current_job(required=True)


def test_misuse_fails_at_decoration_time() -> None:
    """Bad options raise ConfigurationError immediately, with what to do."""
    with pytest.raises(ConfigurationError, match="memory_limit"):
        supervised(memory_limit="lots")
    with pytest.raises(ConfigurationError, match="on_limit"):
        supervised(on_limit="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        supervised(heartbeat_interval=0)
    with pytest.raises(ConfigurationError, match="cpu_limit"):
        supervised(cpu_limit=-5)
    with pytest.raises(ConfigurationError, match="timeout"):
        supervised(timeout="soon")
    with pytest.raises(ConfigurationError, match="on_stuck must be callable"):
        supervised(on_stuck="not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="supervision_id"):

        @supervised(supervision_id="fixed")
        def job() -> None: ...

    with pytest.raises(ConfigurationError, match="needs a job name"), supervised():
        pass


def test_units_accepted() -> None:
    """Sizes and durations in human units are parsed once, at decoration time."""
    spec = supervised("u", memory_limit="512MiB", timeout="2h", stall_timeout="90s")._spec
    assert spec.memory_limit == 512 * 1024 * 1024
    assert spec.timeout == 7200
    assert spec.stall_timeout == 90


def test_phases_by_weight_and_ranges(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """Declared phases map per-phase progress into overall progress (seed multi-phase)."""
    with supervised("phased") as run:
        run.phases(
            {"fetch": (0, 25), "validate": (25, 50), "process": (50, 90), "cleanup": (90, 100)}
        )
        run.report_progress(1, 1, {"phase": "fetch"})
        assert run.progress_ratio == pytest.approx(0.25)
        run.report_progress(5, 10, phase="process")
        assert run.progress_ratio == pytest.approx(0.70)
        chaperone.tick()  # a phase change is flushed at the next monitor pass, not a period later
        phases = [r.attributes.get(sc.ATTR_PROGRESS_PHASE) for r in chaperone.run(run.id).records]
        assert "process" in phases
        with run.phase_scope("cleanup"):
            assert run.progress_ratio == pytest.approx(0.90)
        assert run.progress_ratio == pytest.approx(1.0)
        with pytest.raises(ValueError, match="unknown phase"):
            run.report_progress(1, 1, phase="nope")
    with supervised("weighted") as run2:
        run2.phases(a=1, b=3)
        run2.report_progress(1, 2, phase="b")
        assert run2.progress_ratio == pytest.approx(0.25 + 0.75 / 2)
    progress_events = chaperone.run(run.id).events(sc.EVENT_JOB_PROGRESS)
    assert progress_events[0].attributes[sc.ATTR_PROGRESS_PHASE] == "process"


def test_track_reports_throughput_and_eta(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """track() reports after each item; rate and ETA follow the fake clock."""
    with supervised("tracked") as run:
        items = iter(run.track(range(100)))
        next(items)
        next(items)  # the first item is reported when the second is asked for
        chaperone.tick()  # the monitor stamps progress times: first seen at 1/100
        chaperone_clock.advance(10)
        for _ in range(49):
            next(items)
        state = run.snapshot()  # a snapshot observes too: 50/100 seen 10 s later
        assert state.current == 50
        assert state.total == 100
        assert state.percent == pytest.approx(50)
        assert state.throughput == pytest.approx(49 / 10)
        assert state.eta == pytest.approx(10 * 50 / 49)
        list(items)
    assert chaperone.run(run.id).progress == 100


def test_throughput_and_eta_restart_with_a_new_phase_or_loop(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """Throughput is items per second of the current phase or loop: 1 item/s for 100 s,
    then a second loop (or phase) at 10 items/s reads 10/s, not this loop's items over the
    whole run's time (was 3.3/s), and its ETA follows the new pace."""
    for switch in ("loop", "phase"):
        with supervised(f"paced.{switch}") as run:
            for _ in run.track(range(100), phase="fetch" if switch == "phase" else None):
                chaperone_clock.advance(1.0)
            chaperone.tick()
            second = iter(run.track(range(100), phase="load" if switch == "phase" else None))
            next(second)
            next(second)  # one item of the new loop done
            chaperone.tick()
            for _ in range(50):
                chaperone_clock.advance(0.1)
                next(second)
            state = run.snapshot()
            assert state.current == 51
            assert state.throughput == pytest.approx(10.0)
            assert state.eta == pytest.approx(4.9)  # 49 items left at 10/s
            list(second)


def test_track_without_len_counts_items(chaperone: Capture) -> None:
    """An iterator without len() still counts items as heartbeats."""
    with supervised("stream") as run:
        assert sum(run.track(x for x in range(7))) == 21
        assert run.progress_current == 7
        assert run.progress_total is None
        assert run.progress_ratio == 0.0  # unknown total: no ratio, but the count moves


def test_track_without_len_is_progress_not_a_stall(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """``track()`` over a generator (no total) at one item a second: the moving count is
    progress and the job's own heartbeat. Before, the ratio stayed 0, so the run was
    judged stalled (degraded) after ``stall_timeout`` and its records said only that the
    process vouched for it (``liveness``)."""
    with supervised("stream.paced", heartbeat_interval=60, stall_timeout=10) as run:
        for i, _ in enumerate(run.track(x for x in range(100))):
            chaperone.advance(1.0)
            if i == 30:
                break
        assert run.progress_current == 30
        assert run.health == "healthy"
    beats = chaperone.run(run.id).events(sc.EVENT_JOB_HEARTBEAT)
    assert beats
    assert {b.attributes[sc.ATTR_HEARTBEAT_KIND] for b in beats} == {"heartbeat"}


def test_nested_track_loops_fill_the_outer_item_and_never_go_back(chaperone: Capture) -> None:
    """``for f in track(files): for row in track(rows)``: the run's progress is the outer
    loop's, the inner loop filling its current item (1 of 4 files done and half the
    second's rows is 1.5 of 4). Before, the inner loop replaced it (2 of 6 rows), and after
    the inner loop the outer count was divided by the inner total (3 of 6, not 3 of 4)."""
    seen: list[float] = []
    with supervised("nested.loops") as run:
        for _ in run.track(["a", "b", "c", "d"]):
            for _ in run.track(range(6)):
                seen.append(run.progress_ratio)
            seen.append(run.progress_ratio)
        seen.append(run.progress_ratio)
        assert (run.progress_current, run.progress_total) == (4, 4)
    assert seen == sorted(seen)  # never backwards
    assert seen[:3] == [0.0, pytest.approx(1 / 24), pytest.approx(2 / 24)]
    assert seen[7] == pytest.approx(0.25)  # the first file's rows done: 1 of 4
    assert seen[-1] == 1.0


def test_loops_of_one_run_in_concurrent_tasks_add_up(chaperone: Capture) -> None:
    """Two tasks of one run (``asyncio.gather``), each tracking its share, interleaved: the
    second loop was taken for one nested in the first (one shared stack), so progress hit
    100 % when the first ended and went back to 54 %. Loops of other tasks add up: items
    done over the totals together, never backwards, a loop that ended first keeping its
    share, 100 % at the end."""
    seen: list[float] = []

    async def share(run: object, n: int) -> None:
        for _ in run.track(range(n)):  # type: ignore[attr-defined]
            seen.append(run.progress_ratio)  # type: ignore[attr-defined]
            await asyncio.sleep(0)

    async def both() -> None:
        async with supervised("gathered") as run:
            await asyncio.gather(share(run, 4), share(run, 8))
            seen.append(run.progress_ratio)
            assert (run.progress_current, run.progress_total) == (12, 12)

    asyncio.run(both())
    assert seen == sorted(seen), seen
    assert seen[-1] == 1.0
    assert max(seen[:-1]) < 1.0


def test_a_nested_loop_without_a_total_is_a_sign_of_life(chaperone: Capture) -> None:
    """An inner loop over a generator cannot say how far into the outer item it is: the
    outer progress stays, and its items count as heartbeats (the run is not idle)."""
    with supervised("nested.stream") as run:
        for _ in run.track(range(2)):
            before = run.snapshot().heartbeat_count
            for _ in run.track(x for x in range(5)):
                pass
            assert run.snapshot().heartbeat_count == before + 5
        assert run.progress_ratio == 1.0


@pytest.mark.parametrize(("total", "error"), [(-1, ValueError), (math.nan, ValueError), ("9", TypeError)])
def test_track_rejects_a_bad_total_before_iterating(
    chaperone: Capture, total: object, error: type[Exception]
) -> None:
    """A negative, NaN or non-number total fails at the track() call, nothing consumed."""
    consumed: list[int] = []
    with supervised("bad.total") as run:
        with pytest.raises(error, match="total"):
            run.track((consumed.append(i) or i for i in range(3)), total)  # type: ignore[arg-type]
        assert consumed == []
        assert run.progress_total is None


def test_supervised_class_rejects_generator_run() -> None:
    """A generator run() would finish before its first item: refused when the class is made."""
    with pytest.raises(ConfigurationError, match="generator"):

        class Streams(Supervised):
            def run(self) -> Iterator[int]:
                yield 1


def test_class_and_function_names_follow_one_rule(chaperone: Capture) -> None:
    """A class-based job is named module.Qualname like a function (job_name overrides)."""

    class Named(Supervised):
        def run(self) -> None:
            return None

    class Custom(Supervised):
        job_name = "custom.name"

        def run(self) -> None:
            return None

    Named().run()
    Custom().run()
    names = [s.name for s in chaperone.spans()]
    assert names[0] == f"{__name__}.test_class_and_function_names_follow_one_rule.<locals>.Named"
    assert names[1] == "custom.name"


def test_finished_runs_leave_nothing_behind() -> None:
    """Every kind of run, once finished and its counters drained, is garbage: nothing in the
    runtime (registry, counter queue, caches) keeps a run handle alive."""
    import gc

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from chaperone_otel._run import Supervision
    from chaperone_otel._runtime import runtime

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Supervision) for o in gc.get_objects())

    chaperone.configure(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        logger_provider=LoggerProvider(),
    )
    try:

        @supervised(name="leak.fn")
        def fn(i: int) -> int:
            chaperone.heartbeat()
            chaperone.report_progress(1, 2)
            return i

        @supervised(name="leak.fails")
        def fails() -> None:
            raise ValueError("no")

        @supervised(name="leak.gen")
        def gen() -> Iterator[int]:
            yield 1
            yield 2

        @supervised(name="leak.coro")
        async def coro() -> int:
            return 1

        before = alive()
        for i in range(200):
            fn(i)
            with pytest.raises(ValueError):
                fails()
            list(gen())
            next(gen())  # closed early, when collected
            asyncio.run(coro())
            with supervised("leak.block") as run:
                run.heartbeat()
        del run  # the test's own reference to the last block's handle
        runtime().flush_metrics()
        # Stop the monitor thread first: a pass that copied the live runs just before the
        # last one finished would still hold it (a race, not a leak).
        assert runtime().stop()
        assert alive() == before
    finally:
        chaperone.shutdown()


@pytest.mark.parametrize(
    ("hook", "bad"),
    [
        ("on_violation", lambda state: None),
        ("on_health_change", lambda state: None),
        ("on_stuck", lambda state, extra: None),
        ("on_complete", lambda: None),
    ],
)
def test_a_hook_that_cannot_take_its_arguments_fails_at_decoration(hook: str, bad: object) -> None:
    """A hook is checked against what it will be called with when it is given (decorator
    or configure()), with a message naming the call; before, a one-argument on_violation
    failed later on the hooks thread, logged and swallowed."""
    with pytest.raises(ConfigurationError, match=rf"{hook} is called as {hook}\(state"):
        supervised(name="x", **{hook: bad})
    with pytest.raises(ConfigurationError, match=rf"{hook} is called as"):
        chaperone.configure(**{hook: bad})


def test_hooks_with_defaults_varargs_and_methods_are_accepted() -> None:
    class Alerts:
        def on_violation(self, state: object, violation: object) -> None:
            pass

    supervised(name="ok", on_violation=Alerts().on_violation)
    supervised(name="ok", on_health_change=lambda state, old, extra=None: None)
    supervised(name="ok", on_stuck=lambda *args: None)
    supervised(name="ok", on_complete=print)  # a builtin: nothing to check


@pytest.mark.slow
def test_a_scripts_default_names_carry_its_module(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Functions of a script are named after the script (``python nightly_import.py``) or
    the module it was run as (``python -m etl.nightly``), not bare: two scripts' ``nightly``
    functions would share one name, their metrics and alerts. (Before: ``nightly``.)"""
    import subprocess
    import sys

    body = (
        "from chaperone_otel import supervised\n"
        "from chaperone_otel.testing import capture\n"
        "class Service:\n"
        "    @supervised\n"
        "    def nightly(self):\n"
        "        pass\n"
        "with capture() as cap:\n"
        "    Service().nightly()\n"
        "print(cap.runs()[0].name)\n"
    )
    (tmp_path / "nightly_import.py").write_text(body)
    (tmp_path / "etl").mkdir()
    (tmp_path / "etl" / "__init__.py").write_text("")
    (tmp_path / "etl" / "nightly.py").write_text(body)

    def name_of(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    assert name_of("nightly_import.py") == "nightly_import.Service.nightly"
    assert name_of("-m", "etl.nightly") == "etl.nightly.Service.nightly"
    assert name_of("-c", body) == "Service.nightly"
    # A spawned child runs the script again as __mp_main__: the same name there.
    (tmp_path / "pool_score.py").write_text(
        "import multiprocessing\n"
        "from chaperone_otel._spec import qualified_name\n"
        "def score(x):\n"
        "    return qualified_name(score)\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(score(0), pool.apply(score, (1,)))\n"
    )
    assert name_of("pool_score.py").split() == ["pool_score.score", "pool_score.score"]


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
def test_supervised_above_a_method_descriptor_says_where_it_goes(kind: type) -> None:
    """``@supervised`` above ``@staticmethod``/``@classmethod`` wrapped the descriptor: a
    staticmethod was called with ``self`` at run time, a classmethod refused as a "name"."""

    def method(*_: object) -> None:
        pass

    with pytest.raises(ConfigurationError, match=f"@supervised is above @{kind.__name__}"):
        supervised(kind(method))
    with pytest.raises(ConfigurationError, match="put it below"):
        supervised(name="x")(kind(method))


def test_an_async_callable_object_and_partials_are_runs_of_their_own() -> None:
    """An object whose ``__call__`` is ``async def`` is a coroutine run that covers its work
    (it ended before the work, ~1 ms, the work outside it); ``functools.partial`` and callable
    instances are named after what they call (every partial was ``functools.job``)."""
    import functools

    class Fetch:
        async def __call__(self) -> str | None:
            await asyncio.sleep(0.05)
            job = current_job()
            return job.name if job else None

    def load(n: int) -> int:
        return n

    def save(n: int) -> int:
        return n

    with capture() as cap:
        assert asyncio.run(supervised(Fetch())()) == f"{__name__}.{Fetch.__qualname__}"
        (run,) = [r for r in cap.runs() if r.name.endswith("Fetch")]
        assert run.duration >= 0.04
        assert supervised(functools.partial(load, 1))() == 1
        assert supervised(functools.partial(save, 2))() == 2
        names = {r.name for r in cap.runs()}
    assert {f"{__name__}.{load.__qualname__}", f"{__name__}.{save.__qualname__}"} <= names


def test_metadata_that_is_not_a_mapping_is_refused_before_the_beat_counts() -> None:
    """``heartbeat("alive")`` is a TypeError that says what to pass, inside a run (the beat
    not counted) and outside one (it returned False silently); ``finish("oops")`` too."""
    with pytest.raises(TypeError, match="must be a mapping"):
        chaperone.heartbeat("alive")  # type: ignore[arg-type]
    with capture() as cap:
        with supervised("meta.misuse") as run:
            with pytest.raises(TypeError, match="must be a mapping"):
                run.heartbeat("alive")  # type: ignore[arg-type]
            assert run.heartbeat_count == 0
        started = supervised("finish.misuse").start()
        with pytest.raises(TypeError, match="expected an exception"):
            started.finish("oops")  # type: ignore[arg-type]
        started.finish()
        assert cap.last_run("finish.misuse").status == "completed"


def test_a_generator_closed_early_cleans_up_as_its_run() -> None:
    """The ``finally:`` of a supervised generator (sync and async) closed before its end
    runs with its run current, as the rest of its code does: ``heartbeat()`` reaches it,
    and spans it opens are the run's children (it ran with no run current)."""
    seen: list[str | None] = []

    @supervised(name="gen.cleanup")
    def rows() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            job = current_job()
            seen.append(job.name if job else None)

    @supervised(name="agen.cleanup")
    async def arows() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            job = current_job()
            seen.append(job.name if job else None)

    async def take_one() -> None:
        agen = arows()
        await agen.__anext__()
        await agen.aclose()

    with capture() as cap:
        gen = rows()
        next(gen)
        gen.close()
        asyncio.run(take_one())
        assert {cap.last_run(n).status for n in ("gen.cleanup", "agen.cleanup")} == {"cancelled"}
    assert seen == ["gen.cleanup", "agen.cleanup"]
    assert current_job() is None


def test_report_progress_outside_a_run_checks_as_inside_one() -> None:
    """Outside a run the arguments are checked as in one (a Decimal NaN raised
    decimal.InvalidOperation, a string a comparison TypeError)."""
    from decimal import Decimal

    with pytest.raises(ValueError, match="non-negative"):
        chaperone.report_progress(Decimal("NaN"), 1)
    with pytest.raises(TypeError):
        chaperone.report_progress("1", 2)  # type: ignore[arg-type]
    assert chaperone.report_progress(1, 2) is False


def test_concurrent_runs_of_one_supervised_object_report_to_their_own_run() -> None:
    """Two ``run()`` calls of one object at once (``asyncio.gather``): each one's
    ``report_progress`` reaches its own run (both went to the latest, and the first ended
    at 0 %)."""

    class Import(Supervised):
        async def run(self, n: int) -> float | None:
            await asyncio.sleep(0.01 * n)
            self.report_progress(n, 10)
            await asyncio.sleep(0.05)
            job = current_job()
            return job.progress_ratio if job else None

    job = Import()

    async def both() -> list[float | None]:
        return list(await asyncio.gather(job.run(1), job.run(5)))

    with capture() as cap:
        assert asyncio.run(both()) == [0.1, 0.5]
        progress = sorted(r.progress for r in cap.runs() if r.name.endswith("Import"))
    assert progress == [10.0, 50.0]


def test_super_run_of_concurrent_calls_of_one_object_is_part_of_each_run() -> None:
    """A subclass's ``run()`` calling ``super().run()``, two calls of one object at once:
    the first call's ``super().run()`` saw the second call's run as the object's latest,
    thought itself outside its own run and started a third run (an attempt nobody made)."""
    import threading

    second_started = threading.Event()

    class Base(Supervised):
        async def run(self, n: int) -> int:
            job = current_job()
            return job.attempt if job else 0

    class Child(Base):
        async def run(self, n: int) -> int:
            if n == 1:
                await asyncio.wait_for(asyncio.to_thread(second_started.wait, 10), 10)
            else:
                second_started.set()
            return await super().run(n)

    job = Child()

    async def both() -> list[int]:
        return list(await asyncio.gather(job.run(1), job.run(2)))

    with capture() as cap:
        assert asyncio.run(both()) == [1, 2]
        runs = [r for r in cap.runs() if r.name.endswith("Child")]
    assert sorted(r.latest[sc.ATTR_JOB_ATTEMPT] for r in runs) == [1, 2]


@pytest.mark.parametrize("order", ["ab", "ba", "acb"])
def test_with_blocks_in_interleaved_generators_leave_no_ended_run_current(
    chaperone: Capture, order: str
) -> None:
    """``with supervised()`` blocks in generators advanced in turn end in any order. Before,
    ending the older block first made nothing current while the newer one ran on, and the
    newer one's end then made the *ended* older run current (and its span the OTel
    context) for the rest of the thread: later runs were its children, later spans nested
    under an ended span. Now, after every block has ended, nothing is current."""
    from opentelemetry import trace

    def step(name: str) -> Iterator[str | None]:
        with supervised(name=name):
            yield name
            yield None

    gens = {name: step(name) for name in "abc"[: len(order)]}
    for gen in gens.values():  # entered in alphabetical order
        next(gen)
    for name in order:  # ended in `order`
        next(gens[name])
        next(gens[name], None)
        assert chaperone.last_run(name).status == "completed"
        still = [n for n in gens if n not in order[: order.index(name) + 1]]
        current = current_job()
        if still:  # a run still open is current, never an ended one
            assert current is not None
            assert current.name in still
    assert current_job() is None
    assert not trace.get_current_span().get_span_context().is_valid

    @supervised(name="later")
    def later() -> None:
        pass

    later()
    assert sc.ATTR_JOB_PARENT_RUN_ID not in chaperone.last_run("later").latest


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (None, "completed", None),
        (0, "completed", None),
        (3, "failed", "SystemExit"),
        ("bad input file", "failed", "SystemExit"),
    ],
)
def test_sys_exit_inside_a_run_reads_like_an_exit_status(
    chaperone: Capture, code: object, status: str, error_type: str | None
) -> None:
    """A script that ends with ``sys.exit(...)`` inside its supervised ``main``: every code
    was ``cancelled`` and healthy, so ``sys.exit(1)`` escaped ``failed()`` and the
    failure-ratio alert, and ``sys.exit(0)`` was not a success. Now as a shell reads it."""

    @supervised(name="cron.main")
    def main() -> None:
        sys.exit(code)  # type: ignore[arg-type]

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == code  # re-raised unchanged
    run = chaperone.last_run("cron.main")
    assert run.status == status
    assert run.error_type == error_type


def _interrupted(*args: object, **kwargs: object) -> NoReturn:
    raise KeyboardInterrupt


async def _interrupted_async(*args: object, **kwargs: object) -> NoReturn:
    raise KeyboardInterrupt


def _enter(entry: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run an empty job named ``name`` through ``entry``, its entry interrupted."""
    import chaperone_otel._decorator as decorator

    if entry == "function":
        monkeypatch.setattr(decorator, "call", _interrupted)
        supervised(name=name)(lambda: None)()
    elif entry == "with":
        monkeypatch.setattr(supervised, "_push", _interrupted)
        with supervised(name):
            pass
    elif entry == "coroutine":
        monkeypatch.setattr(decorator, "acall", _interrupted_async)

        async def job() -> None:
            return None

        asyncio.run(supervised(name=name)(job)())
    else:
        monkeypatch.setattr(supervised, "_push", _interrupted)

        async def block() -> None:
            async with supervised(name):
                pass

        asyncio.run(block())


@pytest.mark.parametrize("entry", ["function", "with", "coroutine", "async with"])
def test_an_interrupt_as_the_run_is_entered_ends_it_cancelled(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """A Ctrl-C handled at the first instruction of what runs the job once its run has
    started (``call()``, ``acall()``, ``supervised._push``: Python checks for signals on
    entering a function, before its ``try``) left the run live and ``running`` for ever.
    Simulated by those raising ``KeyboardInterrupt`` at once: the run ends ``cancelled``."""
    from chaperone_otel._runtime import runtime

    name = f"entered.{entry.replace(' ', '.')}"
    with capture() as cap:
        with pytest.raises(KeyboardInterrupt):
            _enter(entry, name, monkeypatch)
        assert cap.last_run(name).status == "cancelled"
        assert not [r for r in runtime().live_runs() if r.name == name]
