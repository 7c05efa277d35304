"""``close_run()``: a run's outcome recorded by another process, applied by the sink like a
finish of what it knows.

A Celery worker's main process sees its pool child die (``WorkerLostError``), time out or be
revoked; the child can no longer finish its run. ``close_run`` publishes one ``closed``
record, which ends the running execution, fills what the run's own records left empty (end
time, error) and wins over a finish the run wrote itself (the parent knows why it ended).
Real DuckDB files; over OTLP a real ``SinkServer`` and a child process killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.testing import capture
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all
from tests.waiting import wait_until

EXEC = {sc.ATTR_JOB_EXECUTION_ID: "exec-1"}


class WorkerLostError(Exception):
    pass


def _closed(**options: Any) -> Any:
    """The record ``close_run`` publishes (captured), to feed a store's writer."""
    with capture() as cap:
        chaperone.close_run("run-1", execution_id="exec-1", **options)
    (closed,) = cap.records
    assert closed.event_name == sc.EVENT_JOB_CLOSED
    return closed


def _running() -> list[Any]:
    out = [record(sc.EVENT_JOB_STARTED, seq=1, ts=T0, **EXEC)]
    return out + [record(seq=i, ts=T0 + i, **EXEC) for i in range(2, 6)]


def test_a_running_execution_is_ended_with_the_closers_outcome(tmp_path: Path) -> None:
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, _running())
        closed = _closed(error=WorkerLostError("signal 9 (SIGKILL)"), name="etl.import")
        write_all(writer, [closed])
        job = sink.job("run-1")
        assert job is not None
        assert job.status == "failed"
        assert job.health == "unhealthy"
        assert not job.lost
        assert job.error_type == f"{__name__}.WorkerLostError"
        assert job.error_message == "signal 9 (SIGKILL)"
        assert job.pid == 4242  # the run's own, not the closer's
        assert job.heartbeat_count == 5  # kept
        assert job.finished_at is not None
        assert job.duration == pytest.approx(closed.timestamp - T0, abs=1e-3)
        assert [e.type for e in job.errors] == [f"{__name__}.WorkerLostError"]


def test_the_closers_outcome_wins_over_the_runs_own_finish(tmp_path: Path) -> None:
    """A child killed by SIGTERM at its time limit ends its run cancelled with SystemExit
    (all it saw); the parent knows why: its outcome replaces the run's, before or after the
    run's own finish arrives, and the run's later records only fill in what is empty."""
    own = lifecycle("run-1", beats=1, status="cancelled", **EXEC)
    own[-1].attributes[sc.ATTR_ERROR_TYPE] = "SystemExit"  # type: ignore[index]
    for order in ("own first", "closer first"):
        path = tmp_path / f"{order}.duckdb"
        closed = _closed(error=TimeoutError("TimeLimitExceeded(2,)"), timeout=2.0)
        batches = [own, [closed]] if order == "own first" else [[closed], own]
        with store_writer(path) as (writer, sink):
            write_all(writer, *batches)
            job = sink.job("run-1")
            assert job is not None
            assert (job.status, job.error_type) == ("failed", "TimeoutError"), order
            assert [e.type for e in job.errors] == ["TimeoutError"], order
            assert job.heartbeat_count == 3, order  # the run's own (started, 1 beat, end)
            assert job.finished_at is not None


def test_a_close_before_the_runs_own_records_is_kept_and_filled(tmp_path: Path) -> None:
    """The closer's record arrives first (the child's records were still being forwarded):
    the row is failed from the start, and the child's records fill in the rest."""
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, [_closed(error=WorkerLostError("gone"), name="etl.import",
                                   queue="etl")])
        write_all(writer, _running())
        job = sink.job("run-1")
        assert job is not None
        assert (job.status, job.name, job.queue, job.pid) == ("failed", "etl.import", "etl", 4242)
        assert job.heartbeat_count == 5


