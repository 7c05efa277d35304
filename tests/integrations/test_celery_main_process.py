"""``integrations.celery`` in the worker's main process: Celery's own ``Request`` handles a
delivery's end (a lost child, a hard time limit) as the worker does, driven in process with
Celery's ``TaskMessage`` (no broker, no pool); plus the options ``instrument()`` refuses.

The real-worker scenarios (SIGKILLed children, redelivery) are in ``test_celery_worker.py``;
these are the paths a real worker reaches only by timing (a child lost after it stored its
result, two deliveries of one task id at once) or by a setting those tests do not use
(``retry_on_worker_lost``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery, signals
from celery.app.trace import build_tracer
from celery.canvas import Signature
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.utils.imports import symbol_by_name

import chaperone_otel.integrations.celery as integration
from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.integrations.celery import instrument, uninstrument
from chaperone_otel.testing import Capture
from tests.integrations.celery_workers import CELERY_RELEASE


@pytest.fixture
def app() -> Iterator[Celery]:
    celery_app = Celery("main", broker="memory://", backend="cache+memory://")
    instrument(celery_app)
    try:
        yield celery_app
    finally:
        uninstrument(celery_app)


def _delivery(app: Celery, task: Any, task_id: str = "t-1", retries: int = 0) -> Any:
    """A delivery as the worker's main process has it: the task's Request class (the
    integration's subclass once ``worker_init`` ran), received (``task_received``), its
    child started."""
    message = TaskMessage(task.name, id=task_id, retries=retries)
    message.delivery_info = {"routing_key": "celery"}
    request = symbol_by_name(task.Request)(message, app=app, task=task)
    signals.task_received.send(sender=None, request=request)
    request.time_start = 1.0
    request.worker_pid = 4242
    return request


def _lost(request: Any, exc: BaseException) -> None:
    """The pool reports the child dead under ``request`` (billiard's error callback)."""
    try:
        raise exc
    except BaseException:
        request.on_failure(ExceptionInfo())


def _closed(cap: Capture) -> list[tuple[str, str, str | None, str]]:
    return sorted(
        (
            str(r.attributes[sc.ATTR_JOB_RUN_ID]),
            str(r.attributes[sc.ATTR_JOB_STATUS]),
            r.attributes.get(sc.ATTR_ERROR_TYPE),  # type: ignore[misc]
            str(r.attributes[sc.ATTR_JOB_EXECUTION_ID]),
        )
        for r in cap.records
        if r.event_name == sc.EVENT_JOB_CLOSED
    )


def test_a_child_lost_under_a_task_retried_on_worker_lost_is_closed_retried(
    app: Celery, cap: Capture
) -> None:
    """``retry_on_worker_lost``: Celery retries the task (``task_retry``, no
    ``task_failure``); the dead execution is closed ``retried`` with ``WorkerLostError``,
    not left running until it is judged lost. Without the setting it is ``failed``, as it
    is before Celery 5.7, which has no such setting (it fails the task)."""

    @app.task(
        shared=False, name="mainproc.lost", acks_late=True, retry_on_worker_lost=True, max_retries=3
    )
    def lost() -> None:
        pass

    @app.task(shared=False, name="mainproc.plain")
    def plain() -> None:
        pass

    signals.worker_init.send(sender=None)
    retried = _delivery(app, lost, "t-retried")
    failed = _delivery(app, plain, "t-failed")
    _lost(retried, WorkerLostError("killed"))
    _lost(failed, WorkerLostError("killed"))
    lost_error = "billiard.exceptions.WorkerLostError"
    lost_retried = "retried" if CELERY_RELEASE >= (5, 7) else "failed"
    assert _closed(cap) == [
        ("t-failed", "failed", lost_error, failed.request_dict["chaperone_execution_id"]),
        ("t-retried", lost_retried, lost_error, retried.request_dict["chaperone_execution_id"]),
    ]
    assert integration._instrumented[id(app)].known == {}


@pytest.mark.parametrize("acks_late", [True, False])
def test_a_child_lost_after_it_stored_success_is_closed_for_every_task(
    app: Celery, cap: Capture, acks_late: bool
) -> None:
    """Celery reports a child lost after it stored ``SUCCESS`` as a success, with no
    signal; its run is closed all the same (before: only for ``acks_late`` +
    ``reject_on_worker_lost`` tasks, so a plain task's run stayed running)."""

    @app.task(
        shared=False, name="mainproc.stored", acks_late=acks_late, reject_on_worker_lost=acks_late
    )
    def stored() -> None:
        pass

    signals.worker_init.send(sender=None)
    request = _delivery(app, stored)
    request._success_was_stored = lambda: {"status": "SUCCESS", "result": None}
    _lost(request, WorkerLostError("lost in a task_postrun receiver"))
    assert [(run_id, status) for run_id, status, _, _ in _closed(cap)] == [("t-1", "failed")]


@pytest.mark.parametrize("end", ["hard time limit", "child lost"])
def test_a_child_killed_closes_its_own_delivery_not_a_newer_one_of_the_task_id(
    app: Celery, cap: Capture, end: str
) -> None:
    """Two deliveries of one task id in one worker (the broker redelivered it while it ran):
    the first one's hard time limit, or its child's death, closes the first execution
    (once); the second stays open."""

    @app.task(shared=False, name="mainproc.long", acks_late=True, time_limit=10)
    def long() -> None:
        pass

    signals.worker_init.send(sender=None)
    first = _delivery(app, long, "same", retries=2)
    second = _delivery(app, long, "same", retries=2)
    if end == "hard time limit":
        # billiard's, in its order: the job's error callback (Request.on_failure with
        # TimeLimitExceeded: task_failure, without the request in place before Celery
        # 5.7), then the timeout callback (on_timeout: task_failure again from 5.7).
        _lost(first, TimeLimitExceeded(10))
        first.on_timeout(soft=False, timeout=10)
        expected = "billiard.exceptions.TimeLimitExceeded"
    else:  # no reject_on_worker_lost: Celery fails the task (task_failure)
        _lost(first, WorkerLostError("killed"))
        expected = "billiard.exceptions.WorkerLostError"
    ((_, status, error, execution),) = _closed(cap)
    assert (status, error) == ("failed", expected)
    assert execution == first.request_dict["chaperone_execution_id"]
    (closed,) = [r for r in cap.records if r.event_name == sc.EVENT_JOB_CLOSED]
    assert (closed.attributes[sc.ATTR_JOB_ATTEMPT], closed.attributes[sc.ATTR_JOB_QUEUE]) == (
        3,
        "celery",
    )
    known = integration._instrumented[id(app)].known
    assert known["same"][0] == second.request_dict["chaperone_execution_id"]


def test_a_hard_time_limit_is_closed_with_another_app_instrumented_first(
    app: Celery, cap: Capture
) -> None:
    """Every instrumented app's receiver hears every ``task_failure``: another app's, run
    first, neither closes the run nor keeps the owning app's from closing it."""
    other = Celery("other", broker="memory://", backend="cache+memory://")
    uninstrument(app)
    instrument(other)
    instrument(app)  # after the other app: its receivers run second
    try:

        @app.task(shared=False, name="mainproc.limited", time_limit=10)
        def limited() -> None:
            pass

        signals.worker_init.send(sender=None)
        request = _delivery(app, limited)
        _lost(request, TimeLimitExceeded(10))  # billiard's order, as above
        request.on_timeout(soft=False, timeout=10)
        assert [(run_id, status) for run_id, status, _, _ in _closed(cap)] == [("t-1", "failed")]
    finally:
        uninstrument(other)


def test_known_deliveries_keep_the_newest_and_forget_ended_ones(
    app: Celery, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main process's memory of deliveries is bounded by recency: a redelivered id is
    the newest (it was evicted first before), and a delivery that failed is forgotten."""

    @app.task(shared=False, name="mainproc.kept")
    def kept() -> None:
        pass

    signals.worker_init.send(sender=None)
    monkeypatch.setattr(integration, "_KNOWN", 3)
    for task_id, retries in (("A", 0), ("B", 0), ("C", 0), ("A", 1), ("D", 0)):
        _delivery(app, kept, task_id, retries)
    known = integration._instrumented[id(app)].known
    assert {k: v[1] for k, v in known.items()} == {"C": 1, "A": 2, "D": 1}
    _lost(_delivery(app, kept, "E"), ValueError("an ordinary failure"))
    assert "E" not in known
    assert _closed(cap) == []


def test_closed_executions_are_remembered_once_each_and_bounded(
    app: Celery, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executions the main process closed are kept by the instrumentation (not on
    Celery's objects), the newest few: a repeated ``task_failure`` for a kept one closes
    nothing, and the oldest are let go."""

    @app.task(shared=False, name="mainproc.limited_many", time_limit=10)
    def limited_many() -> None:
        pass

    signals.worker_init.send(sender=None)
    monkeypatch.setattr(integration, "_CLOSED_KEPT", 2)
    requests = [_delivery(app, limited_many, f"L{i}") for i in range(3)]
    for request in requests:
        _lost(request, TimeLimitExceeded(10))
        request.on_timeout(soft=False, timeout=10)  # Celery 5.7: task_failure again
    assert [(run_id, status) for run_id, status, _, _ in _closed(cap)] == [
        ("L0", "failed"),
        ("L1", "failed"),
        ("L2", "failed"),
    ]
    closed = integration._instrumented[id(app)].closed
    assert list(closed) == [r.request_dict["chaperone_execution_id"] for r in requests[1:]]
    assert not any(hasattr(r, "_chaperone_otel_closed") for r in requests)


def test_reject_without_requeue_is_a_failure(app: Celery, cap: Capture) -> None:
    """``Reject(requeue=False)`` (here raised by a ``retry()`` whose message could not be
    sent) is Celery's FAILURE: the task never runs again. The run is ``failed`` with the
    send's error, not ``cancelled``."""

    @app.task(shared=False, name="mainproc.flaky", bind=True, max_retries=3)
    def flaky(self: Any) -> None:
        raise self.retry(exc=ConnectionError("db down"), countdown=5)

    def broker_down(*_: Any, **__: Any) -> None:
        raise OSError("broker unreachable")

    tracer = build_tracer(flaky.name, flaky, eager=False, app=app)
    original = Signature.apply_async
    Signature.apply_async = broker_down  # type: ignore[method-assign,assignment]
    try:
        tracer("job-1", (), {}, {"id": "job-1", "retries": 0, "delivery_info": {}})
    finally:
        Signature.apply_async = original  # type: ignore[method-assign]
    run = cap.run("job-1")
    assert run.status == "failed"
    assert run.error_type == "OSError"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"include": 5}, "include=5: expected a function"),
        ({"heartbeat_interval": "banana"}, "heartbeat_interval='banana' is not a duration"),
        ({"heartbeat_interval": -5}, "heartbeat_interval must be a positive duration"),
        ({"lease": "bogus"}, "lease='bogus': choose one of"),
        ({"flush_timeout": "soon"}, "flush_timeout='soon': expected seconds"),
        ({"flush_timeout": float("nan")}, "flush_timeout=nan: expected seconds"),
    ],
)
def test_instrument_refuses_invalid_options_at_once(options: dict[str, Any], match: str) -> None:
    """Each of these was accepted, then every task ran unsupervised (or a child's records
    were never flushed), each time only counted as an internal error."""
    celery_app = Celery("misused", broker="memory://")
    with pytest.raises(ConfigurationError, match=match):
        instrument(celery_app, **options)
    assert id(celery_app) not in integration._instrumented


def test_a_second_instrument_with_other_options_raises(app: Celery) -> None:
    """The same options again do nothing; other ones raise, saying how to change them."""
    instrument(app)
    with pytest.raises(ConfigurationError, match=r"uninstrument\(app\) first"):
        instrument(app, lease="heartbeat")
    assert integration._instrumented[id(app)].lease == "liveness"


def test_a_tasks_invalid_options_are_reported_when_the_worker_starts(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's own ``chaperone_lease`` or ``chaperone_heartbeat_interval`` that is not
    valid is named in the worker's log at its start (Celery logs a receiver's error)."""

    @app.task(shared=False, name="mainproc.bad", chaperone_lease="sometimes")
    def bad() -> None:
        pass

    @app.task(shared=False, name="mainproc.good", chaperone_heartbeat_interval="30s")
    def good() -> None:
        pass

    signals.worker_init.send(sender=None)
    errors = [r.getMessage() for r in caplog.records if "invalid supervision" in r.getMessage()]
    assert len(errors) == 1
    assert "task 'mainproc.bad': chaperone_lease='sometimes'" in errors[0]
    assert "mainproc.good" not in errors[0]
