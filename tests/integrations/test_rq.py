"""``integrations.rq`` in process: ``SupervisedSimpleWorker`` in burst mode against the
session's redis-server (jobs run in this process, captured with ``capture()``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import StartedJobRegistry

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.integrations.rq import ATTEMPT_KEY, EXECUTION_KEY, SupervisedSimpleWorker
from chaperone_otel.testing import Capture

pytestmark = pytest.mark.slow  # a real redis-server


def current_run_id() -> str | None:
    job = chaperone.current_job()
    return job.id if job else None


@pytest.fixture
def queue(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Queue]:
    connection = Redis.from_url(redis_url)
    q = Queue(f"rq-unit-{request.node.name}"[:80], connection=connection)
    try:
        yield q
    finally:
        q.empty()
        connection.close()


def fails() -> None:
    raise ValueError("not a number")


def _work(queue: Queue) -> None:
    """Execute the queue's jobs here, as the worker's loop does (without its loop: RQ 3.0's
    teardown may wait up to 60 s on its pubsub thread)."""
    worker = SupervisedSimpleWorker([queue], connection=queue.connection)
    while (job := queue.dequeue_any([queue], None, connection=queue.connection)) is not None:
        found, origin = job
        worker.execute_job(found, origin)


def test_job_is_current_and_each_execution_is_the_next_attempt(queue: Queue, cap: Capture) -> None:
    """The run is current in the job (its id is the job id); a requeued job's second
    execution is attempt 2 of the same run id, counted in ``job.meta``."""
    job = queue.enqueue(current_run_id, job_timeout=30)
    _work(queue)
    assert job.return_value() == job.id
    queue.enqueue_job(job)  # run it again (what a requeue or a repeat does)
    _work(queue)
    runs = sorted((r.latest[sc.ATTR_JOB_ATTEMPT], r.status) for r in cap.runs())
    assert runs == [(1, "completed"), (2, "completed")]
    job.refresh()
    assert job.meta[ATTEMPT_KEY] == 2
    # each execution's id is RQ's own, as its results name it
    executions = {r.latest[sc.ATTR_JOB_EXECUTION_ID] for r in cap.runs()}
    assert executions == {result.execution_id for result in job.results()}
    assert len(executions) == 2
    run = cap.runs()[0]
    assert run.id == job.id
    assert run.name == f"{__name__}.current_run_id"
    assert run.latest[sc.ATTR_JOB_QUEUE] == queue.name
    assert run.latest[sc.ATTR_JOB_TIMEOUT] == 30.0


class PromisedWorker(SupervisedSimpleWorker):
    chaperone_lease = "heartbeat"
    chaperone_heartbeat_interval = 30


def test_runs_are_alive_while_the_horse_is_unless_the_worker_asks_for_heartbeats(
    queue: Queue, cap: Capture
) -> None:
    """The liveness lease by default (a job that never heartbeats is not stuck: every job is
    supervised, few heartbeat, as with Celery); ``chaperone_lease`` asks for heartbeats."""
    first = queue.enqueue(current_run_id)
    _work(queue)
    second = queue.enqueue(current_run_id)
    worker = PromisedWorker([queue], connection=queue.connection)
    while (job := queue.dequeue_any([queue], None, connection=queue.connection)) is not None:
        worker.execute_job(*job)
    assert cap.run(first.id).latest[sc.ATTR_JOB_LEASE] == "liveness"
    promised = cap.run(second.id).latest
    assert (promised[sc.ATTR_JOB_LEASE], promised[sc.ATTR_HEARTBEAT_INTERVAL]) == ("heartbeat", 30.0)


@pytest.mark.parametrize(
    ("attribute", "value", "match"),
    [
        ("chaperone_lease", "sometimes", "chaperone_lease='sometimes': choose one of"),
        ("chaperone_heartbeat_interval", "often", "chaperone_heartbeat_interval='often'"),
        ("chaperone_flush_timeout", -1, "flush_timeout=-1: expected seconds"),
    ],
)
def test_a_worker_class_with_a_wrong_option_raises_when_it_is_created(
    queue: Queue, attribute: str, value: object, match: str
) -> None:
    """Misuse raises as the worker starts (it was swallowed at each job's start as an
    internal error while every job ran unsupervised)."""
    misused = type("Misused", (SupervisedSimpleWorker,), {attribute: value})
    with pytest.raises(ConfigurationError, match=r"worker class Misused: .*" + match):
        misused([queue], connection=queue.connection)


def test_meta_the_worker_cannot_read_is_left_as_the_enqueuer_wrote_it(
    queue: Queue, cap: Capture
) -> None:
    """A job whose ``meta`` this worker cannot deserialize (a class it cannot import) keeps
    its stored bytes: RQ writes them back unchanged, and the integration adds no key (that
    would overwrite the enqueuer's meta). The job is still a run."""
    job = queue.enqueue(current_run_id, job_timeout=30)
    unreadable = b"\x80\x04not a pickle this worker can load"
    queue.connection.hset(job.key, "meta", unreadable)
    _work(queue)
    assert queue.connection.hget(job.key, "meta") == unreadable
    assert job.return_value() == job.id
    (run,) = cap.runs()
    assert (run.id, run.status, run.latest[sc.ATTR_JOB_ATTEMPT]) == (job.id, "completed", 1)


def test_abandoned_job_is_closed_failed_by_the_maintenance(queue: Queue, cap: Capture) -> None:
    """A job left STARTED by a worker that died (its execution expired in the started
    registry): the worker cleaning the registries closes its run ``failed``
    (``AbandonedJobError``), under the attempt the dead worker counted."""
    job = queue.enqueue(current_run_id)
    job.meta[ATTEMPT_KEY] = 3  # the dead worker's third execution of it
    job.meta[EXECUTION_KEY] = "exec-of-the-dead-worker"  # saved before its horse started
    job.save_meta()
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue=queue)
    queue.connection.zadd(registry.key, {f"{job.id}:dead-execution": time.time() - 10})
    worker = SupervisedSimpleWorker([queue], connection=queue.connection)
    worker.clean_registries()
    (run,) = cap.runs()
    assert (run.id, run.status) == (job.id, "failed")
    assert run.latest[sc.ATTR_JOB_ATTEMPT] == 3
    assert run.error_type == "rq.exceptions.AbandonedJobError"
    assert run.latest[sc.ATTR_JOB_EXECUTION_ID] == "exec-of-the-dead-worker"
    assert run.records[-1].event_name == sc.EVENT_JOB_CLOSED  # the outcome wins in the store
    # the handler was there only during the cleanup
    assert all(getattr(h, "__name__", "") != "closed" for h in worker._exc_handlers)


