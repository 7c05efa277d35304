"""Runs started and finished by a task framework's callbacks: :func:`start_run`.

``@supervised`` and ``with supervised(...)`` own a run from start to end in one call. A task
framework's hooks do not: Celery's ``task_prerun`` starts the task, its body runs, and
``task_postrun`` (or ``task_retry``, ``task_failure``) ends it, each a separate callback.
:func:`start_run` starts a run with the framework's own identity (run id = task id, attempt,
queue, timeout) and returns a :class:`StartedRun`, which the integration makes current
around the task's body (:meth:`StartedRun.activate`, or :meth:`~StartedRun.attach` and
:meth:`~StartedRun.detach` across two callbacks) and finishes with the outcome the framework
reports, including ``retried``::

    run = chaperone.start_run("billing.charge", run_id=task_id, attempt=retries + 1)
    with run.activate():            # current_job(), heartbeat(), track(); spans nest under it
        charge(customer)
    run.finish()                    # or finish(exc), or finish(cause, status="retried")

.. versionadded:: 0.1
"""

from __future__ import annotations

import time
import types
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from . import semconv as sc
from ._config import get_config
from ._current import current_run
from ._events import AttributeValue, LifecycleRecord, publish, receivers
from ._lifecycle import (
    Tokens,
    _error_type,
    _safe_str,
    _safe_traceback,
    activate,
    deactivate,
    finish_run,
    still_current,
)
from ._lifecycle import start_run as _start
from ._otel._spans import LinkTarget, check_links, traceparent
from ._run import Run, Supervision
from ._safety import handle_internal_errors, internal_error
from ._spec import Lease, Spec, make_spec, moment, overrun_limit, require_attempt, require_id
from .exceptions import ConfigurationError

FinishStatus = Literal["completed", "failed", "cancelled", "retried"]
_FINISH_STATUSES: Final = ("completed", "failed", "cancelled", "retried")


