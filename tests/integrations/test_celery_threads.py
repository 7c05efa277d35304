"""``integrations.celery`` with a real worker on the threads pool (``-P threads -c 2``).

The threads pool runs tasks in the worker's main process, so the runs start, end and are
stored there; nothing is forwarded. Celery cannot stop a thread: it ignores time limits,
``revoke(terminate=True)`` fails in the worker (``NotImplementedError`` from
``terminate_job``) and a cold shutdown waits for the running tasks. The store says what
happened: a run past its time limit is overtime (a timeout violation) and stuck while it
runs, and every run ends with the outcome the task really had, which is Celery's too.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from tests.integrations.celery_workers import (
    Worker,
    celery_worker,
    closed,
    run_span_tree,
    running_pid,
)
from tests.integrations.metrics import finished_counts
from tests.integrations.workers import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("threads")
    with celery_worker(redis_url, root, "threads", db=1, metrics_port=free_port()) as w:
        yield w


def _run(worker: Worker, name: str, task_id: str) -> Any:
    rows = [j for j in worker.jobs(name) if j.id == task_id]
    return rows[0] if rows else None


def test_success_is_completed_with_progress_100(worker: Worker) -> None:
    result = worker.client.send_task("it.progress", args=(5,))
    assert result.get(timeout=30) == 5
    job = closed(worker, "it.progress", result.id, "completed")
    assert (job.attempt, job.progress, job.queue) == (1, 100.0, "celery")
    assert job.pid == worker.proc.pid  # the worker's own process ran it
    run_span_tree(worker, job)  # a child of the OTel Celery span, in its trace


def test_retry_twice_then_success_is_three_attempts_of_one_run(worker: Worker) -> None:
    result = worker.client.send_task("it.flaky")
    assert result.get(timeout=60) == "ok"

    def stored() -> Any:
        rows = sorted(
            (j.attempt, j.status, j.error_type)
            for j in worker.jobs("it.flaky")
            if j.id == result.id
        )
        return rows if len(rows) == 3 and rows[-1][1] == "completed" else None

    assert wait_until(stored, 30, "three attempts of the flaky task") == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(worker.store) as sink:
        assert sink.jobs.named("it.flaky").failed().count() == 0


def test_failure_is_failed_with_the_tasks_exception_type(worker: Worker) -> None:
    result = worker.client.send_task("it.fail")
    result.get(timeout=30, propagate=False)
    assert result.failed()
    job = closed(worker, "it.fail", result.id, "failed")
    assert job.error_type == "celery_app.Declined"


def test_a_time_limit_the_pool_ignores_makes_the_run_overtime_and_stuck(worker: Worker) -> None:
    """time_limit=2 on a 4 s task: Celery lets it run (SUCCESS). Past 2 s the run has its
    timeout violation and is stuck while it runs; it then completes, still unhealthy."""
    result = worker.client.send_task("it.overtime", args=(4,))

    def overtime() -> Any:
        job = _run(worker, "it.overtime", result.id)
        return job if job is not None and job.status == "running" and job.stuck else None

    job = wait_until(overtime, 15, "the run stuck past its time limit")
    assert job.health == "unhealthy"
    assert result.get(timeout=30) == 4  # not enforced: Celery says SUCCESS
    job = closed(worker, "it.overtime", result.id, "completed")
    assert job.health == "unhealthy"
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert [(v.type, v.limit) for v in found.resource_violations] == [("timeout", 2.0)]


def test_revoke_with_terminate_cannot_stop_a_thread_so_the_run_ends_as_the_task_did(
    worker: Worker,
) -> None:
    """revoke(terminate=True) fails in a threads worker and the task runs on: its run is
    not closed as cancelled while it still runs, and ends completed as Celery records it."""
    result = worker.client.send_task("it.hang", args=(3,))
    wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
    worker.client.control.revoke(result.id, terminate=True)
    assert result.get(timeout=30) == 3
    assert result.state == "SUCCESS"
    job = closed(worker, "it.hang", result.id, "completed")
    assert job.health == "healthy"
    assert "does not implement kill_job" in worker.log()  # Celery's own report


def test_a_cold_shutdown_waits_for_the_running_task_and_its_run_completes(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGQUIT (cold shutdown) cannot cancel a thread: the worker exits when the task has
    ended, and the run is stored completed (not left running, not lost)."""
    with celery_worker(redis_url, tmp_path, "threads", db=2) as worker:
        result = worker.client.send_task("it.hang", args=(3,))
        wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
        worker.proc.send_signal(signal.SIGQUIT)
        worker.proc.wait(timeout=30)
        job = _run(worker, "it.hang", result.id)
        assert job is not None
        assert (job.status, job.health) == ("completed", "healthy")


