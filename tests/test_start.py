"""``start_run()``: a run started and finished by a framework's separate callbacks."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import UserList
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from opentelemetry import trace

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._safety import internal_error_counts
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.testing import capture
from tests.logbridge import bridged_logs, lines


class _Cause(Exception):
    pass


def test_started_run_carries_the_frameworks_identity() -> None:
    """Run id, attempt, name, queue and timeout are the ones given, on the record and span."""
    with capture() as cap:
        run = chaperone.start_run(
            "tasks.add", run_id="task-1", attempt=3, queue="emails", timeout=30
        )
        assert (run.id, run.attempt, run.status) == ("task-1", 3, "running")
        run.finish()
        captured = cap.run("task-1")
        latest = captured.latest
        assert captured.name == "tasks.add"
        assert captured.status == "completed"
        assert latest[sc.ATTR_JOB_ATTEMPT] == 3
        assert latest[sc.ATTR_JOB_QUEUE] == "emails"
        assert latest[sc.ATTR_JOB_TIMEOUT] == 30.0
        (span,) = cap.spans()
        assert span.name == "tasks.add"
        assert span.attributes[sc.ATTR_JOB_RUN_ID] == "task-1"


def test_activate_makes_the_run_current_and_user_spans_nest_under_it() -> None:
    """Inside ``activate()`` the module helpers reach the run and a user span is its child;
    outside, there is no current run again (and the run is not finished by the block)."""
    with capture() as cap:
        run = chaperone.start_run("tasks.track", run_id="task-2")
        assert chaperone.current_job() is None
        with run.activate() as handle:
            assert chaperone.current_job() is handle is run.supervision
            assert chaperone.heartbeat(step="a") is True
            assert list(chaperone.track([1, 2, 3, 4])) == [1, 2, 3, 4]
            with cap.tracer_provider.get_tracer("user").start_as_current_span("inner"):
                pass
        assert chaperone.current_job() is None
        assert chaperone.heartbeat() is False
        assert run.status == "running"
        run.finish()
        captured = cap.run("task-2")
        assert captured.progress == 100.0
        spans = {s.name: s for s in cap.spans()}
        assert spans["inner"].parent.span_id == spans["tasks.track"].context.span_id
        assert spans["inner"].context.trace_id == spans["tasks.track"].context.trace_id


def test_attach_and_detach_across_two_callbacks() -> None:
    """``attach()`` in one callback and ``detach()`` in another (Celery's prerun/postrun)."""
    with capture():
        run = chaperone.start_run("tasks.two_callbacks")
        tokens = run.attach()
        assert chaperone.current_job() is run.supervision
        run.detach(tokens)
        assert chaperone.current_job() is None
        run.finish()
        assert run.status == "completed"


def test_finish_with_an_exception_is_failed_with_its_type() -> None:
    """An error without a status fails the run with the error's own type."""
    with capture() as cap:
        run = chaperone.start_run("tasks.fail", run_id="task-3")
        run.finish(KeyError("x"))
        captured = cap.run("task-3")
        assert captured.status == "failed"
        assert captured.error_type == "KeyError"
        assert captured.health == "unhealthy"


def test_retried_is_terminal_not_a_failure_with_the_cause_as_error() -> None:
    """``status="retried"``: the cause's type and message are the error, the run stays
    healthy, no failure hook runs, and a later finish cannot change it."""
    failures: list[object] = []
    with capture(on_failure=failures.append) as cap:
        run = chaperone.start_run("tasks.flaky", run_id="task-4")
        run.finish(_Cause("upstream 503"), status="retried")
        run.finish()  # idempotent: the first outcome stands
        cap.tick()
        captured = cap.run("task-4")
        assert captured.status == "retried"
        assert captured.error_type == f"{__name__}._Cause"
        assert captured.latest[sc.ATTR_ERROR_MESSAGE] == "upstream 503"
        assert captured.health == "healthy"
        assert not captured.failed
        assert failures == []


def test_finish_rejects_an_unknown_status() -> None:
    """A status outside the terminal ones is refused (the run stays running)."""
    with capture():
        run = chaperone.start_run("tasks.bad_status")
        with pytest.raises(ValueError, match="status='done'"):
            run.finish(status="done")  # type: ignore[arg-type]
        assert run.status == "running"
        run.finish()


@pytest.mark.parametrize(
    ("options", "match"),
    [({"run_id": ""}, "run_id"), ({"attempt": 0}, "attempt"), ({"queue": " "}, "queue")],
)
def test_start_run_rejects_invalid_options(options: dict[str, object], match: str) -> None:
    """Misuse raises at once, before any run starts."""
    with pytest.raises(ConfigurationError, match=match):
        chaperone.start_run("tasks.x", **options)  # type: ignore[arg-type]


def test_a_reused_run_id_is_logged_in_the_new_attempts_trace() -> None:
    """The line saying a run id was used already (recorded as the next attempt) is about
    the new attempt and carries its span, for an application bridging Python logging to
    OTel. Before, it was logged before the run's span started: with the caller's context
    (here none)."""
    with capture() as cap, bridged_logs() as exported:
        chaperone.start_run("tasks.reused", run_id="same").finish()
        again = chaperone.start_run("tasks.reused", run_id="same")
        again.finish()
        (line,) = lines(exported, "already used")
        span = cap.run("same").span
    assert again.attempt == 2
    assert span.attributes[sc.ATTR_JOB_ATTEMPT] == 2
    assert line.trace_id == span.context.trace_id != 0
    assert line.span_id == span.context.span_id


def test_a_logging_filter_that_raises_does_not_fail_the_start() -> None:
    """The reused-id line is logged inside ``start_run``: a ``logging.Filter`` on the
    ``chaperone_otel`` logger that raises is an internal error (counted, swallowed outside
    tests), and the run still starts, as attempt 2, and finishes."""

    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a broken logging filter")

    broken = Broken()
    logger = logging.getLogger("chaperone_otel")
    logger.addFilter(broken)
    try:
        before = internal_error_counts().get("log.warning", 0)
        with capture(raise_internal_errors=False) as cap:
            chaperone.start_run("tasks.filtered", run_id="filtered").finish()
            again = chaperone.start_run("tasks.filtered", run_id="filtered")
            again.finish()
            assert [r.status for r in cap.runs() if r.name == "tasks.filtered"] == ["completed"] * 2
            assert internal_error_counts().get("log.warning", 0) == before + 1
    finally:
        logger.removeFilter(broken)
    assert again.attempt == 2


def test_a_second_execution_of_an_attempt_keeps_its_attempt_and_clears_its_pending_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A framework that names each delivery's execution (a redelivered task run again by
    the same process) gets the attempt it gave, not the next one: the second execution's
    ``pending`` row and its start are one row, and the dead execution keeps its own. (A
    reused id without an execution id is still the next attempt, logged.)"""
    path = str(tmp_path / "jobs.duckdb")
    chaperone.configure(sink=path)
    first = chaperone.start_run("tasks.redelivered", run_id="task", attempt=1, execution_id="e-1")
    first.finish(KeyError("worker lost"))
    chaperone.pending_run("tasks.redelivered", run_id="task", attempt=1, execution_id="e-2")
    second = chaperone.start_run(
        "tasks.redelivered", run_id="task", attempt=1, execution_id="e-2"
    )
    second.finish()
    assert (first.attempt, second.attempt) == (1, 1)
    assert "already used" not in caplog.text
    again = chaperone.start_run("tasks.redelivered", run_id="task")  # no execution id
    again.finish()
    assert again.attempt == 2
    assert "already used" in caplog.text
    assert chaperone.flush(10)
    chaperone.shutdown()
    with chaperone.open_sink(path) as sink:
        rows = sorted(
            (j.attempt, j.execution_id == again.execution_id, j.execution_id, j.status)
            for j in sink.jobs.with_id("task").all()
        )
        assert rows == [
            (1, False, "e-1", "failed"),
            (1, False, "e-2", "completed"),
            (2, True, again.execution_id, "completed"),
        ]
        assert sink.jobs.pending().count() == 0


def test_the_supervision_handle_is_the_same_and_readable_after_the_finish() -> None:
    """``StartedRun.supervision`` is the handle ``current_job()`` gave, also once the run
    has finished (the run lets go of it then; reading it raised AttributeError)."""
    with capture():
        run = chaperone.start_run("tasks.handle", run_id="h-1")
        with run.activate():
            current = chaperone.current_job()
        assert run.supervision is current
        run.finish()
        assert run.supervision is current
        assert (run.supervision.status, run.supervision.id) == ("completed", "h-1")


@pytest.mark.parametrize("configured", [True, False])
def test_close_and_pending_arguments_are_checked_with_or_without_a_listener(
    configured: bool,
) -> None:
    """A bad ``timeout`` or ``scheduled_at`` is refused whether or not anything listens
    (before, only a configured process raised, and with raw errors)."""
    context = capture() if configured else contextlib.nullcontext()
    with context:
        for timeout in ("soon", -5, float("nan"), True):
            with pytest.raises(ConfigurationError, match="timeout"):
                chaperone.close_run("c", execution_id="e", timeout=timeout)
        naive = datetime(2026, 12, 6, 12, 0)  # naive: its zone is unknown
        for due in ("tomorrow", naive, float("inf"), 1e20):
            with pytest.raises(ConfigurationError, match="scheduled_at"):
                chaperone.pending_run("tasks.x", run_id="p", execution_id="e", scheduled_at=due)


def test_close_run_takes_durations_as_timeout_does_everywhere() -> None:
    """``timeout=`` of ``close_run`` takes what ``start_run`` takes ("2h", a timedelta), and
    0 (the limit's value unknown) still records the violation and an unhealthy run;
    ``pending_run`` takes an aware datetime."""
    with capture() as cap:
        for run_id, timeout in (("c-1", "2h"), ("c-2", timedelta(minutes=5)), ("c-3", 0.0)):
            chaperone.close_run(run_id, execution_id="e", timeout=timeout)
        due = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
        chaperone.pending_run("tasks.x", run_id="p", execution_id="e", scheduled_at=due)
    closed = {r.attributes[sc.ATTR_JOB_RUN_ID]: r.attributes for r in cap.records}
    assert closed["c-1"][sc.ATTR_LIMIT_VALUE] == 7200.0
    assert closed["c-2"][sc.ATTR_LIMIT_VALUE] == 300.0
    assert closed["c-3"][sc.ATTR_LIMIT_VALUE] == 0.0
    assert {closed[k][sc.ATTR_JOB_HEALTH] for k in ("c-1", "c-2", "c-3")} == {"unhealthy"}
    assert closed["p"][sc.ATTR_JOB_SCHEDULED_AT] == due.timestamp()


def test_detach_refuses_tokens_it_cannot_undo_and_changes_nothing() -> None:
    """Detaching twice, out of order, or in another thread is a misuse: a clear
    ``ConfigurationError``, and the current run stays as it was (before: a raw
    ``RuntimeError``, a run left current, or the other thread's current run wiped out)."""
    import threading

    with capture():
        a = chaperone.start_run("tasks.a", run_id="a")
        b = chaperone.start_run("tasks.b", run_id="b")
        a_tokens = a.attach()
        b_tokens = b.attach()
        with pytest.raises(ConfigurationError, match="not the current run"):
            a.detach(a_tokens)  # b is attached after it
        assert chaperone.current_job() is b.supervision
        b.detach(b_tokens)
        with pytest.raises(ConfigurationError, match="detached already"):
            b.detach(b_tokens)
        assert chaperone.current_job() is a.supervision

        other: list[object] = []

        def elsewhere() -> None:
            c = chaperone.start_run("tasks.c", run_id="c")
            with c.activate():
                try:
                    a.detach(a_tokens)  # a's tokens, from the main thread
                except ConfigurationError as error:
                    other.append(error)
                other.append(chaperone.current_job() is c.supervision)
            c.finish()

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(10)
        assert isinstance(other[0], ConfigurationError)
        assert other[1] is True  # the other thread's run is still current there
        a.detach(a_tokens)
        assert chaperone.current_job() is None
        for run in (a, b):
            run.finish()


def test_an_exception_leaving_activate_is_the_one_raised() -> None:
    """A block that raises and leaves its run in a state detach refuses (a run attached in
    it is still attached) raises its own exception, not the detach's."""
    with capture(raise_internal_errors=False) as cap:
        outer = chaperone.start_run("tasks.outer", run_id="o")
        inner = chaperone.start_run("tasks.inner", run_id="i")

        def block() -> None:
            with outer.activate():
                inner.attach()
                raise KeyError("the job's own")

        with pytest.raises(KeyError, match="the job's own"):
            contextvars.copy_context().run(block)  # what the block leaves stays in there
        assert cap.internal_errors().get("run.detach") == 1
        outer.finish()
        inner.finish()


@pytest.mark.parametrize(
    ("error", "status", "match"),
    [("boom", None, "expected an exception"), (KeyError("k"), "completed", "has no error")],
)
def test_finish_refuses_an_error_that_is_not_one_or_a_completed_run_with_one(
    error: object, status: str | None, match: str
) -> None:
    """Misuse, refused before anything is recorded: the run is still running after it."""
    with capture():
        run = chaperone.start_run("tasks.finished", run_id="f")
        with pytest.raises(ConfigurationError, match=match):
            run.finish(error, status=status)  # type: ignore[arg-type]
        assert run.supervision.status == "running"
        run.finish()


def test_retried_attempts_are_in_the_store_but_not_failed(tmp_path: Path) -> None:
    """In the store: two retried attempts and a completed one of one run id; ``retried()``
    selects the two, ``failed()`` and ``unhealthy()`` none."""
    path = str(tmp_path / "jobs.duckdb")
    chaperone.configure(sink=path)
    for attempt in (1, 2):
        chaperone.start_run("tasks.flaky", run_id="t", attempt=attempt).finish(
            _Cause(f"try {attempt}"), status="retried"
        )
    chaperone.start_run("tasks.flaky", run_id="t", attempt=3).finish()
    assert chaperone.flush(10)
    chaperone.shutdown()
    with chaperone.open_sink(path) as sink:
        rows = sorted((j.attempt, j.status, j.error_type) for j in sink.jobs.with_id("t").all())
        assert rows == [
            (1, "retried", f"{__name__}._Cause"),
            (2, "retried", f"{__name__}._Cause"),
            (3, "completed", None),
        ]
        assert sink.jobs.retried().count() == 2
        assert sink.jobs.failed().count() == 0
        assert sink.jobs.unhealthy().count() == 0


def test_timed_out_records_a_timeout_violation_even_before_the_deadline() -> None:
    """A framework's clock (Celery's soft time limit) may fire a moment before the run's own
    deadline: finish(timed_out=True) still records the timeout violation."""
    with capture() as cap:
        run = chaperone.start_run("celery.soft", timeout=300)
        run.finish(TimeoutError("soft time limit (300 s) exceeded"), timed_out=True)
    got = cap.run(run.id)
    assert got.status == "failed"
    assert [v[sc.ATTR_LIMIT_TYPE] for v in got.violations] == ["timeout"]
    assert got.violations[0][sc.ATTR_LIMIT_VALUE] == 300.0
    plain = chaperone.start_run("celery.soft", timeout=300)
    with capture() as cap:
        plain.finish(TimeoutError("x"))
    assert cap.run(plain.id).violations == []


def test_repeated_options_reuse_their_spec_and_an_equal_invalid_value_is_still_refused() -> None:
    """``start_run`` reuses the spec made for options it has seen (a framework's task starts
    with the same options every time), keyed by each value and its type: ``attempt=True``
    equals ``attempt=1`` and hashes alike, yet is refused after an ``attempt=1`` run, and a
    run with other options gets its own (here a timeout of 20 s, not the cached 10)."""
    with capture() as cap:
        first = chaperone.start_run("tasks.cached", run_id="c-1", attempt=1, timeout=10)
        second = chaperone.start_run("tasks.cached", run_id="c-2", attempt=1, timeout=10)
        assert first._run.static is second._run.static  # one spec, its Static cached on it
        with pytest.raises(ConfigurationError, match="attempt"):
            chaperone.start_run("tasks.cached", run_id="c-3", attempt=True, timeout=10)
        with pytest.raises(ConfigurationError, match="timeout"):
            chaperone.start_run("tasks.cached", run_id="c-4", attempt=1, timeout="ten")
        other = chaperone.start_run("tasks.cached", run_id="c-5", attempt=1, timeout=20.0)
        for run in (first, second, other):
            run.finish()
        assert cap.run("c-2").latest[sc.ATTR_JOB_TIMEOUT] == 10.0
        assert cap.run("c-5").latest[sc.ATTR_JOB_TIMEOUT] == 20.0
        assert {r.id for r in cap.runs()} == {"c-1", "c-2", "c-5"}


def test_the_next_attempts_span_links_to_the_one_before_by_its_traceparent() -> None:
    """``traceparent`` is the run span's W3C traceparent; a run started with
    ``links=[that]`` has a span link to that span (another trace: attempts of a framework
    without context propagation are root spans). A ``SpanContext`` and a ``Link`` (with its
    attributes) are linked too, in the order given."""
    with capture() as cap:
        first = chaperone.start_run("tasks.flaky", run_id="task-9", attempt=1)
        first.finish(_Cause("again"), status="retried")
        other = cap.tracer_provider.get_tracer("user").start_span("elsewhere")
        other.end()
        second = chaperone.start_run(
            "tasks.flaky",
            run_id="task-9",
            attempt=2,
            links=[
                first.traceparent,
                other.get_span_context(),
                trace.Link(other.get_span_context(), {"why": "batch"}),
            ],
        )
        second.finish()
        spans = {s.attributes.get(sc.ATTR_JOB_ATTEMPT): s for s in cap.spans() if s.attributes}
    first_span, second_span = spans[1], spans[2]
    context = first_span.context
    assert first.traceparent == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    assert second_span.context.trace_id != context.trace_id  # a root span of its own
    assert [(link.context.trace_id, link.context.span_id) for link in second_span.links] == [
        (context.trace_id, context.span_id),
        (other.get_span_context().trace_id, other.get_span_context().span_id),
        (other.get_span_context().trace_id, other.get_span_context().span_id),
    ]
    assert second_span.links[0].context.is_remote
    assert dict(second_span.links[2].attributes or {}) == {"why": "batch"}
    assert not first_span.links


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # an unknown version
    ],
)
def test_a_stored_traceparent_that_is_not_one_is_skipped_and_the_run_starts(
    stored: str,
) -> None:
    """A framework's stored value is data: a malformed traceparent gives no link, and the
    run and its span start as usual."""
    with capture() as cap:
        run = chaperone.start_run("tasks.linked", run_id="task-10", links=[stored])
        run.finish()
        (span,) = cap.spans()
        assert span.name == "tasks.linked"
        assert not span.links
        assert cap.run("task-10").status == "completed"