class StartedRun:
    """A run started by :func:`start_run`: make it current, then finish it, from any callback.

    .. versionadded:: 0.1
    """

    __slots__ = ("_attached", "_handle", "_run")

    def __init__(self, run: Run) -> None:
        self._run = run
        self._handle = run.handle  # the user's: the run lets go of it when it finishes
        self._attached: list[Tokens] = []  # attach()'s tokens not detached yet

    @property
    def supervision(self) -> Supervision:
        """The run's handle (what ``current_job()`` returns while it is current), the same
        object before and after the finish."""
        return self._handle

    @property
    def id(self) -> str:
        """The run id."""
        return self._run.id

    @property
    def attempt(self) -> int:
        """The attempt number. A reused ``(id, attempt)`` in this process is the next one,
        unless the start named its own ``execution_id`` (a second execution of the attempt,
        a row of its own)."""
        return self._run.attempt

    @property
    def execution_id(self) -> str:
        """This start's own id: a second start of the same ``(id, attempt)`` (a redelivered
        task) is another execution, stored as a row of its own."""
        return self._run.execution_id

    @property
    def status(self) -> str:
        """``running`` until finished, then the outcome."""
        return self._run.status

    @property
    def traceparent(self) -> str | None:
        """The run span's W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``), for the
        framework to keep with the job so that the next attempt's span links to this one
        (``start_run(links=[...])``); None when no span was started."""
        return traceparent(self._run.span)

    def attach(self) -> Tokens:
        """Make the run current in the calling context (``current_job()``, ``heartbeat()``,
        ``track()``) and its span the current OTel span; undo with :meth:`detach`.

        Returns:
            The tokens :meth:`detach` needs, in the same thread and context.
        """
        tokens = activate(self._run)
        self._attached.append(tokens)
        return tokens

    def detach(self, tokens: Tokens) -> None:
        """Undo :meth:`attach` (the context's previous run and span are current again).

        When the run's span is no longer the current OTel context, a layer around the run
        has restored its own already (the OTel Celery instrumentation's ``task_postrun``,
        connected before the integration's, detaches its ``run/<task>`` span first): that
        context is left as it is, rather than putting back the span that layer just ended.

        Raises:
            ConfigurationError: ``tokens`` are not from this run's :meth:`attach`, or were
                detached already; or the run is not the current one here (another thread or
                context than the one that attached it, or a run attached after it is still
                attached: detach that one first). Nothing is changed then.
        """
        if not any(attached is tokens for attached in self._attached):
            raise ConfigurationError(
                f"detach(): these tokens are not from an attach() of run {self.id!r} still "
                "attached (detached already, or another run's)"
            )
        if current_run.get() is not self._handle:
            raise ConfigurationError(
                f"detach(): run {self.id!r} is not the current run here: detach it in the "
                "thread and context that attached it, after the runs attached since"
            )
        self._attached = [attached for attached in self._attached if attached is not tokens]
        token, otel_token = tokens
        if otel_token is not None and not still_current(self._run):
            otel_token = None
        deactivate((token, otel_token))

    def activate(self) -> _Active:
        """A context manager: the run is current inside the block (see :meth:`attach`).

        It does not finish the run: an exception leaving the block is for the framework to
        report through :meth:`finish`.
        """
        return _Active(self)

    def finish(
        self,
        error: BaseException | None = None,
        *,
        status: FinishStatus | None = None,
        timed_out: bool = False,
    ) -> None:
        """End the run with its outcome; a second call does nothing.

        Args:
            error: the exception that ended it (for ``retried``, the retry's cause).
            status: the outcome; by default ``completed`` without ``error`` (or with a
                ``SystemExit`` of code 0 or None), ``cancelled`` for a cancellation
                (``KeyboardInterrupt``, ``GeneratorExit``, asyncio's ``CancelledError``, a
                ``JobLimitExceeded`` of a ``cancel`` limit policy), otherwise ``failed``
                (a ``SystemExit`` of another code too). ``retried`` is a terminal status that is not
                a failure: the framework runs the task again as a new attempt. A
                ``GeneratorExit`` (a generator closed early) records no error.
            timed_out: the framework ended it for running past its time limit (Celery's
                soft limit): a ``timeout`` violation is recorded, even when the framework's
                clock fired a moment before the run's own deadline.

        Raises:
            ValueError: an unknown ``status``.
            ConfigurationError: ``error`` is not an exception, or is given with
                ``status="completed"``.
        """
        if status is not None and status not in _FINISH_STATUSES:
            raise ValueError(f"status={status!r}: choose one of {', '.join(_FINISH_STATUSES)}")
        if error is not None and not isinstance(error, BaseException):
            raise ConfigurationError(f"finish(error={error!r}): expected an exception or None")
        if error is not None and status == "completed":
            raise ConfigurationError(
                "finish(error, status='completed'): a completed run has no error; give "
                "status='failed' (or 'cancelled', 'retried'), or no error"
            )
        run = self._run
        if timed_out:
            with run.lock:
                if run.finished_at is None:
                    try:
                        due = run.clock() - 1e-6  # judged past it when it finishes, just after
                    except Exception as exc:  # a failing clock: the finish still happens
                        internal_error("run.clock", exc)
                        due = time.time()
                    if run.timeout_at is None or run.timeout_at > due:
                        run.timeout_at = due
        finish_run(run, error, status)

    def __repr__(self) -> str:
        run = self._run
        return f"<StartedRun {run.name!r} id={run.id} attempt={run.attempt} status={run.status}>"


class _Active:
    __slots__ = ("_run", "_tokens")

    def __init__(self, run: StartedRun) -> None:
        self._run = run
        self._tokens: Tokens | None = None

    def __enter__(self) -> Supervision:
        self._tokens = self._run.attach()
        return self._run.supervision

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        tokens, self._tokens = self._tokens, None
        if tokens is not None:
            if exc is None:
                self._run.detach(tokens)
            else:  # the block's exception is what leaves it, unchanged
                with handle_internal_errors("run.detach"):
                    self._run.detach(tokens)
        return False