def test_process_seen_is_the_runs_own_last_record_not_the_close(tmp_path: Path) -> None:
    """``last_seen_at`` ("process seen" in ``show``) says when the run's own process was last
    heard from: a close sent by another process, maybe long after that process died, does
    not move it, in its own batch or in the run's; a run known only from its close has none
    until its own records arrive."""
    last_own = T0 + 5
    for batches in ("apart", "together"):
        closed = _closed(error=WorkerLostError("signal 9 (SIGKILL)"))
        assert closed.timestamp > last_own + 3600  # sent now, long after
        with store_writer(tmp_path / f"{batches}.duckdb") as (writer, sink):
            if batches == "apart":
                write_all(writer, _running(), [closed])
            else:
                write_all(writer, [*_running(), closed])
            job = sink.job("run-1")
            assert job is not None
            assert job.status == "failed", batches
            assert job.last_seen_at is not None
            assert job.last_seen_at.timestamp() == pytest.approx(last_own, abs=1e-3), batches
    with store_writer(tmp_path / "close-first.duckdb") as (writer, sink):
        write_all(writer, [_closed(error=WorkerLostError("gone"))])
        job = sink.job("run-1")
        assert job is not None
        assert (job.status, job.last_seen_at) == ("failed", None)
        write_all(writer, _running())
        job = sink.job("run-1")
        assert job is not None
        assert job.last_seen_at is not None
        assert job.last_seen_at.timestamp() == pytest.approx(last_own, abs=1e-3)


def test_a_timeout_close_records_a_timeout_violation(tmp_path: Path) -> None:
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, _running())
        closed = _closed(error=TimeoutError("TimeLimitExceeded(2,)"), timeout=2.0)
        write_all(writer, [closed], [closed])  # delivered twice: stored once
        job = sink.job("run-1")
        assert job is not None
        assert job.status == "failed"
        assert job.violation_count == 1
        assert [(v.type, v.limit) for v in job.resource_violations] == [("timeout", 2.0)]


def test_cancelled_and_misuse() -> None:
    with capture() as cap:
        chaperone.close_run("r", execution_id="e", status="cancelled", error=KeyError("x"))
    (closed,) = cap.records
    assert closed.attributes[sc.ATTR_JOB_STATUS] == "cancelled"
    assert closed.attributes[sc.ATTR_JOB_HEALTH] == "healthy"
    assert sc.ATTR_ERROR_STACKTRACE not in closed.attributes
    with pytest.raises(ConfigurationError, match="execution_id"):
        chaperone.close_run("r", execution_id="")
    with pytest.raises(ValueError, match="status='lost'"):
        chaperone.close_run("r", execution_id="e", status="lost")  # type: ignore[arg-type]
    chaperone.close_run("r", execution_id="e")  # nothing configured: nothing to do


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import chaperone_otel as chaperone

    chaperone.configure(otlp_endpoint=sys.argv[1], heartbeat_interval=1)
    run = chaperone.start_run("remote.task", run_id="otlp-run", execution_id="exec-otlp")
    chaperone.flush(10)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_over_otlp_the_parent_closes_its_sigkilled_childs_run(tmp_path: Path) -> None:
    """A child process exports a running run to ``sink serve`` and is SIGKILLed; the parent
    closes the run over OTLP: the store says failed, with the child's pid kept."""
    path = str(tmp_path / "jobs.duckdb")
    srv = SinkServer(path, port=0, advertise=False).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        child = subprocess.run([sys.executable, "-c", _CHILD, srv.url], env=env,
                               capture_output=True, timeout=60, check=False)
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

        def running() -> Any:
            with chaperone.open_sink(path) as sink:
                job = sink.job("otlp-run")
            return job if job is not None and job.status == "running" else None

        pid = wait_until(running, 30, "the child's running run").pid
        chaperone.configure(otlp_endpoint=srv.url)
        chaperone.close_run("otlp-run", execution_id="exec-otlp",
                            error=WorkerLostError("signal 9"), name="remote.task")
        chaperone.shutdown()

        def closed() -> Any:
            with chaperone.open_sink(path) as sink:
                job = sink.job("otlp-run")
            return job if job is not None and job.status == "failed" else None

        job = wait_until(closed, 30, "the closed run")
        assert job.pid == pid != os.getpid()
        assert job.error_type == f"{__name__}.WorkerLostError"
        assert job.execution_id == "exec-otlp"
        assert time.time() - job.finished_at.timestamp() < 60
    finally:
        srv.stop(15)


