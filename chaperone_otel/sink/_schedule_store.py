"""Schedules in the store: declarations in, slots out, runs matched to slots.

Detection runs where the store is (the embedded owner, ``sink serve``), because a process
that did not run cannot report that it did not:

* :func:`store_declarations` upserts ``schedules`` in the writer's transaction: one row per
  name; the newest declaration (by its time) decides the definition. A changed definition
  first makes the old one's slots due up to the change (by the old grace and limits), then
  moves ``changed_at`` (the new slots start there). Repeated, reordered declarations leave
  the same row.
* :func:`evaluate` materialises the slots that fell due since the last pass (a missed slot is
  a row like any other, so it can be listed and counted) and gives each unfulfilled slot the
  run that fulfils it: the run that names the slot (``scheduled_for``), else the first run
  of the schedule that started in ``(opens_at, due_at + grace]`` and fulfils no other slot.
  A cron slot opens :attr:`SchedulePolicy.early` before it is due (at most half-way to the
  previous slot); an interval slot is due ``interval`` after the previous run started (or
  after the previous slot fell due, when it was missed) and opens there.
* :class:`ScheduleEvaluator` runs :func:`evaluate` once a second on its own thread, under the
  store's write lock (the writer thread holds it for each transaction).
* A schedule leaves the store when it is forgotten (:func:`forget`,
  ``sink.forget_schedule(name)``) or retired by ``prune`` (:data:`PRUNE_SCHEDULES`: no
  declaration, run or dispatch since the cutoff), with its slots and dispatches; declared
  again, it starts afresh from that declaration. Both leave a tombstone
  (``forgotten_schedules``, at the forget's time or at prune's cutoff): a declaration or
  dispatch made by then that arrives later (a delayed OTLP batch, a process that declared
  it before the operator forgot it) is ignored, so only a newer declaration brings the
  schedule back (and removes the tombstone). ``prune`` drops the tombstones older than
  its cutoff.

The states themselves are not stored: they depend on the time of the question, and are
judged at query time from these rows (``_schedule_sql``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Final

import duckdb

from .. import semconv as sc
from .._events import LifecycleRecord
from .._safety import record_internal_error
from .._schedules import (
    DEFAULT_SCHEDULE_POLICY,
    SchedulePolicy,
    ScheduleSpec,
    cron_dues,
    previous_cron_due,
    spec_from_attributes,
)

SLOTS_PER_PASS: Final = 10_000
"""Most new slots one pass makes per schedule (a store closed for long catches up over
several passes)."""

MATCH_WINDOW: Final = 7 * 86400.0
"""Seconds back that unfulfilled slots still look for a late-arriving run's record."""


FORGET_SCHEDULE: Final = (
    # The tombstone first, while the schedule's row is there: it covers the forget's time
    # ($at, the store's clock) and the latest declaration stored, whichever is later, so a
    # declaring process whose clock is ahead of the store's is not let back in by its own
    # delayed declarations from before the forget.
    "DELETE FROM forgotten_schedules WHERE name = $name",
    "INSERT INTO forgotten_schedules SELECT $name, greatest($at, "
    "coalesce((SELECT max(declared_at) FROM schedules WHERE name = $name), $at))",
    "DELETE FROM schedule_slots WHERE schedule = $name",
    "DELETE FROM schedule_dispatches WHERE schedule = $name",
    "DELETE FROM schedules WHERE name = $name",
)
"""What forgetting the schedule ``$name`` at ``$at`` (a naive UTC timestamp) does: its row,
slots and dispatches deleted (its runs stay: they are runs like any other, pruned by age),
and its tombstone written."""

FORGET_FOUND: Final = (
    "SELECT (SELECT count(*) FROM schedules WHERE name = $name) "
    "+ (SELECT count(*) FROM schedule_slots WHERE schedule = $name) "
    "+ (SELECT count(*) FROM schedule_dispatches WHERE schedule = $name)"
)
"""Non-zero when the store has anything of the schedule ``$name`` to forget."""

_RETIRED_COUNT: Final = "SELECT count(*) FROM chaperone_retired"

