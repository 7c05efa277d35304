"""What the embedded store keeps of a run's history and family: stuck spells (issue 12, item
10) and the parent run of a nested run (item 21), through the API, the scopes and the CLI."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import chaperone_otel
from chaperone_otel import semconv as sc
from chaperone_otel import supervised, track, wrap
from chaperone_otel.sink import JobRecord, open_sink
from chaperone_otel.testing import FakeClock, capture
from tests.cli._cli_helpers import invoke
from tests.waiting import wait_until


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _finished(path: Path, count: int) -> dict[str, JobRecord]:
    """The store's runs by name once ``count`` of them have finished."""
    assert chaperone_otel.flush(10)
    with open_sink(str(path)) as sink:

        def done() -> dict[str, JobRecord] | None:
            runs = sink.jobs.all()
            ended = [r for r in runs if r.finished_at is not None]
            return {r.name or "": r for r in runs} if len(ended) >= count else None

        found: dict[str, JobRecord] = wait_until(done, 20, f"{count} finished runs")
        return found


# ---- item 10: a run that was stuck and then completed still says so ----------------------


def test_a_run_stuck_then_completed_keeps_when_and_how_long(tmp_path: Path) -> None:
    """Interval 10 s, fake clock: silent 31 s (stuck at +31), beats at +41 (10 s stuck),
    silent again until stuck at +72, ends at +77 while stuck (5 s more). The store keeps
    ``stuck_since`` = +31 and ``stuck_seconds`` = 15 on the completed run; ``was_stuck()``,
    ``stuck_since()`` and ``jobs --was-stuck`` find it and not the run that never was."""
    clock = FakeClock()
    t0 = clock()
    path = tmp_path / "jobs.duckdb"
    with capture(clock=clock, sink=str(path)) as cap:
        with supervised("hist.recovered", heartbeat_interval=10) as run:
            cap.advance(31)
            assert run.stuck
            assert run.snapshot().stuck_since == t0 + 31
            cap.advance(9)
            run.heartbeat()
            cap.advance(1)
            assert not run.stuck
            assert run.snapshot().stuck_seconds == 10
            cap.advance(31)
            assert run.stuck
            cap.advance(5)
        with supervised("hist.fine", heartbeat_interval=10) as fine:
            for _ in range(5):
                fine.heartbeat()
                cap.advance(5)
        captured = cap.last_run("hist.recovered")
        health = captured.events(sc.EVENT_JOB_HEALTH)[0].attributes
        assert health[sc.ATTR_JOB_STUCK] is True
        assert health[sc.ATTR_JOB_STUCK_SINCE] == t0 + 31  # on record from the moment
        assert captured.latest[sc.ATTR_JOB_STUCK_DURATION] == 15
        assert sc.ATTR_JOB_STUCK_SINCE not in cap.last_run("hist.fine").latest

        runs = _finished(path, 2)
        recovered, never = runs["hist.recovered"], runs["hist.fine"]
        assert recovered.status == "completed"
        assert recovered.stuck_since == _utc(t0 + 31)
        assert recovered.stuck_seconds == 15
        assert (never.stuck_since, never.stuck_seconds) == (None, None)
        with open_sink(str(path)) as sink:
            assert [r.id for r in sink.jobs.was_stuck().all()] == [recovered.id]
            assert sink.jobs.stuck_since(_utc(t0 + 30)).count() == 1
            assert sink.jobs.stuck_since(_utc(t0 + 32)).count() == 0
            assert sink.jobs.was_stuck().completed().count() == 1
        listed = invoke("jobs", "--was-stuck", "--db", str(path), "--json")
        assert listed.exit_code == 0, listed.output
        assert [r["id"] for r in json.loads(listed.stdout)] == [recovered.id]
        shown = invoke("show", recovered.id, "--db", str(path))
        assert "stuck" in shown.output
        assert "since 2026-01-01" in shown.output


# ---- item 21: a nested run knows its parent -----------------------------------------------


def test_nested_runs_record_their_parent_and_the_quickstart_outer_run_completes(
    tmp_path: Path,
) -> None:
    """The quickstart's nested example: the outer run ends completed at 100 % in phase
    ``process``; the inner run (a run of its own, same trace) has the outer as its parent,
    ``children_of()`` lists it, ``jobs --parent`` too, and ``show`` prints the link."""
    path = tmp_path / "jobs.duckdb"
    chaperone_otel.configure(sink=str(path))

    @supervised(queue="imports", heartbeat_interval=30)
    def import_file(rows: range) -> None:
        for _ in track(rows):
            pass

    with supervised("nightly.rebuild") as run:
        run.phases(fetch=1, process=3)
        with run.phase_scope("fetch"):
            run.heartbeat(status="fetching")
        with run.phase_scope("process"):
            import_file(range(200))
    runs = _finished(path, 2)
    outer = runs["nightly.rebuild"]
    inner = next(r for name, r in runs.items() if name.endswith("import_file"))
    assert (outer.status, outer.progress, outer.phase) == ("completed", 100, "process")
    assert outer.parent_run_id is None
    assert inner.parent_run_id == outer.id
    assert inner.trace_id == outer.trace_id
    with open_sink(str(path)) as sink:
        assert [r.id for r in sink.jobs.children_of(outer.id).all()] == [inner.id]
        assert sink.jobs.children_of(inner.id).count() == 0
    listed = invoke("jobs", "--parent", outer.id, "--db", str(path), "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [inner.id]
    shown = invoke("show", inner.id, "--db", str(path))
    assert "parent run" in shown.output
    assert outer.id in shown.output


def test_parents_follow_the_context_into_tasks_and_wrapped_threads(tmp_path: Path) -> None:
    """An async run awaited inside another, tasks gathered inside it, and a run started in a
    thread pool through ``wrap()``: each has the run that was current where it started as
    its parent; sequential top-level runs have none."""
    path = tmp_path / "jobs.duckdb"
    chaperone_otel.configure(sink=str(path))

    @supervised(name="fam.leaf")
    async def leaf(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @supervised(name="fam.root")
    async def root() -> None:
        await asyncio.gather(leaf(1), leaf(2))

    @supervised(name="fam.threaded")
    def threaded() -> None:
        return None

    asyncio.run(root())
    with supervised("fam.pool"), ThreadPoolExecutor(2) as pool:
        list(pool.map(wrap(lambda _: threaded()), range(2)))
    with supervised("fam.alone"):
        pass
    assert chaperone_otel.flush(10)
    with open_sink(str(path)) as sink:
        rows = wait_until(lambda: sink.jobs.completed().count() == 7 and sink.jobs.all(), 20,
                          "7 completed runs")
        ids = {r.name: r.id for r in rows}
        parents = sorted((r.name, r.parent_run_id) for r in rows)
    assert parents == sorted([
        ("fam.leaf", ids["fam.root"]),
        ("fam.leaf", ids["fam.root"]),
        ("fam.root", None),
        ("fam.threaded", ids["fam.pool"]),
        ("fam.threaded", ids["fam.pool"]),
        ("fam.pool", None),
        ("fam.alone", None),
    ])
