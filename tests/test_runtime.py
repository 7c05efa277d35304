"""Limits and policies: record, warn, cancel (cooperative), async cancel, fds, timeout."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator

import psutil
import pytest

from chaperone_otel import JobLimitExceeded, heartbeat, supervised
from chaperone_otel import semconv as sc
from chaperone_otel.testing import Capture
from tests.logbridge import bridged_logs, lines
from tests.waiting import wait_until

MiB = 1024 * 1024


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


@pytest.fixture
def fast() -> Capture:  # type: ignore[misc]
    from chaperone_otel.testing import capture

    with capture(sample_interval=0.05, flush_period=0.05) as cap:
        yield cap


def test_cancel_memory_hog(fast: Capture) -> None:
    """A run allocating past its memory limit gets JobLimitExceeded inside, and is cancelled."""
    limit = _rss() + 64 * MiB
    seen_inside: list[JobLimitExceeded] = []
    hogs: list[bytearray] = []
    violations: list[object] = []

    @supervised(
        name="hog",
        memory_limit=limit,
        on_limit="cancel",
        on_violation=lambda state, v: violations.append(v),
    )
    def hog() -> None:
        deadline = threading.Event()
        try:
            for _ in range(400):  # at most 1.6 GiB, far past the limit
                hogs.append(bytearray(4 * MiB))
                for i in range(0, 4 * MiB, 4096):
                    hogs[-1][i] = 1  # touch pages so RSS really grows
                heartbeat()
                deadline.wait(0.01)  # let the monitor sample
        except JobLimitExceeded as exc:
            seen_inside.append(exc)
            raise

    with pytest.raises(JobLimitExceeded) as info:
        hog()
    hogs.clear()
    assert seen_inside
    assert seen_inside[0].limit == "memory"
    assert info.value.actual > limit
    assert str(info.value).startswith("memory limit exceeded: ")
    assert " MiB > " in str(info.value)
    run = fast.last_run("hog")
    assert run.status == "cancelled"
    assert run.violations[0][sc.ATTR_LIMIT_TYPE] == "memory"
    assert run.violations[0][sc.ATTR_LIMIT_VALUE] == limit
    span = run.span
    assert any(e.name == sc.EVENT_JOB_VIOLATION for e in span.events)
    deadline = threading.Event()
    for _ in range(500):  # hooks run on their own thread: poll, bounded (5 s)
        if violations:
            break
        deadline.wait(0.01)
    assert len(violations) == 1


async def test_cancel_async_task_on_limit(fast: Capture) -> None:
    """An async run over its fd limit is cancelled even while awaiting; JobLimitExceeded."""
    fds_now = psutil.Process().num_fds()
    opened: list[int] = []

    @supervised(name="fd.hog", fd_limit=fds_now + 5, on_limit="cancel")
    async def hog() -> None:
        for _ in range(20):
            opened.append(os.open(os.devnull, os.O_RDONLY))
        await asyncio.sleep(30)  # never heartbeats again: cancellation must come from outside

    try:
        with pytest.raises(JobLimitExceeded) as info:
            await asyncio.wait_for(hog(), timeout=15)
    finally:
        for fd in opened:
            os.close(fd)
    assert info.value.limit == "fds"
    run = fast.last_run("fd.hog")
    assert run.status == "cancelled"
    # recorded as what the caller saw, not the CancelledError that carried it
    assert run.error_type == "chaperone_otel.exceptions.JobLimitExceeded"
    assert run.span.attributes[sc.ATTR_ERROR_TYPE] == run.error_type


async def test_cancel_async_generator_on_timeout(fast: Capture) -> None:
    """An async generator run past its timeout, awaiting between items: its consumer sees
    JobLimitExceeded, as a coroutine's caller does, and the task is left uncancelled."""

    @supervised(name="agen.slow", timeout=0.3, on_limit="cancel")
    async def rows() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(30)  # overruns its timeout while awaiting
        yield 2

    got: list[int] = []

    async def consume() -> None:
        async for item in rows():
            got.append(item)

    task = asyncio.ensure_future(consume())
    done, _ = await asyncio.wait({task}, timeout=15)
    assert task in done
    with pytest.raises(JobLimitExceeded) as info:
        task.result()
    assert info.value.limit == "timeout"
    assert got == [1]
    if sys.version_info >= (3, 11):  # Task.uncancel() exists from 3.11
        assert task.cancelling() == 0
    run = fast.last_run("agen.slow")
    assert run.status == "cancelled"
    assert run.error_type == "chaperone_otel.exceptions.JobLimitExceeded"