_CONTEXT = trace.SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=False)


@pytest.mark.parametrize(
    "links",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "",
        [1],
        0,
        _CONTEXT,
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    ],
)
def test_links_must_be_a_list_of_traceparents_contexts_or_links(links: object) -> None:
    """A bare string (it would be read letter by letter), an empty one, a bare span
    context, something that is not a sequence (even a falsy one) or an item of another
    type is a misuse: refused, saying what to give."""
    with capture(), pytest.raises(ConfigurationError, match="expected a list of W3C traceparent"):
        chaperone.start_run("tasks.linked", links=links)  # type: ignore[arg-type]


def test_links_may_be_any_sequence_or_none() -> None:
    """Any sequence of links is taken (a ``UserList``, a tuple), in its order; None is
    no links, as in OTel's ``start_span``."""
    other = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with capture() as cap:
        run = chaperone.start_run("tasks.linked", run_id="task-12", links=UserList([other]))
        run.finish()
        chaperone.start_run("tasks.unlinked", run_id="task-13", links=None).finish()
        span, unlinked = cap.spans()
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (int("a" * 32, 16), int("b" * 16, 16))
    ]
    assert unlinked.name == "tasks.unlinked"
    assert not unlinked.links


def test_traceparent_is_none_without_a_span() -> None:
    """With OTel's no-op tracer provider (no SDK installed), there is no span to link to:
    ``traceparent`` is None."""
    run = chaperone.start_run(
        "tasks.untraced", run_id="task-11", tracer_provider=trace.NoOpTracerProvider()
    )
    try:
        assert run.traceparent is None
    finally:
        run.finish()
