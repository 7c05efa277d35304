"""The schedule states in SQL: one SELECT over the slots, rendered from ``_schedules``.

Every slot row of ``schedule_slots`` is joined to the run that fulfils it (its latest
attempt) and to its schedule, and gets the slot signals of :mod:`chaperone_otel._schedules`
as columns; the states are the same rule trees the Python evaluator and the alert rules use,
rendered by :meth:`~chaperone_otel._health.Expr.sql` over :data:`SLOT_COLUMNS`.

A slot also shows when a scheduler (Celery beat) dispatched its run, if it recorded that:
the dispatch naming the slot, the one of its run, or one sent in its window.

Two signals are per schedule rather than per slot. A failing streak is ended by a
completed run of the schedule, a slot's own or one that fulfils no slot (a rerun by hand),
in the order the runs *finished* (``breaks``, numbered by finish time): a slot's
``consecutive_failures`` counts the failed slot runs, up to it, that finished after the
last completion before the next slot fell due (for the newest slot: the last completion so
far). So a rerun that completes after a failure ends the streak, and a failure after the
rerun starts a new one, whatever slots they fall between. The scheduler's silence
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
), breaks AS (
  SELECT schedule, finished_at,
    row_number() OVER (PARTITION BY schedule ORDER BY finished_at) AS k
  FROM runs WHERE status = 'completed' AND finished_at IS NOT NULL
), slot_runs AS (
  SELECT sl.schedule, sl.due_at, sl.opens_at, sl.grace, sl.max_runtime,
    sl.failure_threshold, sl.run_id, r.status AS run_status, r.started_at AS run_started_at,
    r.finished_at AS run_finished_at, r.error_type AS run_error_type,
    coalesce(lead(sl.due_at) OVER (PARTITION BY sl.schedule ORDER BY sl.due_at),
      'infinity'::TIMESTAMP) AS judged_until
  FROM schedule_slots sl LEFT JOIN runs r ON r.run_id = sl.run_id
), failures AS (
  SELECT f.schedule, f.due_at, coalesce(b.k, 0) AS streak,
    row_number() OVER (PARTITION BY f.schedule, coalesce(b.k, 0) ORDER BY f.due_at) AS n
  FROM slot_runs f ASOF LEFT JOIN breaks b
    ON b.schedule = f.schedule AND f.run_finished_at > b.finished_at
  WHERE f.run_status = 'failed'
), slots AS (
  SELECT s.*, coalesce(b.k, 0) AS streak,
    (SELECT min(x.dispatched_at) FROM schedule_dispatches x WHERE x.schedule = s.schedule
      AND (x.scheduled_for = s.due_at OR (s.run_id IS NOT NULL AND x.run_id = s.run_id)
        OR (x.scheduled_for IS NULL AND x.dispatched_at >= s.opens_at
          AND x.dispatched_at <= s.due_at + to_seconds(s.grace)))) AS dispatched_at
  FROM slot_runs s ASOF LEFT JOIN breaks b
    ON b.schedule = s.schedule AND s.judged_until > b.finished_at
), counted AS (
  SELECT s.*, coalesce(f.n, 0) AS consecutive_failures,
    row_number() OVER (PARTITION BY s.schedule ORDER BY s.due_at DESC) = 1 AS latest,
    d.declared_at, d.declare_every, d.cron, d."interval", d.timezone, d.source
  FROM slots s ASOF LEFT JOIN failures f
    ON f.schedule = s.schedule AND f.streak = s.streak AND s.due_at >= f.due_at
  JOIN schedules d ON d.name = s.schedule
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