def test_overrun_found_at_finish_is_a_timeout_violation() -> None:
    """A run that ends past its timeout gets the same timeout violation, hook call and
    health whether or not a monitor pass happened between its deadline and its end."""
    from chaperone_otel.testing import FakeClock, capture

    clock = FakeClock()
    timed_out: list[str] = []
    with capture(clock=clock, on_timeout=lambda state: timed_out.append(state.name)) as cap:
        with supervised("overrun.seen", timeout=10) as seen:
            clock.advance(12)
            cap.tick()  # a monitor pass saw the deadline go by
        with supervised("overrun.at_finish", timeout=10) as at_finish:
            clock.advance(12)  # ends before any monitor pass
        with supervised("on.time", timeout=10) as on_time:
            clock.advance(9)
        for run in (seen, at_finish):
            assert [v.limit for v in run.violations] == ["timeout"], run.name
            assert run.health == "unhealthy"
            assert run.status == "completed"
            events = [r.event_name for r in cap.run(run.id).records]
            assert events.index(sc.EVENT_JOB_VIOLATION) < events.index(sc.EVENT_JOB_FINISHED)
        assert on_time.violations == []
        assert on_time.health == "healthy"
    assert timed_out == ["overrun.seen", "overrun.at_finish"]


def test_record_policy_only_records(fast: Capture) -> None:
    """The default policy records the violation and lets the run finish."""
    event = threading.Event()

    @supervised(name="fd.record", fd_limit=3)
    def job() -> str:
        for _ in range(200):
            heartbeat()
            if event.wait(0.01) or fast.last_run("fd.record").violations:
                break
        return "finished"

    assert job() == "finished"
    run = fast.last_run("fd.record")
    assert run.completed
    assert run.violations[0][sc.ATTR_LIMIT_TYPE] == "fds"
    assert run.health == "unhealthy"  # a violated limit is unhealthy by the rules


def test_warn_policy_logs(fast: Capture, caplog: pytest.LogCaptureFixture) -> None:
    """on_limit="warn" also logs a warning naming the job and the limit."""
    caplog.set_level(logging.WARNING, logger="chaperone_otel")

    @supervised(name="fd.warn", fd_limit=3, on_limit="warn")
    def job() -> None:
        for _ in range(200):
            heartbeat()
            if fast.last_run("fd.warn").violations:
                return
            threading.Event().wait(0.01)

    job()
    assert any(
        "fd.warn" in r.getMessage() and "fds limit exceeded" in r.getMessage()
        for r in caplog.records
    )


def test_a_memory_warning_speaks_in_mib(fast: Capture, caplog: pytest.LogCaptureFixture) -> None:
    """The warning and the violation record's body give sizes in MiB, as the exception does,
    not ``2.52436e+08 > 2.11169e+08``."""
    caplog.set_level(logging.WARNING, logger="chaperone_otel")

    @supervised(name="mem.warn", memory_limit="1MiB", on_limit="warn")
    def job() -> None:
        for _ in range(200):
            heartbeat()
            if fast.last_run("mem.warn").violations:
                return
            threading.Event().wait(0.01)

    job()
    warned = [r.getMessage() for r in caplog.records if "mem.warn" in r.getMessage()]
    assert warned
    assert "memory limit exceeded: " in warned[0]
    assert warned[0].endswith(" > 1.0 MiB")
    assert "e+" not in warned[0]
    bodies = [r.body for r in fast.records if r.event_name == sc.EVENT_JOB_VIOLATION]
    assert bodies
    assert bodies[0].endswith(" MiB > 1.0 MiB")