def start_run(
    name: str,
    *,
    run_id: str | None = None,
    attempt: int | None = None,
    execution_id: str | None = None,
    queue: str | None = None,
    timeout: Any = None,
    heartbeat_interval: Any = None,
    stall_timeout: Any = None,
    lease: Lease | None = None,
    attributes: Mapping[str, Any] | None = None,
    tracer_provider: Any = None,
    schedule: Any = None,
    scheduled_for: Any = None,
    links: Sequence[LinkTarget] | None = (),
) -> StartedRun:
    """Start a run now, under a framework's identity, without making it current.

    The span starts as a child of the OTel span current here (a framework's consumer span,
    when its instrumentation made one current).

    Args:
        name: the job name (bounded: a metric label), e.g. the task name.
        run_id: the run id (default: a new uuid4), e.g. the task id.
        attempt: the attempt number, from 1 (default 1), e.g. retries + 1.
        execution_id: this start's id (default: a new uuid4). Give one only when another
            process must name this execution later (:func:`close_run`), e.g. an id the
            framework's parent process made for this delivery.
        queue: the queue (default ``"default"``).
        timeout: max runtime (seconds, ``timedelta`` or ``"2h"``).
        heartbeat_interval: the lease in seconds (default from ``configure()``).
        stall_timeout: flat progress this long while alive means stalled.
        lease: ``"heartbeat"`` (default: the code must heartbeat within
            ``heartbeat_interval``) or ``"liveness"`` (the process being alive is enough,
            for tasks that never call ``heartbeat()``; stuck only past ``timeout``).
        attributes: static attributes (``chaperone.job.attr.<key>``).
        tracer_provider: a provider to use instead of the global one.
        schedule: the schedule the run belongs to (a name, or a ``Schedule``).
        scheduled_for: the due time of the slot it serves (Unix seconds or an aware
            datetime), when the scheduler knows it (Celery beat does).
        links: spans the run's span links to, e.g. the span of the attempt before (its
            :attr:`StartedRun.traceparent`, kept with the job by the framework): W3C
            ``traceparent`` strings, OTel ``SpanContext``s or ``Link``s. A string that is
            not a valid ``traceparent`` is skipped (it comes from stored job data). Any
            sequence (a list, a tuple); None means none.

    Returns:
        The started run; make it current with :meth:`StartedRun.activate` and end it with
        :meth:`StartedRun.finish`.

    Raises:
        ConfigurationError: an invalid option.

    .. versionadded:: 0.1
    """
    if run_id is not None:
        require_id(run_id, "run_id")
    if execution_id is not None:
        require_id(execution_id, "execution_id")
    span_links = check_links(links) if links is not None and links != () else ()
    key: tuple[object, ...] | None = None
    if not attributes and tracer_provider is None and scheduled_for is None:
        # The options of a framework's task repeat from run to run: the spec validated for
        # them (and the per-configuration values cached on it, _spec.Static) is reused,
        # ~8 us a run less. Each value is keyed with its type, so 1, 1.0 and True (equal,
        # with equal hashes) never share an entry: an invalid value is always validated.
        key = (
            name,
            type(queue),
            queue,
            type(attempt),
            attempt,
            type(heartbeat_interval),
            heartbeat_interval,
            type(timeout),
            timeout,
            type(stall_timeout),
            stall_timeout,
            type(lease),
            lease,
            type(schedule),
            schedule,
            type(name),
        )
        try:
            spec = _specs.get(key)
        except TypeError:  # an unhashable value (a custom duration type): not cached
            key, spec = None, None
        if spec is not None:
            return StartedRun(
                _start(
                    spec,
                    run_id=run_id,
                    attempt=attempt,
                    execution_id=execution_id,
                    links=span_links,
                )
            )
    spec = make_spec(
        name,
        queue=queue,
        attempt=attempt,
        heartbeat_interval=heartbeat_interval,
        timeout=timeout,
        stall_timeout=stall_timeout,
        attributes=attributes,
        tracer_provider=tracer_provider,
        schedule=schedule,
        scheduled_for=scheduled_for,
        lease=lease,
    )
    if spec.name is None:
        raise ConfigurationError("start_run() needs a job name")
    if key is not None:
        if len(_specs) >= _SPECS_KEPT:  # task names and options are few; a runaway is not
            _specs.clear()
        _specs[key] = spec
    return StartedRun(
        _start(spec, run_id=run_id, attempt=attempt, execution_id=execution_id, links=span_links)
    )


