"""``integrations.celery`` with a real worker on the threads pool (``-P threads -c 2``).

The threads pool runs tasks in the worker's main process, so the runs start, end and are
stored there; nothing is forwarded. Celery cannot stop a thread: it ignores time limits,
``revoke(terminate=True)`` fails in the worker (``NotImplementedError`` from
``terminate_job``) and a cold shutdown waits for the running tasks. The store says what
happened: a run past its time limit is overtime (a timeout violation) and stuck while it
runs, and every run ends with the outcome the task really had, which is Celery's too.

Each scenario is asserted on three surfaces: the store, the span tree (every span the
worker ends, from a file it appends to) and the worker's own ``/metrics`` (its runs are
its own: the finished-runs counter per outcome, and the live-run gauges the stuck alert
reads).
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
from tests.integrations import metrics
from tests.integrations.celery_workers import (
    Worker,
    celery_worker,
    closed,
    run_span_tree,
    running_pid,
)
from tests.integrations.metrics import Outcomes, finished_counts
from tests.integrations.workers import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("threads")
    with celery_worker(redis_url, root, "threads", db=1, metrics_port=free_port()) as w:
        yield w


def _counted(worker: Worker, *names: str) -> Outcomes:
    """The worker's finished-runs counter of ``names``, taken now."""
    return Outcomes(worker.metrics_url, names, fleet=False)


def _run(worker: Worker, name: str, task_id: str) -> Any:
    rows = [j for j in worker.jobs(name) if j.id == task_id]
    return rows[0] if rows else None


def test_success_is_completed_with_progress_100(worker: Worker) -> None:
    counted = _counted(worker, "it.progress")
    result = worker.client.send_task("it.progress", args=(5,))
    assert result.get(timeout=30) == 5
    job = closed(worker, "it.progress", result.id, "completed")
    assert (job.attempt, job.progress, job.queue) == (1, 100.0, "celery")
    assert job.pid == worker.proc.pid  # the worker's own process ran it
    run_span_tree(worker, job)  # a child of the OTel Celery span, in its trace
    counted.moved({("it.progress", "completed"): 1})


def test_retry_twice_then_success_is_three_attempts_of_one_run(worker: Worker) -> None:
    """Attempts 1-2 retried, 3 completed: one span per attempt under its Celery span, all in
    one trace, the retried ones not errors (see the prefork test); counted as two retried
    and one completed, no failure."""
    counted = _counted(worker, "it.flaky")
    result = worker.client.send_task("it.flaky")
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

    assert wait_until(stored, 30, "three attempts of the flaky task") == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(worker.store) as sink:
        assert sink.jobs.named("it.flaky").failed().count() == 0
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
    counted = _counted(worker, "it.fail")
    result = worker.client.send_task("it.fail")
    result.get(timeout=30, propagate=False)
    assert result.failed()
    job = closed(worker, "it.fail", result.id, "failed")
    assert job.error_type == "celery_app.Declined"
    run_span_tree(worker, job, status="ERROR", exception="celery_app.Declined")
    counted.moved({("it.fail", "failed"): 1})


def test_a_time_limit_the_pool_ignores_makes_the_run_overtime_and_stuck(worker: Worker) -> None:
    """time_limit=2 on a 4 s task: Celery lets it run (SUCCESS). Past 2 s the run has its
    timeout violation and is stuck while it runs (so the worker's /metrics say: its deadline
    gauge is past); it then completes, still unhealthy, its span unset with the violation
    event; one completion counted."""
    counted = _counted(worker, "it.overtime")
    url = str(worker.metrics_url)
    result = worker.client.send_task("it.overtime", args=(4,))

    def overtime() -> Any:
        job = _run(worker, "it.overtime", result.id)
        if job is None or job.status != "running" or not job.stuck:
            return None
        return job if metrics.stuck(url, "it.overtime", fleet=False) else None

    job = wait_until(overtime, 15, "the run stuck past its time limit, in the store and /metrics")
    assert job.health == "unhealthy"
    assert result.get(timeout=30) == 4  # not enforced: Celery says SUCCESS
    job = closed(worker, "it.overtime", result.id, "completed")
    assert job.health == "unhealthy"
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert [(v.type, v.limit) for v in found.resource_violations] == [("timeout", 2.0)]
    span = run_span_tree(worker, job)
    assert "chaperone.job.violation" in [e["name"] for e in span["events"]]
    counted.moved({("it.overtime", "completed"): 1})


