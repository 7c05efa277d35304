"""``sink.schedules``: slots of schedules, filtered by state like the run scopes.

:class:`ScheduleQuery` is immutable and lazy as :class:`~chaperone_otel.sink.JobQuery` is:
each scope returns a new query, SQL runs only in a terminal method. A row is a *slot* (one
due time of one schedule, missed ones included), judged at the query's evaluation time
with the schedule rules (``_schedules``, rendered by ``_schedule_sql``). It runs through
``Sink.sql()``, so a file sink and a remote owner answer it alike::

    sink.schedules.missed().today().all()     # every slot missed since midnight UTC
    sink.schedules.current().all()            # each schedule's latest slot, with its state
    sink.schedules.named("nightly").failing().count()

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Protocol

from .._schedules import DEFAULT_SCHEDULE_POLICY, SCHEDULE_PREDICATES, SchedulePolicy
from ..exceptions import ConfigurationError, SinkError
from ._schedule_sql import slots_select
from ._step_query import SqlBuilder, Step, StepQuery, to_epoch


class _SqlSink(Protocol):
    def sql(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


_COLUMNS: Final = (
    "schedule",
    "due_at",
    "opens_at",
    "grace",
    "max_runtime",
    "state",
    "run_id",
    "run_status",
    "run_started_at",
    "run_finished_at",
    "run_error_type",
    "dispatched_at",
    "consecutive_failures",
    "failure_threshold",
    "latest",
    "declared_at",
    "declare_every",
    "cron",
    "interval",
    "timezone",
    "source",
)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(value), timezone.utc)


@dataclass(frozen=True)
class SlotRecord:
    """One slot of a schedule, as judged at the query's evaluation time.

    Attributes:
        schedule: the schedule's name.
        due_at: when the slot fell due (UTC).
        opens_at: from when a run counted for it.
        grace: seconds after ``due_at`` a run could still start.
        max_runtime: seconds a run may run (None: no limit).
        state: one of ``missed``, ``overran``, ``failing``, ``scheduler_lost``, ``late``,
            ``on_time``, ``pending`` (see docs/schedules.md).
        run_id: the run that fulfils it, or None.
        run_status, run_started_at, run_finished_at, run_error_type: that run's.
        dispatched_at: when a scheduler (Celery beat) sent its run, if it recorded that: a
            missed slot with a dispatch was sent and never started (nobody consumed it).
        consecutive_failures: failed runs in a row up to this slot.
        failure_threshold: how many make the schedule failing.
        latest: the schedule's latest slot.
        declared_at: the schedule's latest declaration. declare_every: its period.
        cron, interval, timezone, source: the schedule's current definition.
    """

    schedule: str
    due_at: datetime
    opens_at: datetime
    grace: float
    max_runtime: float | None
    state: str
    run_id: str | None
    run_status: str | None
    run_started_at: datetime | None
    run_finished_at: datetime | None
    run_error_type: str | None
    dispatched_at: datetime | None
    consecutive_failures: int
    failure_threshold: int
    latest: bool
    declared_at: datetime | None
    declare_every: float | None
    cron: str | None
    interval: float | None
    timezone: str | None
    source: str | None

    @property
    def deadline(self) -> datetime:
        """``due_at + grace``: after it, a slot without a run is missed."""
        return self.due_at + timedelta(seconds=self.grace)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SlotRecord:
        values = dict(row)
        for key in (
            "due_at",
            "opens_at",
            "run_started_at",
            "run_finished_at",
            "declared_at",
            "dispatched_at",
        ):
            values[key] = _utc(values[key])
        values["consecutive_failures"] = int(values["consecutive_failures"] or 0)
        values["latest"] = bool(values["latest"])
        return cls(**values)


def _predicate_scope(name: str) -> Callable[[ScheduleQuery], ScheduleQuery]:
    def scope(self: ScheduleQuery) -> ScheduleQuery:
        return self._with("state", name)

    scope.__name__ = name
    scope.__doc__ = f"Slots where the schedule rule ``{name}`` holds."
    return scope


class ScheduleQuery(StepQuery[_SqlSink]):
    """An immutable, lazy query over schedule slots (see the module doc).

    ``since``, ``today`` and ``at`` (by due time) come from :class:`StepQuery`.
    """

    _WINDOW = "due_between"

    def __init__(
        self,
        sink: _SqlSink,
        steps: tuple[Step, ...] = (),
        *,
        policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(sink, steps, clock=clock)
        self._policy = policy

    def _with(self, *step: Any) -> ScheduleQuery:
        return ScheduleQuery(
            self._sink, (*self._steps, step), policy=self._policy, clock=self._clock
        )

    # --- scopes ----------------------------------------------------------------------------
    late = _predicate_scope("late")
    missed = _predicate_scope("missed")
    overran = _predicate_scope("overran")
    failing = _predicate_scope("failing")
    lost = _predicate_scope("lost")
    healthy = _predicate_scope("healthy")

    def current(self) -> ScheduleQuery:
        """Only each schedule's latest slot (its state now)."""
        return self._with("latest")

    def named(self, name: str) -> ScheduleQuery:
        """Slots of the schedule called ``name``."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError("named() takes a schedule name")
        return self._with("name", name)

    def between(self, start: datetime | float, end: datetime | float) -> ScheduleQuery:
        """Slots due in ``[start, end)``."""
        return self._with("due_between", to_epoch(start, "start"), to_epoch(end, "end"))

    # --- terminals -------------------------------------------------------------------------
    def sql(self) -> tuple[str, dict[str, Any]]:
        """The SELECT this query runs, with its named parameters."""
        sql = SqlBuilder()
        now = sql.params["now"] = self.now  # once: the bounds and $now are one instant
        for step in self._resolved_steps(now):
            kind = step[0]
            if kind == "state":
                if step[1] not in SCHEDULE_PREDICATES:  # pragma: no cover - scopes only
                    raise ConfigurationError(f"unknown schedule state {step[1]!r}")
                sql.add(f"is_{step[1]}")
            elif kind == "latest":
                sql.add("latest")
            elif kind == "name":
                sql.add(f"schedule = {sql.bind(step[1])}")
            elif kind == "due_between":
                if step[1] is not None:
                    sql.add(f"epoch(due_at) >= {sql.bind(step[1])}")
                if step[2] is not None:
                    sql.add(f"epoch(due_at) < {sql.bind(step[2])}")
        text = (
            f"SELECT {', '.join(_COLUMNS)} FROM ({slots_select(self._policy)}) AS s"
            + sql.where_clause()
            + " ORDER BY due_at DESC, schedule"
        )
        return text, sql.params

    def all(self) -> list[SlotRecord]:
        """The matching slots, newest due first.

        Raises:
            SinkError: more slots match than a query may return (the store's row or size
                limit): narrow the query (``named()``, ``since()``) rather than get a part
                of the slots that looks like all of them.
        """
        text, params = self.sql()
        result = self._sink.sql(text, params)
        truncated = getattr(result, "truncated", None)  # an SqlResult says, local or remote
        if truncated:
            raise SinkError(
                f"sink.schedules: {str(truncated).split(';')[0]}; narrow the query with "
                "named(), since() or between()"
            )
        columns, rows = result
        return [SlotRecord.from_row(dict(zip(columns, row, strict=True))) for row in rows]

    def first(self) -> SlotRecord | None:
        """The newest matching slot, or None."""
        found = self.all()
        return found[0] if found else None

    def count(self) -> int:
        """How many slots match (counted by the store: no row limit applies)."""
        text, params = self.sql()
        _columns, rows = self._sink.sql(f"SELECT count(*) FROM ({text}) AS q", params)
        return int(rows[0][0])

    def __repr__(self) -> str:
        return f"ScheduleQuery({self._steps!r})"


__all__ = ["ScheduleQuery", "SlotRecord"]