def test_metrics_count_the_runs_per_outcome(worker: Worker) -> None:
    """The worker's /metrics count finished runs per task and outcome (completed, failed,
    retried, cancelled) exactly as the store has them."""
    names = {"it.progress", "it.flaky", "it.fail", "it.noop"}
    worker.client.send_task("it.progress", args=(2,)).get(timeout=30)
    assert worker.client.send_task("it.flaky").get(timeout=60) == "ok"
    worker.client.send_task("it.fail").get(timeout=30, propagate=False)
    revoked = str(uuid.uuid4())
    worker.client.control.revoke(revoked)  # revoked before it is sent: cancelled on receipt
    worker.client.send_task("it.noop", args=(1,), task_id=revoked)
    closed(worker, "it.noop", revoked, "cancelled")

    def stored() -> Counter[tuple[str, str]]:
        with chaperone.open_sink(worker.store) as sink:
            rows = [j for name in names for j in sink.jobs.named(name).all()]
        return Counter((j.name, j.status) for j in rows if j.status not in ("running", "pending"))

    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

    def agree() -> Any:
        expected = stored()
        return (
            expected
            if finished_counts(url, sc.METRIC_JOB_RUNS_FINISHED, names) == expected
            else None
        )

    counts = wait_until(agree, 20, "/metrics to count what the store has")
    statuses = {status for _, status in counts}
    assert {"completed", "failed", "retried", "cancelled"} <= statuses


def test_liveness_lease_is_healthy_and_a_promised_heartbeat_missed_is_stuck(
    worker: Worker,
) -> None:
    """Two threads, interval 1 s, 4 s without a heartbeat: the liveness-lease task is
    healthy (the worker process is alive), the one that promised heartbeats is stuck."""
    quiet = worker.client.send_task("it.sleepy", args=(4,))
    promised = worker.client.send_task("it.sleepy_promised", args=(4,))

    def both_running_long() -> Any:
        with chaperone.open_sink(worker.store) as sink:
            rows = {r.id: r for r in sink.jobs.running().all()}
        found = rows.get(quiet.id), rows.get(promised.id)
        if any(r is None or r.duration is None or r.duration < 3.3 for r in found):
            return None
        return found

    live, beating = wait_until(both_running_long, 30, "both tasks running for 3.3 s")
    assert (live.health, live.stuck, live.lost) == ("healthy", False, False)
    assert beating.stuck
    assert quiet.get(timeout=30) == promised.get(timeout=30) == 4


def test_a_countdown_task_is_pending_before_it_starts(worker: Worker) -> None:
    result = worker.client.send_task("it.noop", args=(3,), countdown=3)

    def pending() -> Any:
        with chaperone.open_sink(worker.store) as sink:
            rows = [r for r in sink.jobs.pending().all() if r.id == result.id]
        return rows[0] if rows else None

    row = wait_until(pending, 10, "the countdown task pending in the store")
    assert row.started_at is None
    assert result.get(timeout=30) == 3
    job = closed(worker, "it.noop", result.id, "completed")
    assert job.execution_id == row.execution_id  # the pending row became the run
