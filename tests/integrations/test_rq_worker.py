"""``integrations.rq`` with a real ``rq worker`` (forking work-horses) and Debian's redis-server.

One worker per module, whose app module (written to tmp_path) configures the store at
import: the worker's main process owns it and every work-horse it forks forwards to it.
Each scenario is asserted on three surfaces: the store (a DuckDB file), the run's span
(every span the worker and its horses end, from a file they append to) and ``/metrics``.
A work-horse's counters die with it, so the worker also exports over OTLP to a ``sink
serve`` of the module, whose fleet ``/metrics`` count the runs per outcome. RQ has no OTel
instrumentation that carries a trace context in the job: each run span is a root span, and
each attempt is a trace of its own (the attempts share the run id attribute). Every wait is
bounded; the worker and the servers are stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.job import Job
from rq.worker import Worker as RQWorker

import chaperone_otel as chaperone
from tests.integrations import metrics, span_file
from tests.integrations.metrics import Outcomes
from tests.integrations.workers import stop, worker_env
from tests.sink.serve_process import ServeProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

_APP = textwrap.dedent(
    """
    import os
    import time

    from rq import Retry, get_current_job

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.rq import SupervisedWorker
    from tests.integrations import span_file

    chaperone.configure(sink=os.environ["TEST_JOBS_STORE"], otlp_endpoint=os.environ["TEST_OTLP"])
    span_file.install(os.environ["TEST_SPANS"])


    class Worker(SupervisedWorker):
        pass


    class Declined(Exception):
        pass


    def progress(n):
        for _ in chaperone.track(range(n)):
            pass
        return n


    def flaky():
        job = get_current_job()
        if job.retries_left:  # enqueued with Retry(max=2): fails twice, then succeeds
            raise ConnectionError(f"{job.retries_left} retries left")
        return "ok"


    def fail():
        raise Declined("card declined")


    def asks_again():
        job = get_current_job()
        if chaperone.current_job().attempt < 2:  # the run is current in the job
            return Retry(max=3)
        return "done"


    def hang():
        job = get_current_job()
        job.meta["horse_pid"] = os.getpid()
        job.save_meta()
        time.sleep(60)


    def hang_once():  # the first attempt waits to be killed; the retry returns
        if chaperone.current_job().attempt == 1:
            hang()
        return "second"
    """
)


class RQ:
    def __init__(
        self, store: str, queue: Queue, proc: subprocess.Popen[Any], spans: Path, sink_url: str
    ) -> None:
        self.store = store
        self.queue = queue
        self.proc = proc
        self.spans = spans
        self.metrics_url = f"{sink_url}/metrics"

    def counted(self, *names: str) -> Outcomes:
        """The fleet's finished-runs counter of ``names``, taken now."""
        return Outcomes(self.metrics_url, [f"rq_app.{n}" for n in names], fleet=True)

    def span(self, run: Any, **expected: Any) -> dict[str, Any]:
        """The run's span, a root span (no OTel RQ instrumentation), as ``expected`` says."""
        return span_file.run_span(self.spans, run, parent=None, **expected)

    def run_of(
        self, job: Job, *, attempts: int = 1, status: str | None = None, within: float = 30
    ) -> list[Any]:
        """The job's runs once ``attempts`` are in the store and every one is terminal."""

        def stored() -> Any:
            assert self.proc.poll() is None, "the rq worker exited"
            with chaperone.open_sink(self.store) as sink:
                rows = sorted(sink.jobs.with_id(job.id).all(), key=lambda j: j.attempt)
            # Every attempt ended: the last one's records may arrive before an earlier one's.
            done = len(rows) == attempts and all(
                r.status not in ("pending", "running") for r in rows
            )
            if done and status is not None:
                done = rows[-1].status == status
            return rows if done else None

        return list(wait_until(stored, within, f"{attempts} run(s) of job {job.id} in the store"))


