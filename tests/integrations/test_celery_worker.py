"""``integrations.celery`` with a real worker: prefork, concurrency 2, Debian's redis-server.

One redis-server per test session (a free loopback port, no persistence) and one worker per
module, whose app module (written to tmp_path) configures the store at import: the worker's
main process owns it and its pool children forward to it. The worker recycles each child
after two tasks (``worker_max_tasks_per_child=2``), so every scenario also crosses child
exits. Every wait is bounded; the worker and the server are stopped by PID.

Each scenario is asserted on three surfaces: the store (the worker's own DuckDB file, which
its children forward to), the span tree (every span the worker's processes end, from a file
they append to) and ``/metrics``. Prefork children serve no ``/metrics`` of their own, so
the worker also exports over OTLP to a ``sink serve`` of the module, whose fleet
``/metrics`` (from its store) count the runs per outcome and show the live ones stuck or
lost.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from tests.integrations import metrics
from tests.integrations.celery_workers import (
    CELERY_RELEASE,
    Worker,
    celery_worker,
    closed,
    run_span_tree,
    running_pid,
)
from tests.integrations.metrics import Outcomes, finished_counts
from tests.integrations.span_file import no_span
from tests.sink.serve_process import ServeProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``celery -A celery_app worker -P prefork -c 2``, children recycled after two tasks,
    storing into its own file and exporting over OTLP to a ``sink serve`` (its /metrics)."""
    root = tmp_path_factory.mktemp("celery")
    with (
        ServeProcess(root / "sink.duckdb") as sink,
        celery_worker(redis_url, root, "prefork", db=0, also_otlp=sink.url) as w,
    ):
        yield w


def _fleet(worker: Worker, *names: str) -> Outcomes:
    """The fleet's finished-runs counter of ``names``, taken now."""
    return Outcomes(worker.metrics_url, names, fleet=True)


def _result(worker: Worker, name: str, *args: Any) -> Any:
    result = worker.client.send_task(name, args=args)
    result.get(timeout=60, propagate=False)
    return result


def test_success_is_completed_with_progress_100(worker: Worker) -> None:
    """A task that tracks its items: one run, id = task id, completed, progress 100 %, its
    span a child of the OTel Celery instrumentation's span."""
    counted = _fleet(worker, "it.progress")
    result = _result(worker, "it.progress", 5)
    assert result.successful()

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.progress") if j.id == result.id]
        return rows if rows and rows[0].status == "completed" else None

    (job,) = wait_until(stored, 30, "the completed run in the store")
    assert job.attempt == 1
    assert job.progress == 100.0
    assert job.queue == "celery"
    # The OTel Celery instrumentation (connected after instrument(app)) is on: the run span
    # is a child of its run/<task> span, in its trace, and the store names that trace.
    run_span_tree(worker, job)
    counted.moved({("it.progress", "completed"): 1})


def test_retry_twice_then_success_is_three_attempts_of_one_run(worker: Worker) -> None:
    """Two retries then success: attempts 1-2 retried with the cause, 3 completed, none
    failed (so no failure is counted).

    Spans: one per attempt, each a child of its attempt's ``run/<task>`` span, all in one
    trace (the retry is sent from inside the attempt's run span, and the OTel Celery
    instrumentation carries that context to the next attempt). A retried attempt's span is
    not an error: status unset and no exception event (OTel: an error that was retried is
    not recorded as the operation's error; the OTel Celery span of that attempt is unset
    too), its ``error.type`` the cause."""
    counted = _fleet(worker, "it.flaky")
    result = _result(worker, "it.flaky")
    assert result.get(timeout=60) == "ok"

    def stored() -> Any:
        rows = sorted(
            (j.attempt, j.status, j.error_type)
            for j in worker.jobs("it.flaky")
            if j.id == result.id
        )
        # Every attempt ended: attempts run in either child, and the last one's records
        # may reach the store before an earlier one's finish.
        ended = all(status not in ("pending", "running") for _, status, _ in rows)
        return rows if len(rows) == 3 and ended else None

    rows = wait_until(stored, 30, "three attempts of the flaky task")
    assert rows == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(worker.store) as sink:
        assert sink.jobs.named("it.flaky").failed().count() == 0
        assert sink.jobs.named("it.flaky").retried().count() == 2
    jobs = sorted(
        (j for j in worker.jobs("it.flaky") if j.id == result.id), key=lambda j: j.attempt
    )
    spans = [run_span_tree(worker, job) for job in jobs]
    assert len({s["trace_id"] for s in spans}) == 1
    assert [s["links"] for s in spans] == [  # each attempt's span links to the one before
        [],
        [[spans[0]["trace_id"], spans[0]["span_id"]]],
        [[spans[1]["trace_id"], spans[1]["span_id"]]],
    ]
    counted.moved({("it.flaky", "retried"): 2, ("it.flaky", "completed"): 1})