PRUNE_SCHEDULES: Final = (
    # A schedule with no sign of life since the cutoff is retired, with its slots and
    # dispatches: not declared since (a live declaring process re-declares at configure()
    # and every declare_every), no run that prune kept (it runs after the runs' delete: a
    # run kept is recent or still reporting), no dispatch since. A process that declared
    # once, long ago, and whose job still runs keeps its schedule by the runs.
    "CREATE OR REPLACE TEMP TABLE chaperone_retired AS SELECT name FROM schedules s "
    "WHERE declared_at < $cutoff "
    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.schedule = s.name) "
    "AND NOT EXISTS (SELECT 1 FROM schedule_dispatches d "
    "WHERE d.schedule = s.name AND d.dispatched_at >= $cutoff)",
    _RETIRED_COUNT,
    # A retired schedule gets a tombstone at the cutoff, as a forgotten one does at the
    # forget: a declaration from before the cutoff delivered later (a delayed batch, a
    # process that declared long ago) does not bring it back; one made since does.
    "DELETE FROM forgotten_schedules WHERE name IN (SELECT name FROM chaperone_retired)",
    "INSERT INTO forgotten_schedules SELECT name, $cutoff FROM chaperone_retired",
    "DELETE FROM schedule_slots WHERE schedule IN (SELECT name FROM chaperone_retired)",
    "DELETE FROM schedule_dispatches WHERE schedule IN (SELECT name FROM chaperone_retired)",
    "DELETE FROM schedules WHERE name IN (SELECT name FROM chaperone_retired)",
    "DROP TABLE chaperone_retired",
    # Every schedule kept keeps its newest slot: the evaluator continues from it, and would
    # otherwise make the pruned slots again from the schedule's definition.
    "DELETE FROM schedule_slots s WHERE due_at < $cutoff AND due_at < "
    "(SELECT max(x.due_at) FROM schedule_slots x WHERE x.schedule = s.schedule)",
    "DELETE FROM schedule_dispatches WHERE dispatched_at < $cutoff",
    # A declaration older than the cutoff arriving after this would make a schedule that
    # the next prune retires again: such tombstones have done their part (the ones this
    # prune wrote, at the cutoff itself, stay until the next).
    "DELETE FROM forgotten_schedules WHERE forgotten_at < $cutoff",
)
"""What ``prune`` deletes of the schedule tables (``$cutoff``: a naive UTC timestamp), after
it deleted the old runs, in the same transaction (:func:`prune_schedules` runs them)."""


def prune_schedules(cur: Any, cutoff: datetime) -> int:
    """Run :data:`PRUNE_SCHEDULES` on ``cur`` (inside prune's transaction) with the naive
    UTC ``cutoff``. Returns the number of schedules retired."""
    retired = 0
    for statement in PRUNE_SCHEDULES:
        found = cur.execute(statement, {"cutoff": cutoff} if "$cutoff" in statement else None)
        if statement is _RETIRED_COUNT:
            row = found.fetchone()
            retired = int(row[0]) if row else 0
    return retired


def forget(cur: Any, name: str, at: float) -> bool:
    """Forget the schedule ``name`` at ``at`` (Unix seconds, the store's clock) with
    :data:`FORGET_SCHEDULE`, inside the caller's transaction. Returns True if the store had
    the schedule (or slots or dispatches of it)."""
    found = cur.execute(FORGET_FOUND, {"name": name}).fetchone()
    for statement in FORGET_SCHEDULE:
        params = {"name": name, "at": _ts(at)} if "$at" in statement else {"name": name}
        cur.execute(statement, params)
    return bool(found and found[0])


def _forgotten(cur: Any) -> dict[str, float]:
    """Each forgotten schedule's tombstone: name → Unix seconds."""
    rows = cur.execute("SELECT name, forgotten_at FROM forgotten_schedules").fetchall()
    return {name: _epoch(at) or 0.0 for name, at in rows}


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc).timestamp()


