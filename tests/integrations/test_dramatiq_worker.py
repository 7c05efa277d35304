"""``integrations.dramatiq`` with a real ``dramatiq`` worker (1 process, 2 threads) and
Debian's redis-server.

One worker per module, whose app module (written to tmp_path) configures the store at
import in the worker process, which owns it. Messages are sent by name from a broker of the
test's own. Each scenario is asserted on three surfaces: the store (a DuckDB file), the
run's span (every span the worker process ends, from a file it appends to) and the worker
process's own ``/metrics`` (its actors run in its threads, so its counters count them).
Dramatiq has no OTel instrumentation that carries a trace context in the message here: each
run span is a root span, each attempt a trace of its own (the attempts share the run id
attribute). Every wait is bounded; the worker and the server are stopped by PID.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

import chaperone_otel as chaperone
from chaperone_otel.sink._store import read_sidecar
from tests.integrations import span_file
from tests.integrations.metrics import Outcomes
from tests.integrations.workers import free_port, stop, worker_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

_QUEUE = "dq-it"

_APP = textwrap.dedent(
    f"""
    import os
    import time

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.dramatiq import instrument
    from tests.integrations import span_file

    chaperone.configure(
        sink=os.environ["TEST_JOBS_STORE"], prometheus_port=int(os.environ["TEST_METRICS_PORT"])
    )
    span_file.install(os.environ["TEST_SPANS"])
    broker = RedisBroker(url=os.environ["TEST_BROKER"])
    instrument(broker)
    dramatiq.set_broker(broker)


    class Declined(Exception):
        pass


    @dramatiq.actor(queue_name="{_QUEUE}", max_retries=0, time_limit=90_000)
    def progress(n):
        for _ in chaperone.track(range(n)):
            pass


    @dramatiq.actor(queue_name="{_QUEUE}", max_retries=2, min_backoff=10, max_backoff=20)
    def flaky():
        attempt = chaperone.current_job().attempt  # the run is current in the actor
        if attempt < 3:
            raise ConnectionError(f"try {{attempt}}")


    @dramatiq.actor(queue_name="{_QUEUE}", max_retries=0)
    def fail():
        raise Declined("card declined")


    @dramatiq.actor(queue_name="{_QUEUE}", max_retries=0, time_limit=1_000)
    def slow():
        while True:
            time.sleep(0.02)


    @dramatiq.actor(queue_name="{_QUEUE}", max_retries=0, supervision=False)
    def unsupervised(key):
        broker.client.set(key, "ran")
    """
)


class Dramatiq:
    def __init__(
        self,
        store: str,
        broker: RedisBroker,
        proc: subprocess.Popen[Any],
        spans: Path,
        metrics_port: int,
    ) -> None:
        self.store = store
        self.broker = broker
        self.proc = proc
        self.spans = spans
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def counted(self, *names: str) -> Outcomes:
        """The worker process's finished-runs counter of ``names``, taken now."""
        return Outcomes(self.metrics_url, names, fleet=False)

    def span(self, run: Any, **expected: Any) -> dict[str, Any]:
        """The run's span, a root span, as ``expected`` says."""
        return span_file.run_span(self.spans, run, parent=None, **expected)

    def send(self, actor: str, *args: Any) -> dramatiq.Message[Any]:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=_QUEUE, actor_name=actor, args=args, kwargs={}, options={}
        )
        return self.broker.enqueue(message)

    def runs(self, message_id: str) -> list[Any]:
        with chaperone.open_sink(self.store) as sink:
            return sorted(sink.jobs.with_id(message_id).all(), key=lambda j: j.attempt)

    def run_of(self, message: dramatiq.Message[Any], *, attempts: int = 1) -> list[Any]:
        """The message's runs once ``attempts`` are in the store and every one is terminal."""

        def stored() -> Any:
            assert self.proc.poll() is None, "the dramatiq worker exited"
            rows = self.runs(message.message_id)
            # Every attempt ended: the last one's records may arrive before an earlier one's.
            done = len(rows) == attempts and all(
                r.status not in ("pending", "running") for r in rows
            )
            return rows if done else None

        return list(wait_until(stored, 30, f"{attempts} run(s) of {message.message_id}"))


@contextlib.contextmanager
def running_worker(redis_url: str, root: Path) -> Iterator[Dramatiq]:
    """``dramatiq dramatiq_app -p 1 -t 2`` in ``root``, stopped by PID (TERM, then KILL)."""
    (root / "dramatiq_app.py").write_text(_APP)
    store = str(root / "jobs.duckdb")
    spans = root / "spans.jsonl"
    port = free_port()
    env = worker_env(
        root,
        TEST_JOBS_STORE=store,
        TEST_BROKER=redis_url,
        TEST_SPANS=str(spans),
        TEST_METRICS_PORT=str(port),
    )
    log_path = root / "worker.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "dramatiq_app",
            "--processes",
            "1",
            "--threads",
            "2",
            "--queues",
            _QUEUE,
            "--worker-shutdown-timeout",
            "5000",
            "--log-file",
            str(log_path),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = RedisBroker(url=redis_url, middleware=[])
    broker.declare_queue(_QUEUE)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text() if log_path.exists() else ""
            return log_path.exists() and "ready for action" in log_path.read_text()

        wait_until(ready, 60, "the dramatiq worker process to boot")
        yield Dramatiq(store, broker, proc, spans, port)
    finally:
        try:
            stop(proc, grace=30)
        finally:
            broker.close()


@pytest.fixture(scope="module")
def dramatiq_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dramatiq]:
    with running_worker(redis_url, tmp_path_factory.mktemp("dramatiq")) as worker:
        yield worker