def test_failure_is_failed_with_the_tasks_exception_type(worker: Worker) -> None:
    """An exception in the task: the run failed with that exception's own type; its span
    is an error with that exception's event; one failure counted."""
    counted = _fleet(worker, "it.fail")
    result = _result(worker, "it.fail")
    assert result.failed()

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.fail") if j.id == result.id]
        return rows if rows and rows[0].status == "failed" else None

    (job,) = wait_until(stored, 30, "the failed run in the store")
    assert job.error_type == "celery_app.Declined"
    run_span_tree(worker, job, status="ERROR", exception="celery_app.Declined")
    counted.moved({("it.fail", "failed"): 1})


def test_recycled_children_lose_no_run(worker: Worker) -> None:
    """worker_max_tasks_per_child=2 over 20 tasks: exactly 20 completed runs in the store,
    one per task id, none missing, none doubled, run by at least 10 children; 20 run
    spans, each under its task's Celery span; 20 completed runs counted."""
    counted = _fleet(worker, "it.noop")
    results = [worker.client.send_task("it.noop", args=(i,)) for i in range(20)]
    assert [r.get(timeout=60) for r in results] == list(range(20))
    ids = {r.id for r in results}

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.noop") if j.id in ids]
        return rows if {j.id for j in rows if j.status == "completed"} == ids else None

    rows = wait_until(stored, 30, "twenty completed runs")
    assert len(rows) == 20  # one execution per task: no run stored twice
    assert len({j.pid for j in rows}) >= 10  # each child ran at most two: recycling happened
    for job in rows:
        run_span_tree(worker, job)
    counted.moved({("it.noop", "completed"): 20})


def test_acks_late_redelivery_after_sigkill_is_a_second_execution(
    worker: Worker, tmp_path: Any
) -> None:
    """acks_late + reject_on_worker_lost: the child running the task is SIGKILLed, the
    message is redelivered and the same attempt runs again. Two executions are stored: the
    dead one with the killed pid, closed as failed (WorkerLostError) by the worker's main
    process, and the new one completed with its own pid. The dead one has no span (the
    killed child never ended it); the new one's span is under its own Celery span. The
    fleet counts one failure and one completion."""
    counted = _fleet(worker, "it.redelivered")
    marker = str(tmp_path / "first-delivery")
    result = worker.client.send_task("it.redelivered", args=(marker,))
    pid = wait_until(
        lambda: running_pid(worker, "it.redelivered", result.id), 30, "the first execution"
    )
    os.kill(pid, signal.SIGKILL)
    assert result.get(timeout=60) == "second"

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.redelivered") if j.id == result.id]
        statuses = sorted(j.status for j in rows)
        return rows if statuses == ["completed", "failed"] else None

    rows = wait_until(stored, 30, "two executions of the redelivered task")
    (new,) = [j for j in rows if j.status == "completed"]
    (dead,) = [j for j in rows if j is not new]
    assert dead.attempt == new.attempt == 1
    assert dead.execution_id
    assert new.execution_id
    assert dead.execution_id != new.execution_id
    assert dead.pid == pid
    assert new.pid != pid
    assert new.duration is not None
    assert new.duration > 0

    # Celery requeues the message without task_failure; the main process still closes
    # the dead execution (its Request's on_failure): failed, WorkerLostError, not lost.
    assert (dead.status, dead.health) == ("failed", "unhealthy")
    assert dead.error_type.endswith("WorkerLostError")
    assert not dead.lost
    run_span_tree(worker, new)
    no_span(worker.spans_path, dead)
    counted.moved({("it.redelivered", "failed"): 1, ("it.redelivered", "completed"): 1})


