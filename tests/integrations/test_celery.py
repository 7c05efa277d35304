"""``integrations.celery`` in process: Celery's signals drive runs (eager tasks, no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from opentelemetry.trace import StatusCode

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel.integrations.celery import instrument, uninstrument
from chaperone_otel.testing import Capture


class PaymentDeclined(Exception):
    pass


@pytest.fixture
def app() -> Iterator[Celery]:
    celery_app = Celery("eager", broker="memory://", backend="cache+memory://")
    celery_app.conf.task_always_eager = True
    instrument(celery_app)
    instrument(celery_app)  # idempotent: one run per task, not two
    try:
        yield celery_app
    finally:
        uninstrument(celery_app)


def test_task_is_a_run_with_the_task_id_and_is_current_in_its_body(
    app: Celery, cap: Capture
) -> None:
    """Run id = task id, name = task name, attempt 1, time_limit = timeout; inside the body
    ``current_job()`` is the run, ``track()`` reports progress and user spans nest under it."""
    seen: dict[str, Any] = {}

    @app.task(name="shop.pack", time_limit=90)
    def pack(n: int) -> int:
        job = chaperone.current_job()
        seen["run_id"] = job.id if job else None
        with cap.tracer_provider.get_tracer("user").start_as_current_span("user.step"):
            pass
        return sum(chaperone.track(range(n)))

    result = pack.apply(args=(4,))
    assert result.get() == 6
    assert chaperone.current_job() is None
    run = cap.run(result.id)
    assert seen["run_id"] == result.id
    assert run.name == "shop.pack"
    assert run.status == "completed"
    assert run.progress == 100.0
    assert run.latest[sc.ATTR_JOB_ATTEMPT] == 1
    assert run.latest[sc.ATTR_JOB_TIMEOUT] == 90.0
    spans = {s.name: s for s in cap.spans()}
    assert spans["user.step"].parent.span_id == spans["shop.pack"].context.span_id


@pytest.mark.parametrize("otel_first", [True, False])
def test_with_the_otel_celery_instrumentation_in_either_order_no_span_stays_current(
    cap: Capture, otel_first: bool
) -> None:
    """The run span is a child of OTel's ``run/<task>`` span, and after the task neither is
    current: whichever instrumentation was set up first (``opentelemetry-instrument celery
    worker`` sets up OTel's before the app module's ``instrument(app)``). Before, with OTel's
    first, its span stayed current and the next task's spans nested under it."""
    from celery import signals
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    celery_app = Celery("otel", broker="memory://", backend="cache+memory://")
    celery_app.conf.task_always_eager = True
    otel = CeleryInstrumentor()
    if otel_first:
        otel.instrument(tracer_provider=cap.tracer_provider)
        instrument(celery_app)
    else:
        instrument(celery_app)
        otel.instrument(tracer_provider=cap.tracer_provider)
    try:
        signals.worker_ready.send(sender=None)  # as a solo or threads worker does at its start

        @celery_app.task(shared=False, name="shop.ping")
        def ping() -> int:
            return 1

        first, second = ping.apply(), ping.apply()
        assert not trace.get_current_span().get_span_context().is_valid
        assert chaperone.current_job() is None
    finally:
        otel.uninstrument()
        uninstrument(celery_app)
    spans = cap.spans()
    outer = {s.context.span_id: s for s in spans if s.name == "run/shop.ping"}
    runs = [s for s in spans if s.name == "shop.ping"]
    assert len(outer) == 2
    assert len(runs) == 2
    for outer_span in outer.values():
        assert outer_span.parent is None  # the second task's is not under the first's
    for run_span in runs:
        assert run_span.parent is not None
        assert run_span.parent.span_id in outer
    assert {cap.run(first.id).status, cap.run(second.id).status} == {"completed"}


def test_task_exception_fails_the_run_with_the_same_type(app: Celery, cap: Capture) -> None:
    """An exception raised by the task is the run's error type; the status is failed."""

    @app.task(name="shop.charge")
    def charge() -> None:
        raise PaymentDeclined("card 4242")

    result = charge.apply()
    assert result.failed()
    run = cap.run(result.id)
    assert run.status == "failed"
    assert run.error_type == f"{__name__}.PaymentDeclined"


def test_retry_ends_the_attempt_retried_with_its_cause(app: Celery, cap: Capture) -> None:
    """``self.retry(exc=...)``: the attempt is retried (not failed) with the cause as error,
    and the next attempt of the same run id is attempt 2."""

    @app.task(name="shop.flaky", bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=PaymentDeclined("gateway 503"))
        return "ok"

    result = flaky.apply()
    runs = sorted(
        (r.latest[sc.ATTR_JOB_ATTEMPT], r.status, r.error_type)
        for r in cap.runs()
        if r.name == "shop.flaky"
    )
    assert runs == [(1, "retried", f"{__name__}.PaymentDeclined"), (2, "completed", None)]
    assert {r.id for r in cap.runs()} == {result.id}