def stored_links(value: object) -> list[str]:
    """What a framework kept with a job as its last attempt's ``traceparent`` (a job's meta,
    a message's option or header), as ``start_run(links=...)``: nothing when it is missing
    or not a string (stored data is not the caller's misuse)."""
    return [value] if isinstance(value, str) else []


_SPECS_KEPT: Final = 256
_specs: dict[tuple[object, ...], Spec] = {}
""":func:`start_run`'s options (each with its type) -> the spec made and validated for them."""


def close_run(
    run_id: str,
    *,
    execution_id: str,
    attempt: int = 1,
    status: FinishStatus = "failed",
    error: BaseException | None = None,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
) -> None:
    """Record the outcome of a run another process started: the parent that saw its child
    die, time out or be revoked (Celery's main process on ``WorkerLostError``).

    Publishes one ``chaperone.job.closed`` record, which the sink (embedded, or ``sink
    serve`` over OTLP) applies like a finish: a running run ends with ``status``, and what
    the run's own records left empty (end time, error) is filled in. The closer's outcome
    wins over a finish the run wrote itself (the parent knows why the child ended; the
    child saw only a ``SystemExit``), and the run's later records only fill in what is
    empty. Without ``configure()`` (no listener) nothing is recorded, but the arguments are
    checked all the same.

    Args:
        run_id: the run id. execution_id: the execution (:attr:`StartedRun.execution_id`),
            which the parent must know: give the child the id it starts with.
        attempt: the attempt number.
        status: the outcome (default ``failed``).
        error: what ended it (its type, message and traceback are recorded).
        name, queue: the job's name and queue, for a run whose own records never arrived.
        timeout: the time limit it ran past, when that is why it was closed (seconds, a
            ``timedelta`` or ``"2h"``; 0 when the limit's value is unknown): a ``timeout``
            violation is recorded too, and the run is unhealthy.

    Raises:
        ConfigurationError: an empty run or execution id, an attempt below 1, or a
            ``timeout`` that is not a duration.
        ValueError: an unknown ``status``.

    .. versionadded:: 0.1
    """
    record = closed_record(
        run_id,
        execution_id=execution_id,
        attempt=attempt,
        status=status,
        error=error,
        name=name,
        queue=queue,
        timeout=timeout,
        now=None,
    )
    to = receivers(sc.EVENT_JOB_CLOSED)
    if to:
        publish(record, to)