def test_a_task_that_never_heartbeats_is_healthy_under_the_liveness_lease(
    worker: Worker,
) -> None:
    """Interval 1 s, 8 s without a heartbeat and no time limit: while it runs, the task on
    the default (liveness) lease is healthy and not stuck; one that opted into the
    heartbeat lease is stuck, and so the fleet's /metrics say. Both then complete.

    Each task is observed on its own: the pool may run them one after the other (a child
    being recycled after ``worker_max_tasks_per_child``), so they need not overlap."""
    counted = _fleet(worker, "it.sleepy", "it.sleepy_promised")
    quiet = worker.client.send_task("it.sleepy", args=(8,))
    promised = worker.client.send_task("it.sleepy_promised", args=(8,))
    seen: dict[str, Any] = {}
    url = worker.metrics_url
    assert url is not None

    fleet_stuck = {"it.sleepy": False, "it.sleepy_promised": False}

    def both_seen_running_long() -> bool:
        with chaperone.open_sink(worker.store) as sink:
            for row in sink.jobs.running().all():
                if row.id in (quiet.id, promised.id) and (row.duration or 0) >= 4.5:
                    seen.setdefault(row.id, row)
                if row.id in (quiet.id, promised.id) and (row.duration or 0) >= 2:
                    fleet_stuck[row.name] |= metrics.stuck(url, row.name, fleet=True)
        return len(seen) == 2 and fleet_stuck["it.sleepy_promised"]

    wait_until(both_seen_running_long, 40, "each task seen running for 4.5 s, one stuck")
    live, beating = seen[quiet.id], seen[promised.id]
    assert (live.health, live.stuck, live.lost) == ("healthy", False, False)
    assert beating.stuck
    assert beating.health == "unhealthy"
    assert fleet_stuck == {"it.sleepy": False, "it.sleepy_promised": True}
    assert quiet.get(timeout=30) == 8
    assert promised.get(timeout=30) == 8
    for name, task in (("it.sleepy", quiet), ("it.sleepy_promised", promised)):
        run_span_tree(worker, closed(worker, name, task.id, "completed"))
    counted.moved({("it.sleepy", "completed"): 1, ("it.sleepy_promised", "completed"): 1})


def test_sigkilled_child_is_closed_failed_by_the_main_process(worker: Worker) -> None:
    """The child running a task is SIGKILLed: the worker's main process sees
    WorkerLostError and closes the run as failed within seconds (not left to be lost).

    The run has no span: the killed child never ended it (nor the Celery span around it),
    and another process cannot end a span it did not start. The fleet counts one failure
    and no lost run."""
    counted = _fleet(worker, "it.hang")
    result = worker.client.send_task("it.hang", args=(120,))
    pid = wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    job = closed(worker, "it.hang", result.id, "failed")
    assert time.monotonic() - killed < 20
    assert job.error_type.endswith("WorkerLostError")
    assert "SIGKILL" in job.error_message
    assert job.pid == pid  # the child's own row, closed
    assert not job.lost
    with pytest.raises(Exception, match="SIGKILL"):
        result.get(timeout=30)
    counted.moved({("it.hang", "failed"): 1})
    assert metrics.lost(str(worker.metrics_url), "it.hang") == 0
    no_span(worker.spans_path, job)


