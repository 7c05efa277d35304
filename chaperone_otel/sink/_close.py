"""A run closed by hand: a lost (or forever stuck) run ended in the store.

A run whose process died without a parent to close it (``close_run()``) stays ``running``
for ever: judged lost, it keeps ``ChaperoneJobLost`` firing, ``stuck``/``health`` exiting 1
and ``wait`` waiting, until a prune deletes it with every other run of its age. Closing it
writes the same ``chaperone.job.closed`` record a parent would send (built by
:func:`chaperone_otel._start.closed_record`), through the writer's own upsert
(:func:`._ingest.write`), so the run ends as a close ends it: its outcome set, what its own
records left empty filled in, its own later records (if its process was alive after all)
only filling in what is still empty.
"""

from __future__ import annotations

from typing import Any

from .._fields import ACTIVE_STATUSES, CLOSE_STATUSES
from .._start import closed_record
from ..exceptions import RunClosed, SinkError
from ._ingest import write
from ._records import stage
from ._results import JobRecord
from ._schema import HEARTBEATS_PER_RUN


def run_to_close(
    runs: list[JobRecord], run_id: str, execution_id: str | None, attempt: int | None = None
) -> JobRecord:
    """The one active (pending or running) execution of ``run_id`` among its stored
    ``runs`` (``execution_id`` and ``attempt`` pick one when there are several: a
    redelivered task's new execution running beside its lost one).

    Raises:
        SinkError: no such run, none of it active, or several and nothing to pick one.
    """
    if not runs:
        raise SinkError(f"no run {run_id!r} in the store")
    if execution_id is not None:
        runs = [r for r in runs if r.execution_id == execution_id]
    if attempt is not None:
        runs = [r for r in runs if r.attempt == attempt]
    if not runs:
        raise SinkError(f"run {run_id!r} has no such execution or attempt")
    active = [r for r in runs if r.status in ACTIVE_STATUSES]
    if not active:
        ended = ", ".join(sorted({str(r.status) for r in runs}))
        raise SinkError(f"run {run_id!r} is not running (it is {ended}): nothing to close")
    if len(active) > 1:
        listed = ", ".join(f"attempt {r.attempt} execution {r.execution_id!r}" for r in active)
        raise SinkError(
            f"run {run_id!r} has {len(active)} active executions ({listed}): "
            "say which with execution_id (and attempt)"
        )
    return active[0]


def check_status(status: str) -> None:
    """Refuse a status a run closed by hand cannot end as (before the run is looked up)."""
    if status not in CLOSE_STATUSES:
        raise SinkError(f"status={status!r}: a run closed by hand is failed or cancelled")


def close_record(run: JobRecord, status: str, reason: str | None, now: float) -> Any:
    """The ``closed`` record that ends ``run`` with ``status`` and a :class:`RunClosed`
    error saying why (``reason``, else what the store judged: lost or stuck)."""
    check_status(status)
    if reason is None or not reason.strip():
        judged = (
            "lost: its process went silent"
            if run.lost
            else ("stuck" if run.stuck else f"{run.status}")
        )
        reason = f"closed by hand ({judged})"
    # A lost run ended at its last sign of life (its duration stays what the store showed,
    # not the months until someone closed it); a live one (stuck, pending) ends now.
    seen = run.last_seen_at if run.lost else None
    return closed_record(
        run.id,
        execution_id=run.execution_id,
        attempt=run.attempt,
        status="cancelled" if status == "cancelled" else "failed",
        error=RunClosed(reason),
        name=run.name,
        queue=run.queue,
        timeout=None,
        now=now,
        finished_at=seen.timestamp() if seen is not None else None,
        stored=True,
    )


def write_close(store: Any, cursor: Any, record: Any) -> None:
    """Write the ``closed`` record in one transaction of the writer's own upsert. The
    caller holds ``store.write_lock`` and has read the run's status again under it, so
    that no commit of the run's own end comes in between (a close replaces any outcome)."""
    write(cursor, stage([record]), heartbeat_limit=HEARTBEATS_PER_RUN, open_runs=store.open_runs)