def test_a_worker_process_that_stops_closes_the_store_it_owns(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM: the worker process (``multiprocessing`` ends it with ``os._exit``, so no
    ``atexit``) shuts chaperone down after its last run: its records are stored, the owner's
    sidecar is gone (it was left naming a dead process) and the file is free."""
    with running_worker(redis_url, tmp_path) as worker:
        message = worker.send("progress", 3)
        (run,) = worker.run_of(message)
        assert read_sidecar(worker.store) is not None  # the worker process owns the store
        stop(worker.proc, grace=30)
        assert worker.proc.returncode == 0
        assert read_sidecar(worker.store) is None
        assert not Path(worker.store + ".owner.json").exists()
        with chaperone.open_sink(worker.store, read_only=False) as sink:  # not held
            assert sink.jobs.with_id(message.message_id).first().status == "completed"
    assert run.status == "completed"


def test_success_is_completed_with_progress_100(dramatiq_worker: Dramatiq) -> None:
    """An actor that tracks its items: one run, id = message id, name = actor, queue,
    timeout = the actor's time limit, completed, progress 100 %; its span a root span, not
    an error; one completion counted."""
    counted = dramatiq_worker.counted("progress")
    message = dramatiq_worker.send("progress", 5)
    (run,) = dramatiq_worker.run_of(message)
    assert run.status == "completed"
    assert run.name == "progress"
    assert run.queue == _QUEUE
    assert run.attempt == 1
    assert run.progress == 100.0
    assert run.timeout_at is not None
    assert abs((run.timeout_at - run.started_at).total_seconds() - 90) < 1
    dramatiq_worker.span(run)
    counted.moved({("progress", "completed"): 1})


def test_retries_then_success_are_attempts_of_one_run(dramatiq_worker: Dramatiq) -> None:
    """``max_retries=2``, failing twice: attempts 1-2 retried with the cause (the
    ``Retries`` middleware sent the message again), 3 completed, no failure counted. Three
    root spans, one trace each, the retried ones not errors (status unset, no exception
    event), ``error.type`` the cause; each attempt's span links to the one before."""
    counted = dramatiq_worker.counted("flaky")
    message = dramatiq_worker.send("flaky")
    runs = dramatiq_worker.run_of(message, attempts=3)
    assert [(r.attempt, r.status, r.error_type) for r in runs] == [
        (1, "retried", "ConnectionError"),
        (2, "retried", "ConnectionError"),
        (3, "completed", None),
    ]
    with chaperone.open_sink(dramatiq_worker.store) as sink:
        assert sink.jobs.with_id(message.message_id).failed().count() == 0
    spans = [dramatiq_worker.span(run) for run in runs]
    assert len({span["trace_id"] for span in spans}) == 3
    assert [span["links"] for span in spans] == [
        [],
        [[spans[0]["trace_id"], spans[0]["span_id"]]],
        [[spans[1]["trace_id"], spans[1]["span_id"]]],
    ]
    counted.moved({("flaky", "retried"): 2, ("flaky", "completed"): 1})


def test_failure_is_failed_with_the_actors_exception_type(dramatiq_worker: Dramatiq) -> None:
    """An exception with no retry left: failed with the exception's own type; its span an
    error with that exception's event; one failure counted."""
    counted = dramatiq_worker.counted("fail")
    message = dramatiq_worker.send("fail")
    (run,) = dramatiq_worker.run_of(message)
    assert run.status == "failed"
    assert run.error_type == "dramatiq_app.Declined"
    assert run.error_message == "card declined"
    dramatiq_worker.span(run, status="ERROR", exception="dramatiq_app.Declined")
    counted.moved({("fail", "failed"): 1})


def test_time_limit_is_failed_with_a_timeout_violation(dramatiq_worker: Dramatiq) -> None:
    """The ``TimeLimit`` middleware interrupts the actor: failed, ``TimeLimitExceeded``,
    with a timeout violation (the run's timeout is the time limit); its span an error with
    that exception's event; one failure counted."""
    counted = dramatiq_worker.counted("slow")
    message = dramatiq_worker.send("slow")
    (run,) = dramatiq_worker.run_of(message)
    assert run.status == "failed"
    assert run.error_type == "dramatiq.middleware.time_limit.TimeLimitExceeded"
    assert run.health == "unhealthy"
    with chaperone.open_sink(dramatiq_worker.store) as sink:
        violations = sink.violations_of(message.message_id, 1)
    assert [v.type for v in violations] == ["timeout"]
    exception = "dramatiq.middleware.time_limit.TimeLimitExceeded"
    dramatiq_worker.span(run, status="ERROR", exception=exception)
    counted.moved({("slow", "failed"): 1})


def test_supervision_false_is_not_a_run(dramatiq_worker: Dramatiq) -> None:
    """``supervision=False`` on the actor: it ran (it says so in redis), and no run was
    recorded (checked once a supervised message sent after it ran was recorded): no span,
    nothing counted."""
    counted = dramatiq_worker.counted("unsupervised")
    key = "dq-it:unsupervised-ran"
    skipped = dramatiq_worker.send("unsupervised", key)
    wait_until(lambda: dramatiq_worker.broker.client.get(key), 30, "the unsupervised actor")
    after = dramatiq_worker.send("progress", 1)
    dramatiq_worker.run_of(after)
    assert dramatiq_worker.runs(skipped.message_id) == []
    assert "unsupervised" not in {s["name"] for s in span_file.read(dramatiq_worker.spans)}
    assert counted.counts() == counted.before