def closed_record(
    run_id: str,
    *,
    execution_id: str,
    attempt: int,
    status: FinishStatus,
    error: BaseException | None,
    name: str | None,
    queue: str | None,
    timeout: float | None,
    now: float | None,
    finished_at: float | None = None,
    stored: bool = False,
) -> LifecycleRecord:
    """The ``chaperone.job.closed`` record :func:`close_run` publishes (and a writable
    sink's ``close_run`` writes): checked as :func:`close_run` documents; ``now`` is the
    close's time (default: the configured clock's now), ``finished_at`` the run's end
    (default: ``now``). ``stored``: a run read from a store, whose execution id may be
    ``''`` (stored before execution ids existed): the record then carries none, as its
    own records did."""
    require_id(run_id, "run_id")
    if not (stored and execution_id == ""):
        require_id(execution_id, "execution_id")
    require_attempt(attempt)
    if status not in _FINISH_STATUSES:
        raise ValueError(f"status={status!r}: choose one of {', '.join(_FINISH_STATUSES)}")
    limit = overrun_limit(timeout)
    now = _now() if now is None else now
    a: dict[str, AttributeValue] = {
        sc.ATTR_JOB_RUN_ID: run_id,
        sc.ATTR_JOB_ATTEMPT: attempt,
        sc.ATTR_JOB_EXECUTION_ID: execution_id,
        sc.ATTR_JOB_STATUS: status,
        sc.ATTR_JOB_HEALTH: "unhealthy" if status == "failed" or limit is not None else "healthy",
        sc.ATTR_JOB_STUCK: False,
        sc.ATTR_JOB_FINISHED_AT: now if finished_at is None else finished_at,
    }
    if not execution_id:
        del a[sc.ATTR_JOB_EXECUTION_ID]
    if name:
        a[sc.ATTR_JOB_NAME] = name
    if queue:
        a[sc.ATTR_JOB_QUEUE] = queue
    if error is not None:
        a[sc.ATTR_ERROR_TYPE] = _error_type(error)
        a[sc.ATTR_ERROR_MESSAGE] = _safe_str(error)
        if status == "failed":
            a[sc.ATTR_ERROR_STACKTRACE] = _safe_traceback(error)
    if limit is not None:
        a[sc.ATTR_VIOLATION_COUNT] = 1
        a[sc.ATTR_LIMIT_TYPE] = "timeout"
        a[sc.ATTR_LIMIT_VALUE] = limit
        a[sc.ATTR_LIMIT_POLICY] = "record"
    return LifecycleRecord(
        event_name=sc.EVENT_JOB_CLOSED,
        timestamp=now,
        attributes=a,
        severity="ERROR" if status == "failed" else "INFO",
        body=f"{name or run_id} closed: {status}",
    )


def pending_run(
    name: str,
    *,
    run_id: str,
    execution_id: str,
    attempt: int = 1,
    queue: str | None = None,
    scheduled_at: Any = None,
) -> None:
    """Record a run that is known but not started: a task received with an ETA or a
    countdown. The store shows it in ``pending()`` until the run starts under the same
    ``(run_id, attempt, execution_id)`` (:func:`start_run`), and keeps ``scheduled_at``
    (its queue wait is the start minus it: ``JobRecord.queue_wait``).

    Args:
        name: the job name. run_id, execution_id, attempt: the run it will be.
        queue: its queue.
        scheduled_at: when it is due, Unix seconds or an aware datetime (default: now).

    Raises:
        ConfigurationError: an empty name, run or execution id, an attempt below 1, or a
            ``scheduled_at`` that is neither (checked also without ``configure()``).

    .. versionadded:: 0.1
    """
    require_id(name, "name")
    require_id(run_id, "run_id")
    require_id(execution_id, "execution_id")
    require_attempt(attempt)
    due = moment(scheduled_at, "scheduled_at")
    to = receivers(sc.EVENT_JOB_PENDING)
    if not to:
        return
    now = _now()
    a: dict[str, AttributeValue] = {
        sc.ATTR_JOB_NAME: name,
        sc.ATTR_JOB_QUEUE: queue or "default",
        sc.ATTR_JOB_RUN_ID: run_id,
        sc.ATTR_JOB_ATTEMPT: attempt,
        sc.ATTR_JOB_EXECUTION_ID: execution_id,
        sc.ATTR_JOB_STATUS: "pending",
        sc.ATTR_JOB_SEQUENCE: 0,  # below the run's own first record: its start replaces it
        sc.ATTR_JOB_SCHEDULED_AT: now if due is None else due,
    }
    publish(
        LifecycleRecord(
            event_name=sc.EVENT_JOB_PENDING, timestamp=now, attributes=a, body=f"{name} pending"
        ),
        to,
    )


def _now() -> float:
    """The configured clock (a test's ``FakeClock``), as every run's records use; the
    wall clock if it fails (the record is still written)."""
    try:
        return float(get_config().clock())
    except Exception as exc:
        internal_error("config.clock", exc)
        return time.time()


__all__ = ["FinishStatus", "StartedRun", "close_run", "pending_run", "start_run"]