@pytest.fixture(scope="module")
def rq_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The ``sink serve`` the worker exports to, for its fleet /metrics; stopped by PID."""
    with ServeProcess(tmp_path_factory.mktemp("rq-sink") / "sink.duckdb") as sink:
        yield sink


@pytest.fixture(scope="module")
def rq_worker(
    redis_url: str, rq_sink: ServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RQ]:
    """``rq worker -w rq_app.Worker`` on a queue of its own, stopped by PID (TERM, then KILL)."""
    root = tmp_path_factory.mktemp("rq")
    (root / "rq_app.py").write_text(_APP)
    store = str(root / "jobs.duckdb")
    sink = rq_sink
    spans = root / "spans.jsonl"
    env = worker_env(root, TEST_JOBS_STORE=store, TEST_OTLP=sink.url, TEST_SPANS=str(spans))
    log = (root / "worker.log").open("wb")
    connection = Redis.from_url(redis_url)
    name = f"rq-it-{os.getpid()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "-w",
            "rq_app.Worker",
            "--url",
            redis_url,
            "--name",
            name,
            "--logging_level",
            "WARNING",
            "--with-scheduler",
            "rq-it",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            assert proc.poll() is None, (root / "worker.log").read_text()
            return any(w.name == name for w in RQWorker.all(connection=connection))

        wait_until(ready, 60, "the rq worker to register")
        yield RQ(store, Queue("rq-it", connection=connection), proc, spans, sink.url)
    finally:
        try:
            # SupervisionMixin.unsubscribe() keeps RQ's pubsub thread from waiting out 60 s
            # here (test_rq_shutdown.py). All is asserted by now: 5 s, then KILL.
            stop(proc, grace=5)
        finally:
            log.close()
            connection.close()


def test_success_is_completed_with_progress_100(rq_worker: RQ) -> None:
    """A job that tracks its items: one run, id = job id, name = the function, queue = the
    job's origin, timeout = the job's, completed, progress 100 %; its span a root span, not
    an error; one completion counted."""
    counted = rq_worker.counted("progress")
    job = rq_worker.queue.enqueue("rq_app.progress", 5, job_timeout=90)
    (run,) = rq_worker.run_of(job)
    assert run.status == "completed"
    assert run.name == "rq_app.progress"
    assert run.queue == "rq-it"
    assert run.attempt == 1
    assert run.progress == 100.0
    assert run.timeout_at is not None
    assert abs((run.timeout_at - run.started_at).total_seconds() - 90) < 1
    rq_worker.span(run)
    counted.moved({("rq_app.progress", "completed"): 1})


def test_retry_then_success_is_attempts_of_one_run(rq_worker: RQ) -> None:
    """``Retry(max=2)``, failing twice: attempts 1-2 retried with the cause, 3 completed,
    no failure counted. Three root spans, one trace each: the retried ones not errors
    (status unset, no exception event: OTel's conventions leave a retried error off the
    operation), ``error.type`` the cause; each attempt's span links to the one before."""
    counted = rq_worker.counted("flaky")
    job = rq_worker.queue.enqueue("rq_app.flaky", retry=Retry(max=2))
    runs = rq_worker.run_of(job, attempts=3)
    assert [(r.attempt, r.status, r.error_type) for r in runs] == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(rq_worker.store) as sink:
        assert sink.jobs.with_id(job.id).failed().count() == 0
    spans = [rq_worker.span(run) for run in runs]
    assert len({span["trace_id"] for span in spans}) == 3
    assert [span["links"] for span in spans] == [
        [],
        [[spans[0]["trace_id"], spans[0]["span_id"]]],
        [[spans[1]["trace_id"], spans[1]["span_id"]]],
    ]
    counted.moved({("rq_app.flaky", "retried"): 2, ("rq_app.flaky", "completed"): 1})


def test_failure_is_failed_with_the_jobs_exception_type(rq_worker: RQ) -> None:
    """An exception in the job (no retry): the run failed with that exception's own type;
    its span an error with that exception's event; one failure counted."""
    counted = rq_worker.counted("fail")
    job = rq_worker.queue.enqueue("rq_app.fail")
    (run,) = rq_worker.run_of(job)
    assert run.status == "failed"
    assert run.error_type == "rq_app.Declined"
    assert run.error_message == "card declined"
    rq_worker.span(run, status="ERROR", exception="rq_app.Declined")
    counted.moved({("rq_app.fail", "failed"): 1})


def test_returned_retry_is_retried_then_completed(rq_worker: RQ) -> None:
    """A job that returns ``Retry``: attempt 1 retried (no error), attempt 2 completed;
    neither span an error, the second linked to the first; counted as one retried, one
    completed."""
    counted = rq_worker.counted("asks_again")
    job = rq_worker.queue.enqueue("rq_app.asks_again")
    runs = rq_worker.run_of(job, attempts=2)
    assert [(r.attempt, r.status, r.error_type) for r in runs] == [
        (1, "retried", None),
        (2, "completed", None),
    ]
    first, second = (rq_worker.span(run) for run in runs)
    assert second["links"] == [[first["trace_id"], first["span_id"]]]  # the attempt before
    counted.moved({("rq_app.asks_again", "retried"): 1, ("rq_app.asks_again", "completed"): 1})


