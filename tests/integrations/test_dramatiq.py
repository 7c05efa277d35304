"""``integrations.dramatiq`` in process: Dramatiq's StubBroker and an in-process Worker."""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Retries, TimeLimit

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.integrations.dramatiq import Supervision, WorkerShutdown, instrument
from chaperone_otel.testing import Capture
from tests.processes import run_python


class Declined(Exception):
    pass


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    stub = StubBroker()
    instrument(stub)
    instrument(stub)  # idempotent: one middleware, one run per message
    stub.emit_after("process_boot")
    try:
        yield stub
    finally:
        stub.close()


def _process(broker: StubBroker, *messages: Any) -> None:
    """Run ``messages`` to the end on a real Dramatiq worker in this process."""
    # worker_timeout: how long its threads wait for a message, so also what stop() waits for
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        for message in messages:
            broker.join(message.queue_name, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_instrument_puts_the_middleware_first_once(broker: StubBroker) -> None:
    """First in the list, so its ``after`` hooks see what Retries decided; added once."""
    assert isinstance(broker.middleware[0], Supervision)
    assert sum(isinstance(m, Supervision) for m in broker.middleware) == 1


def test_message_is_a_run_current_in_the_actor_with_its_options(
    broker: StubBroker, cap: Capture
) -> None:
    """Run id = message id, name = actor, attempt 1, queue, timeout = time limit; the
    actor option ``supervision=`` reaches the run; the run is current in the actor and
    spans the actor opens nest under the run span."""
    seen: dict[str, Any] = {}

    @dramatiq.actor(
        broker=broker,
        queue_name="orders",
        time_limit=30_000,
        supervision={"stall_timeout": 45, "attributes": {"team": "billing"}},
    )
    def pack(n: int) -> None:
        job = chaperone.current_job()
        seen["run_id"] = job.id if job else None
        with cap.tracer_provider.get_tracer("user").start_as_current_span("user.step"):
            pass
        for _ in chaperone.track(range(n)):
            pass

    message = pack.send(4)
    _process(broker, message)
    run = cap.run(message.message_id)
    assert seen["run_id"] == message.message_id
    assert (run.name, run.status, run.progress) == ("pack", "completed", 100.0)
    assert run.latest[sc.ATTR_JOB_ATTEMPT] == 1
    assert run.latest[sc.ATTR_JOB_QUEUE] == "orders"
    assert run.latest[sc.ATTR_JOB_TIMEOUT] == 30.0
    assert run.latest[sc.ATTR_JOB_STALL_TIMEOUT] == 45.0
    assert run.latest[sc.ATTR_USER_PREFIX + "team"] == "billing"
    spans = {s.name: s for s in cap.spans()}
    assert spans["user.step"].parent.span_id == spans["pack"].context.span_id


def test_retries_are_attempts_retried_then_failed_when_spent(
    broker: StubBroker, cap: Capture
) -> None:
    """Each retry the Retries middleware schedules ends its attempt ``retried`` with the
    cause; the last attempt (retries spent) is ``failed`` with the same type."""

    @dramatiq.actor(broker=broker, max_retries=1, min_backoff=1, max_backoff=1)
    def charge() -> None:
        raise Declined("card 4242")

    message = charge.send()
    _process(broker, message)
    deadline = time.monotonic() + 10
    while len(cap.runs()) < 2 and time.monotonic() < deadline:  # the delayed retry
        _process(broker, message)
    runs = sorted((r.latest[sc.ATTR_JOB_ATTEMPT], r.status, r.error_type) for r in cap.runs())
    assert runs == [(1, "retried", f"{__name__}.Declined"), (2, "failed", f"{__name__}.Declined")]
    assert {r.id for r in cap.runs()} == {message.message_id}


def test_two_deliveries_of_one_message_id_at_once_each_finish_their_own_run(
    broker: StubBroker, cap: Capture
) -> None:
    """Two deliveries of one message id (a redelivery, ids the application chose) running
    at once on two worker threads: each finishes its own run with its own outcome (the
    second replaced the first's open run: the first thread finished the other's run with
    its outcome and the second run stayed ``running`` for ever)."""
    from chaperone_otel._runtime import runtime

    both_started = threading.Barrier(2, timeout=10)
    attempts: dict[bool, int] = {}

    @dramatiq.actor(broker=broker, max_retries=0)
    def work(fail: bool) -> None:
        job = chaperone.current_job(required=True)
        attempts[fail] = job.attempt
        both_started.wait()
        if fail:
            raise Declined("first to finish")
        deadline = time.monotonic() + 10  # still running while the failing delivery ends
        while not any(r.status == "failed" for r in cap.runs()) and time.monotonic() < deadline:
            time.sleep(0.01)

    failing = work.message(fail=True)
    twin = failing.copy(kwargs={"fail": False})
    assert twin.message_id == failing.message_id
    broker.enqueue(failing)
    broker.enqueue(twin)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        broker.join(failing.queue_name, timeout=20_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert sorted(attempts.values()) == [1, 2]  # two runs of one id: the runtime's attempts
    status = {r.latest[sc.ATTR_JOB_ATTEMPT]: r.status for r in cap.runs()}
    assert status == {attempts[True]: "failed", attempts[False]: "completed"}
    assert runtime().live_runs() == []


def test_a_failure_after_the_start_still_finishes_the_run(
    broker: StubBroker, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should keeping the attempt's traceparent with the message fail (telemetry, counted),
    the run the middleware started is still finished and no longer current or live."""
    from chaperone_otel._runtime import runtime
    from chaperone_otel._start import StartedRun

    def broken(self: StartedRun) -> str:
        raise RuntimeError("no traceparent")

    monkeypatch.setattr(StartedRun, "traceparent", property(broken))
    seen: list[str | None] = []

    @dramatiq.actor(broker=broker, max_retries=0)
    def task() -> None:
        job = chaperone.current_job()
        seen.append(job.id if job else None)

    message = task.send()
    _process(broker, message)
    assert seen == [message.message_id]
    assert cap.run(message.message_id).status == "completed"
    assert runtime().live_runs() == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"include": "billing"}, "include='billing': expected a function"),
        ({"heartbeat_interval": "often"}, "heartbeat_interval='often' is not a duration"),
        ({"flush_timeout": -1}, "flush_timeout=-1: expected seconds"),
        ({"lease": "sometimes"}, "lease='sometimes': choose one of heartbeat, liveness"),
    ],
)
def test_instrument_refuses_invalid_options_at_once(options: dict[str, Any], match: str) -> None:
    """Misuse raises at ``instrument()`` (and at the middleware's construction), before any
    message: it was accepted, and each message then ran unsupervised."""
    stub = StubBroker()
    try:
        with pytest.raises(ConfigurationError, match=match):
            instrument(stub, **options)
        assert not any(isinstance(m, Supervision) for m in stub.middleware)
        with pytest.raises(ConfigurationError, match=match):
            Supervision(**options)
    finally:
        stub.close()


def test_runs_are_alive_while_the_worker_is_unless_an_actor_promises_heartbeats(
    broker: StubBroker, cap: Capture
) -> None:
    """The liveness lease by default (an actor that never heartbeats is not stuck, as with
    Celery: every actor is supervised, few heartbeat); ``supervision={"lease": ...}`` or
    ``instrument(broker, lease=...)`` asks for heartbeats."""

    @dramatiq.actor(broker=broker)
    def quiet() -> None:
        pass

    @dramatiq.actor(broker=broker, supervision={"lease": "heartbeat", "heartbeat_interval": 30})
    def promised() -> None:
        pass

    first, second = quiet.send(), promised.send()
    _process(broker, first, second)
    assert cap.run(first.message_id).latest[sc.ATTR_JOB_LEASE] == "liveness"
    promised_run = cap.run(second.message_id).latest
    assert promised_run[sc.ATTR_JOB_LEASE] == "heartbeat"
    assert promised_run[sc.ATTR_HEARTBEAT_INTERVAL] == 30.0


def test_a_broker_instrumented_for_heartbeats_gives_every_actor_that_lease(cap: Capture) -> None:
    stub = StubBroker()
    instrument(stub, lease="heartbeat")
    stub.emit_after("process_boot")
    try:

        @dramatiq.actor(broker=stub)
        def quiet() -> None:
            pass

        @dramatiq.actor(broker=stub, supervision={"lease": "liveness"})
        def alive() -> None:
            pass

        first, second = quiet.send(), alive.send()
        _process(stub, first, second)
        assert cap.run(first.message_id).latest[sc.ATTR_JOB_LEASE] == "heartbeat"
        assert cap.run(second.message_id).latest[sc.ATTR_JOB_LEASE] == "liveness"
    finally:
        stub.close()


def test_instrument_again_with_other_options_raises(broker: StubBroker) -> None:
    """A second ``instrument()`` with other options raises, naming them (it returned the
    first middleware, whose options silently won); the same options are still idempotent."""
    first = broker.middleware[0]
    with pytest.raises(ConfigurationError, match=r"heartbeat_interval=300 \(kept: None\)"):
        instrument(broker, heartbeat_interval=300)
    with pytest.raises(ConfigurationError, match="called already with other options: include="):
        instrument(broker, include=lambda actor: True)
    with pytest.raises(ConfigurationError, match=r"lease='heartbeat' \(kept: 'liveness'\)"):
        instrument(broker, lease="heartbeat")
    assert instrument(broker) is first
    assert sum(isinstance(m, Supervision) for m in broker.middleware) == 1


def test_without_retries_middleware_an_exception_is_a_failure(cap: Capture) -> None:
    """No Retries middleware: nothing sends the message again, so the attempt failed."""
    stub = StubBroker(middleware=[TimeLimit()])
    instrument(stub)
    try:

        @dramatiq.actor(broker=stub)
        def charge() -> None:
            raise Declined("card 4242")

        message = charge.send()
        _process(stub, message)
    finally:
        stub.close()
    assert not any(isinstance(m, Retries) for m in stub.middleware)
    assert cap.run(message.message_id).status == "failed"


def test_time_limit_is_retried_while_retries_are_left_then_failed(cap: Capture) -> None:
    """``TimeLimitExceeded`` is an exception like any other for ``Retries``: ``retried``
    while it sends the message again, ``failed`` when retries are spent; a ``timeout``
    violation on each attempt (the run's timeout is the time limit)."""
    stub = StubBroker(middleware=[TimeLimit(interval=20), Retries(min_backoff=1, max_backoff=1)])
    instrument(stub)
    stub.emit_after("process_boot")  # TimeLimit's timer thread
    try:

        @dramatiq.actor(broker=stub, time_limit=200, max_retries=1)
        def slow() -> None:
            deadline = time.monotonic() + 10  # interrupted by TimeLimit long before
            while time.monotonic() < deadline:
                time.sleep(0.01)

        message = slow.send()
        _process(stub, message)
        deadline = time.monotonic() + 10
        while len(cap.runs()) < 2 and time.monotonic() < deadline:  # the delayed retry
            _process(stub, message)
    finally:
        stub.close()
    exceeded = "dramatiq.middleware.time_limit.TimeLimitExceeded"
    runs = sorted(cap.runs(), key=lambda r: r.latest[sc.ATTR_JOB_ATTEMPT])
    assert [(r.latest[sc.ATTR_JOB_ATTEMPT], r.status, r.error_type) for r in runs] == [
        (1, "retried", exceeded),
        (2, "failed", exceeded),
    ]
    for run in runs:
        assert run.latest[sc.ATTR_JOB_TIMEOUT] == 0.2
        violations = run.events(sc.EVENT_JOB_VIOLATION)
        assert [v.attributes[sc.ATTR_LIMIT_TYPE] for v in violations] == ["timeout"]


def test_skipped_message_is_cancelled(cap: Capture) -> None:
    """AgeLimit skips a message too old to run: its run ends cancelled with the reason."""
    stub = StubBroker(middleware=[AgeLimit(max_age=1)])
    instrument(stub)
    ran: list[int] = []
    try:

        @dramatiq.actor(broker=stub)
        def stale() -> None:
            ran.append(1)

        message = stale.message()
        message = message.copy(message_timestamp=message.message_timestamp - 60_000)
        stub.enqueue(message)
        _process(stub, message)
    finally:
        stub.close()
    run = cap.run(message.message_id)
    assert ran == []
    assert run.status == "cancelled"
    assert run.error_type == "dramatiq.middleware.middleware.SkipMessage"


def test_supervision_false_and_include_leave_actors_unsupervised(cap: Capture) -> None:
    """``supervision=False`` on an actor, or an ``include`` that rejects it: no run."""
    stub = StubBroker()
    instrument(stub, include=lambda actor: actor.actor_name != "excluded")
    try:

        @dramatiq.actor(broker=stub, supervision=False)
        def off() -> None:
            pass

        @dramatiq.actor(broker=stub)
        def excluded() -> None:
            pass

        @dramatiq.actor(broker=stub)
        def kept() -> None:
            pass

        messages = [off.send(), excluded.send(), kept.send()]
        _process(stub, *messages)
    finally:
        stub.close()
    assert [r.name for r in cap.runs()] == ["kept"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout": "10 minutes"}, "timeout='10 minutes' is not a duration"),
        ({"heartbeat_interval": 0}, "heartbeat_interval must be a positive duration, got 0"),
        ({"stall_timeout": True}, "stall_timeout must be seconds or a timedelta, not a bool"),
        ({"attributes": {"team": ["a"]}}, r"attributes\['team'\]: keys must be str"),
        ({"attributes": ["team"]}, r"attributes=\['team'\]: expected a dict"),
        ({"timeuot": 5, "stall_timeout": 9}, "unknown key 'timeuot'"),
        ({"lease": "beats"}, "lease='beats': choose 'heartbeat'"),
        ("often", "not a dict"),
    ],
)
def test_a_wrong_supervision_option_raises_at_declaration(
    broker: StubBroker, cap: Capture, options: Any, match: str
) -> None:
    """A wrong key or value of ``supervision=`` raises where the actor is declared, naming
    the actor, the option and what it takes (Dramatiq logged it, declared the actor, and a
    wrong value then made each of its messages run unsupervised)."""
    where = re.escape(f"actor 'misused': supervision={options!r}: ")
    with pytest.raises(ConfigurationError, match=where + match) as raised:

        @dramatiq.actor(broker=broker, actor_name="misused", supervision=options)
        def misused() -> None:
            pass

    assert "supervision= takes False or a dict with keys attributes, heartbeat" in str(raised)
    assert "misused" not in broker.actors


def test_a_wrong_message_supervision_option_is_logged_and_the_run_kept(
    broker: StubBroker, cap: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    """A message's own ``supervision=`` (``send_with_options``) with a misspelled key or a
    wrong value: the job runs, its run is supervised with the valid options, and the
    mistake is logged once per actor (the key was dropped silently; a wrong value left
    the message unsupervised)."""

    @dramatiq.actor(broker=broker, max_retries=0)
    def other() -> None:
        pass

    with caplog.at_level("WARNING", logger="chaperone_otel"):
        typo = [other.send_with_options(supervision={"stall_timout": 60, "timeout": 7})]
        typo.append(other.send_with_options(supervision={"stall_timout": 60}))
        value = other.send_with_options(supervision={"timeout": "10 minutes", "stall_timeout": 9})
        _process(broker, *typo, value)
    runs = {r.id: r for r in cap.runs()}
    assert [runs[m.message_id].status for m in [*typo, value]] == ["completed"] * 3
    assert runs[typo[0].message_id].latest[sc.ATTR_JOB_TIMEOUT] == 7.0
    assert runs[value.message_id].latest[sc.ATTR_JOB_STALL_TIMEOUT] == 9.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "chaperone_otel"]
    assert len(warnings) == 2, warnings  # the typo once, though two messages had it
    # In the order the worker took the messages (Dramatiq 1.17's stub worker differs).
    (typo_said,) = [w for w in warnings if "stall_timout" in w]
    (value_said,) = [w for w in warnings if "10 minutes" in w]
    assert "actor 'other'" in typo_said
    assert "unknown key 'stall_timout'; ignored" in typo_said
    assert "timeout='10 minutes' is not a duration" in value_said
    assert "takes False or a dict with keys attributes, heartbeat_interval" in value_said


def test_runs_open_at_worker_shutdown_end_cancelled(broker: StubBroker, cap: Capture) -> None:
    """A run still open when the worker shuts down (its thread did not stop in time) ends
    ``cancelled`` with ``WorkerShutdown``, not left running."""

    @dramatiq.actor(broker=broker)
    def long() -> None:
        pass

    message = dramatiq.broker.MessageProxy(long.message())
    middleware = broker.middleware[0]
    # in a context of its own: the worker thread that would detach the run never returns
    contextvars.copy_context().run(middleware.before_process_message, broker, message)
    assert cap.run(message.message_id).status == "running"
    middleware.after_worker_shutdown(broker, None)
    run = cap.run(message.message_id)
    assert run.status == "cancelled"
    assert run.error_type == f"{WorkerShutdown.__module__}.WorkerShutdown"


_OWN_CHILD = r"""
import multiprocessing, sys

def child(path):
    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    import chaperone_otel as chaperone
    from chaperone_otel.integrations.dramatiq import instrument

    chaperone.configure(sink=path)
    broker = StubBroker()
    instrument(broker)

    @dramatiq.actor(broker=broker)
    def job(n):
        return n

    for n in (1, 2):  # a Worker started and stopped twice in this process
        message = job.send(n)
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        broker.join(message.queue_name, timeout=10_000)
        worker.join()
        worker.stop()
    chaperone.shutdown()
    broker.close()

if __name__ == "__main__":
    process = multiprocessing.get_context("fork").Process(target=child, args=(sys.argv[1],))
    process.start()
    process.join(60)
    print(process.exitcode)
"""


def test_an_application_child_that_stops_a_worker_keeps_supervising(tmp_path: Path) -> None:
    """A ``multiprocessing`` child of the application's own that runs Dramatiq workers in
    process: stopping one only flushes (chaperone was shut down there too, and the next
    worker's runs were never stored). Only Dramatiq's CLI worker processes shut down."""
    store = tmp_path / "jobs.duckdb"
    assert run_python(_OWN_CHILD, store, timeout=90).stdout.split() == ["0"]
    with chaperone.open_sink(str(store)) as sink:
        assert sorted(j.status for j in sink.jobs.named("job").all()) == ["completed"] * 2
