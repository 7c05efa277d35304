"""Supervise RQ jobs: every execution of a job in a work-horse is a run, recorded by attempt.

Run the worker class of this module (or a subclass of it) in a module that calls
``configure()`` first, so the worker's main process owns the store and every work-horse it
forks forwards to it::

    # proj/worker.py
    import chaperone_otel as chaperone
    from chaperone_otel.integrations.rq import SupervisedWorker

    chaperone.configure(sink="jobs.duckdb")

    class Worker(SupervisedWorker):
        pass

    # rq worker -w proj.worker.Worker --url redis://localhost:6379/0 default

What a run gets from RQ:

==============  ===================================================================
run id          the job id
attempt         1 for the job's first execution, then one more per execution (a retry,
                a requeue, a repeat): counted in ``job.meta["chaperone_otel.attempt"]``
name            the job's function name (``job.func_name``)
queue           the queue the job came from (``job.origin``)
timeout         the job's timeout (else the queue's default); none for ``-1``
execution id    RQ's execution id (RQ 2+ makes one per execution, as the results name it)
span links      the run span links to the span of the job's execution before (a retry's
                attempt to the attempt it repeats), kept in ``job.meta["chaperone_otel.span"]``
==============  ===================================================================

Outcomes: a return is ``completed``; an exception is ``failed`` with its own type, or
``retried`` (terminal, not a failure) with the exception as the cause when the job has
retries left (``enqueue(..., retry=Retry(max=...))``); a returned ``Retry`` is ``retried``
(``failed`` once its ``max`` is spent); RQ's timeout (``JobTimeoutException``) is
``failed`` with a ``timeout`` violation, as the run's timeout is the job's.

Runs have the liveness lease (a job is alive while its work-horse is: one that never
heartbeats is not stuck, only past its timeout); a worker class sets
``chaperone_lease = "heartbeat"`` for jobs that promise heartbeats.

The run is current while the job's function runs (``current_job()``, ``heartbeat()``,
``report_progress()`` and ``track()`` reach it, spans nest under the run span), and the
horse flushes the run's records before it ends with ``os._exit`` (without it, 6 of 6 runs
never reached the store). The worker's main process closes a run whose horse it saw die
(killed by a signal, or by RQ itself past ``timeout + 60`` s): ``failed``, error type
:class:`WorkHorseKilled` (``retried`` with that cause when RQ retries the job); a job
stopped with ``send_stop_job_command`` is ``cancelled`` (``StopRequested``).
``SimpleWorker`` has no horse to kill: its job runs on, and if it then raises, RQ marks it
stopped (never retried) and the run is ``cancelled`` with that error. A job found abandoned
by the registries' maintenance (its worker died too) is closed ``failed``
(``AbandonedJobError``) by the worker that cleans up.

RQ's cron scheduler (``rq cron``): :func:`instrument_cron` in its config module declares the
registered cron jobs as schedules and records each enqueue; the run of a job it enqueued
carries the schedule and slot (see ``docs/schedules.md``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
import time
from typing import Any, Final

from .._safety import handle_internal_errors as _guard
from .._setup import flush as _flush
from .._spec import Lease as _Lease
from .._start import StartedRun as _StartedRun
from .._start import close_run as _close_run
from .._start import start_run as _start_run
from .._start import stored_links as _stored_links
from .._values import new_run_id as _new_execution_id
from ._framework import framework_import_error as _framework_import_error
from ._options import check_options as _check_options
from ._rq_cron import (
    META_SCHEDULE,
    META_SCHEDULED_FOR,
    instrument_cron,
    uninstrument_cron,
)
from ._rq_cron import run_options as _schedule_options

try:
    from rq.exceptions import AbandonedJobError, StopRequested
    from rq.job import Job, Retry
    from rq.worker import SimpleWorker, Worker
except ImportError as _error:  # pragma: no cover - exercised only without rq
    raise _framework_import_error("rq", _error) from _error

ATTEMPT_KEY: Final = "chaperone_otel.attempt"
"""The ``job.meta`` key counting a job's executions (the run's attempt)."""


class WorkHorseKilled(Exception):
    """The error of a run whose work-horse died before it could record the outcome.

    .. versionadded:: 0.1
    """


EXECUTION_KEY: Final = "chaperone_otel.execution"
"""The ``job.meta`` key of the current execution's id: made by the worker's main process
before the fork, so it can close the run of a horse that died."""


SPAN_KEY: Final = "chaperone_otel.span"
"""The ``job.meta`` key of the last execution's run span (W3C ``traceparent``), which the
next execution's span links to: RQ carries no trace context, so each attempt is a root span
in a trace of its own, and the link is what ties a retried job's attempts together."""


