"""Schedules, declared once: what a declaration says, when its slots fall due, and the rules.

A job that never starts leaves no run to judge: heartbeats, leases and the run health rules
(:mod:`._health`) all watch runs that exist. A schedule says when runs *should* exist, so the
store can notice the one that did not (issue 15). This module is layer 2 (no DuckDB, no SDK,
no runtime): the runtime declares with it (``chaperone_otel.schedule()``), the store
materialises slots and judges them with it, the artifacts render its rules to PromQL.

* :class:`ScheduleSpec` is a validated declaration (:func:`make_schedule`) and its wire form
  (:meth:`ScheduleSpec.attributes` / :func:`spec_from_attributes`): a declaration travels as a
  log record of its own (``chaperone.schedule.declared``), like a run's lifecycle records.
* :func:`cron_dues` lists due times of a cron schedule with ``cronsim`` (the library
  healthchecks.io wrote for the same job), in the schedule's IANA zone; DST is cronsim's
  (cronie's): a time skipped by a spring-forward runs at the transition, a daily time repeated
  by a fall-back runs once, an hourly-or-finer job runs in both folds.
* :func:`schedule_rules` builds the states (late, missed, overran, failing, scheduler lost,
  healthy) as :mod:`._health` expression trees over *slot signals*, so the same rule renders
  to Python, to the store's SQL and to PromQL over the sink's schedule series; the
  thresholds live in :class:`SchedulePolicy`.

Slot signals (Unix seconds, durations seconds):

=======================  ================================================================
``due_at``               when the slot fell due
``opens_at``             from when a run counts for it (cron: a little before ``due_at``;
                         interval: the previous run's start)
``grace``                how long after ``due_at`` a run may still start
``started_at``           when the run that fulfils the slot started (absent: none yet)
``running_since``        ``started_at`` while that run is running
``max_runtime``          how long a run may run (absent: no limit)
``consecutive_failures`` failed runs in a row, up to this slot
``failure_threshold``    how many of them make the schedule failing
``declared_at``          the schedule's latest declaration
``declare_every``        seconds between re-declarations (absent: declared once)
=======================  ================================================================

Example::

    spec = make_schedule("nightly", cron="0 2 * * *", tz="Europe/Paris", grace="15m")
    cron_dues(spec, after=t0, until=t1)       # due times in (t0, t1]
    schedule_rules().missed.sql(SLOT_COLUMNS)  # a WHERE predicate
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from . import semconv as sc
from ._events import AttributeValue
from ._health import All, Arith, Compare, Const, Expr, Not, Now, PromQL, Signal
from ._units import parse_duration
from .exceptions import ConfigurationError

Source = Literal["code", "celery-beat", "rq-cron"]

DEFAULT_GRACE: Final = 60.0
"""Seconds a run may start after its due time before the slot is missed (healthchecks.io
defaults to one hour, Sentry to one minute; a minute suits beat and cron, which start on
time or not at all)."""


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule declaration (see :func:`make_schedule`).

    Exactly one of ``cron`` and ``interval`` is set.
    """

    name: str
    cron: str | None = None
    interval: float | None = None
    timezone: str = "UTC"
    grace: float = DEFAULT_GRACE
    max_runtime: float | None = None
    failure_threshold: int = 1
    declare_every: float | None = None
    source: str = "code"
    day_and: bool = False

    def definition(self) -> tuple[object, ...]:
        """What decides the slots and states (a re-declaration that changes it starts the
        schedule's new slots from the change)."""
        return (
            self.cron,
            self.interval,
            self.timezone,
            self.grace,
            self.max_runtime,
            self.failure_threshold,
            self.declare_every,
            self.day_and,
        )

    def attributes(self) -> dict[str, AttributeValue]:
        """The declaration's record attributes (absent options left out)."""
        a: dict[str, AttributeValue] = {
            sc.ATTR_SCHEDULE_NAME: self.name,
            sc.ATTR_SCHEDULE_TIMEZONE: self.timezone,
            sc.ATTR_SCHEDULE_GRACE: self.grace,
            sc.ATTR_SCHEDULE_FAILURE_THRESHOLD: self.failure_threshold,
            sc.ATTR_SCHEDULE_SOURCE: self.source,
        }
        if self.cron is not None:
            a[sc.ATTR_SCHEDULE_CRON] = self.cron
        if self.day_and:
            a[sc.ATTR_SCHEDULE_CRON_DAY_AND] = True
        if self.interval is not None:
            a[sc.ATTR_SCHEDULE_INTERVAL] = self.interval
        if self.max_runtime is not None:
            a[sc.ATTR_SCHEDULE_MAX_RUNTIME] = self.max_runtime
        if self.declare_every is not None:
            a[sc.ATTR_SCHEDULE_DECLARE_EVERY] = self.declare_every
        return a


