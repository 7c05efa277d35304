"""``integrations.celery`` with a real worker: prefork, concurrency 2, Debian's redis-server.

One redis-server per test session (a free loopback port, no persistence) and one worker per
module, whose app module (written to tmp_path) configures the store at import: the worker's
main process owns it and its pool children forward to it. The worker recycles each child
after two tasks (``worker_max_tasks_per_child=2``), so every scenario also crosses child
exits. Every wait is bounded; the worker and the server are stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import chaperone_otel as chaperone
from tests.integrations.workers import stop, worker_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

_APP = textwrap.dedent(
    """
    import os
    import time

    from celery import Celery

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.celery import instrument

    chaperone.configure(sink=os.environ["TEST_JOBS_STORE"])
    app = Celery("celery_app", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BROKER"])
    app.conf.worker_max_tasks_per_child = 2
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    instrument(app)


    class Declined(Exception):
        pass


    @app.task(name="it.progress")
    def progress(n):
        for _ in chaperone.track(range(n)):
            pass
        return n


    @app.task(name="it.flaky", bind=True, max_retries=2)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError(f"try {self.request.retries}"), countdown=0)
        return "ok"


    @app.task(name="it.fail")
    def fail():
        raise Declined("card declined")


    @app.task(name="it.noop")
    def noop(i):
        return i


    @app.task(name="it.sleepy", chaperone_heartbeat_interval=1)
    def sleepy(seconds):  # never heartbeats: the default liveness lease keeps it alive
        time.sleep(seconds)
        return seconds


    @app.task(name="it.sleepy_promised", chaperone_heartbeat_interval=1,
              chaperone_lease="heartbeat")
    def sleepy_promised(seconds):  # promised heartbeats it never sends
        time.sleep(seconds)
        return seconds


    @app.task(name="it.hang")
    def hang(seconds):
        time.sleep(seconds)
        return seconds


    @app.task(name="it.overtime", time_limit=2)
    def overtime():
        time.sleep(30)


    @app.task(name="it.soft", soft_time_limit=1)
    def soft():
        time.sleep(10)


    @app.task(name="it.redelivered", acks_late=True, reject_on_worker_lost=True)
    def redelivered(marker):
        if not os.path.exists(marker):  # the first delivery waits to be killed
            open(marker, "w").close()
            time.sleep(120)
        return "second"
    """
)


class Worker:
    def __init__(self, store: str, client: Celery) -> None:
        self.store = store
        self.client = client

    def jobs(self, name: str) -> list[Any]:
        with chaperone.open_sink(self.store) as sink:
            return sink.jobs.named(name).all()


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``celery -A celery_app worker -P prefork -c 2``, stopped by PID (TERM, then KILL)."""
    root = tmp_path_factory.mktemp("celery")
    (root / "celery_app.py").write_text(_APP)
    store = str(root / "jobs.duckdb")
    env = worker_env(root, TEST_JOBS_STORE=store, TEST_BROKER=redis_url)
    log = (root / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--loglevel=warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = Celery("client", broker=redis_url, backend=redis_url)
    try:

        def ready() -> bool:
            assert proc.poll() is None, (root / "worker.log").read_text()
            return bool(client.control.ping(timeout=0.5))

        wait_until(ready, 60, "the celery worker to answer ping")
        yield Worker(store, client)
    finally:
        try:
            client.close()
        finally:
            stop(proc, grace=30)
            log.close()


def _result(worker: Worker, name: str, *args: Any) -> Any:
    result = worker.client.send_task(name, args=args)
    result.get(timeout=60, propagate=False)
    return result


def test_success_is_completed_with_progress_100(worker: Worker) -> None:
    """A task that tracks its items: one run, id = task id, completed, progress 100 %."""
    result = _result(worker, "it.progress", 5)
    assert result.successful()

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.progress") if j.id == result.id]
        return rows if rows and rows[0].status == "completed" else None

    (job,) = wait_until(stored, 30, "the completed run in the store")
    assert job.attempt == 1
    assert job.progress == 100.0
    assert job.queue == "celery"


def test_retry_twice_then_success_is_three_attempts_of_one_run(worker: Worker) -> None:
    """Two retries then success: attempts 1-2 retried with the cause, 3 completed, none
    failed (so no failure is counted)."""
    result = _result(worker, "it.flaky")
    assert result.get(timeout=60) == "ok"

    def stored() -> Any:
        rows = sorted(
            (j.attempt, j.status, j.error_type)
            for j in worker.jobs("it.flaky")
            if j.id == result.id
        )
        return rows if len(rows) == 3 and rows[-1][1] == "completed" else None

    rows = wait_until(stored, 30, "three attempts of the flaky task")
    assert rows == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(worker.store) as sink:
        assert sink.jobs.named("it.flaky").failed().count() == 0
        assert sink.jobs.named("it.flaky").retried().count() == 2


def test_failure_is_failed_with_the_tasks_exception_type(worker: Worker) -> None:
    """An exception in the task: the run failed with that exception's own type."""
    result = _result(worker, "it.fail")
    assert result.failed()

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.fail") if j.id == result.id]
        return rows if rows and rows[0].status == "failed" else None

    (job,) = wait_until(stored, 30, "the failed run in the store")
    assert job.error_type == "celery_app.Declined"


def test_recycled_children_lose_no_run(worker: Worker) -> None:
    """Ten tasks through children recycled after two tasks each: ten completed runs."""
    results = [worker.client.send_task("it.noop", args=(i,)) for i in range(10)]
    assert [r.get(timeout=60) for r in results] == list(range(10))
    ids = {r.id for r in results}

    def stored() -> Any:
        done = {j.id for j in worker.jobs("it.noop") if j.status == "completed"}
        return done if done >= ids else None

    wait_until(stored, 30, "ten completed runs")
    pids = {j.pid for j in worker.jobs("it.noop") if j.id in ids}
    assert len(pids) >= 5  # each child ran at most two of the ten tasks: recycling happened


def _running_pid(worker: Worker, name: str, task_id: str) -> Any:
    rows = [j for j in worker.jobs(name) if j.id == task_id and j.status == "running"]
    return rows[0].pid if rows and rows[0].pid else None


def test_acks_late_redelivery_after_sigkill_is_a_second_execution(
    worker: Worker, tmp_path: Any
) -> None:
    """acks_late + reject_on_worker_lost: the child running the task is SIGKILLed, the
    message is redelivered and the same attempt runs again. Two executions are stored: the
    dead one with the killed pid (not completed), the new one completed with its own pid."""
    marker = str(tmp_path / "first-delivery")
    result = worker.client.send_task("it.redelivered", args=(marker,))
    pid = wait_until(
        lambda: _running_pid(worker, "it.redelivered", result.id), 30, "the first execution"
    )
    os.kill(pid, signal.SIGKILL)
    assert result.get(timeout=60) == "second"

    def stored() -> Any:
        rows = [j for j in worker.jobs("it.redelivered") if j.id == result.id]
        return rows if len(rows) == 2 and any(j.status == "completed" for j in rows) else None

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


def test_a_task_that_never_heartbeats_is_healthy_under_the_liveness_lease(
    worker: Worker,
) -> None:
    """Interval 1 s, 8 s without a heartbeat and no time limit: while it runs, the task on
    the default (liveness) lease is healthy and not stuck; one that opted into the
    heartbeat lease is stuck. Both then complete.

    Each task is observed on its own: the pool may run them one after the other (a child
    being recycled after ``worker_max_tasks_per_child``), so they need not overlap."""
    quiet = worker.client.send_task("it.sleepy", args=(8,))
    promised = worker.client.send_task("it.sleepy_promised", args=(8,))
    seen: dict[str, Any] = {}

    def both_seen_running_long() -> bool:
        with chaperone.open_sink(worker.store) as sink:
            for row in sink.jobs.running().all():
                if row.id in (quiet.id, promised.id) and (row.duration or 0) >= 4.5:
                    seen.setdefault(row.id, row)
        return len(seen) == 2

    wait_until(both_seen_running_long, 40, "each task seen running for 4.5 s")
    live, beating = seen[quiet.id], seen[promised.id]
    assert (live.health, live.stuck, live.lost) == ("healthy", False, False)
    assert beating.stuck
    assert beating.health == "unhealthy"
    assert quiet.get(timeout=30) == 8
    assert promised.get(timeout=30) == 8


def _closed(worker: Worker, name: str, task_id: str, status: str) -> Any:
    def found() -> Any:
        rows = [j for j in worker.jobs(name) if j.id == task_id and j.status == status]
        return rows[0] if rows else None

    return wait_until(found, 20, f"{name} {task_id} {status} in the store")


def test_sigkilled_child_is_closed_failed_by_the_main_process(worker: Worker) -> None:
    """The child running a task is SIGKILLed: the worker's main process sees
    WorkerLostError and closes the run as failed within seconds (not left to be lost)."""
    result = worker.client.send_task("it.hang", args=(120,))
    pid = wait_until(lambda: _running_pid(worker, "it.hang", result.id), 30, "the running run")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    job = _closed(worker, "it.hang", result.id, "failed")
    assert time.monotonic() - killed < 20
    assert job.error_type.endswith("WorkerLostError")
    assert "SIGKILL" in job.error_message
    assert job.pid == pid  # the child's own row, closed
    assert not job.lost
    with pytest.raises(Exception, match="SIGKILL"):
        result.get(timeout=30)


def test_hard_time_limit_is_failed_with_a_timeout_violation(worker: Worker) -> None:
    """time_limit=2 on a task that sleeps 30 s: billiard kills the child; the run is failed
    with TimeLimitExceeded (Celery's outcome) and a timeout violation, closed from the main
    process."""
    result = worker.client.send_task("it.overtime")
    result.get(timeout=30, propagate=False)  # the backend's FAILURE (and the channel freed)
    job = _closed(worker, "it.overtime", result.id, "failed")
    assert job.error_type.endswith("TimeLimitExceeded")
    assert job.health == "unhealthy"
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert "timeout" in {v.type for v in found.resource_violations}


def test_revoke_with_terminate_is_cancelled(worker: Worker) -> None:
    result = worker.client.send_task("it.hang", args=(120,))
    wait_until(lambda: _running_pid(worker, "it.hang", result.id), 30, "the running run")
    worker.client.control.revoke(result.id, terminate=True)
    result.get(timeout=30, propagate=False)
    job = _closed(worker, "it.hang", result.id, "cancelled")
    assert job.error_type.endswith("TaskRevokedError")
    assert "terminated" in job.error_message


def test_soft_time_limit_is_failed_with_a_timeout_violation(worker: Worker) -> None:
    """soft_time_limit=1: SoftTimeLimitExceeded is raised in the task; the run is failed
    with it and has a timeout violation (limit 1 s)."""
    result = worker.client.send_task("it.soft")
    result.get(timeout=30, propagate=False)
    job = _closed(worker, "it.soft", result.id, "failed")
    assert job.error_type.endswith("SoftTimeLimitExceeded")
    with chaperone.open_sink(worker.store) as sink:
        found = sink.job(result.id)
        assert found is not None
        assert [(v.type, v.limit) for v in found.resource_violations] == [("timeout", 1.0)]


def test_a_countdown_task_is_pending_before_it_starts(worker: Worker) -> None:
    """countdown=4: the worker's main process records the task as pending, with its due
    time, as soon as it receives it; the same row then runs and completes, and its queue
    wait (start minus due time) is small."""
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
    assert result.get(timeout=30) == 7
    job = _closed(worker, "it.noop", result.id, "completed")
    assert job.execution_id == row.execution_id  # the pending row became the run
    assert job.scheduled_at == row.scheduled_at
    assert job.queue_wait is not None
    assert -1 < job.queue_wait < 5
