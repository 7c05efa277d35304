"""Concurrent runs in threads and asyncio tasks keep their state apart (contextvars)."""

from __future__ import annotations

import asyncio
import threading

from chaperone_otel import current_job, heartbeat, report_progress, supervised, wrap
from chaperone_otel import semconv as sc
from chaperone_otel.testing import Capture


def test_fifty_threads_each_in_its_own_run(chaperone: Capture) -> None:
    """50 threads, each its own run with a distinct heartbeat count and total."""
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    @supervised(name="threaded")
    def job(index: int) -> str:
        barrier.wait(timeout=30)  # all 50 runs are live at once
        run = current_job(required=True)
        assert run is not None
        for i in range(index + 1):
            heartbeat(i=i)
            report_progress(i + 1, index + 1)
        return run.id

    ids: dict[int, str] = {}

    def worker(index: int) -> None:
        try:
            ids[index] = job(index)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(set(ids.values())) == 50
    for index, run_id in ids.items():
        run = chaperone.run(run_id)
        assert run.heartbeat_count == index + 1
        assert run.latest[sc.ATTR_PROGRESS_TOTAL] == index + 1
        assert run.progress == 100
        assert run.completed


async def test_thousand_tasks_each_in_its_own_run(chaperone: Capture) -> None:
    """1,000 asyncio tasks interleaving at every await keep progress and heartbeats apart."""

    @supervised(name="tasks")
    async def job(index: int) -> str:
        run = current_job(required=True)
        assert run is not None
        for i in range(index % 7 + 1):
            await asyncio.sleep(0)
            assert current_job() is run  # the interleaving never mixes runs
            heartbeat()
            report_progress(i + 1, 10)
        return run.id

    ids = await asyncio.gather(*(job(i) for i in range(1000)))
    assert len(set(ids)) == 1000
    by_id = {r.id: r for r in chaperone.runs()}
    for index, run_id in enumerate(ids):
        run = by_id[run_id]
        assert run.heartbeat_count == index % 7 + 1
        assert run.latest[sc.ATTR_PROGRESS_CURRENT] == index % 7 + 1
        assert run.completed


def test_one_context_manager_object_shared_by_threads(chaperone: Capture) -> None:
    """A module-level `supervised(...)` object entered by 20 threads at once keeps each
    thread's run (the entered-run stack is per thread/task, not on the object)."""
    shared = supervised("shared.block")
    barrier = threading.Barrier(20)
    seen: dict[int, str] = {}

    def worker(index: int) -> None:
        with shared as run:
            barrier.wait(timeout=30)  # all 20 runs are open at once
            for _ in range(index + 1):
                run.heartbeat()
            seen[index] = run.id

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(seen.values())) == 20
    for index, run_id in seen.items():
        captured = chaperone.run(run_id)
        assert captured.completed
        assert captured.heartbeat_count == index + 1


async def test_one_context_manager_object_shared_by_tasks(chaperone: Capture) -> None:
    """The same for asyncio tasks interleaving inside `async with`."""
    shared = supervised("shared.async")

    async def worker() -> str:
        async with shared as run:
            await asyncio.sleep(0)
            assert current_job() is run
            await asyncio.sleep(0)
            return run.id

    ids = await asyncio.gather(*(worker() for _ in range(50)))
    assert len(set(ids)) == 50
    assert all(chaperone.run(i).completed for i in ids)


def test_wrap_carries_the_run_into_thread_pool_workers(chaperone: Capture) -> None:
    """Module helpers in ThreadPoolExecutor workers act on the run through wrap(): every
    heartbeat is counted, progress from a worker is the run's, and the worker's current
    OTel span is the run's span; unwrapped, the same helpers find no run."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry import trace

    import chaperone_otel
    from chaperone_otel._run import state_of

    def work(i: int) -> tuple[bool, int]:
        job = current_job()
        assert job is not None
        assert job.name == "fan.out"
        report_progress(20, 20)
        return heartbeat(item=i), trace.get_current_span().get_span_context().span_id

    def unwrapped(i: int) -> bool:
        return heartbeat(item=i)

    with supervised("fan.out") as run, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(chaperone_otel.wrap(work), range(20)))
        lost = list(pool.map(unwrapped, range(5)))
        span_id = state_of(run).span_id
    assert [beat for beat, _ in results] == [True] * 20
    assert {span for _, span in results} == {span_id}
    assert lost == [False] * 5
    captured = chaperone.run(run.id)
    assert captured.heartbeat_count == 20
    assert captured.progress == 100
    assert captured.completed


def test_wrap_outside_a_run_changes_nothing() -> None:
    """A function wrapped outside any run runs as is; the helpers return False in it."""
    from concurrent.futures import ThreadPoolExecutor

    import chaperone_otel

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(chaperone_otel.wrap(heartbeat), [None, None])) == [False, False]
    assert chaperone_otel.wrap(sum)([1, 2]) == 3
    assert chaperone_otel.wrap(sum).__name__ == "sum"


def test_a_thread_that_outlives_its_run_is_outside_it(chaperone: Capture) -> None:
    """A thread started with ``wrap()`` (or a task) that goes on after its run ended:
    ``heartbeat()`` returned True and counted on the finished run (counts and metadata
    nobody records), and ``current_job()`` returned the ended run. Both now say what they
    say outside a run."""
    go, done = threading.Event(), threading.Event()
    seen: list[object] = []

    def late() -> None:
        go.wait(10)
        seen.extend([heartbeat(late=True), current_job(), report_progress(1, 2)])
        done.set()

    with supervised("outlived") as run:
        heartbeat()
        threading.Thread(target=wrap(late)).start()
    go.set()
    assert done.wait(10)
    assert seen == [False, None, False]
    assert run.heartbeat_count == 1
    assert "late" not in (run.metadata or {})