def _duration(value: Any, what: str) -> float:
    return parse_duration(value, what=what)


MIN_INTERVAL: Final = 1.0
"""The shortest ``interval`` of a schedule, in seconds. Each slot is a row the store keeps
and judges: a declaration of 1e-6 s (one record, from anywhere the sink listens) made the
store insert 10,000 slots a pass for ever, and every ingest request waited seconds."""


def make_schedule(
    name: str,
    *,
    cron: str | None = None,
    interval: Any = None,
    tz: str = "UTC",
    grace: Any = DEFAULT_GRACE,
    max_runtime: Any = None,
    failure_threshold: int = 1,
    declare_every: Any = None,
    source: str = "code",
    day_and: bool = False,
) -> ScheduleSpec:
    """Validate a declaration now (misuse fails here, not at the first missed slot).

    ``day_and``: a cron slot falls due only on days matching both its day-of-month and
    day-of-week fields. Cron (and cronsim) fire when either matches once both are
    restricted; Celery's ``crontab`` needs both, so the beat integration sets it.

    Raises:
        ConfigurationError: no name, both or neither of cron and interval, a cron expression
            cronsim refuses, an unknown time zone, a non-positive duration or threshold.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a schedule needs a non-empty name, got {name!r}")
    if (cron is None) == (interval is None):
        raise ConfigurationError(
            f"schedule {name!r}: give exactly one of cron='0 2 * * *' or interval='15m'"
        )
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(f"schedule {name!r}: tz must be an IANA zone name, got {tz!r}")
    zone(tz)  # raises on an unknown zone
    if cron is not None:
        if not isinstance(cron, str):
            raise ConfigurationError(f"schedule {name!r}: cron must be a string, got {cron!r}")
        cron = " ".join(cron.split())
        _check_cron(name, cron)
    if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
        raise ConfigurationError(f"schedule {name!r}: failure_threshold must be an int >= 1")
    if not 1 <= failure_threshold <= 2**31 - 1:  # the store's column is an INTEGER
        raise ConfigurationError(
            f"schedule {name!r}: failure_threshold must be an int from 1 to 2**31 - 1"
        )
    if not isinstance(day_and, bool) or (day_and and cron is None):
        raise ConfigurationError(f"schedule {name!r}: day_and is a bool, for a cron schedule")
    if source not in ("code", "celery-beat", "rq-cron"):
        raise ConfigurationError(f"schedule {name!r}: unknown source {source!r}")
    return ScheduleSpec(
        name=name.strip(),
        cron=cron,
        interval=_interval(name, interval) if interval is not None else None,
        timezone=tz,
        grace=_duration(grace, "grace"),
        max_runtime=_duration(max_runtime, "max_runtime") if max_runtime is not None else None,
        failure_threshold=failure_threshold,
        declare_every=(
            _duration(declare_every, "declare_every") if declare_every is not None else None
        ),
        source=source,
        day_and=day_and,
    )


def _interval(name: str, value: Any) -> float:
    seconds = _duration(value, "interval")
    if seconds < MIN_INTERVAL:
        raise ConfigurationError(
            f"schedule {name!r}: interval={value!r} is below {MIN_INTERVAL:g} s; a job due "
            "more often than that is a loop, not a schedule"
        )
    return seconds


def spec_from_attributes(attrs: Mapping[str, Any]) -> ScheduleSpec | None:
    """The declaration a record carries, or None when it is not a valid one (a store must
    not fail a batch on a bad remote declaration: it is counted invalid instead)."""
    try:
        return make_schedule(
            attrs[sc.ATTR_SCHEDULE_NAME],
            cron=attrs.get(sc.ATTR_SCHEDULE_CRON),
            interval=attrs.get(sc.ATTR_SCHEDULE_INTERVAL),
            tz=attrs.get(sc.ATTR_SCHEDULE_TIMEZONE, "UTC"),
            grace=attrs.get(sc.ATTR_SCHEDULE_GRACE, DEFAULT_GRACE),
            max_runtime=attrs.get(sc.ATTR_SCHEDULE_MAX_RUNTIME),
            failure_threshold=int(attrs.get(sc.ATTR_SCHEDULE_FAILURE_THRESHOLD, 1)),
            declare_every=attrs.get(sc.ATTR_SCHEDULE_DECLARE_EVERY),
            source=str(attrs.get(sc.ATTR_SCHEDULE_SOURCE, "code")),
            day_and=attrs.get(sc.ATTR_SCHEDULE_CRON_DAY_AND, False) is True,
        )
    except (ConfigurationError, KeyError, TypeError, ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------------------------
# Due times (cronsim, imported when a cron schedule is used: `import chaperone_otel` stays
# free of it).
# --------------------------------------------------------------------------------------------


def zone(name: str) -> Any:
    """The ``zoneinfo`` zone called ``name``.

    Raises:
        ConfigurationError: no such zone (the message says how to get the tz database).
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigurationError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' (on a "
            "system without a tz database, pip install tzdata)"
        ) from e


