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
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._terminal import terminal_safe

if TYPE_CHECKING:
    from ..sink import JobQuery, JobRecord, Sink

HEALTH_VERDICTS = ("healthy", "degraded", "unhealthy")
"""The verdicts ``health`` counts, each always present in its counts."""

PREFIX_MIN = 4
"""Shortest run-id prefix ``show`` and ``health`` accept."""

PREFIX_SHOWN = 10
"""How many candidates an ambiguous prefix lists."""

_PREFIX_SQL = f"""
SELECT run_id, arg_max(name, attempt), max(started_at)
FROM jobs
WHERE run_id LIKE ? ESCAPE '\\'
GROUP BY run_id
ORDER BY run_id = ? DESC, max(started_at) DESC NULLS LAST, run_id
LIMIT {PREFIX_SHOWN + 1}
"""
"""The runs whose id starts with a prefix (the exact id first, then the newest): a
bound ``LIKE`` over the whole store, not a scan of recent runs in Python."""


def filtered(query: JobQuery, name: str | None, queue: str | None) -> JobQuery:
    """``query`` narrowed to a job name and a queue, when given (given empty is refused by
    the scope: ``--name "$JOB"`` with JOB unset must not report on every job)."""
    if name is not None:
        query = query.named(name)
    if queue is not None:
        query = query.on_queue(queue)
    return query


def sort_order(order_by: str | None, desc: bool | None) -> tuple[str, bool]:
    """``jobs``' sort as ``(column, descending)``: newest first by default; ``-column`` or
    ``--desc`` sorts descending.

    Raises:
        ValueError: ``-column`` with ``--asc``, which ask for both directions (it sorted
            descending without a word).
    """
    column = order_by or "started_at"
    descending = desc if desc is not None else (order_by is None)
    if column.startswith("-"):
        if desc is False:
            raise ValueError(
                f"--order-by {column} sorts descending and --asc ascending: give one "
                f"(--order-by {column[1:]} --asc, or --order-by {column})"
            )
        column, descending = column[1:], True
    return column, descending


def ordered(query: JobQuery, order_by: str | None, desc: bool | None) -> JobQuery:
    """``query`` in ``jobs``' sort (see :func:`sort_order`)."""
    column, descending = sort_order(order_by, desc)
    return query.order_by(column, desc=descending)


def stuck_runs(base: JobQuery, *, include_lost: bool) -> list[JobRecord]:
    """Stuck runs of ``base`` (oldest first), then the lost ones not already listed."""
    found = base.stuck().order_by("started_at").all()
    if include_lost:
        seen = {(r.id, r.attempt, r.execution_id) for r in found}
        found += [
            r
            for r in base.lost().order_by("started_at").all()
            if (r.id, r.attempt, r.execution_id) not in seen
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
        counts: runs per health (``healthy``, ``degraded``, ``unhealthy``: every one,
            0 when none), then the ``stuck`` and ``lost`` counts.
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
    counts: dict[str, int] = dict.fromkeys(HEALTH_VERDICTS, 0)  # a script reads every key
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


class RunIdError(LookupError):
    """A run id that names no single run for a reason the user must fix (exit 2)."""


class AmbiguousPrefixError(RunIdError):
    """A run-id prefix matches several runs.

    Attributes:
        candidates: ``(run_id, job name, started_at)`` of the matches, newest first (at
            most :data:`PREFIX_SHOWN`). more: whether there are others.
    """

    def __init__(self, prefix: str, candidates: Sequence[tuple[str, str, Any]], more: bool) -> None:
        lines = [f"run id prefix {prefix!r} matches several runs; give more of the id:"]
        lines += [
            terminal_safe(f"  {run_id}  {name}  {_moment(started)}")
            for run_id, name, started in candidates
        ]
        if more:
            lines.append("  …")
        super().__init__("\n".join(lines))
        self.candidates = list(candidates)
        self.more = more


def _moment(value: Any) -> str:
    """A start time as ``2024-05-01 12:00:03`` (UTC, as stored)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


class PrefixTooShortError(RunIdError):
    """A run-id prefix shorter than :data:`PREFIX_MIN` that is no run's whole id."""

    def __init__(self, prefix: str) -> None:
        super().__init__(
            f"run id prefix {prefix!r} is too short: give at least {PREFIX_MIN} characters "
            "(no run has exactly this id)"
        )


def like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern (``ESCAPE '\\'``) for the values that start with ``prefix``: its
    ``%``, ``_`` and ``\\`` match only themselves."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def resolve_run_id(sink: Sink, given: str) -> str | None:
    """The full id ``given`` names: a run's whole id, or the one id that starts with it.

    One query over the whole store (``run_id LIKE prefix || '%'``, bound), so a run is found
    however many have run since. ``show`` and ``health`` share it.

    Raises:
        PrefixTooShortError: ``given`` is shorter than :data:`PREFIX_MIN` and no run's id.
        AmbiguousPrefixError: it starts several run ids (and is none of them).
    """
    if len(given) < PREFIX_MIN:
        if sink.jobs.with_id(given).count():  # a short id of its own (supervised(id="a1"))
            return given
        raise PrefixTooShortError(given)
    _, rows = sink.sql(_PREFIX_SQL, [like_prefix(given), given])
    if not rows:
        return None
    if rows[0][0] == given or len(rows) == 1:
        return str(rows[0][0])
    candidates = [(str(r[0]), str(r[1]), r[2]) for r in rows[:PREFIX_SHOWN]]
    raise AmbiguousPrefixError(given, candidates, more=len(rows) > PREFIX_SHOWN)


def find_run(sink: Sink, run_id: str) -> JobRecord | None:
    """The latest attempt of the run ``run_id`` names (see :func:`resolve_run_id`)."""
    full = resolve_run_id(sink, run_id)
    return None if full is None else sink.job(full)


def read_unwritten(sink: Sink) -> bool:
    """True when the command read the store file itself: no process holds it, so nothing
    new reaches it while the command runs.

    An owner (an app's embedded sink, ``sink serve``) holds the file's lock as long as it
    runs, and another process's reader goes through its query URL; a file the CLI could
    open with a read-only connection has no writer. Its LOST runs may still be alive then:
    their processes may be sending to a ``sink serve`` that is down, which the store alone
    cannot tell from dead.
    """
    from ..sink import LocalSink  # noqa: PLC0415 - loaded already: a store is open

    return isinstance(sink, LocalSink) and not sink.written_here


def lost_while_unwritten(sink: Sink, records: Sequence[JobRecord]) -> list[JobRecord]:
    """The LOST runs among ``records`` when nothing writes the store (else none): the runs
    :func:`~chaperone_otel.cli._render.unwritten_hint` speaks of."""
    lost = [r for r in records if r.lost]
    return lost if lost and read_unwritten(sink) else []