def test_hard_time_limit_is_failed_with_a_timeout_violation(worker: Worker) -> None:
    """time_limit=2 on a task that sleeps 30 s: billiard kills the child; the run is failed
    with TimeLimitExceeded (Celery's outcome) and a timeout violation, closed from the main
    process. billiard's SIGTERM reaches the child as SystemExit past the hard limit: the
    child ends its span as failed with TimeLimitExceeded too (not cancelled), under its
    Celery span; one failure counted."""
    counted = _fleet(worker, "it.overtime")
    result = worker.client.send_task("it.overtime")
    result.get(timeout=30, propagate=False)  # the backend's FAILURE (and the channel freed)
    job = closed(worker, "it.overtime", result.id, "failed")
    assert job.error_type.endswith("TimeLimitExceeded")
    assert job.health == "unhealthy"
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert "timeout" in {v.type for v in found.resource_violations}
    run_span_tree(worker, job, status="ERROR", exception=job.error_type)
    counted.moved({("it.overtime", "failed"): 1})


def test_revoke_with_terminate_is_cancelled(worker: Worker) -> None:
    """revoke(terminate=True) SIGTERMs the child: the worker's main process closes the run
    as cancelled (TaskRevokedError, from ``task_revoked``). The child only sees SystemExit
    and cannot know why: its span says cancelled, ``error.type`` SystemExit (an error
    status, no exception event), while the store has the main process's reason. One
    cancellation counted."""
    counted = _fleet(worker, "it.hang")
    result = worker.client.send_task("it.hang", args=(120,))
    wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
    worker.client.control.revoke(result.id, terminate=True)
    result.get(timeout=30, propagate=False)
    job = closed(worker, "it.hang", result.id, "cancelled")
    assert job.error_type.endswith("TaskRevokedError")
    assert "terminated" in job.error_message
    run_span_tree(worker, job, status="ERROR", outcome=("cancelled", "SystemExit"))
    counted.moved({("it.hang", "cancelled"): 1})


def test_soft_time_limit_is_failed_with_a_timeout_violation(worker: Worker) -> None:
    """soft_time_limit=1: SoftTimeLimitExceeded is raised in the task; the run is failed
    with it and has a timeout violation (limit 1 s); its span is an error with that
    exception's event; one failure counted."""
    counted = _fleet(worker, "it.soft")
    result = worker.client.send_task("it.soft")
    result.get(timeout=30, propagate=False)
    job = closed(worker, "it.soft", result.id, "failed")
    assert job.error_type.endswith("SoftTimeLimitExceeded")
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert [(v.type, v.limit) for v in found.resource_violations] == [("timeout", 1.0)]
    run_span_tree(worker, job, status="ERROR", exception=job.error_type)
    counted.moved({("it.soft", "failed"): 1})


def test_a_countdown_task_is_pending_before_it_starts(worker: Worker) -> None:
    """countdown=4: the worker's main process records the task as pending, with its due
    time, as soon as it receives it; the same row then runs and completes, and its queue
    wait (start minus due time) is small. The fleet shows it pending (not running) before
    it starts and counts one completion after; its span starts when it runs."""
    counted = _fleet(worker, "it.noop")
    url = str(worker.metrics_url)
    sent = time.time()
    result = worker.client.send_task("it.noop", args=(7,), countdown=4)

    def pending() -> Any:
        with chaperone.open_sink(worker.store) as sink:
            rows = [r for r in sink.jobs.pending().all() if r.id == result.id]
        return rows[0] if rows else None

    row = wait_until(pending, 15, "the countdown task pending in the store")
    assert time.time() - sent < 4  # seen before it was due
    assert row.name == "it.noop"
    assert row.started_at is None
    assert row.scheduled_at is not None
    assert abs(row.scheduled_at.timestamp() - (sent + 4)) < 2
    wait_until(lambda: metrics.runs(url, "it.noop", "pending") == 1, 4, "the fleet's pending run")
    assert result.get(timeout=30) == 7
    job = closed(worker, "it.noop", result.id, "completed")
    assert job.execution_id == row.execution_id  # the pending row became the run
    assert job.scheduled_at == row.scheduled_at
    assert job.queue_wait is not None
    assert -1 < job.queue_wait < 5
    run_span_tree(worker, job)
    counted.moved({("it.noop", "completed"): 1})
    assert metrics.runs(url, "it.noop", "pending") == 0