def store_declarations(cur: Any, records: Sequence[LifecycleRecord]) -> None:
    """Upsert the declared schedules and insert the dispatches (inside the caller's
    transaction). A record of a forgotten schedule made at or before its tombstone is
    ignored; a declaration made after it declares the schedule afresh."""
    forgotten = _forgotten(cur)
    newest: dict[str, tuple[float, ScheduleSpec, LifecycleRecord]] = {}
    for record in records:
        if record.event_name == sc.EVENT_SCHEDULE_DISPATCHED:
            name = record.attributes.get(sc.ATTR_SCHEDULE_NAME)
            if record.timestamp > forgotten.get(str(name), -math.inf):
                _store_dispatch(cur, record)
            continue
        spec = spec_from_attributes(record.attributes)
        if spec is None or record.timestamp <= forgotten.get(spec.name, -math.inf):
            continue
        current = newest.get(spec.name)
        if current is None or record.timestamp >= current[0]:
            newest[spec.name] = (record.timestamp, spec, record)
    for name, (at, spec, record) in newest.items():
        if name in forgotten:  # declared since it was forgotten: back, afresh
            cur.execute("DELETE FROM forgotten_schedules WHERE name = ?", [name])
        row = cur.execute(
            'SELECT cron, "interval", timezone, grace, max_runtime, failure_threshold, '
            "declare_every, day_and, declared_at, changed_at FROM schedules WHERE name = ?",
            [name],
        ).fetchone()
        values = [
            spec.cron,
            spec.interval,
            spec.timezone,
            spec.grace,
            spec.max_runtime,
            spec.failure_threshold,
            spec.declare_every,
            spec.day_and,
            spec.source,
            _text(record.attributes.get(sc.ATTR_HOST_NAME)),
            _text(record.attributes.get(sc.ATTR_SERVICE_INSTANCE_ID)),
        ]
        if row is None:
            cur.execute(
                'INSERT INTO schedules (cron, "interval", timezone, grace, max_runtime, '
                "failure_threshold, declare_every, day_and, source, host, service_instance_id, "
                "name, first_declared_at, changed_at, declared_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [*values, name, _ts(at), _ts(at), _ts(at)],
            )
            continue
        declared_at = _epoch(row[8]) or 0.0
        if at < declared_at:  # an older declaration arriving late: nothing new
            continue
        changed = tuple(row[:8]) != spec.definition()
        changed_at = _ts(at) if changed else row[9]
        if changed:
            # The slots due before the change are the old definition's: make them now, by
            # its grace and limits, or the new slots (from the change) would skip them
            # (a store closed while they fell due, a redeploy that changes the grace).
            old = _spec_of(name, *row[:8])
            _evaluate_one(cur, old, _epoch(row[9]) or 0.0, at, DEFAULT_SCHEDULE_POLICY)
        cur.execute(
            'UPDATE schedules SET cron = ?, "interval" = ?, timezone = ?, grace = ?, '
            "max_runtime = ?, failure_threshold = ?, declare_every = ?, day_and = ?, "
            "source = ?, host = ?, service_instance_id = ?, changed_at = ?, declared_at = ? "
            "WHERE name = ?",
            [*values, changed_at, _ts(at), name],
        )


