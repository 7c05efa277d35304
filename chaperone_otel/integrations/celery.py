"""Supervise a Celery app's tasks: every task execution is a run, recorded by attempt.

Call :func:`instrument` in the module that defines the app, after ``configure()``, so the
worker's main process and every prefork child run it::

    # proj/tasks.py
    import chaperone_otel as chaperone
    from celery import Celery
    from chaperone_otel.integrations.celery import instrument

    chaperone.configure(sink="jobs.duckdb")  # the first process owns the store, children forward
    app = Celery("proj", broker="redis://localhost:6379/0")
    instrument(app)

    @app.task(bind=True, max_retries=3)
    def charge(self, order_id):
        for item in chaperone.track(items(order_id)):   # progress of the current run
            ...

What a run gets from Celery:

==============  ===================================================================
run id          the task id (``request.id``)
attempt         ``request.retries + 1``
execution id    one per delivery (the worker's main process makes it on receipt): a
                redelivered message runs the same attempt as a second execution
name            the task name
queue           the delivery's routing key (``"default"`` if Celery gives none)
timeout         the earliest time limit, soft or hard: the task's, or the app's
span links      the run span links to the span of the attempt it repeats (the retry
                message carries it in the header ``chaperone_otel_span``)
==============  ===================================================================

Leases: a task is alive while its worker process is (``lease="liveness"``), so tasks that
never call ``heartbeat()`` are healthy until their time limit; a task that promises
heartbeats opts in with ``@app.task(chaperone_lease="heartbeat",
chaperone_heartbeat_interval=30)`` and is stuck after three silent intervals.

A task received with an ETA or a countdown is recorded as ``pending`` (with its due time)
by the worker's main process, until it starts.

Outcomes: a return is ``completed``; an exception is ``failed`` with its own type; a
``Retry`` is ``retried`` (terminal, not a failure) with the retry's cause as the error (the
``Retry`` itself when it has none); ``Ignore`` and ``Reject`` are ``cancelled`` with the
exception as the reason, except the ``Ignore`` of ``Task.replace()``: the replaced run is
``completed`` (its replacement, with the same task id, is a run of its own); a task revoked
before it started is recorded as one ``cancelled`` run by the worker's main process. A
``SoftTimeLimitExceeded`` is ``failed`` with a timeout violation. What the child cannot
record, the worker's main process closes (:func:`chaperone_otel.close_run`): a child that
died under a task (``WorkerLostError``: ``failed``, also when ``acks_late`` +
``reject_on_worker_lost`` requeue the message), one killed at the hard time limit
(``TimeLimitExceeded``: ``failed``, with a timeout violation), one ended by
``revoke(terminate=True)`` (``cancelled``) or by a cold shutdown (``cancelled``,
``WorkerShutdown``).

On the threads pool Celery enforces no time limit and cannot terminate a task: the run's
timeout is still the limit (overtime, stuck past it), and the run ends as the task does.
With ``opentelemetry-instrumentation-celery``, the run span is a child of its
``run/<task>`` span (see :meth:`_Instrumentation.prerun_last`).

The run is current while the task's body runs: ``current_job()``, ``heartbeat()``,
``report_progress()`` and ``track()`` reach it, and spans the task opens nest under the run
span. A prefork child flushes its records when it exits (``worker_process_shutdown``, also
sent when ``worker_max_tasks_per_child`` recycles it): billiard ends children with
``os._exit``, which skips ``atexit``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final, Literal

from .._lifecycle import start_run as _start_spec
from .._safety import handle_internal_errors as _guard
from .._setup import flush as _flush
from .._spec import Lease as _Lease
from .._spec import Spec as _Spec
from .._spec import make_spec as _make_spec
from .._start import StartedRun as _StartedRun
from .._start import close_run as _close_run
from .._start import pending_run as _pending_run
from .._start import start_run as _start_run
from .._start import stored_links as _stored_links
from .._values import new_run_id as _new_execution_id
from ..exceptions import ConfigurationError as _ConfigurationError
from . import _celery_beat as _beat
from ._celery_beat import instrument_beat, uninstrument_beat
from ._celery_request import closing_request as _closing_request
from ._celery_request import handled_request as _handled_request
from ._framework import framework_import_error as _framework_import_error
from ._options import check_options as _check_options

try:
    from celery import Celery, Task, signals
    from celery.exceptions import (
        Ignore,
        Reject,
        Retry,
        SoftTimeLimitExceeded,
        TaskRevokedError,
        TimeLimitExceeded,
        WorkerLostError,
        WorkerShutdown,
    )
    from celery.utils.imports import symbol_by_name
except ImportError as _error:  # pragma: no cover - exercised only without celery
    raise _framework_import_error("celery", _error) from _error

_UID: Final = "chaperone_otel.integrations.celery"
_KNOWN: Final = 100_000
"""Deliveries the main process remembers to close their runs (about 270 bytes each: 27 MB
at the cap; a delivery that fails or is revoked is forgotten at once, a successful one when
newer deliveries push it out)."""
_CLOSED_KEPT: Final = 1_024
"""Closed executions remembered (a repeated ``task_failure`` follows the first at once)."""
_SPECS: Final = 1_024
"""Validated run specs a process keeps (one per task, queue, attempt and time limit seen)."""
_EXECUTION: Final = "chaperone_execution_id"
"""The request field that carries a delivery's execution id from the worker's main process
(``task_received``) to the pool child that runs it (``task.request``)."""
_SPAN: Final = "chaperone_otel_span"
"""The message header (a request field in the worker) that carries a retried attempt's run
span (W3C ``traceparent``) to the next attempt, whose span links to it: the OTel Celery
instrumentation, when installed, makes the attempts one trace; without it each attempt is a
trace of its own and the link is what ties them."""


class _Instrumentation:
    """The signal receivers of one instrumented app, and the runs its tasks have open."""

    def __init__(
        self,
        app: Celery,
        include: Callable[[Task], bool] | None,
        heartbeat_interval: Any,
        lease: _Lease,
        flush_timeout: float,
    ) -> None:
        self.app = app
        self.include = include
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.flush_timeout = flush_timeout
        # (task id, thread) -> a stack of (run, tokens): prerun and postrun of one task run
        # on one thread. A threads pool runs a retry of a task (same id) on another thread
        # while the first attempt is still between its retry and its postrun, and an eager
        # retry runs inside the attempt that retried (same thread): neither may take the
        # other's run.
        self.open: dict[tuple[str, int], list[tuple[_StartedRun, Any]]] = {}
        # The runs (by id()) that sent a message under their own task id: a retry, or a
        # Task.replace(), whose Ignore then means "replaced", not "cancelled".
        self.resent: set[int] = set()
        # The worker's main process: task id -> the delivery's (execution id, attempt,
        # queue), so it can close the run of a child that died (the newest _KNOWN kept).
        self.known: dict[str, tuple[str, int, str | None]] = {}
        # The executions failed() closed (the newest _CLOSED_KEPT, in order): a second
        # task_failure for one (Celery 5.7 at a hard limit) closes nothing.
        self.closed: dict[str, None] = {}
        self.lock = threading.Lock()
        # Per task, what is the same at every run of it in this process, read at its first
        # run: (the task, its heartbeat interval, lease, hard and soft time limit (its own,
        # else the app's)). Celery itself reads these once (the worker's limits at its
        # start, a task's in its request class), and reading the app's configuration costs
        # ~6 us a key. The task is kept so that its id is not reused.
        self.static: dict[int, tuple[Any, Any, _Lease, float | None, float | None]] = {}
        # (name, queue, attempt, heartbeat interval, lease, timeout) -> its validated spec,
        # so that a run of a task seen before skips make_spec() and reuses the spec's
        # cached per-configuration state (_spec.static_for).
        self.specs: dict[tuple[Any, ...], _Spec] = {}

    @property
    def options(self) -> tuple[Any, ...]:
        """What :func:`instrument` was given (a second call must give the same)."""
        return (self.include, self.heartbeat_interval, self.lease, self.flush_timeout)

    def runs_here(self, task_id: str) -> bool:
        """Whether this process runs ``task_id`` now (solo, threads: postrun will end it)."""
        with self.lock:
            return any(key[0] == task_id for key in self.open)

    def wanted(self, task: Any) -> bool:
        if getattr(task, "app", None) is not self.app:
            return False
        return self.include is None or bool(self.include(task))

    def task_static(self, task: Any) -> tuple[Any, _Lease, float | None, float | None]:
        """The task's (heartbeat interval, lease, hard limit, soft limit) in this process:
        its own ``chaperone_heartbeat_interval`` and ``chaperone_lease`` options, else the
        app's; its own time limits, else the app's (``task_time_limit``...)."""
        found = self.static.get(id(task))
        if found is None or found[0] is not task:
            conf = self.app.conf
            found = (
                task,
                getattr(task, "chaperone_heartbeat_interval", None) or self.heartbeat_interval,
                getattr(task, "chaperone_lease", None) or self.lease,
                _number(getattr(task, "time_limit", None), conf.task_time_limit),
                _number(getattr(task, "soft_time_limit", None), conf.task_soft_time_limit),
            )
            self.static[id(task)] = found
        return found[1:]

    def lease_of(self, task: Any) -> tuple[Any, _Lease]:
        """The task's (heartbeat interval, lease) (see :meth:`task_static`)."""
        interval, lease, _hard, _soft = self.task_static(task)
        return interval, lease

    def limits(self, task: Any, request: Any) -> tuple[float | None, float | None]:
        """The task's (hard, soft) time limits: the request's, else the task's, else the
        app's (``task_time_limit``...)."""
        given = getattr(request, "timelimit", None) or (None, None)
        hard, soft = (*tuple(given), None, None)[:2]
        _interval, _lease, task_hard, task_soft = self.task_static(task)
        return _number(hard, task_hard), _number(soft, task_soft)

    def timeout(self, task: Any, request: Any) -> float | None:
        """The earliest time limit (soft or hard): past it the run is overtime, so a soft
        limit gets its timeout violation too."""
        found = [limit for limit in self.limits(task, request) if limit is not None]
        return min(found) if found else None

    def spec(
        self,
        task: Any,
        queue: str | None,
        attempt: int,
        timeout: float | None,
        interval: Any,
        lease: _Lease,
    ) -> _Spec:
        """The validated spec of a run of ``task`` with these options, made once."""
        key = (task.name, queue, attempt, timeout, interval, lease)
        found = self.specs.get(key)
        if found is None:
            found = _make_spec(
                task.name,
                queue=queue,
                attempt=attempt,
                heartbeat_interval=interval,
                timeout=timeout,
                lease=lease,
            )
            if found.name is None:
                raise ValueError(f"task {task!r} has no name")
            if len(self.specs) >= _SPECS:
                self.specs.clear()
            self.specs[key] = found
        return found

    def received(self, request: Any = None, **_: Any) -> None:
        """A delivery reached the worker (its main process): give it an execution id, which
        travels to the pool child in the request. A redelivered message is a new delivery,
        so a second execution of the same attempt never shares the dead one's id."""
        request_dict = getattr(request, "request_dict", None)
        if not isinstance(request_dict, dict) or not self.wanted(getattr(request, "task", None)):
            return
        with _guard("celery.received"):
            execution = _new_execution_id()
            request_dict[_EXECUTION] = execution
            attempt, queue = _attempt_and_queue(request_dict)
            with self.lock:
                task_id = str(request.id)
                self.known.pop(task_id, None)  # a redelivery is the newest, not kept in place
                self.known[task_id] = (execution, attempt, queue)
                if len(self.known) > _KNOWN:
                    del self.known[next(iter(self.known))]
            due = _epoch(getattr(request, "eta", None))
            if due is not None:  # an ETA or countdown: visible as pending until it starts
                _pending_run(
                    request.task.name,
                    run_id=str(request.id),
                    execution_id=execution,
                    attempt=attempt,
                    queue=queue,
                    scheduled_at=due,
                )

    def failed(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        """The main process saw a child die under a task (``WorkerLostError``: SIGKILL, OOM
        killer) or killed it at the hard time limit (``TimeLimitExceeded``): the child can
        no longer finish its run, so it is closed from here (failed, with the reason)."""
        if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)) or task_id is None:
            return
        if sender is None or not self.wanted(sender) or self.runs_here(task_id):
            return  # another app's; or solo, threads: its postrun ends it
        # The delivery's own fields (a worker may hold two deliveries of one task id: a
        # redelivery after the visibility timeout): the Request being handled (the request
        # class names it), else the context Celery put in place (5.7's on_failure).
        request = _handled_request()
        if getattr(request, "id", None) == task_id:
            fields = getattr(request, "request_dict", None) or {}
        else:
            request = getattr(sender, "request", None)
            fields = vars(request) if getattr(request, "id", None) == task_id else {}
        own = fields.get(_EXECUTION)
        with self.lock:
            if isinstance(own, str):  # billiard's hard limit reaches on_failure and
                if own in self.closed:  # on_timeout, and 5.7 sends task_failure from each
                    return
                self.closed[own] = None
                if len(self.closed) > _CLOSED_KEPT:
                    del self.closed[next(iter(self.closed))]
            known = self.known.get(task_id)
            if known is not None and (not isinstance(own, str) or known[0] == own):
                del self.known[task_id]
            elif isinstance(own, str):
                known = (own, *_attempt_and_queue(fields))
        if known is None:
            return
        execution, attempt, queue = known
        limit = None
        if isinstance(exception, TimeLimitExceeded):
            given = exception.args[0] if exception.args else None
            limit = float(given) if isinstance(given, (int, float)) else 0.0
        with _guard("celery.failed"):
            _close_run(
                task_id,
                execution_id=execution,
                attempt=attempt,
                error=exception,
                name=sender.name,
                queue=queue,
                timeout=limit,
            )

    def lost_retried(
        self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any
    ) -> None:
        """The main process retried a task whose child died under it
        (``retry_on_worker_lost``): Celery sends ``task_retry``, not ``task_failure``, so
        the dead execution is closed here, ``retried`` with ``WorkerLostError`` (the next
        attempt is a run of its own). A retry the task's own code asked for is sent by the
        process that runs it, which ends its run itself."""
        cause = getattr(reason, "exc", None)
        task_id = getattr(request, "id", None)
        if not isinstance(cause, WorkerLostError) or not task_id or sender is None:
            return
        if not self.wanted(sender) or self.runs_here(str(task_id)):
            return
        with _guard("celery.lost_retried"):
            self.close_delivery(
                sender,
                str(task_id),
                getattr(request, _EXECUTION, None),
                status="retried",
                error=cause,
            )

    def prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        task = sender
        if task is None or task_id is None or not self.wanted(task):
            return
        with _guard("celery.prerun"):
            request = task.request
            delivery = getattr(request, "delivery_info", None) or {}
            execution = getattr(request, _EXECUTION, None)
            execution = execution if isinstance(execution, str) and execution else None
            interval, lease = self.lease_of(task)
            attempt = int(getattr(request, "retries", 0) or 0) + 1
            queue = delivery.get("routing_key") or None
            timeout = self.timeout(task, request)
            beat = _beat.run_options(request)  # issue 15: the beat entry it serves
            links = _stored_links(getattr(request, _SPAN, None))  # the attempt it repeats
            if beat:  # its slot's due time differs at every run: no spec to reuse
                run = _start_run(
                    task.name,
                    run_id=task_id,
                    attempt=attempt,
                    execution_id=execution,
                    queue=queue,
                    timeout=timeout,
                    heartbeat_interval=interval,
                    lease=lease,
                    links=links,
                    **beat,
                )
            else:
                spec = self.spec(task, queue, attempt, timeout, interval, lease)
                run = _StartedRun(
                    _start_spec(
                        spec,
                        run_id=str(task_id),
                        attempt=attempt,
                        execution_id=execution,
                        links=tuple(links),
                    )
                )
            tokens = run.attach()
            with self.lock:
                self.open.setdefault((task_id, threading.get_ident()), []).append((run, tokens))

    def publishing(self, headers: Any = None, **_: Any) -> None:
        """A message is sent for the task id of a run open in this thread (``retry()`` from
        the task's body): it carries the run span's ``traceparent`` for the next attempt."""
        task_id = headers.get("id") if isinstance(headers, dict) else None
        if task_id is None:
            return
        stack = self.open.get((task_id, threading.get_ident()))
        if not stack:
            return
        with _guard("celery.publishing"):
            self.resent.add(id(stack[-1][0]))
            span = stack[-1][0].traceparent
            if span is not None:
                headers[_SPAN] = span

    def postrun(
        self,
        sender: Any = None,
        task_id: str | None = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        if task_id is None:
            return
        key = (task_id, threading.get_ident())
        with self.lock:
            stack = self.open.get(key)
            if not stack:
                return
            run, tokens = stack.pop()
            if not stack:
                del self.open[key]
        resent = id(run) in self.resent
        self.resent.discard(id(run))
        with _guard("celery.postrun"):
            try:
                run.detach(tokens)
            finally:
                # No state: interrupted in flight (a SystemExit), maybe at the hard limit.
                limit = None
                if state is None:
                    limit = self.limits(sender, getattr(sender, "request", None))[0]
                _finish(run, state, retval, limit, resent)

    def revoked(
        self, sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
    ) -> None:
        task = sender
        task_id = getattr(request, "id", None)
        if task is None or not task_id or not self.wanted(task):
            return
        if terminated:
            self.terminated(task, str(task_id), request, _.get("signum"))
            return
        with _guard("celery.revoked"):
            self.forget(request)
            delivery = getattr(request, "delivery_info", None) or {}
            execution = getattr(request, _EXECUTION, None)  # its pending row, if it had one
            run = _start_run(
                task.name,
                run_id=task_id,
                attempt=int(getattr(request, "retries", 0) or 0) + 1,
                execution_id=execution if isinstance(execution, str) and execution else None,
                queue=delivery.get("routing_key") or None,
                heartbeat_interval=self.lease_of(task)[0],
                lease=self.lease_of(task)[1],
            )
            why = "expired" if _.get("expired") else "revoked"
            run.finish(TaskRevokedError(f"{why} before it started: {task_id}"), status="cancelled")

    def terminated(self, task: Any, task_id: str, request: Any, signum: Any) -> None:
        """``revoke(terminate=True)`` killed the child running it: cancelled, from here."""
        if self.runs_here(task_id):
            return
        with self.lock:
            known = self.known.pop(task_id, None)
        execution = getattr(request, _EXECUTION, None) or (known[0] if known else None)
        if not isinstance(execution, str):
            return
        attempt = int(getattr(request, "retries", 0) or 0) + 1
        with _guard("celery.terminated"):
            _close_run(
                task_id,
                execution_id=execution,
                attempt=attempt,
                status="cancelled",
                error=TaskRevokedError(f"revoked and terminated (signal {signum})"),
                name=task.name,
                queue=known[2] if known else None,
            )

    def prerun_last(self, **_: Any) -> None:
        """Move this app's ``task_prerun`` receiver after every other one.

        The OTel Celery instrumentation opens its ``run/<task>`` span and makes it current in
        its own ``task_prerun`` receiver; the run span is its child only if the run starts
        after it. Signals call receivers in the order they were connected, and OTel's docs
        connect theirs in ``worker_process_init``, after this module-level ``instrument()``.
        So the receiver is connected again (last) when the worker is ready (``worker_ready``:
        solo, threads) and when a pool child starts (``worker_process_init``, connected at
        ``worker_init`` so it runs after the app's own receivers). ``task_postrun`` keeps
        its place, before theirs, so the two contexts are detached in reverse order.
        """
        with _guard("celery.prerun_last"):
            uid = f"{_UID}:{id(self.app)}"
            signals.task_prerun.disconnect(self.prerun, dispatch_uid=uid)
            signals.task_prerun.connect(self.prerun, weak=False, dispatch_uid=uid)

    def worker_init(self, **_: Any) -> None:
        """The worker starts (its main process, before the pool): order the receivers of
        pool children when they start, after what the app connected at import, and give
        the supervised tasks a request class that closes requeued lost deliveries."""
        uid = f"{_UID}:{id(self.app)}"
        signals.worker_process_init.connect(self.prerun_last, weak=False, dispatch_uid=uid)
        misused: list[str] = []
        with _guard("celery.worker_init"):
            for task in list(self.app.tasks.values()):
                if self.wanted(task):
                    task.Request = _closing_request(symbol_by_name(task.Request), self)
                    try:
                        _check_options(
                            f"task {task.name!r}",
                            heartbeat_interval=getattr(task, "chaperone_heartbeat_interval", None),
                            lease=getattr(task, "chaperone_lease", None),
                            prefix="chaperone_",
                        )
                    except _ConfigurationError as error:
                        misused.append(str(error))
        if misused:  # Celery logs a receiver's error: loud at the worker's start
            raise _ConfigurationError(
                "chaperone_otel: tasks with invalid supervision options run unsupervised: "
                + "; ".join(misused)
            )

    def cancelled(self, request: Any) -> None:
        """Celery cancelled a running delivery (``Request.cancel``: a cold shutdown, or the
        broker connection lost with ``worker_cancel_long_running_tasks_on_connection_loss``)
        and terminated its child: the run is cancelled, with the reason, from here (the
        child only sees ``SystemExit``)."""
        if not getattr(request, "time_start", None):
            return  # not started: nothing was terminated, no run to close
        self.close_known(
            request,
            status="cancelled",
            # Celery sets should_terminate only after cancelling: the two causes look alike.
            error=WorkerShutdown("cancelled by the worker: cold shutdown or broker lost"),
        )

    def close_known(
        self, request: Any, *, status: Literal["failed", "cancelled"], error: BaseException
    ) -> None:
        """Close the execution named in ``request`` (the main process's Request) with
        ``status``, unless it was closed already (``known`` no longer has it)."""
        task: Any = getattr(request, "task", None)
        task_id, execution = _delivery(request)
        if task is None or not task_id:
            return
        if _instrumented.get(id(self.app)) is not self:
            return  # uninstrumented since its tasks got the request class
        self.close_delivery(task, task_id, execution, status=status, error=error)

    def close_delivery(
        self,
        task: Any,
        task_id: str,
        execution: Any,
        *,
        status: Literal["failed", "cancelled", "retried"],
        error: BaseException,
    ) -> None:
        """Close the delivery ``execution`` of ``task_id`` with ``status``, unless it was
        closed already (``known`` no longer has it) or is not this worker's."""
        if not isinstance(execution, str):
            return
        with self.lock:
            known = self.known.get(task_id)
            if known is None or known[0] != execution:
                return  # closed already (task_failure), or not this worker's delivery
            del self.known[task_id]
        _execution, attempt, queue = known
        _close_run(
            task_id,
            execution_id=execution,
            attempt=attempt,
            status=status,
            error=error,
            name=task.name,
            queue=queue,
        )

    def requeued(self, request: Any, exc_info: Any) -> None:
        """The main process handled a delivery's failure (``Request.on_failure``). Celery
        sends no ``task_failure`` for a child lost under an ``acks_late`` +
        ``reject_on_worker_lost`` task (it requeues the message), nor for one lost after it
        stored ``SUCCESS`` (any task): close the dead execution here (failed,
        WorkerLostError), named by the request itself (a redelivery is another execution).
        When Celery did send ``task_failure`` (:meth:`failed`) or ``task_retry``
        (:meth:`lost_retried`), the delivery is no longer in ``known`` and nothing is done.
        Every other failure, handled by then, is forgotten."""
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):  # billiard >= 4.3: the exit
            exc = WorkerLostError(f"Worker exited prematurely: {exc!r}")
        if isinstance(exc, WorkerLostError):
            self.close_known(request, status="failed", error=exc)
        else:
            self.forget(request)

    def forget(self, request: Any) -> None:
        """Drop a delivery that ended without a run to close from here (``known`` would
        otherwise keep it until newer deliveries push it out)."""
        task_id, execution = _delivery(request)
        with self.lock:
            known = self.known.get(task_id)
            if known is not None and known[0] == execution:
                del self.known[task_id]

    def process_shutdown(self, **_: Any) -> None:
        with _guard("celery.process_shutdown"):
            _flush(self.flush_timeout)


