"""What the commands ask the store and conclude, on typed records (no click, no rich).

The commands in ``_app`` only parse flags, call these, render and exit; the queries and the
verdicts (which runs fail ``health``, which are stuck, which ``wait`` still waits for, which
run a prefix names) live here as plain functions over :class:`~chaperone_otel.sink.JobQuery`
and :class:`~chaperone_otel.sink.JobRecord`, so they can be tested without a terminal and read
without the CLI framework. Health itself is never judged here: ``health``, ``stuck`` and
``lost`` are the store's verdicts from the one rule definition (``_health.rules``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..sink import JobQuery, JobRecord, Sink

PREFIX_MIN = 4
"""Shortest run-id prefix ``show`` accepts."""

PREFIX_SCAN = 10_000
"""How many of the newest runs a prefix is matched against."""


def filtered(query: JobQuery, name: str | None, queue: str | None) -> JobQuery:
    """``query`` narrowed to a job name and a queue, when given."""
    if name:
        query = query.named(name)
    if queue:
        query = query.on_queue(queue)
    return query


def ordered(query: JobQuery, order_by: str | None, desc: bool | None) -> JobQuery:
    """``jobs``' sort: newest first by default; ``-column`` sorts descending."""
    column = order_by or "started_at"
    descending = desc if desc is not None else (order_by is None)
    if column.startswith("-"):
        column, descending = column[1:], True
    return query.order_by(column, desc=descending)


def stuck_runs(base: JobQuery, *, include_lost: bool) -> list[JobRecord]:
    """Stuck runs of ``base`` (oldest first), then the lost ones not already listed."""
    found = base.stuck().order_by("started_at").all()
    if include_lost:
        seen = {(r.id, r.attempt) for r in found}
        found += [
            r for r in base.lost().order_by("started_at").all() if (r.id, r.attempt) not in seen
        ]
    return found


def is_failing(record: JobRecord, *, strict: bool) -> bool:
    """Whether ``health`` fails on this run: unhealthy, stuck or lost (or degraded, strict)."""
    return (
        record.health == "unhealthy"
        or record.stuck
        or record.lost
        or (strict and record.health == "degraded")
    )


@dataclass(frozen=True)
class HealthReport:
    """The ``health`` command's verdict over some runs.

    Attributes:
        records: the runs judged. failing: those that fail the check (exit 1).
        not_ok: those not plainly healthy (listed in the table), failing ones included.
        counts: runs per health, then the stuck and lost counts.
    """

    records: Sequence[JobRecord]
    failing: list[JobRecord] = field(default_factory=list)
    not_ok: list[JobRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failing


def health_report(records: Sequence[JobRecord], *, strict: bool) -> HealthReport:
    """Judge ``records`` for ``chaperone-otel health`` (see :func:`is_failing`)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.health] = counts.get(r.health, 0) + 1
    counts["stuck"] = sum(1 for r in records if r.stuck)
    counts["lost"] = sum(1 for r in records if r.lost)
    failing = [r for r in records if is_failing(r, strict=strict)]
    not_ok = [r for r in records if r.health != "healthy" or is_failing(r, strict=strict)]
    return HealthReport(records=records, failing=failing, not_ok=not_ok, counts=counts)


def still_running(records: Sequence[JobRecord], *, ignore_stuck: bool) -> list[JobRecord]:
    """The runs ``wait`` keeps waiting for (stuck and lost ones left out if asked)."""
    if not ignore_stuck:
        return list(records)
    return [r for r in records if not (r.stuck or r.lost)]


class AmbiguousPrefixError(LookupError):
    """A run-id prefix matches several runs (``ids`` holds them, sorted)."""

    def __init__(self, prefix: str, ids: Sequence[str]) -> None:
        shown = ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
        super().__init__(f"run id prefix {prefix!r} is ambiguous: {shown}")
        self.ids = list(ids)


def find_run(sink: Sink, run_id: str) -> JobRecord | None:
    """The latest attempt of ``run_id``, or of the one run whose id starts with it.

    Raises:
        AmbiguousPrefixError: the prefix (at least :data:`PREFIX_MIN` characters) matches
            more than one run among the newest :data:`PREFIX_SCAN`.
    """
    record = sink.job(run_id)
    if record is not None or len(run_id) < PREFIX_MIN:
        return record
    newest = sink.jobs.order_by("started_at", desc=True).limit(PREFIX_SCAN).all()
    ids = sorted({r.id for r in newest if r.id.startswith(run_id)})
    if len(ids) > 1:
        raise AmbiguousPrefixError(run_id, ids)
    return sink.job(ids[0]) if ids else None