def _store_dispatch(cur: Any, record: LifecycleRecord) -> None:
    attrs = record.attributes
    run_id = _text(attrs.get(sc.ATTR_SCHEDULE_RUN_ID)) or None
    due = attrs.get(sc.ATTR_SCHEDULE_SCHEDULED_FOR)
    due_at = (
        _ts(float(due)) if isinstance(due, (int, float)) and not isinstance(due, bool) else None
    )
    if run_id is not None:  # the same dispatch delivered twice is one row
        cur.execute("DELETE FROM schedule_dispatches WHERE run_id = ?", [run_id])
    cur.execute(
        "INSERT INTO schedule_dispatches VALUES (?, ?, ?, ?)",
        [attrs[sc.ATTR_SCHEDULE_NAME], run_id, due_at, _ts(record.timestamp)],
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def evaluate(cur: Any, now: float, policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> int:
    """Materialise the slots due by ``now`` and match runs to open slots, in one
    transaction on ``cur`` (the caller holds the store's write lock). Returns the number of
    new slots."""
    cur.execute("BEGIN TRANSACTION")
    try:
        made = 0
        for spec, changed_at in _schedules(cur):
            made += _evaluate_one(cur, spec, changed_at, now, policy)
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        raise
    return made


def _schedules(cur: Any) -> Iterable[tuple[ScheduleSpec, float]]:
    rows = cur.execute(
        'SELECT name, cron, "interval", timezone, grace, max_runtime, failure_threshold, '
        "declare_every, day_and, changed_at FROM schedules ORDER BY name"
    ).fetchall()
    for name, *definition, changed_at in rows:
        yield _spec_of(name, *definition), _epoch(changed_at) or 0.0


def _spec_of(name: str, *definition: Any) -> ScheduleSpec:
    """The spec of a ``schedules`` row: its name, then its ``definition()`` columns."""
    cron, interval, tz, grace, max_runtime, threshold, every, day_and = definition
    return ScheduleSpec(
        name=name,
        cron=cron,
        interval=interval,
        timezone=tz,
        grace=grace,
        max_runtime=max_runtime,
        failure_threshold=threshold,
        declare_every=every,
        day_and=bool(day_and),
    )


class _Runs:
    """The schedule's runs not yet given to a slot, earliest start first."""

    def __init__(self, cur: Any, name: str, since: float) -> None:
        self.rows: list[tuple[str, float, float | None]] = [
            (run_id, _epoch(started) or 0.0, _epoch(scheduled_for))
            for run_id, started, scheduled_for in cur.execute(
                "SELECT run_id, min(started_at), max(scheduled_for) FROM jobs "
                "WHERE schedule = ? AND started_at >= ? AND run_id NOT IN "
                "(SELECT run_id FROM schedule_slots WHERE schedule = ? AND run_id IS NOT NULL) "
                "GROUP BY run_id ORDER BY 2",
                [name, _ts(since), name],
            ).fetchall()
        ]

    def latest_in(self, after: float, until: float) -> float | None:
        """The start of the latest run that started in ``(after, until]`` (None: none), the
        runs up to it removed from the pool (the run that comes with an interval schedule's
        declaration: it anchors the first slot, it fulfils none)."""
        taken = [i for i, (_r, started, _s) in enumerate(self.rows) if after < started <= until]
        if not taken:
            return None
        latest = max(self.rows[i][1] for i in taken)
        for i in reversed(taken):
            del self.rows[i]
        return latest

    def take(self, due: float, opens: float, deadline: float) -> tuple[str, float] | None:
        """The run for the slot due at ``due``: the one naming it (if it started by the
        deadline), else the first not naming another slot that started in ``(opens,
        deadline]``; removed from the pool."""
        chosen = None
        for i, (_run_id, started, scheduled_for) in enumerate(self.rows):
            if scheduled_for is not None and abs(scheduled_for - due) < 0.001:
                if started <= deadline:
                    chosen = i
                break
        if chosen is None:
            for i, (_run_id, started, scheduled_for) in enumerate(self.rows):
                if _for_other_slot(scheduled_for, due):
                    continue
                if opens < started <= deadline:
                    chosen = i
                    break
        if chosen is None:
            return None
        run_id, started, _ = self.rows.pop(chosen)
        return run_id, started


def _for_other_slot(scheduled_for: float | None, due: float) -> bool:
    """A run naming a slot serves that slot only (a cron slot); an interval schedule's
    runs never name one."""
    return scheduled_for is not None and abs(scheduled_for - due) >= 0.001


def _evaluate_one(
    cur: Any, spec: ScheduleSpec, changed_at: float, now: float, policy: SchedulePolicy
) -> int:
    last = cur.execute(
        "SELECT due_at, run_id FROM schedule_slots WHERE schedule = ? ORDER BY due_at DESC LIMIT 1",
        [spec.name],
    ).fetchone()
    last_due = _epoch(last[0]) if last else None
    span = float(spec.interval or 86400.0) + policy.early
    runs = _Runs(cur, spec.name, now - MATCH_WINDOW - span)
    # 1. Unfulfilled slots of the last days: a run's record may come late (OTLP batching).
    for due, opens, grace in cur.execute(
        "SELECT epoch(due_at), epoch(opens_at), grace FROM schedule_slots "
        "WHERE schedule = ? AND run_id IS NULL AND due_at >= ? ORDER BY due_at",
        [spec.name, _ts(now - MATCH_WINDOW)],
    ).fetchall():
        found = runs.take(due, opens, due + grace)
        if found is not None:
            _assign(cur, spec.name, due, found[0], now)
    # 2. New slots.
    if spec.cron is not None:
        return _new_cron_slots(cur, spec, changed_at, last_due, now, policy, runs)
    return _new_interval_slots(cur, spec, changed_at, last, now, runs)


def _new_cron_slots(
    cur: Any,
    spec: ScheduleSpec,
    changed_at: float,
    last_due: float | None,
    now: float,
    policy: SchedulePolicy,
    runs: _Runs,
) -> int:
    after = max(changed_at, last_due) if last_due is not None else changed_at
    after = max(after, now - MATCH_WINDOW)  # older slots could match no run: not made
    dues = cron_dues(spec, after=after, until=now, limit=SLOTS_PER_PASS)
    previous = last_due if last_due is not None else previous_cron_due(spec, after)
    for due in dues:
        early = policy.early if previous is None else min(policy.early, (due - previous) / 2)
        opens = due - early
        _insert_slot(cur, spec, due, opens)
        found = runs.take(due, opens, due + spec.grace)
        if found is not None:
            _assign(cur, spec.name, due, found[0], now)
        previous = due
    return len(dues)


_WITH_DECLARATION: Final = 5.0
"""Seconds after an interval schedule's declaration in which a run is the one that came
with it (at most a tenth of the interval)."""


def _new_interval_slots(
    cur: Any,
    spec: ScheduleSpec,
    changed_at: float,
    last: tuple[Any, Any] | None,
    now: float,
    runs: _Runs,
) -> int:
    interval = float(spec.interval or 0.0)
    if last is None:
        anchor = changed_at
    else:
        last_due = _epoch(last[0]) or 0.0
        anchor = last_due
        if last[1] is not None:
            started = cur.execute(
                "SELECT epoch(min(started_at)) FROM jobs WHERE run_id = ?", [last[1]]
            ).fetchone()
            if started and started[0] is not None:
                anchor = float(started[0])
        anchor = max(anchor, changed_at)
    # A declaration from long ago (or a store closed for long) catches up the newest slots
    # only: one pass's worth, not months of them over hundreds of passes that each hold
    # the store's writer.
    anchor = max(anchor, now - interval * SLOTS_PER_PASS)
    if last is None:
        # The run that comes with the declaration (the docs' pattern: declare, then run the
        # job, in one script) is the previous run of the first slot, not its fulfilment:
        # else the first slot was due an interval after the declaration and the second an
        # interval after that run, a millisecond later.
        with_it = runs.latest_in(anchor, anchor + min(_WITH_DECLARATION, interval / 10))
        if with_it is not None:
            anchor = with_it
    made = 0
    while anchor + interval <= now and made < SLOTS_PER_PASS:
        due = anchor + interval
        _insert_slot(cur, spec, due, anchor)
        made += 1
        found = runs.take(due, anchor, due + spec.grace)
        if found is not None:
            _assign(cur, spec.name, due, found[0], now)
            anchor = found[1]
        else:
            anchor = due
    return made


def _insert_slot(cur: Any, spec: ScheduleSpec, due: float, opens: float) -> None:
    cur.execute(
        "INSERT INTO schedule_slots (schedule, due_at, opens_at, grace, max_runtime, "
        "failure_threshold) VALUES (?, ?, ?, ?, ?, ?)",
        [spec.name, _ts(due), _ts(opens), spec.grace, spec.max_runtime, spec.failure_threshold],
    )


def _assign(cur: Any, name: str, due: float, run_id: str, now: float) -> None:
    cur.execute(
        "UPDATE schedule_slots SET run_id = ?, matched_at = ? WHERE schedule = ? AND due_at = ?",
        [run_id, _ts(now), name, _ts(due)],
    )


class ScheduleEvaluator:
    """Runs :func:`evaluate` at once and then every ``interval`` seconds on a daemon thread
    (``chaperone-schedules-eval``) until :meth:`close`; the owner adds a last pass
    (:meth:`evaluate_counted`) before it releases the file.

    Args:
        store: the owner's writable :class:`~chaperone_otel.sink._store.Store`.
        interval: seconds between passes.
        clock: Unix-seconds clock (the evaluation time).
    """

    def __init__(
        self,
        store: Any,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY,
    ) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._policy = policy
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="chaperone-schedules-eval", daemon=True
        )
        self._thread.start()

    def evaluate_now(self) -> int:
        """One pass now (the thread's, or a caller's that wants fresh slots)."""
        with self._store.write_lock:
            cur = self._store.cursor()
            try:
                return evaluate(cur, self._clock(), self._policy)
            finally:
                with contextlib.suppress(duckdb.Error):
                    cur.close()

    def _run(self) -> None:
        # A pass at once, then every interval: a cron script owns its store for less than a
        # second, and a first pass after the interval made no slot in it, ever.
        while not self._store.closed:
            self.evaluate_counted()
            if self._stop.wait(self._interval):
                return

    def evaluate_counted(self) -> None:
        """One pass whose failure is counted, not raised: the thread's passes, and the
        owner's last before it releases the file (the slots due since the thread's last
        pass, matched to the runs the writer has just committed)."""
        try:
            self.evaluate_now()
        except Exception as exc:  # a bad pass is counted, the next one tries again
            record_internal_error("sink.schedules", exc)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