def test_otlp_to_sink_serve_the_fleet_metrics_count_runs_per_outcome(
    redis_url: str, tmp_path: Path
) -> None:
    """A prefork worker exporting over OTLP to ``sink serve`` (its children cannot serve
    /metrics): the sink's fleet /metrics count the runs per task and outcome (completed,
    failed, retried, cancelled) as its store has them, and the run span is still a child of
    the OTel Celery span."""
    with (
        ServeProcess(tmp_path / "sink.duckdb") as sink,
        celery_worker(
            redis_url,
            tmp_path,
            "prefork",
            db=4,
            sink_serve=(str(sink.path), sink.url),
        ) as worker,
    ):
        names = {"it.progress", "it.flaky", "it.fail", "it.noop"}
        done = worker.client.send_task("it.progress", args=(2,))
        assert done.get(timeout=30) == 2
        assert worker.client.send_task("it.flaky").get(timeout=60) == "ok"
        worker.client.send_task("it.fail").get(timeout=30, propagate=False)
        revoked = str(uuid.uuid4())
        worker.client.control.revoke(revoked)  # before it is sent: cancelled on receipt
        worker.client.send_task("it.noop", args=(1,), task_id=revoked)

        def stored() -> Any:
            with chaperone.open_sink(worker.store) as store:
                rows = [j for name in names for j in store.jobs.named(name).all()]
            counts = Counter(
                (j.name, j.status) for j in rows if j.status not in ("running", "pending")
            )
            return counts if sum(counts.values()) == 6 else None

        def agree() -> Any:
            expected = stored()
            seen = finished_counts(f"{sink.url}/metrics", sc.METRIC_SINK_RUNS_FINISHED, names)
            return expected if expected and seen == expected else None

        counts = wait_until(agree, 30, "the sink's /metrics to count what its store has")
        assert counts == Counter(
            {
                ("it.progress", "completed"): 1,
                ("it.flaky", "retried"): 2,
                ("it.flaky", "completed"): 1,
                ("it.fail", "failed"): 1,
                ("it.noop", "cancelled"): 1,
            }
        )
        job = closed(worker, "it.progress", done.id, "completed")
        run_span_tree(worker, job)


def test_a_cold_shutdown_closes_the_running_run_as_cancelled(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGQUIT (cold shutdown): Celery cancels the running task and terminates its child;
    the worker's main process closes the run as cancelled with the reason (the child only
    sees SystemExit, and its span says so), before the worker exits."""
    with celery_worker(redis_url, tmp_path, "prefork", db=5) as worker:
        result = worker.client.send_task("it.hang", args=(60,))
        pid = wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
        worker.proc.send_signal(signal.SIGQUIT)
        worker.proc.wait(timeout=30)
        (job,) = [j for j in worker.jobs("it.hang") if j.id == result.id]
        if CELERY_RELEASE < (5, 5):
            # Before 5.5 a cold shutdown kills the children without cancelling their tasks:
            # Celery fails the task (FAILURE, WorkerLostError), and the run says the same.
            assert (job.status, job.pid) == ("failed", pid)
            assert job.error_type == "billiard.exceptions.WorkerLostError"
        else:
            assert (job.status, job.pid) == ("cancelled", pid)
            assert job.error_type == "celery.exceptions.WorkerShutdown"
            assert "cold shutdown" in job.error_message
        # The child, SIGTERMed, ended its span with what it saw (this worker exports to no
        # sink: no fleet /metrics here; the module's worker counts cancellations).
        run_span_tree(worker, job, status="ERROR", outcome=("cancelled", "SystemExit"), timeout=0)