def _execution(job: Job) -> str | None:
    found = job.meta.get(EXECUTION_KEY)
    return found if isinstance(found, str) and found else None


def _meta_writable(job: Job) -> bool:
    """Whether the integration may add its keys to ``job.meta``: not when RQ could not read
    the stored meta here (a class the worker cannot import). RQ then keeps a placeholder and
    writes the original bytes back as long as the meta is left as it is; adding a key would
    overwrite the enqueuer's meta. Such a job's runs are all attempt 1, each its own
    execution, and unlinked."""
    return getattr(job, "_unreadable_meta", None) is None


def _attempt(job: Job) -> int:
    try:
        return max(1, int(job.meta.get(ATTEMPT_KEY, 0)))
    except (TypeError, ValueError):
        return 1


def _name(job: Job) -> str:
    try:
        return str(job.func_name or "rq.job")
    except Exception:  # a job whose data cannot be deserialized
        return "rq.job"


def _timeout(job: Job, queue: Any) -> float | None:
    timeout = job.timeout
    if timeout is None:
        timeout = getattr(queue, "_default_timeout", None) or getattr(
            queue, "DEFAULT_TIMEOUT", None
        )
    if timeout is None or timeout == -1:
        return None
    return float(timeout)


class SupervisionMixin:
    """The supervision of a worker class: mix it in before an RQ worker class.

    :class:`SupervisedWorker` and :class:`SupervisedSimpleWorker` are the two common
    combinations. Class attributes set the runs' options:

    Attributes:
        chaperone_heartbeat_interval: the runs' lease (default: ``configure()``'s).
        chaperone_lease: ``"liveness"`` (default): a run is alive while its work-horse is,
            so a job that never heartbeats is not stuck (only past its timeout);
            ``"heartbeat"``: alive while its code heartbeats.
        chaperone_flush_timeout: seconds a work-horse waits for its records to be sent
            before it exits.

    Invalid values raise :class:`~chaperone_otel.exceptions.ConfigurationError` when the
    worker is created.

    .. versionadded:: 0.1
    """

    chaperone_heartbeat_interval: Any = None
    chaperone_lease: _Lease = "liveness"
    chaperone_flush_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _check_options(
            f"worker class {type(self).__name__}",
            heartbeat_interval=self.chaperone_heartbeat_interval,
            lease=self.chaperone_lease,
            flush_timeout=self.chaperone_flush_timeout,
            prefix="chaperone_",
        )
        super().__init__(*args, **kwargs)

    # The job being watched from the main process: (job id, horse pid, start, queue).
    _chaperone_watch: tuple[str, int, float, Any] | None = None
    # In the horse, what RQ's handlers saw of the job's end, for its run.
    _chaperone_error: BaseException | None = None
    _chaperone_retry: Retry | None = None

    # ---- the worker's main process (the parent of each work-horse) -----------------------

    def execute_job(self, job: Job, queue: Any) -> Any:
        """Count the execution (``job.meta``) before the horse starts, so the parent and the
        horse agree on the attempt and a retry saved by either carries it."""
        with _guard("rq.execute_job"):
            if _meta_writable(job):
                job.meta[ATTEMPT_KEY] = _attempt(job) + (1 if ATTEMPT_KEY in job.meta else 0)
                job.meta[EXECUTION_KEY] = _new_execution_id()  # RQ's own, if it makes one
                job.save_meta()  # type: ignore[no-untyped-call]
        return super().execute_job(job, queue)  # type: ignore[misc]

    def prepare_execution(self, job: Job, *args: Any, **kwargs: Any) -> Any:
        """RQ's execution (made by the main process before the horse starts): the run's
        execution id is RQ's, so the store and RQ's results name an execution alike."""
        execution = super().prepare_execution(job, *args, **kwargs)  # type: ignore[misc]
        with _guard("rq.execution"):
            ident = getattr(execution, "id", None)
            if (
                isinstance(ident, str)
                and ident
                and job.meta.get(EXECUTION_KEY) != ident
                and _meta_writable(job)
            ):
                job.meta[EXECUTION_KEY] = ident
                job.save_meta()  # type: ignore[no-untyped-call]
        return execution

    def monitor_work_horse(self, job: Job, queue: Any, *args: Any, **kwargs: Any) -> Any:
        """Watch the horse: if RQ fails the job here (the horse died, or was stopped), the
        run is closed from this process."""
        self._chaperone_watch = (job.id, getattr(self, "horse_pid", 0), time.time(), queue)
        try:
            return super().monitor_work_horse(job, queue, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._chaperone_watch = None

    def handle_job_failure(self, job: Job, *args: Any, **kwargs: Any) -> Any:
        """In the main process: RQ fails a job whose horse is gone; close its run."""
        watch = getattr(self, "_chaperone_watch", None)
        if watch is not None and watch[0] == job.id and not self.is_horse:  # type: ignore[attr-defined]
            with _guard("rq.horse_lost"):
                stopped = getattr(self, "_stopped_job_id", None) == job.id
                exc_string = kwargs.get("exc_string") or "work-horse terminated unexpectedly"
                error: BaseException = (
                    StopRequested("job stopped by user, work-horse terminated")
                    if stopped
                    else WorkHorseKilled(str(exc_string).strip().rstrip(";"))
                )
                # RQ kills a horse that outlives its job's timeout by 60 s (a job stuck
                # where its own SIGALRM cannot reach it): a timeout, recorded as one.
                limit = _timeout(job, watch[3])
                overran = limit is not None and time.time() - watch[2] >= limit
                # RQ retries the job if it has retries left (a stopped job it does not):
                # the execution's end is then not the job's failure.
                retried = not stopped and bool(job.retries_left and job.retries_left > 0)
                execution = _execution(job)
                if execution is not None:
                    _close_run(
                        job.id,
                        execution_id=execution,
                        attempt=_attempt(job),
                        status="cancelled" if stopped else "retried" if retried else "failed",
                        error=error,
                        name=_name(job),
                        queue=job.origin,
                        timeout=limit if overran and not stopped else None,
                    )
        return super().handle_job_failure(job, *args, **kwargs)  # type: ignore[misc]

    def handle_exception(self, job: Job, *exc_info: Any) -> Any:
        """Keep the job's exception for its run (in the horse), then RQ's handlers."""
        if len(exc_info) >= 2 and isinstance(exc_info[1], BaseException):
            self._chaperone_error = exc_info[1]
        return super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def handle_job_retry(self, job: Job, queue: Any, retry: Retry, *args: Any, **kw: Any) -> Any:
        """Keep the ``Retry`` the job returned for its run (in the horse)."""
        self._chaperone_retry = retry
        return super().handle_job_retry(job, queue, retry, *args, **kw)  # type: ignore[misc]

    # ---- the work-horse (or the worker itself, for SimpleWorker) -------------------------

    def perform_job(self, job: Job, queue: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the job as the current run, finish it with RQ's outcome, flush if a horse."""
        run: _StartedRun | None = None
        tokens: Any = None
        self._chaperone_error = None
        self._chaperone_retry = None
        will_retry = False
        with _guard("rq.start"):
            will_retry = bool(job.retries_left and job.retries_left > 0)
            run = _start_run(
                _name(job),
                run_id=job.id,
                attempt=_attempt(job),
                execution_id=_execution(job),
                queue=job.origin,
                timeout=_timeout(job, queue),
                heartbeat_interval=self.chaperone_heartbeat_interval,
                lease=self.chaperone_lease,
                links=_stored_links(job.meta.get(SPAN_KEY)),
                **_schedule_options(job.meta),
            )
            tokens = run.attach()
            span = run.traceparent
            if span is not None and _meta_writable(job):  # saved with a retry by RQ
                job.meta[SPAN_KEY] = span
        ok: Any = False
        try:
            ok = super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
        finally:
            if run is not None:
                in_flight = sys.exc_info()[1]  # RQ's own handling failed (redis down...)
                with _guard("rq.finish"):
                    try:
                        run.detach(tokens)
                    finally:
                        self._chaperone_finish(run, job, ok, will_retry, in_flight)
                if self.is_horse:  # type: ignore[attr-defined]
                    with _guard("rq.flush"):
                        _flush(self.chaperone_flush_timeout)
        return ok

    def _chaperone_finish(
        self,
        run: _StartedRun,
        job: Job,
        ok: Any,
        will_retry: bool,
        in_flight: BaseException | None = None,
    ) -> None:
        error, retry = self._chaperone_error or in_flight, self._chaperone_retry
        self._chaperone_error = None
        self._chaperone_retry = None
        if retry is not None:
            if job.get_status(refresh=False) == "failed":  # RQ fails it: `max` retries spent
                run.finish(RuntimeError(f"{retry!r}: maximum retries exceeded"), status="failed")
            else:
                run.finish(None, status="retried")
        elif ok:
            run.finish()
        elif job.get_status(refresh=False) == "stopped":  # a stop request RQ honoured
            run.finish(error or StopRequested("job stopped by user"), status="cancelled")
        elif error is None:
            run.finish(RuntimeError("the job failed (RQ reported no exception)"))
        elif will_retry:
            run.finish(error, status="retried")
        else:
            run.finish(error)

    def unsubscribe(self) -> Any:
        """RQ's, with its pubsub thread told to stop before the ``UNSUBSCRIBE`` is sent.

        RQ sends ``UNSUBSCRIBE``, then stops its pubsub thread and joins it. A thread that
        reads the server's reply before the stop is asked for loops again, now unsubscribed,
        into ``get_message(timeout=60)``, and redis-py 8's ``stop()`` joins it without a
        bound: SIGTERM took 60 s to end a plain RQ 3.0 worker 3 times in 10 idle, 5 in 10
        mid-job (rq issue 1613). Asked first, the thread ends on the reply.
        """
        thread = getattr(self, "pubsub_thread", None)
        if thread is not None:
            with _guard("rq.unsubscribe"):
                _ask_to_stop(thread)
        return super().unsubscribe()  # type: ignore[misc]

    def clean_registries(self) -> Any:
        """RQ's maintenance; the runs of jobs it finds abandoned are closed ``failed``."""
        handler = _abandoned_handler()
        handlers: list[Any] = getattr(self, "_exc_handlers", [])
        handlers.insert(0, handler)
        try:
            return super().clean_registries()  # type: ignore[misc]
        finally:
            if handler in handlers:
                handlers.remove(handler)


def _ask_to_stop(thread: Any) -> None:
    """Clear the run flag of redis-py's pubsub thread, without waiting for it to end."""
    try:
        thread.stop(timeout=0)  # redis-py 8: stop() also joins; 0 leaves that to RQ
    except TypeError:  # an older redis-py: stop() takes no timeout and only clears the flag
        thread.stop()


def _abandoned_handler() -> Any:
    """An exception handler that closes ``failed`` the run of a job RQ found abandoned."""

    def closed(job: Job, exc_type: Any = None, exc: Any = None, tb: Any = None) -> None:
        if not (isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)):
            return
        execution = _execution(job)
        if execution is None:
            return
        with _guard("rq.abandoned"):
            _close_run(
                job.id,
                execution_id=execution,
                attempt=_attempt(job),
                status="failed",
                error=exc if isinstance(exc, BaseException) else AbandonedJobError(),
                name=_name(job),
                queue=job.origin,
            )

    return closed


class SupervisedWorker(SupervisionMixin, Worker):
    """RQ's forking :class:`~rq.worker.Worker`, each job supervised (see the module).

    .. versionadded:: 0.1
    """


class SupervisedSimpleWorker(SupervisionMixin, SimpleWorker):
    """RQ's :class:`~rq.worker.SimpleWorker` (jobs in the worker's own process), each job
    supervised.

    .. versionadded:: 0.1
    """


__all__ = [
    "ATTEMPT_KEY",
    "EXECUTION_KEY",
    "META_SCHEDULE",
    "META_SCHEDULED_FOR",
    "SPAN_KEY",
    "SupervisedSimpleWorker",
    "SupervisedWorker",
    "SupervisionMixin",
    "WorkHorseKilled",
    "instrument_cron",
    "uninstrument_cron",
]