def test_include_selects_tasks_and_uninstrument_stops(cap: Capture) -> None:
    """Only tasks the predicate accepts are runs; after ``uninstrument`` none is."""
    celery_app = Celery("select", broker="memory://", backend="cache+memory://")
    celery_app.conf.task_always_eager = True
    instrument(celery_app, include=lambda task: task.name.startswith("kept."))

    @celery_app.task(name="kept.one")
    def kept() -> None:
        pass

    @celery_app.task(name="other.one")
    def other() -> None:
        pass

    try:
        kept.apply()
        other.apply()
    finally:
        uninstrument(celery_app)
    kept.apply()
    assert [r.name for r in cap.runs()] == ["kept.one"]


def test_ignore_is_cancelled_with_the_exception(app: Celery, cap: Capture) -> None:
    """A task raising ``Ignore`` ends cancelled (not failed), the ``Ignore`` as its reason."""
    from celery.exceptions import Ignore

    @app.task(name="shop.skip")
    def skip() -> None:
        raise Ignore("duplicate order")

    result = skip.apply()
    run = cap.run(result.id)
    assert run.status == "cancelled"
    assert run.error_type == "celery.exceptions.Ignore"


def test_a_replaced_task_is_completed_and_a_plain_ignore_stays_cancelled(cap: Capture) -> None:
    """``Task.replace()`` in a worker sends the replacement under the task's own id, then
    raises ``Ignore``: the replaced run is ``completed`` (was ``cancelled``, counted as a
    cancellation for every replaced task) and links nothing wrong; an ``Ignore`` raised
    by a task that sent nothing under its id stays ``cancelled``. Run through Celery's own
    (non-eager) tracer, as a worker does, with the message sent to an in-memory broker."""
    from celery.app.trace import build_tracer
    from celery.exceptions import Ignore

    celery_app = Celery("replacing", broker="memory://", backend="cache+memory://")
    instrument(celery_app)
    try:

        @celery_app.task(name="shop.after", shared=False)
        def after() -> None:
            pass

        @celery_app.task(name="shop.handover", bind=True, shared=False)
        def handover(self: Any) -> None:
            raise self.replace(after.si())

        @celery_app.task(name="shop.drop", shared=False)
        def drop() -> None:
            raise Ignore("nothing to do")

        for task, task_id in ((handover, "replaced-1"), (drop, "ignored-1")):
            trace = build_tracer(task.name, task, app=celery_app, eager=False)
            trace(task_id, (), {}, request={"id": task_id, "delivery_info": {}})
    finally:
        uninstrument(celery_app)
    replaced, ignored = cap.run("replaced-1"), cap.run("ignored-1")
    assert (replaced.status, replaced.error_type) == ("completed", None)
    assert (ignored.status, ignored.error_type) == ("cancelled", "celery.exceptions.Ignore")


def test_an_expired_task_is_cancelled_as_expired(app: Celery, cap: Capture) -> None:
    """A task past its ``expires`` is revoked by Celery before it starts: one cancelled
    run whose error says it expired (it said "revoked")."""
    from celery import signals
    from celery.app.task import Context

    @app.task(name="shop.stale")
    def stale() -> None:
        pass

    request = Context(id="expired-1", delivery_info={"routing_key": "orders"})
    signals.task_revoked.send(sender=stale, request=request, terminated=False, expired=True)
    run = cap.run("expired-1")
    assert (run.status, run.error_type) == ("cancelled", "celery.exceptions.TaskRevokedError")
    assert run.latest[sc.ATTR_ERROR_MESSAGE] == "expired before it started: expired-1"


def test_revoked_before_start_is_one_cancelled_run(app: Celery, cap: Capture) -> None:
    """``task_revoked`` for a task that never started records one cancelled run under its id,
    with its span; a revocation that terminated a running task records nothing here (its
    child's run)."""
    from celery import signals
    from celery.app.task import Context

    @app.task(name="shop.late")
    def late() -> None:
        pass

    request = Context(id="revoked-1", retries=1, delivery_info={"routing_key": "orders"})
    signals.task_revoked.send(sender=late, request=request, terminated=False, expired=False)
    signals.task_revoked.send(
        sender=late, request=Context(id="terminated-1"), terminated=True, expired=False
    )
    (run,) = cap.runs()
    assert (run.id, run.name, run.status) == ("revoked-1", "shop.late", "cancelled")
    assert run.latest[sc.ATTR_JOB_ATTEMPT] == 2
    assert run.latest[sc.ATTR_JOB_QUEUE] == "orders"
    assert run.error_type == "celery.exceptions.TaskRevokedError"
    # Its span: one, under the task's name, with the run's identity and the cancellation
    # as an error status naming the revocation (nothing ran, so no exception event).
    (span,) = cap.spans()
    assert span.name == "shop.late"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "cancelled: revoked before it started: revoked-1"
    attributes = dict(span.attributes)
    assert attributes[sc.ATTR_JOB_RUN_ID] == "revoked-1"
    assert attributes[sc.ATTR_JOB_ATTEMPT] == 2
    assert attributes[sc.ATTR_JOB_QUEUE] == "orders"
    assert attributes[sc.ATTR_JOB_STATUS] == "cancelled"
    assert attributes[sc.ATTR_ERROR_TYPE] == "celery.exceptions.TaskRevokedError"
    assert attributes[sc.ATTR_JOB_EXECUTION_ID] == run.latest[sc.ATTR_JOB_EXECUTION_ID]
