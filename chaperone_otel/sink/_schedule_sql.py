"""The schedule states in SQL: one SELECT over the slots, rendered from ``_schedules``.

Every slot row of ``schedule_slots`` is joined to the run that fulfils it (its latest
attempt) and to its schedule, and gets the slot signals of :mod:`chaperone_otel._schedules`
as columns; the states are the same rule trees the Python evaluator and the alert rules use,
rendered by :meth:`~chaperone_otel._health.Expr.sql` over :data:`SLOT_COLUMNS`.

A slot also shows when a scheduler (Celery beat) dispatched its run, if it recorded that:
the dispatch naming the slot, the one of its run, or one sent in its window.

Two signals are per schedule rather than per slot. A failing streak is counted along the
slots: a completed run ends it, a slot's own or one that fulfils no slot (a rerun by hand,
which ends the streak from the slot it finished after: ``reruns``). The scheduler's silence
(``declared_at``, ``declare_every``) is given to the schedule's latest slot only, so
``lost`` holds on one row per schedule, not on its whole history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .._schedules import (
    DEFAULT_SCHEDULE_POLICY,
    SCHEDULE_PREDICATES,
    SIGNALS,
    SchedulePolicy,
    schedule_rules,
)

SLOT_COLUMNS: Final[Mapping[str, str]] = {
    "due_at": "epoch(due_at)",
    "opens_at": "epoch(opens_at)",
    "grace": "grace",
    "started_at": "epoch(run_started_at)",
    "running_since": "(CASE WHEN run_status = 'running' THEN epoch(run_started_at) END)",
    "max_runtime": "max_runtime",
    "consecutive_failures": "consecutive_failures",
    "failure_threshold": "failure_threshold",
    "declared_at": "(CASE WHEN latest THEN epoch(declared_at) END)",
    "declare_every": "(CASE WHEN latest THEN declare_every END)",
}
"""How each slot signal is spelled over :data:`SLOTS_BASE`'s rows, in epoch seconds."""

if set(SLOT_COLUMNS) != set(SIGNALS):  # pragma: no cover - a definition error
    raise ValueError("SLOT_COLUMNS must spell every slot signal of _schedules")

SLOTS_BASE: Final = """WITH runs AS (
  SELECT run_id, schedule, status, started_at, finished_at, error_type FROM jobs
  WHERE schedule IS NOT NULL
  QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY attempt DESC) = 1
), reruns AS (
  SELECT sl.schedule, sl.due_at, count(*) AS completed
  FROM runs r ASOF JOIN schedule_slots sl
    ON sl.schedule = r.schedule AND r.finished_at >= sl.due_at
  WHERE r.status = 'completed'
    AND r.run_id NOT IN (SELECT run_id FROM schedule_slots WHERE run_id IS NOT NULL)
  GROUP BY sl.schedule, sl.due_at
), slots AS (
  SELECT sl.schedule, sl.due_at, sl.opens_at, sl.grace, sl.max_runtime,
    sl.failure_threshold, sl.run_id, r.status AS run_status, r.started_at AS run_started_at,
    r.finished_at AS run_finished_at, r.error_type AS run_error_type,
    (SELECT min(x.dispatched_at) FROM schedule_dispatches x WHERE x.schedule = sl.schedule
      AND (x.scheduled_for = sl.due_at OR (sl.run_id IS NOT NULL AND x.run_id = sl.run_id)
        OR (x.scheduled_for IS NULL AND x.dispatched_at >= sl.opens_at
          AND x.dispatched_at <= sl.due_at + to_seconds(sl.grace)))) AS dispatched_at,
    coalesce(rr.completed, 0) AS reruns_completed,
    sum(CASE WHEN r.status = 'completed' THEN 1 ELSE 0 END) OVER (
      PARTITION BY sl.schedule ORDER BY sl.due_at ROWS UNBOUNDED PRECEDING)
    + coalesce(sum(rr.completed) OVER (PARTITION BY sl.schedule ORDER BY sl.due_at
      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS streak
  FROM schedule_slots sl LEFT JOIN runs r ON r.run_id = sl.run_id
    LEFT JOIN reruns rr ON rr.schedule = sl.schedule AND rr.due_at = sl.due_at
), counted AS (
  SELECT s.*,
    CASE WHEN reruns_completed > 0 THEN 0 ELSE count(*) FILTER (
      WHERE run_status = 'failed') OVER (
      PARTITION BY s.schedule, streak ORDER BY due_at ROWS UNBOUNDED PRECEDING)
    END AS consecutive_failures,
    row_number() OVER (PARTITION BY s.schedule ORDER BY due_at DESC) = 1 AS latest,
    d.declared_at, d.declare_every, d.cron, d."interval", d.timezone, d.source
  FROM slots s JOIN schedules d ON d.name = s.schedule
)"""
"""The slots with their run, streak and schedule (a CTE prefix; ``counted`` is its rows)."""


def state_case(policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> str:
    """SQL ``CASE`` giving :meth:`ScheduleRules.state` (``$now`` unbound)."""
    rules = schedule_rules(policy)
    whens = " ".join(
        f"WHEN COALESCE({expr.sql(SLOT_COLUMNS)}, FALSE) THEN '{name}'"
        for name, expr in rules.ordered()
    )
    return f"CASE {whens} ELSE 'pending' END"


def predicate(name: str, policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> str:
    """A schedule predicate (``missed``, ``late`` …) as a NULL-safe SQL boolean."""
    return f"COALESCE({schedule_rules(policy).by_name(name).sql(SLOT_COLUMNS)}, FALSE)"


def slots_select(policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> str:
    """Every slot with its signals, its state and one boolean column per predicate
    (``$now`` unbound): what :class:`~.ScheduleQuery` filters and the view shows."""
    flags = ", ".join(f"{predicate(p, policy)} AS is_{p}" for p in SCHEDULE_PREDICATES)
    signals = ", ".join(
        f"{sql} AS sig_{name}" for name, sql in SLOT_COLUMNS.items() if name not in _PLAIN
    )
    return (
        f"{SLOTS_BASE} SELECT counted.*, {state_case(policy)} AS state, {flags}, {signals} "
        "FROM counted"
    )


_PLAIN: Final = frozenset(
    {"grace", "max_runtime", "consecutive_failures", "failure_threshold"}
)  # signals that are already plain columns of the rows


def view_statements(policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> list[str]:
    """``schedule_slot_states``: the slots with their states for raw SQL users (``$now`` is
    the wall clock there, as in ``jobs_health``)."""
    text = slots_select(policy).replace("$now", "epoch(current_timestamp)")
    return [f"CREATE OR REPLACE VIEW schedule_slot_states AS {text}"]