def _delivery(request: Any) -> tuple[str, Any]:
    """(task id, execution id) of the main process's ``Request`` of a delivery."""
    execution = (getattr(request, "request_dict", None) or {}).get(_EXECUTION)
    return str(getattr(request, "id", "")), execution


def _attempt_and_queue(fields: dict[str, Any]) -> tuple[int, str | None]:
    """A delivery's attempt (Celery's retries + 1) and queue (the routing key it came by),
    from its request fields."""
    queue = (fields.get("delivery_info") or {}).get("routing_key")
    return int(fields.get("retries") or 0) + 1, queue


def _number(*candidates: Any) -> float | None:
    """The first set (truthy) of ``candidates``, as a float (None: none is set)."""
    return next((float(v) for v in candidates if v), None)


def _epoch(moment: Any) -> float | None:
    """A request's ETA (a datetime, or ISO text from older clients) as Unix seconds."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return None
    if not isinstance(moment, datetime):
        return None
    if moment.tzinfo is None:  # Celery's naive ETAs are UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return float(moment.timestamp())


def _finish(
    run: _StartedRun,
    state: str | None,
    retval: Any,
    hard_limit: float | None = None,
    resent: bool = False,
) -> None:
    if state == "SUCCESS" or (isinstance(retval, Ignore) and resent):
        # An Ignore after the run sent a message under its own task id: Task.replace()
        # (it sends the replacement, same id, then raises Ignore): the work goes on there.
        run.finish()
    elif isinstance(retval, Retry):
        cause = retval.exc if isinstance(retval.exc, BaseException) else retval
        run.finish(cause, status="retried")
    elif isinstance(retval, Reject) and not retval.requeue:
        # Celery records FAILURE: the message is dropped, the task never runs again (a
        # retry() whose message could not be sent raises this, with the send's error).
        cause = retval.reason if isinstance(retval.reason, BaseException) else retval
        run.finish(cause, status="failed")
    elif isinstance(retval, (Ignore, Reject)):
        run.finish(retval, status="cancelled")
    elif isinstance(retval, SoftTimeLimitExceeded):
        run.finish(retval, timed_out=True)  # failed, with its timeout violation
    elif isinstance(retval, BaseException):
        run.finish(retval)
    else:
        # No state: the task was interrupted by a BaseException in flight (SystemExit from
        # the SIGTERM of a hard time limit or a terminating revoke; the worker's main process
        # then closes the run with the real reason, which replaces this one).
        interrupted = sys.exc_info()[1]
        if (
            isinstance(interrupted, SystemExit)
            and hard_limit is not None
            and time.time() - run.supervision.started_at >= hard_limit
        ):
            # billiard's SIGTERM at the hard time limit: the run's own records (span,
            # counters) say what Celery says, not "cancelled" by a SystemExit.
            run.finish(TimeLimitExceeded(hard_limit), timed_out=True)
        elif interrupted is not None:  # billiard's SIGTERM (a revoke): whatever its code
            run.finish(interrupted, status="cancelled")
        else:
            run.finish(RuntimeError(f"task ended in state {state}"), status="failed")


_instrumented: dict[int, _Instrumentation] = {}


def instrument(
    app: Celery,
    *,
    include: Callable[[Task], bool] | None = None,
    heartbeat_interval: Any = None,
    lease: _Lease = "liveness",
    flush_timeout: float = 5.0,
) -> None:
    """Supervise ``app``'s tasks: each execution a run (see the module docstring).

    Idempotent per app (a second call with other options raises). Call it where the
    worker's main process and its pool children both run it: the module that creates the
    app, after ``chaperone.configure()``. A task's own ``chaperone_lease`` and
    ``chaperone_heartbeat_interval`` are checked when the worker starts (an invalid one is
    logged by Celery as the ``worker_init`` receiver's error, naming the task).

    Args:
        app: the Celery app.
        include: supervise only the tasks for which it returns True (default: all).
        heartbeat_interval: the runs' lease (default: ``configure()``'s); a task's own
            ``@app.task(chaperone_heartbeat_interval=30)`` wins.
        lease: ``"liveness"`` (default): a task is alive while its worker process is, so
            tasks that never call ``heartbeat()`` are healthy, stuck only past their time
            limit, lost when their process goes silent. ``"heartbeat"``: the task's code must
            heartbeat within the interval. A task opts in with
            ``@app.task(chaperone_lease="heartbeat")``.
        flush_timeout: seconds a pool child waits for its records to be sent when it exits.

    Raises:
        ConfigurationError: an option that is not valid, or other options than the
            first call's for the same app.

    .. versionadded:: 0.1
    """
    _check_options(
        "instrument(app)",
        include=include,
        heartbeat_interval=heartbeat_interval,
        lease=lease,
        flush_timeout=flush_timeout,
    )
    key = id(app)
    existing = _instrumented.get(key)
    if existing is not None:
        given = (include, heartbeat_interval, lease, flush_timeout)
        if given != existing.options:
            raise _ConfigurationError(
                "instrument(app) was called already with other options; call "
                "uninstrument(app) first to change them"
            )
        return
    inst = _Instrumentation(app, include, heartbeat_interval, lease, flush_timeout)
    _instrumented[key] = inst
    if id(app) not in _beat._beats:  # beat entries become schedules (celery_beat)
        _beat.instrument_beat(app)
    uid = f"{_UID}:{key}"
    signals.before_task_publish.connect(inst.publishing, weak=False, dispatch_uid=uid)
    signals.task_received.connect(inst.received, weak=False, dispatch_uid=uid)
    signals.task_prerun.connect(inst.prerun, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(inst.postrun, weak=False, dispatch_uid=uid)
    signals.task_revoked.connect(inst.revoked, weak=False, dispatch_uid=uid)
    signals.task_failure.connect(inst.failed, weak=False, dispatch_uid=uid)
    signals.task_retry.connect(inst.lost_retried, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(inst.process_shutdown, weak=False, dispatch_uid=uid)
    signals.worker_init.connect(inst.worker_init, weak=False, dispatch_uid=uid)
    signals.worker_ready.connect(inst.prerun_last, weak=False, dispatch_uid=uid)


def uninstrument(app: Celery) -> None:
    """Undo :func:`instrument` for ``app`` (runs already started still finish).

    .. versionadded:: 0.1
    """
    inst = _instrumented.pop(id(app), None)
    if inst is None:
        return
    uid = f"{_UID}:{id(app)}"
    signals.before_task_publish.disconnect(inst.publishing, dispatch_uid=uid)
    signals.task_received.disconnect(inst.received, dispatch_uid=uid)
    signals.task_prerun.disconnect(inst.prerun, dispatch_uid=uid)
    signals.task_postrun.disconnect(inst.postrun, dispatch_uid=uid)
    signals.task_revoked.disconnect(inst.revoked, dispatch_uid=uid)
    signals.task_failure.disconnect(inst.failed, dispatch_uid=uid)
    signals.task_retry.disconnect(inst.lost_retried, dispatch_uid=uid)
    signals.worker_process_shutdown.disconnect(inst.process_shutdown, dispatch_uid=uid)
    signals.worker_init.disconnect(inst.worker_init, dispatch_uid=uid)
    signals.worker_ready.disconnect(inst.prerun_last, dispatch_uid=uid)
    signals.worker_process_init.disconnect(inst.prerun_last, dispatch_uid=uid)


__all__ = ["instrument", "instrument_beat", "uninstrument", "uninstrument_beat"]