def test_a_pending_run_is_replaced_by_its_start_and_keeps_its_due_time(tmp_path: Path) -> None:
    """pending_run() (a task with an ETA) is a pending row until the run starts under the
    same key; the start replaces it, keeping the due time (queue wait = start - due), in
    either order of arrival."""
    with capture() as cap:
        chaperone.pending_run("etl.import", run_id="run-1", execution_id="exec-1",
                              queue="etl", scheduled_at=T0 - 30)
    (pending,) = cap.records
    assert pending.event_name == sc.EVENT_JOB_PENDING
    for order in ("pending first", "start first"):
        with store_writer(tmp_path / f"{order}.duckdb") as (writer, sink):
            batches = [[pending], _running()] if order == "pending first" else [
                _running(), [pending]]
            write_all(writer, batches[0])
            if order == "pending first":
                (row,) = sink.jobs.pending().all()
                assert (row.id, row.status, row.started_at) == ("run-1", "pending", None)
            write_all(writer, batches[1])
            job = sink.job("run-1")
            assert job is not None
            assert (job.status, job.pid) == ("running", 4242), order
            assert job.queue_wait == 30.0, order
            assert sink.jobs.pending().count() == 0
    with pytest.raises(ConfigurationError, match="run_id"):
        chaperone.pending_run("x", run_id="", execution_id="e")


def test_close_and_pending_records_use_the_configured_clock() -> None:
    """``close_run()`` and ``pending_run()`` stamp their records with the configured clock,
    as every run's records are: under a test's ``FakeClock`` their times were the wall
    clock's, years apart from the run they close."""
    from chaperone_otel.testing import FakeClock

    clock = FakeClock()
    with capture(clock=clock) as cap:
        chaperone.pending_run("clocked", run_id="c1", execution_id="e1", scheduled_at=clock() + 60)
        clock.advance(30)
        chaperone.close_run("c1", execution_id="e1", status="cancelled")
        pending, closed = cap.run("c1").records
    assert pending.timestamp == clock() - 30
    assert closed.timestamp == clock()
    assert closed.attributes[sc.ATTR_JOB_FINISHED_AT] == clock()


def test_a_captured_run_closed_by_another_process_keeps_its_name_and_progress() -> None:
    """A run closed with ``close_run()`` (its parent saw it die): the capture's view of it
    is its state with the closer's outcome on top, as the store's is. Before, it was the
    closed record alone: no name (``last_run(name)`` could not find it), no progress."""
    from chaperone_otel.testing import FakeClock

    with capture(clock=FakeClock()) as cap:
        run = chaperone.start_run(
            "closed.elsewhere", run_id="c2", execution_id="e2", heartbeat_interval=10
        )
        run.supervision.report_progress(3, 4)
        cap.advance(10)  # the progress is flushed in a heartbeat record
        assert cap.run("c2").latest[sc.ATTR_PROGRESS_RATIO] == 0.75
        chaperone.close_run("c2", execution_id="e2", status="failed", error=RuntimeError("lost"))
        captured = cap.last_run("closed.elsewhere")
        run.finish()  # this process's own end of it (after the capture's view was taken)
    assert (captured.id, captured.status, captured.name) == ("c2", "failed", "closed.elsewhere")
    assert captured.latest[sc.ATTR_ERROR_TYPE] == "RuntimeError"
    assert captured.latest[sc.ATTR_PROGRESS_RATIO] == 0.75