def test_stopped_job_is_cancelled_from_the_worker(rq_worker: RQ) -> None:
    """``send_stop_job_command``: RQ kills the horse; the worker closes the run
    ``cancelled`` (``StopRequested``); one cancellation counted. RQ kills the horse with
    SIGKILL: the run has no span (the horse never ended it)."""
    counted = rq_worker.counted("hang")
    job = rq_worker.queue.enqueue("rq_app.hang", job_timeout=120)

    def started() -> Any:
        job.refresh()
        return job.meta.get("horse_pid")

    wait_until(started, 30, "the work-horse to start the job")
    send_stop_job_command(rq_worker.queue.connection, job.id)
    (run,) = rq_worker.run_of(job, status="cancelled")
    assert run.error_type == "rq.exceptions.StopRequested"
    counted.moved({("rq_app.hang", "cancelled"): 1})
    span_file.no_span(rq_worker.spans, run)


def test_killed_horse_is_closed_as_failed_from_the_worker(rq_worker: RQ) -> None:
    """SIGKILL of the work-horse: the worker's main process closes the run as failed
    (``WorkHorseKilled``) within seconds, with the horse's pid, not left running; the fleet
    counts one failure and no lost run. The run has no span: the killed horse never ended
    it, and another process cannot end a span it did not start."""
    counted = rq_worker.counted("hang")
    job = rq_worker.queue.enqueue("rq_app.hang", job_timeout=120)

    def horse_pid() -> int | None:
        job.refresh()
        return job.meta.get("horse_pid")

    pid = wait_until(horse_pid, 30, "the work-horse to start the job")
    os.kill(pid, signal.SIGKILL)
    (run,) = rq_worker.run_of(job, status="failed", within=10)
    assert run.error_type == "chaperone_otel.integrations.rq.WorkHorseKilled"
    assert "signal 9" in (run.error_message or "")
    assert run.pid == pid
    assert run.attempt == 1
    counted.moved({("rq_app.hang", "failed"): 1})
    assert metrics.lost(rq_worker.metrics_url, "rq_app.hang") == 0
    span_file.no_span(rq_worker.spans, run)


def test_killed_horse_of_a_job_with_retries_left_is_retried_not_failed(rq_worker: RQ) -> None:
    """RQ retries a job whose horse died while it has retries left: the dead execution is
    closed ``retried`` with ``WorkHorseKilled`` as the cause (it was counted a failure), and
    the next attempt completes."""
    counted = rq_worker.counted("hang_once")
    job = rq_worker.queue.enqueue("rq_app.hang_once", job_timeout=120, retry=Retry(max=1))

    def horse_pid() -> int | None:
        job.refresh()
        return job.meta.get("horse_pid")

    pid = wait_until(horse_pid, 30, "the work-horse to start the job")
    os.kill(pid, signal.SIGKILL)
    runs = rq_worker.run_of(job, attempts=2, status="completed")
    assert [(r.attempt, r.status, r.error_type) for r in runs] == [
        (1, "retried", "chaperone_otel.integrations.rq.WorkHorseKilled"),
        (2, "completed", None),
    ]
    with chaperone.open_sink(rq_worker.store) as sink:
        assert sink.jobs.with_id(job.id).failed().count() == 0
    counted.moved({("rq_app.hang_once", "retried"): 1, ("rq_app.hang_once", "completed"): 1})


def test_job_timeout_is_failed_with_a_timeout_violation(rq_worker: RQ) -> None:
    """RQ's job timeout: the run failed with ``JobTimeoutException`` and a timeout
    violation (the run's timeout is the job's); its span an error with that exception's
    event; one failure counted."""
    counted = rq_worker.counted("hang")
    job = rq_worker.queue.enqueue("rq_app.hang", job_timeout=1)
    (run,) = rq_worker.run_of(job)
    assert run.status == "failed"
    assert run.error_type == "rq.timeouts.JobTimeoutException"
    assert run.health == "unhealthy"
    with chaperone.open_sink(rq_worker.store) as sink:
        violations = sink.violations_of(job.id, 1)
    assert [v.type for v in violations] == ["timeout"]
    rq_worker.span(run, status="ERROR", exception="rq.timeouts.JobTimeoutException")
    counted.moved({("rq_app.hang", "failed"): 1})