def test_revoke_with_terminate_cannot_stop_a_thread_so_the_run_ends_as_the_task_did(
    worker: Worker,
) -> None:
    """revoke(terminate=True) fails in a threads worker and the task runs on: its run is
    not closed as cancelled while it still runs, and ends completed as Celery records it
    (its span too; one completion counted)."""
    counted = _counted(worker, "it.until")
    marker = worker.root / "until-revoke-terminate"
    # Runs until the test lets it end: the revoke always finds it active.
    result = worker.client.send_task("it.until", args=(str(marker),))
    wait_until(lambda: running_pid(worker, "it.until", result.id), 30, "the running run")
    worker.client.control.revoke(result.id, terminate=True)
    wait_until(  # Celery's own report, while the task still runs
        lambda: "does not implement kill_job" in worker.log(), 30, "the failed terminate"
    )
    assert not result.ready()
    seen = _run(worker, "it.until", result.id)  # still running: not closed as cancelled
    assert seen is not None
    assert seen.status == "running"
    marker.touch()
    assert result.get(timeout=30) is True
    assert result.state == "SUCCESS"
    job = closed(worker, "it.until", result.id, "completed")
    assert job.health == "healthy"
    run_span_tree(worker, job)
    counted.moved({("it.until", "completed"): 1})


def test_a_cold_shutdown_waits_for_the_running_task_and_its_run_completes(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGQUIT (cold shutdown) cannot cancel a thread: the worker exits when the task has
    ended, and the run is stored completed (not left running, not lost), its span ended
    completed before the exit. (This worker serves no /metrics: it is gone when asserted.)"""
    with celery_worker(redis_url, tmp_path, "threads", db=2) as worker:
        result = worker.client.send_task("it.hang", args=(3,))
        wait_until(lambda: running_pid(worker, "it.hang", result.id), 30, "the running run")
        worker.proc.send_signal(signal.SIGQUIT)
        worker.proc.wait(timeout=30)
        job = _run(worker, "it.hang", result.id)
        assert job is not None
        assert (job.status, job.health) == ("completed", "healthy")
        run_span_tree(worker, job, timeout=0)


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

    url = str(worker.metrics_url)

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
    healthy (the worker process is alive), the one that promised heartbeats is stuck, in
    the store and in the worker's /metrics (the gauges its stuck alert reads). Both then
    complete: spans unset, two completions counted."""
    counted = _counted(worker, "it.sleepy", "it.sleepy_promised")
    url = str(worker.metrics_url)
    quiet = worker.client.send_task("it.sleepy", args=(4,))
    promised = worker.client.send_task("it.sleepy_promised", args=(4,))
    scraped: dict[str, bool] = {}

    def both_running_long() -> Any:
        with chaperone.open_sink(worker.store) as sink:
            rows = {r.id: r for r in sink.jobs.running().all()}
        found = rows.get(quiet.id), rows.get(promised.id)
        if any(r is None or r.duration is None or r.duration < 3.3 for r in found):
            return None
        scraped.update(
            {n: metrics.stuck(url, n, fleet=False) for n in ("it.sleepy", "it.sleepy_promised")}
        )
        return found

    live, beating = wait_until(both_running_long, 30, "both tasks running for 3.3 s")
    assert (live.health, live.stuck, live.lost) == ("healthy", False, False)
    assert beating.stuck
    assert scraped == {"it.sleepy": False, "it.sleepy_promised": True}
    assert quiet.get(timeout=30) == promised.get(timeout=30) == 4
    for name, task in (("it.sleepy", quiet), ("it.sleepy_promised", promised)):
        run_span_tree(worker, closed(worker, name, task.id, "completed"))
    counted.moved({("it.sleepy", "completed"): 1, ("it.sleepy_promised", "completed"): 1})


def test_a_countdown_task_is_pending_before_it_starts(worker: Worker) -> None:
    """countdown=3: pending in the store before it starts, then the same row completed.
    The worker's /metrics cannot show a pending task (they count runs, and only a started
    run is one; the fleet /metrics of a sink show it, see the prefork test): nothing is
    counted before it runs, one completion after, and its span starts when it runs."""
    counted = _counted(worker, "it.noop")
    result = worker.client.send_task("it.noop", args=(3,), countdown=3)

    def pending() -> Any:
        with chaperone.open_sink(worker.store) as sink:
            rows = [r for r in sink.jobs.pending().all() if r.id == result.id]
        return rows[0] if rows else None

    row = wait_until(pending, 10, "the countdown task pending in the store")
    assert row.started_at is None
    assert counted.counts() == counted.before
    assert result.get(timeout=30) == 3
    job = closed(worker, "it.noop", result.id, "completed")
    assert job.execution_id == row.execution_id  # the pending row became the run
    run_span_tree(worker, job)
    counted.moved({("it.noop", "completed"): 1})
