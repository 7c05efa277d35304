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

import types
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._lifecycle import Tokens, activate, deactivate, finish_run
from ._lifecycle import start_run as _start
from ._run import Run, Supervision
from ._spec import Lease, make_spec
from .exceptions import ConfigurationError

FinishStatus = Literal["completed", "failed", "cancelled", "retried"]
_FINISH_STATUSES: Final = ("completed", "failed", "cancelled", "retried")


class StartedRun:
    """A run started by :func:`start_run`: make it current, then finish it, from any callback.

    .. versionadded:: 0.1
    """

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def supervision(self) -> Supervision:
        """The run's handle (what ``current_job()`` returns while it is current)."""
        return self._run.handle

    @property
    def id(self) -> str:
        """The run id."""
        return self._run.id

    @property
    def attempt(self) -> int:
        """The attempt number (a reused ``(id, attempt)`` in this process is the next one)."""
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

    def attach(self) -> Tokens:
        """Make the run current in the calling context (``current_job()``, ``heartbeat()``,
        ``track()``) and its span the current OTel span; undo with :meth:`detach`.

        Returns:
            The tokens :meth:`detach` needs, in the same thread and context.
        """
        return activate(self._run)

    def detach(self, tokens: Tokens) -> None:
        """Undo :meth:`attach` (the context's previous run and span are current again)."""
        deactivate(tokens)

    def activate(self) -> _Active:
        """A context manager: the run is current inside the block (see :meth:`attach`).

        It does not finish the run: an exception leaving the block is for the framework to
        report through :meth:`finish`.
        """
        return _Active(self)

    def finish(
        self, error: BaseException | None = None, *, status: FinishStatus | None = None
    ) -> None:
        """End the run with its outcome; a second call does nothing.

        Args:
            error: the exception that ended it (for ``retried``, the retry's cause).
            status: the outcome; by default ``completed`` without ``error``, ``cancelled``
                for a cancellation (``KeyboardInterrupt``, ``SystemExit``, asyncio's
                ``CancelledError``), otherwise ``failed``. ``retried`` is a terminal status
                that is not a failure: the framework runs the task again as a new attempt.

        Raises:
            ValueError: an unknown ``status``.
        """
        if status is not None and status not in _FINISH_STATUSES:
            raise ValueError(f"status={status!r}: choose one of {', '.join(_FINISH_STATUSES)}")
        finish_run(self._run, error, status)

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

    Returns:
        The started run; make it current with :meth:`StartedRun.activate` and end it with
        :meth:`StartedRun.finish`.

    Raises:
        ConfigurationError: an invalid option.

    .. versionadded:: 0.1
    """
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigurationError(f"run_id must be a non-empty string, got {run_id!r}")
    if execution_id is not None and (not isinstance(execution_id, str) or not execution_id):
        raise ConfigurationError(f"execution_id must be a non-empty string, got {execution_id!r}")
    spec = make_spec(
        name,
        queue=queue,
        attempt=attempt,
        heartbeat_interval=heartbeat_interval,
        timeout=timeout,
        stall_timeout=stall_timeout,
        memory_limit=None,
        cpu_limit=None,
        fd_limit=None,
        on_limit=None,
        supervision_id=None,
        attributes=attributes,
        hooks={},
        tracer_provider=tracer_provider,
        lease=lease,
    )
    if spec.name is None:
        raise ConfigurationError("start_run() needs a job name")
    return StartedRun(_start(spec, run_id=run_id, attempt=attempt, execution_id=execution_id))


__all__ = ["FinishStatus", "StartedRun", "start_run"]