def test_a_failing_job_fails_its_run_and_the_worker_carries_on(queue: Queue, cap: Capture) -> None:
    """An exception: the run failed with its type; the next job still runs."""
    failing = queue.enqueue(fails)
    after = queue.enqueue(current_run_id)
    _work(queue)
    assert cap.run(failing.id).status == "failed"
    assert cap.run(failing.id).error_type == "ValueError"
    assert cap.run(after.id).status == "completed"


def test_when_rqs_own_failure_handling_fails_the_run_has_that_error(
    queue: Queue, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ's handling of a failed job itself fails (redis gone while it records the
    failure): the run is failed with the error that ended ``perform_job``, not with a
    placeholder saying RQ reported none."""

    def redis_down(*_: object, **__: object) -> None:
        raise ConnectionError("redis went away while recording the failure")

    monkeypatch.setattr(SupervisedSimpleWorker, "_finalize_failure", redis_down)
    failing = queue.enqueue(fails)
    with pytest.raises(ConnectionError):
        _work(queue)
    run = cap.run(failing.id)
    assert (run.status, run.error_type) == ("failed", "ConnectionError")


@pytest.mark.parametrize(("age", "violated"), [(100.0, True), (5.0, False)])
def test_a_horse_killed_past_its_jobs_timeout_is_closed_with_a_timeout_violation(
    queue: Queue, cap: Capture, age: float, violated: bool
) -> None:
    """RQ's main process kills a horse that outlives its job's timeout by 60 s and fails
    the job (``handle_job_failure``): the run is closed failed with a timeout violation
    (none was recorded). A horse that died before its timeout has none. Driven through
    RQ's own handler, with the watch the worker keeps while its horse runs."""
    from chaperone_otel.integrations.rq import SupervisedWorker

    job = queue.enqueue(current_run_id, job_timeout=30)
    job.meta[ATTEMPT_KEY] = 1
    job.meta[EXECUTION_KEY] = "exec-of-the-killed-horse"
    job.save_meta()
    worker = SupervisedWorker([queue], connection=queue.connection)
    worker._chaperone_watch = (job.id, 4242, time.time() - age, queue)
    worker.handle_job_failure(job, queue, exc_string="Work-horse terminated unexpectedly")
    (closed,) = [r for r in cap.run(job.id).records if r.event_name == sc.EVENT_JOB_CLOSED]
    assert closed.attributes[sc.ATTR_JOB_STATUS] == "failed"
    assert closed.attributes[sc.ATTR_ERROR_TYPE].endswith("WorkHorseKilled")
    assert closed.attributes.get(sc.ATTR_LIMIT_VALUE) == (30.0 if violated else None)
    assert closed.attributes[sc.ATTR_JOB_HEALTH] == "unhealthy"


def stopped_then_fails() -> None:
    """What a job sees when ``send_stop_job_command`` reaches a ``SimpleWorker`` (no horse
    to kill: RQ only marks the job stopped), then the job raises."""
    from rq import get_current_job
    from rq.command import handle_stop_job_command

    handle_stop_job_command(STOPPING[0], {"job_id": get_current_job().id})
    raise ValueError("gave up after the stop request")


STOPPING: list[SupervisedSimpleWorker] = []


def test_a_simple_worker_job_stopped_then_failing_is_cancelled_not_retried(
    queue: Queue, cap: Capture
) -> None:
    """``send_stop_job_command`` to a ``SimpleWorker``: RQ cannot kill the job, but a
    failure after the request is STOPPED and never retried, although the job has retries
    left. The run is ``cancelled`` with the job's error (was ``retried``, an attempt that
    never came)."""
    from rq import Retry

    job = queue.enqueue(stopped_then_fails, retry=Retry(max=2))
    worker = SupervisedSimpleWorker([queue], connection=queue.connection)
    STOPPING[:] = [worker]
    found = queue.dequeue_any([queue], None, connection=queue.connection)
    assert found is not None
    worker.execute_job(found[0], found[1])
    assert job.get_status() == JobStatus.STOPPED
    assert queue.count == 0  # RQ did not retry it
    (run,) = cap.runs()
    assert (run.id, run.status, run.error_type) == (job.id, "cancelled", "ValueError")