def test_a_warning_from_the_monitor_carries_the_runs_trace(fast: Capture) -> None:
    """The ``warn`` policy's log line, written on the monitor thread, is logged in the run's
    span context: an application bridging Python logging to OTel (the SDK's
    ``LoggingHandler``) gets the run's trace and span ids on it. Before, it had the monitor
    thread's context: no trace at all."""

    @supervised(name="mem.warn.traced", memory_limit="1MiB", on_limit="warn")
    def job() -> None:
        def warned() -> list[object]:
            heartbeat()
            return lines(exported, "mem.warn.traced")

        wait_until(warned, 10, "the warn policy's log line")

    with bridged_logs() as exported:
        job()
        (line,) = lines(exported, "mem.warn.traced")
    span = fast.last_run("mem.warn.traced").span
    assert "memory limit exceeded" in str(line.body)
    assert line.trace_id == span.context.trace_id != 0
    assert line.span_id == span.context.span_id


def test_a_timeout_warned_at_the_runs_end_carries_the_runs_trace() -> None:
    """A run that ends past its deadline before a monitor pass saw it is warned about by
    its own finish, on the job's thread, once the job's code has left the run: the line
    still carries the run's span, not the enclosing request's."""
    from chaperone_otel.testing import FakeClock, capture

    clock = FakeClock()
    with capture(clock=clock) as cap, bridged_logs() as exported:
        tracer = cap.tracer_provider.get_tracer("tests")
        with tracer.start_as_current_span("request") as request:
            with supervised("overrun.warned", timeout=10, on_limit="warn"):
                clock.advance(11)
        (line,) = lines(exported, "overrun.warned")
        span = cap.last_run("overrun.warned").span
    assert "timeout limit exceeded" in str(line.body)
    assert line.trace_id == span.context.trace_id
    assert line.span_id == span.context.span_id != request.get_span_context().span_id


def test_cpu_limit_thread_cpu(fast: Capture) -> None:
    """A busy loop over a 5 % CPU limit is caught by per-thread CPU sampling."""

    @supervised(name="spin", cpu_limit=5, on_limit="cancel")
    def spin() -> None:
        x = 0
        for _ in range(100_000_000):
            x += 1
            if x % 10_000 == 0:
                heartbeat()

    with pytest.raises(JobLimitExceeded) as info:
        spin()
    assert info.value.limit == "cpu"
    assert info.value.actual > 5



def test_a_sample_taken_before_a_run_started_never_judges_it() -> None:
    """Sequential jobs: the first holds 150 MiB until the monitor's sample shows it, frees
    it and ends; the next starts at once with a 75 MiB-above-baseline limit and
    ``on_limit="cancel"``, and ends before the next sample is due (1 s). It completes: the
    earlier sample, taken while its predecessor ran, is not applied to it. (Before: it was
    cancelled on its predecessor's RSS, 3 of 3 times.)"""
    from chaperone_otel.testing import capture

    with capture(sample_interval=1.0, flush_period=0.02) as cap:
        base = _rss()
        held: list[bytearray] = []
        with supervised("big.first") as first:
            held.append(bytearray(150 * MiB))
            for i in range(0, 150 * MiB, 4096):
                held[0][i] = 1  # touch the pages: RSS really grows
            wait = threading.Event()
            for _ in range(300):  # until a sample shows it, 3 s at most
                if (first.memory or 0) > base + 120 * MiB:
                    break
                wait.wait(0.01)
            assert (first.memory or 0) > base + 120 * MiB
            held.clear()
        assert _rss() < base + 75 * MiB, "the allocator kept the memory: test cannot judge"

        @supervised(name="small.next", memory_limit=base + 75 * MiB, on_limit="cancel")
        def small_next() -> str:
            pause = threading.Event()
            for _ in range(15):  # 0.3 s: several monitor passes, no new sample
                heartbeat()
                pause.wait(0.02)
            return "done"

        assert small_next() == "done"
        run = cap.last_run("small.next")
        assert run.status == "completed"
        assert run.violations == []


