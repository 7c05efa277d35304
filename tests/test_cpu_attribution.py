"""A run is judged only on CPU it can be charged with (issue 12, item 4).

An idle async run used to be charged the whole process's CPU, so a busy thread next to it
got it cancelled with ``cpu_limit=50`` ("104 % of a core") and listed by ``cpu_above(80)``.
Now an async run is measured by its event loop's thread; a reading shared with unrelated live
runs is recorded with ``cpu_scope = "shared"`` and no limit, rule or scope judges it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import chaperone_otel
from chaperone_otel import JobLimitExceeded, heartbeat, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._health import rules
from chaperone_otel._resources import CPU_SCOPES, cpu_scopes
from chaperone_otel.sink import JobRecord, open_sink
from chaperone_otel.testing import Capture, capture
from tests.sink.store_factory import T0, record, store_writer, write_all
from tests.waiting import wait_until


@pytest.fixture
def sampled(tmp_path: Path) -> Iterator[tuple[Capture, Path]]:
    """Fast samples, an embedded store."""
    path = tmp_path / "jobs.duckdb"
    with capture(sink=str(path), sample_interval=0.05, flush_period=0.05) as cap:
        yield cap, path


def _stored(path: Path, *names: str) -> dict[str, JobRecord]:
    """The finished runs ``names`` as the store has them."""
    assert chaperone_otel.flush(10)
    with open_sink(str(path)) as sink:

        def found() -> dict[str, JobRecord] | None:
            runs = {r.name: r for r in sink.jobs.all() if r.finished_at is not None}
            return runs if set(names) <= set(runs) else None

        stored: dict[str, JobRecord] = wait_until(found, 20, f"finished runs {names}")
        return stored


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))


@pytest.mark.slow
async def test_an_idle_async_run_next_to_busy_threads_is_not_charged_their_cpu(
    sampled: tuple[Capture, Path],
) -> None:
    """Two unsupervised threads spin and a supervised sync run spins with ``cpu_limit=10``
    and ``on_limit="cancel"`` while an idle async run (``cpu_limit=50``, cancel) awaits for
    1.5 s. The busy sync run is still cancelled on its own thread's CPU; the idle async run
    completes (before: cancelled at the process's 100+ %), its reading is its loop
    thread's, and ``cpu_above(10)`` does not list it. (The busy run's stored reading is
    whatever the last sample saw, so it is not asserted against a threshold here: the
    store's rendering is checked on fixed values below.)"""
    cap, path = sampled
    stop = threading.Event()
    cancelled: list[JobLimitExceeded] = []

    @supervised(name="cpu.busy", cpu_limit=10, on_limit="cancel")
    def busy() -> None:
        while not stop.is_set():
            heartbeat()
            sum(range(2000))

    def run_busy() -> None:
        try:
            busy()
        except JobLimitExceeded as exc:
            cancelled.append(exc)

    @supervised(name="cpu.idle", cpu_limit=50, on_limit="cancel")
    async def idle() -> str:
        for _ in range(30):
            heartbeat()
            await asyncio.sleep(0.05)
        return "done"

    threads = [threading.Thread(target=run_busy)]
    threads += [threading.Thread(target=_spin, args=(stop,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert await idle() == "done"
        wait_until(lambda: cancelled, 20, "the busy run's cancellation")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert cancelled[0].limit == "cpu"
    idle_run = cap.last_run("cpu.idle")
    assert idle_run.status == "completed"
    assert idle_run.violations == []
    assert idle_run.latest[sc.ATTR_CPU_SCOPE] == "thread"
    assert cap.last_run("cpu.busy").status == "cancelled"

    stored = _stored(path, "cpu.idle", "cpu.busy")
    assert stored["cpu.idle"].cpu_scope == "thread"
    assert stored["cpu.idle"].cpu_percent is not None
    assert stored["cpu.idle"].cpu_percent < 10
    assert stored["cpu.busy"].cpu_scope == "thread"  # its own: cpu_above may list it
    with open_sink(str(path)) as sink:
        assert sink.jobs.cpu_above(10).named("cpu.idle").count() == 0


@pytest.mark.slow
async def test_concurrent_async_runs_of_one_loop_share_its_cpu_and_are_not_judged_on_it(
    sampled: tuple[Capture, Path],
) -> None:
    """Two async runs on one event loop, one computing and one idle, both with
    ``cpu_limit=5`` and ``on_limit="cancel"``: the loop thread's CPU cannot be split between
    them, so their readings while both run are ``shared``, neither run is cancelled nor
    degraded, and the busy one (whose last reading was shared) matches neither
    ``cpu_above(0)`` nor ``near_limit()`` in the store."""
    cap, path = sampled
    started: list[str] = []
    both = asyncio.Event()

    async def meet(name: str) -> None:
        started.append(name)
        if len(started) == 2:
            both.set()
        await both.wait()

    @supervised(name="loop.busy", cpu_limit=5, on_limit="cancel")
    async def busy() -> None:
        await meet("busy")
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            heartbeat()
            sum(range(200_000))
            # A real sleep, not sleep(0): a loop that polls its selector without blocking
            # releases and retakes the GIL every iteration, which resets CPython's forced
            # switch, and the monitor thread starves (its passes stop, not the runs' CPU).
            await asyncio.sleep(0.001)

    @supervised(name="loop.idle", cpu_limit=5, on_limit="cancel")
    async def idle() -> None:
        await meet("idle")
        for _ in range(30):
            heartbeat()
            await asyncio.sleep(0.05)

    await asyncio.gather(busy(), idle())
    for name in ("loop.busy", "loop.idle"):
        run = cap.last_run(name)
        assert run.status == "completed", name
        assert run.violations == [], name
        assert run.health == "healthy", name
        scopes = {r.attributes.get(sc.ATTR_CPU_SCOPE) for r in run.records}
        assert "shared" in scopes, name  # while both ran (the idle one may outlive the busy)
    stored = _stored(path, "loop.busy", "loop.idle")
    assert stored["loop.busy"].cpu_scope == "shared"
    assert stored["loop.busy"].cpu_percent is not None  # recorded, with its scope
    with open_sink(str(path)) as sink:
        assert sink.jobs.cpu_above(0).named("loop.busy").count() == 0
        assert sink.jobs.near_limit().named("loop.busy").count() == 0


@pytest.mark.slow
def test_without_thread_clocks_process_cpu_judges_only_a_run_alone_in_the_process(
    sampled: tuple[Capture, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the OS has no per-thread CPU clock, a run is measured by the process: a busy
    run alone in the process is still cancelled on it (``cpu_scope = "process"``); two busy
    runs at once share it, so neither is cancelled on the other's CPU (``shared``)."""
    cap, _path = sampled
    monkeypatch.setattr("chaperone_otel._lifecycle._thread_cpu_clock", lambda: None)

    def spin_until(done: threading.Event) -> None:
        while not done.is_set():
            heartbeat()
            sum(range(2000))

    never = threading.Event()

    @supervised(name="proc.alone", cpu_limit=10, on_limit="cancel")
    def alone() -> None:
        timer = threading.Timer(10, never.set)  # bounded: the cancellation comes first
        timer.start()
        try:
            spin_until(never)
        finally:
            timer.cancel()

    with pytest.raises(JobLimitExceeded) as info:
        alone()
    assert info.value.limit == "cpu"
    assert cap.last_run("proc.alone").latest[sc.ATTR_CPU_SCOPE] == "process"

    done = threading.Event()  # both stop together: neither is ever alone for long

    @supervised(name="proc.pair", cpu_limit=10, on_limit="cancel")
    def pair() -> None:
        spin_until(done)

    errors: list[BaseException] = []

    def run_pair() -> None:
        try:
            pair()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_pair) for _ in range(2)]
    timer = threading.Timer(1.0, done.set)
    for thread in threads:
        thread.start()
    timer.start()
    for thread in threads:
        thread.join(20)
    timer.cancel()
    assert errors == []
    runs = [r for r in cap.runs() if r.name == "proc.pair"]
    assert [r.status for r in runs] == ["completed", "completed"]
    for run in runs:
        assert {r.attributes.get(sc.ATTR_CPU_SCOPE) for r in run.records} <= {None, "shared"}


# ---- the scope of each run's reading ---------------------------------------------------------


@dataclass(eq=False)
class _Run:
    cpu_clock: int | None
    parent: _Run | None = None


def test_scopes_thread_for_a_thread_of_its_own_or_its_nesting() -> None:
    """A run alone on its clock, and a parent with the child nested in it on the same thread,
    are measured by their thread; concurrent siblings on one clock share it, while their
    common parent (whose work they are) still owns it."""
    alone = _Run(1)
    outer = _Run(2)
    inner = _Run(2, parent=outer)
    innermost = _Run(2, parent=inner)
    loop_parent = _Run(3)
    task_a, task_b = _Run(3, parent=loop_parent), _Run(3, parent=loop_parent)
    runs = [alone, outer, inner, innermost, loop_parent, task_a, task_b]
    scopes = cpu_scopes(runs)
    assert set(scopes.values()) <= set(CPU_SCOPES)
    assert [scopes[id(r)] for r in runs] == [
        "thread",
        "thread",
        "thread",
        "thread",
        "thread",
        "shared",
        "shared",
    ]


def test_scopes_process_only_for_the_one_unrelated_run_of_the_process() -> None:
    """Without a thread clock a run is measured by the process: its own only when every
    other live run is its ancestor or descendant."""
    solo = _Run(None)
    assert cpu_scopes([solo]) == {id(solo): "process"}
    child = _Run(7, parent=solo)
    assert cpu_scopes([solo, child]) == {id(solo): "process", id(child): "thread"}
    stranger = _Run(8)
    assert cpu_scopes([solo, child, stranger])[id(solo)] == "shared"
    assert cpu_scopes([solo, child, stranger])[id(stranger)] == "thread"


# ---- the rule's renderings ---------------------------------------------------------------------


def test_a_shared_reading_is_no_signal_in_python_sql_or_the_gauge(tmp_path: Path) -> None:
    """``near_limit`` over the same values: a reading at 99 % of a 50 % limit is near the
    limit when it is the run's own (thread), not when it is shared, in Python (the run's
    signals), SQL (the store's scopes) and the worker's CPU gauge (which the PromQL rules
    divide by the limit: no series, no alert) alike."""
    python_rules = rules()
    signals = {"status": "running", "cpu": 99.0, "cpu_limit": 50.0}
    assert python_rules.near_limit.holds(signals, T0)
    with capture() as cap:
        with supervised("signal.check", cpu_limit=50) as job:
            run = job._run
            run.cpu_percent, run.cpu_scope = 99.0, "shared"
            assert run.signals(T0)["cpu"] is None
            assert cap.metrics().get(sc.METRIC_JOB_CPU.name, []) == []  # no series: no alert
            run.cpu_scope = "thread"
            assert run.signals(T0)["cpu"] == 99.0
            assert [v for _, v in cap.metrics()[sc.METRIC_JOB_CPU.name]] == [0.99]
        assert cap.last_run("signal.check").status == "completed"
    cpu = {sc.ATTR_CPU_PERCENT: 99.0, sc.ATTR_LIMIT_CPU: 50.0}
    with store_writer(tmp_path / "rules.duckdb") as (writer, sink):
        write_all(
            writer,
            [
                record(run_id="own", ts=T0, **cpu, **{sc.ATTR_CPU_SCOPE: "thread"}),
                record(run_id="shared", ts=T0, **cpu, **{sc.ATTR_CPU_SCOPE: "shared"}),
            ],
        )
        query = sink.jobs.at(T0 + 1)
        assert [r.id for r in query.near_limit().all()] == ["own"]
        assert [r.id for r in query.cpu_above(80).all()] == ["own"]
        assert {r.id: r.cpu_scope for r in query.all()} == {"own": "thread", "shared": "shared"}