def _check_cron(name: str, expr: str) -> None:
    from cronsim import CronSim, CronSimError  # noqa: PLC0415

    fields = len(expr.split())
    if fields != 5:
        # cronsim also reads six fields, the first as seconds: "0 2 * * * *" would run at
        # :02 of every hour, not at 02:00, without a word.
        seconds = " (a sixth field would be read as seconds)" if fields == 6 else ""
        raise ConfigurationError(
            f"schedule {name!r}: cron={expr!r} has {fields} field(s){seconds}; it takes "
            "five fields: minute hour day-of-month month day-of-week (e.g. '0 2 * * *')"
        )
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=zone("UTC")))
    except CronSimError as e:
        raise ConfigurationError(
            f"schedule {name!r}: cron={expr!r} is not a cron expression ({e}); "
            "five fields: minute hour day-of-month month day-of-week"
        ) from e


def _cronsim(spec: ScheduleSpec, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
    """cronsim's iterator over ``spec``'s due times from ``start``.

    ``day_and`` uses cronsim's own AND of the two day fields: the rule Debian cron applies
    when either field starts with ``*`` (``CronSim.day_and``), here forced on, so "last
    day", "nth weekday" and DST stay cronsim's.
    """
    from cronsim import CronSim  # noqa: PLC0415

    if spec.cron is None:
        raise ValueError(f"schedule {spec.name!r} is not a cron schedule")
    sim = CronSim(spec.cron, start, reverse=reverse)
    if spec.day_and:
        if not isinstance(getattr(sim, "day_and", None), bool):  # pragma: no cover - cronsim
            raise RuntimeError("this cronsim has no day_and: cannot AND the day fields")
        sim.day_and = True
    return sim


def cron_dues(spec: ScheduleSpec, *, after: float, until: float, limit: int) -> list[float]:
    """Due times of a cron schedule in ``(after, until]``, at most ``limit``, oldest first."""
    start = datetime.fromtimestamp(after, zone(spec.timezone))
    dues: list[float] = []
    for moment in _cronsim(spec, start):
        t = moment.timestamp()
        if t > until or len(dues) >= limit:
            break
        dues.append(t)
    return dues


def previous_cron_due(spec: ScheduleSpec, before: float) -> float | None:
    """The latest due time of a cron schedule strictly before ``before`` (None: none)."""
    if spec.cron is None:
        return None
    start = datetime.fromtimestamp(before, zone(spec.timezone))
    for moment in _cronsim(spec, start - timedelta(microseconds=1), reverse=True):
        t = moment.timestamp()
        if t < before:
            return t
    return None  # pragma: no cover - cronsim yields forever


# --------------------------------------------------------------------------------------------
# The states: thresholds and rule trees (rendered to Python, SQL and PromQL by _health).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulePolicy:
    """Thresholds of the schedule states.

    Attributes:
        early: seconds before a cron slot's due time from which a run counts for it (clock
            skew, a scheduler that fires early); capped at half the gap to the previous slot.
        lost_after: a scheduler that re-declares every ``declare_every`` seconds is lost
            after this many of them without a declaration.
    """

    early: float = 60.0
    lost_after: float = 3.0

    def __post_init__(self) -> None:
        for name in ("early", "lost_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"SchedulePolicy.{name} must be a positive number")


DEFAULT_SCHEDULE_POLICY: Final = SchedulePolicy()

SCHEDULE_PROMQL_SIGNALS: Final[Mapping[str, sc.MetricSpec]] = {
    "due_at": sc.METRIC_SCHEDULE_LAST_DUE,
    "opens_at": sc.METRIC_SCHEDULE_LAST_OPENS,
    "grace": sc.METRIC_SCHEDULE_GRACE,
    "started_at": sc.METRIC_SCHEDULE_LAST_START,
    "running_since": sc.METRIC_SCHEDULE_RUNNING_SINCE,
    "max_runtime": sc.METRIC_SCHEDULE_MAX_RUNTIME,
    "consecutive_failures": sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES,
    "failure_threshold": sc.METRIC_SCHEDULE_FAILURE_THRESHOLD,
    "declared_at": sc.METRIC_SCHEDULE_LAST_DECLARED,
    "declare_every": sc.METRIC_SCHEDULE_DECLARE_EVERY,
}
"""The sink series that carries each slot signal for a schedule's latest *decided* slot (the
newest whose grace has passed; see ``sink/_schedule_metrics.py``). ``started_at`` is the
schedule's latest run, which fulfils that slot exactly when it started after
``opens_at``. After, not at: an interval slot opens at the previous run's start, and that
run must not count for the next slot too."""

SIGNALS: Final = tuple(SCHEDULE_PROMQL_SIGNALS)


@dataclass(frozen=True)
class SlotSignal(Signal):
    """A slot signal: as :class:`~chaperone_otel._health.Signal`, with the schedule series
    for PromQL."""

    def promql(self) -> PromQL:
        return SCHEDULE_PROMQL_SIGNALS[self.name].prometheus


def _s(name: str) -> SlotSignal:
    if name not in SCHEDULE_PROMQL_SIGNALS:
        raise KeyError(name)
    return SlotSignal(name)


@dataclass(frozen=True)
class ScheduleRules:
    """The schedule states for one policy: each attribute is an :class:`~._health.Expr`."""

    policy: SchedulePolicy
    fulfilled: Expr
    late: Expr
    missed: Expr
    overran: Expr
    failing: Expr
    lost: Expr
    healthy: Expr
    _by_name: dict[str, Expr] = field(default_factory=dict, init=False, repr=False, compare=False)

    def state(self, signals: Mapping[str, Any], now: float) -> str:
        """The slot's one state, the first that holds of: missed, overran, failing,
        scheduler_lost, late, on_time (fulfilled), pending."""
        for name, expr in self.ordered():
            if expr.holds(signals, now):
                return name
        return "pending"

    def ordered(self) -> tuple[tuple[str, Expr], ...]:
        """(state, predicate) in the order :meth:`state` tries them."""
        return (
            ("missed", self.missed),
            ("overran", self.overran),
            ("failing", self.failing),
            ("scheduler_lost", self.lost),
            ("late", self.late),
            ("on_time", self.fulfilled),
        )

    def by_name(self, name: str) -> Expr:
        """The predicate called ``name`` (one of :data:`SCHEDULE_PREDICATES`)."""
        if name not in SCHEDULE_PREDICATES:
            raise KeyError(
                f"no schedule predicate {name!r}; choose from {', '.join(SCHEDULE_PREDICATES)}"
            )
        expr: Expr = getattr(self, name)
        return expr


SCHEDULE_PREDICATES: Final = ("late", "missed", "overran", "failing", "lost", "healthy")
"""The schedule scopes' predicates (``sink.schedules.missed()`` …)."""

SCHEDULE_STATES: Final = (
    "missed",
    "overran",
    "failing",
    "scheduler_lost",
    "late",
    "on_time",
    "pending",
)
"""Every value of a slot's ``state``, most urgent first."""


def schedule_rules(policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY) -> ScheduleRules:
    """Build the schedule rule trees for ``policy``; the only place they are written down."""
    since_due = Arith("-", Now(), _s("due_at"))
    fulfilled = Compare(">", _s("started_at"), _s("opens_at"))
    late = All((Compare("<=", since_due, _s("grace")), Not(fulfilled)))
    missed = All((Compare(">", since_due, _s("grace")), Not(fulfilled)))
    overran = Compare(">", Arith("-", Now(), _s("running_since")), _s("max_runtime"))
    failing = Compare(">=", _s("consecutive_failures"), _s("failure_threshold"))
    lost = Compare(
        ">",
        Arith("-", Now(), _s("declared_at")),
        Arith("*", Const(policy.lost_after), _s("declare_every")),
    )
    healthy = All(
        (
            Compare(">=", Now(), _s("due_at")),
            Not(missed),
            Not(overran),
            Not(failing),
            Not(lost),
        )
    )
    return ScheduleRules(
        policy=policy,
        fulfilled=fulfilled,
        late=late,
        missed=missed,
        overran=overran,
        failing=failing,
        lost=lost,
        healthy=healthy,
    )