def test_the_process_sampler_is_made_by_the_thread_that_starts_the_monitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sampler (and with it the import of psutil) is made by the thread that starts the
    first run, not on the monitor's first pass: next to a CPU-bound job every GIL hand-over
    of that import waited a switch interval, and the first pass took over 1.5 s."""
    from chaperone_otel import _runtime
    from chaperone_otel._resources import ProcessSampler
    from chaperone_otel.testing import capture

    made_on: list[str] = []

    class Watched(ProcessSampler):
        def __init__(self) -> None:
            made_on.append(threading.current_thread().name)
            super().__init__()

    monkeypatch.setattr(_runtime, "ProcessSampler", Watched)
    with capture(sample_interval=0.05), supervised("sampler.first"):
        # the monitor's passes sample while the run is open
        wait_until(lambda: _runtime.runtime()._sample is not None, 10, "a monitor sample")
    assert made_on == [threading.current_thread().name]


def test_the_monitor_wakes_for_each_sample_while_runs_are_live() -> None:
    """``sample_interval`` is the sampling pace whatever the flush period: with a 60 s
    heartbeat (a 15 s flush period) and 0.05 s samples, the monitor waits no longer than
    the next sample is due. (Before: it waited up to 1 s, so resources were sampled and
    limits checked once a second, and a run's first sample came a second after its start.)
    Without live runs it waits the full second."""
    from chaperone_otel import _runtime
    from chaperone_otel.testing import capture

    with capture(sample_interval=0.05, heartbeat_interval=60.0):
        monitor = _runtime.runtime()
        with supervised("pace.job"):
            wait_until(lambda: monitor._sample is not None, 10, "a first sample")
            assert monitor._next_wait() <= 0.05 + 1e-3
        assert monitor._next_wait() == 1.0


def test_an_idle_pass_takes_no_process_sample_and_a_live_run_is_still_sampled() -> None:
    """A pass with no live run reads nothing of the process (a sample taken then would judge
    no run: a run uses only samples taken after its start), so a worker between short tasks
    skips its /proc reads; the first pass with a live run samples at once, and its process
    CPU (``time.process_time``) and RSS reach the run."""
    from chaperone_otel import _runtime
    from chaperone_otel.testing import capture

    with capture(sample_interval=0.05, background=False) as cap:
        monitor = _runtime.runtime()
        cap.tick(3)
        assert monitor._sample is None, "an idle pass sampled the process"
        with supervised("sampled.run") as run:
            cap.tick()
            sample = monitor._sample
            assert sample is not None, "a pass with a live run took no sample"
            assert sample.rss is not None
            assert sample.rss > 0
            assert sample.cpu_time > 0
            assert run.memory == sample.rss
        cap.tick(2)
        assert monitor._sample is sample, "a pass after the run ended sampled again"


def test_a_thread_that_cannot_start_costs_the_run_its_watching_not_its_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of threads ("can't start new thread"): the job runs and returns, the failure is
    counted; once threads can start again, the next run starts the monitor. Before, the
    error reached the job and the run stayed registered as live for ever."""
    from chaperone_otel._runtime import runtime
    from chaperone_otel._safety import set_raise_internal_errors
    from chaperone_otel.testing import capture

    real_start = threading.Thread.start

    def no_threads(self: threading.Thread) -> None:
        if self.name.startswith("chaperone-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    @supervised(name="starved")
    def job() -> str:
        return "done"

    set_raise_internal_errors(False)  # as in production: counted, swallowed
    with capture(raise_internal_errors=False) as cap:
        monkeypatch.setattr(threading.Thread, "start", no_threads)
        assert job() == "done"
        assert cap.internal_errors().get("monitor.thread") == 1
        assert runtime().live_runs() == []
        assert cap.last_run("starved").status == "completed"
        monkeypatch.setattr(threading.Thread, "start", real_start)
        with supervised("fed") as run:
            assert any(t.name == "chaperone-monitor" and t.is_alive() for t in threading.enumerate())
            run.heartbeat()


def test_cancel_limit_of_an_async_generator_never_cancels_the_consumers_code(
    fast: Capture,
) -> None:
    """An async generator run past its timeout with ``on_limit="cancel"``, consumed by code
    that awaits between items (most of the time): the consumer's own ``await`` is never
    cancelled (before, it got a bare ``CancelledError`` and its task stayed cancelling);
    the next item raises ``JobLimitExceeded`` (cleanup runs in the generator), and the task
    is left uncancelled."""
    consumer_cancelled: list[bool] = []
    cleaned_up: list[bool] = []

    @supervised(name="pages", timeout=0.3, on_limit="cancel")
    async def pages() -> AsyncIterator[int]:
        try:
            for i in range(10_000):
                await asyncio.sleep(0.001)
                yield i
        finally:
            cleaned_up.append(True)

    async def consume() -> int:
        items = 0
        try:
            async for _ in pages():
                items += 1
                try:
                    await asyncio.sleep(0.02)  # the consumer's own work
                except asyncio.CancelledError:
                    consumer_cancelled.append(True)
                    raise
        except JobLimitExceeded:
            task = asyncio.current_task()
            assert task is not None
            if sys.version_info >= (3, 11):
                assert task.cancelling() == 0
            return items
        raise AssertionError("the generator ran to its end: no limit")

    # bounded: the limit fires within ~1 s; without it the generator would run ~200 s
    assert asyncio.run(asyncio.wait_for(consume(), 30)) > 0
    assert consumer_cancelled == []
    assert cleaned_up == [True]
    run = fast.last_run("pages")
    assert (run.status, run.error_type) == ("cancelled", "chaperone_otel.exceptions.JobLimitExceeded")


def test_a_cancel_limit_reaches_the_runs_started_inside_the_run() -> None:
    """A sync job doing its work through nested supervised functions, past its own
    ``timeout`` with ``on_limit="cancel"``: the nested runs' heartbeats checked only their
    own handles, so the limit was never raised and the job ran to its end ``completed``.
    The cancellation reaches the runs started inside it: the running one at its next
    heartbeat, one started after the arming at its first."""
    from chaperone_otel.testing import FakeClock, capture

    clock = FakeClock()
    with capture(clock=clock) as cap:

        @supervised(name="tree.child")
        def child() -> None:
            for _ in range(5):
                heartbeat()
                cap.advance(1)  # a monitor pass, in this thread

        @supervised(name="tree.parent", timeout=2, on_limit="cancel")
        def parent() -> None:
            for _ in range(3):
                child()

        with pytest.raises(JobLimitExceeded):
            parent()
        statuses = [(r.name, r.status) for r in cap.runs()]
        assert statuses == [("tree.parent", "cancelled"), ("tree.child", "cancelled")]

        @supervised(name="tree.late")
        def late() -> None:
            heartbeat()

        @supervised(name="tree.armed_first", timeout=2, on_limit="cancel")
        def armed_first() -> None:
            cap.advance(3)  # past the timeout, no nested run yet: only this one is armed
            late()

        with pytest.raises(JobLimitExceeded):
            armed_first()
        assert cap.last_run("tree.late").status == "cancelled"
        assert cap.last_run("tree.armed_first").status == "cancelled"


def test_a_limit_message_tells_the_value_from_the_limit() -> None:
    """A 1 s timeout crossed at 1.04 s read "1.0 s > 1.0 s": as many decimals as tell
    them apart (up to three), one where it does."""
    from chaperone_otel.exceptions import JobLimitExceeded

    assert str(JobLimitExceeded("timeout", 1.0, 1.04)) == "timeout limit exceeded: 1.04 s > 1.00 s"
    assert str(JobLimitExceeded("timeout", 30, 45.2)) == "timeout limit exceeded: 45.2 s > 30.0 s"
    assert str(JobLimitExceeded("memory", 2**29, 2**29 + 2**12)) == (
        "memory limit exceeded: 512.004 MiB > 512.000 MiB"
    )
