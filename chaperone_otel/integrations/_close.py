"""Closing a run from another process: the stop-gap the RQ integration uses.

The worker's main process sees a work-horse die (SIGKILL, RQ's own kill past the timeout,
``send_stop_job_command``) or finds a job abandoned, but the run was started in the horse,
which is gone. Until the core's cross-process outcome API (issue 13) lands, this module
publishes the run's end itself; switch :func:`close_run`'s callers to that API then.
"""

from __future__ import annotations

from typing import Any, Final

from .. import semconv as sc
from .._config import get_config
from .._events import LifecycleRecord, receivers
from .._events import publish as deliver
from .._lifecycle import _error_type
from .._record import record_attributes
from .._run import Run
from .._runtime import runtime
from .._spec import make_spec, static_for

CLOSE_SEQUENCE: Final = 1 << 62
"""The sequence of a record that closes a run from another process: above any its own
process wrote (the store keeps a run's highest-sequence state)."""


def close_run(
    name: str,
    *,
    run_id: str,
    attempt: int,
    queue: str | None,
    timeout: float | None,
    started_at: float | None,
    status: str,
    error: BaseException,
    pid: int | None,
    heartbeat_interval: Any,
) -> None:
    """Record the end of a run another process started and could not finish (its horse died).

    A stop-gap until the core's cross-process outcome API (issue 13) lands: one ``finished``
    lifecycle record for ``(run_id, attempt)``, with a sequence above any the dead process
    wrote, so the store applies it over the run's last state. It carries the identity, the
    outcome and the dead process's pid; the run's progress, heartbeats and resources, which
    only the dead process knew, are not in it (the store's row takes the record's state).
    No span is ended (the horse's span died with it) and no metric is counted here.
    """
    spec = make_spec(
        name,
        queue=queue,
        attempt=attempt,
        heartbeat_interval=heartbeat_interval,
        timeout=timeout,
        stall_timeout=None,
        memory_limit=None,
        cpu_limit=None,
        fd_limit=None,
        on_limit=None,
        supervision_id=None,
        attributes=None,
        hooks={},
        tracer_provider=None,
    )
    run = Run(spec, static_for(spec, get_config()), _never, run_id=run_id, attempt=attempt)
    now = run.clock()
    if started_at is not None and started_at <= now:
        run.started_at = started_at
        run.timeout_at = started_at + run.timeout if run.timeout else None
    run.status = status
    run.finished_at = now
    run.error_type = _error_type(error)
    run.error_message = str(error)
    run._seq = CLOSE_SEQUENCE - 1
    health = runtime().rules.settled(status, run.absent)
    run.health = health or ("unhealthy" if status == "failed" else "healthy")
    to = receivers(sc.EVENT_JOB_FINISHED)
    if not to:
        return
    attributes = dict(record_attributes(run, now))
    if pid is not None:
        attributes[sc.ATTR_PROCESS_PID] = pid
    deliver(
        LifecycleRecord(
            event_name=sc.EVENT_JOB_FINISHED,
            timestamp=now,
            attributes=attributes,
            severity="ERROR" if status == "failed" else "INFO",
            body=f"{name} finished",
        ),
        to,
    )


def _never(run: Run, exc: BaseException | None, status: str | None = None) -> None:
    """A closed run's finisher: it was finished by :func:`close_run`, never again."""
