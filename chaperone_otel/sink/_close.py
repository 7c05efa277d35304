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

from typing import Any, Final

from .._start import closed_record
from ..exceptions import RunClosed, SinkError
from ._ingest import write
from ._records import stage
from ._results import JobRecord
from ._schema import HEARTBEATS_PER_RUN

CLOSE_STATUSES: Final = ("failed", "cancelled")
"""What a run closed by hand may end as: it did not complete."""
_ACTIVE: Final = ("pending", "running")


def run_to_close(runs: list[JobRecord], run_id: str, execution_id: str | None) -> JobRecord:
    """The one active (pending or running) execution of ``run_id`` among its stored
    ``runs`` (``execution_id`` picks one when there are several: a redelivered task's new
    execution running beside its lost one).

    Raises:
        SinkError: no such run, none of it active, or several and no ``execution_id``.
    """
    if not runs:
        raise SinkError(f"no run {run_id!r} in the store")
    if execution_id is not None:
        runs = [r for r in runs if r.execution_id == execution_id]
        if not runs:
            raise SinkError(f"run {run_id!r} has no execution {execution_id!r}")
    active = [r for r in runs if r.status in _ACTIVE]
    if not active:
        ended = ", ".join(sorted({str(r.status) for r in runs}))
        raise SinkError(f"run {run_id!r} is not running (it is {ended}): nothing to close")
    if len(active) > 1:
        listed = ", ".join(f"attempt {r.attempt} execution {r.execution_id!r}" for r in active)
        raise SinkError(
            f"run {run_id!r} has {len(active)} active executions ({listed}): "
            "say which with execution_id"
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
    return closed_record(
        run.id,
        execution_id=run.execution_id,
        attempt=run.attempt,
        status=status,  # type: ignore[arg-type]
        error=RunClosed(reason),
        name=run.name,
        queue=run.queue,
        timeout=None,
        now=now,
    )


def write_close(store: Any, cursor: Any, record: Any) -> None:
    """Write the ``closed`` record in one transaction of the writer's own upsert."""
    with store.write_lock:
        write(
            cursor, stage([record]), heartbeat_limit=HEARTBEATS_PER_RUN, open_runs=store.open_runs
        )
