"""The query API: ``open_sink(path).jobs.running().stuck().order_by(...).all()``.

:class:`JobQuery` is immutable and lazy (STYLE §4.12): each scope returns a new query holding
one more *step*, and SQL runs only in a terminal (``all first count to_arrow``). Steps are
plain JSON values (``("status", "running")``, ``("started_between", lo, hi)`` …), so a remote
sink can ship them to the process that owns the store and replay them there with
:meth:`JobQuery.replay`; SQL never crosses the wire and is never built from user strings:
every value is a bound parameter, and column names come from a fixed allow-list.

The scopes are those of the one registry, :data:`chaperone_otel._scopes.SCOPES`: the
argument-free ones are generated methods, the others are written here (they validate their
argument), replay accepts exactly the step kinds they add, and each step kind renders to SQL
in :data:`STEP_SQL`. Health scopes are rendered from :func:`chaperone_otel._health.rules`
with ``$now`` bound to the evaluation time in epoch seconds, so they agree with the
runtime's Python verdicts and the alert rules. What a query returns is in ``_results``.

Example::

    with open_sink("jobs.duckdb") as sink:
        for run in sink.jobs.running().stuck().order_by("memory_bytes", desc=True).limit(10):
            print(run.id, run.name, run.health, run.progress)
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from .._fields import ACTIVE_STATUSES, field_named
from .._health import DEFAULT_POLICY, HealthPolicy
from .._scopes import HEALTH_SCOPES, SCOPES, SHAPING_STEPS, STATUS_SCOPES, scope_named
from .._spec import qualified_name as _qualified_name
from .._spec import require_id as _require_str
from .._units import parse_bytes
from ..exceptions import ConfigurationError, SinkError
from ._results import (
    ORDERABLE,
    ErrorRecord,
    HeartbeatRecord,
    JobRecord,
    PruneResult,
    ViolationRecord,
    select_exprs,
)
from ._schema import (
    HEALTH_COLUMNS,
    VERDICT_TOTALS,
    live_only,
    settled_branches,
    where_predicate,
)
from ._settled import SETTLED_COLUMN
from ._step_query import SqlBuilder, Step, StepQuery, step_bound, to_epoch

if TYPE_CHECKING:
    from ._schedule_query import ScheduleQuery

__all__ = ["HEALTH_SCOPES", "STATUS_SCOPES", "JobQuery", "Sink", "naive_utc"]


# --------------------------------------------------------------------------------------------
# Scope steps → SQL (one rendering per step kind of the scope registry).
# --------------------------------------------------------------------------------------------


def naive_utc(epoch: float) -> datetime:
    """Epoch seconds as the naive UTC datetime a ``TIMESTAMP`` column compares with."""
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)


def _between(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
    if step[1] is not None:
        sql.add(f"started_at >= {sql.bind(naive_utc(step[1]))}")
    if step[2] is not None:
        sql.add(f"started_at < {sql.bind(naive_utc(step[2]))}")


def _class(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
    sql.add(f"(name = {sql.bind(step[1])} OR starts_with(name, {sql.bind(step[1] + '.')}))")


def _equals(column: str) -> Callable[[SqlBuilder, Step, HealthPolicy], None]:
    def render(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
        sql.add(f"{column} = {sql.bind(step[1])}")

    return render


def _above(column: str) -> Callable[[SqlBuilder, Step, HealthPolicy], None]:
    def render(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
        sql.add(f"{column} > {sql.bind(step[1])}")

    return render


def _status(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
    clause = f"status = {sql.bind(step[1])}"
    if step[1] in ACTIVE_STATUSES:
        # Only a finished run has a stored verdict: the one-byte column's IS NULL, pushed into
        # the scan first, skips the finished runs' vectors before any string is compared
        # (running().named(x).on_queue(q): 1.10x -> 0.33x a GROUP BY status at 10 M runs).
        clause = f"{SETTLED_COLUMN} IS NULL AND {clause}"
    sql.add(clause)


def _stuck_since(sql: SqlBuilder, step: Step, _policy: HealthPolicy) -> None:
    if step[1] is None:
        sql.add("stuck_since IS NOT NULL")
    else:
        sql.add(f"stuck_since >= {sql.bind(naive_utc(step[1]))}")


def _health(sql: SqlBuilder, step: Step, policy: HealthPolicy) -> None:
    sql.add(where_predicate(step[1], policy))


STEP_SQL: Final[Mapping[str, Callable[[SqlBuilder, Step, HealthPolicy], None]]] = {
    "status": _status,
    "health": _health,
    "name": _equals("name"),
    "class": _class,
    "queue": _equals("queue"),
    "run_id": _equals("run_id"),
    "started_between": _between,
    "memory_above": _above("memory_bytes"),
    "cpu_above": _above(HEALTH_COLUMNS["cpu"]),  # shared readings are not the run's own
    "stuck_since": _stuck_since,
    "parent_run_id": _equals("parent_run_id"),
}
"""How each filtering step kind renders to a WHERE clause (values always bound)."""

TOTALS_STEP_SQL: Final[Mapping[str, Callable[[SqlBuilder, Step, HealthPolicy], None]]] = {
    "status": _equals("status"),
    "name": _equals("name"),
    "class": _class,
    "queue": _equals("queue"),
}
"""The steps ``verdict_totals`` can answer, rendered over its columns. Its ``name`` and
``queue`` are ``''`` where the run has none, which no step's value can be (non-empty)."""

if set(STEP_SQL) != {s.step for s in SCOPES}:  # pragma: no cover - a developer's slip
    raise ValueError("every scope's step kind needs exactly one SQL rendering in STEP_SQL")


def render_step(sql: SqlBuilder, step: Step, policy: HealthPolicy) -> None:
    """Add ``step``'s WHERE clause to ``sql`` (shaping steps add none)."""
    kind = step[0]
    if kind in SHAPING_STEPS:
        return
    try:
        render = STEP_SQL[kind]
    except KeyError:  # pragma: no cover - steps are validated on entry
        raise SinkError(f"unknown query step {kind!r}") from None
    render(sql, step, policy)


# --------------------------------------------------------------------------------------------
# JobQuery.
# --------------------------------------------------------------------------------------------


def _flag_scope(name: str) -> Callable[[JobQuery], JobQuery]:
    """The JobQuery method of an argument-free scope (status or health) of the registry."""
    spec = scope_named(name)
    if spec.arg != "none" or spec.step not in ("status", "health"):
        raise ValueError(f"{name} is not a status or health scope")

    def scope(self: JobQuery) -> JobQuery:
        return self._with(spec.step, spec.name)

    scope.__name__ = scope.__qualname__ = name
    scope.__doc__ = spec.help
    return scope


class JobQuery(StepQuery["Sink"]):
    """An immutable, lazy query over stored runs. Scopes return new queries; terminals run.

    Args:
        sink: where terminals run.
        steps: the scopes so far (JSON values; see module doc).
        clock: Unix-seconds clock for relative scopes and the default evaluation time.

    ``since``, ``today`` and ``at`` (by start time) come from :class:`StepQuery`.
    """

    __slots__ = ()
    _WINDOW = "started_between"
    _RELATIVE = frozenset({"stuck_since"})

    def _with(self, *step: Any) -> JobQuery:
        return JobQuery(self._sink, (*self._steps, tuple(step)), clock=self._clock)

    # --- argument-free scopes: generated from the registry (sink/_scopes.py) --------------
    pending = _flag_scope("pending")
    running = _flag_scope("running")
    completed = _flag_scope("completed")
    failed = _flag_scope("failed")
    cancelled = _flag_scope("cancelled")
    retried = _flag_scope("retried")
    healthy = _flag_scope("healthy")
    degraded = _flag_scope("degraded")
    unhealthy = _flag_scope("unhealthy")
    stuck = _flag_scope("stuck")
    lost = _flag_scope("lost")
    stalled = _flag_scope("stalled")
    overtime = _flag_scope("overtime")
    violated = _flag_scope("violated")
    near_limit = _flag_scope("near_limit")
    heartbeat_missed = _flag_scope("heartbeat_missed")

    # --- attribute scopes ----------------------------------------------------------------
    def named(self, name: str) -> JobQuery:
        """Runs of the job called ``name`` (the qualified function name unless given)."""
        return self._with("name", _require_str(name, "name"))

    def by_class(self, cls: type | str) -> JobQuery:
        """Runs of a ``Supervised`` class (or a decorated method of it): ``module.Qualname``."""
        if isinstance(cls, type):
            # The name the runtime gave the class's runs (job_name, inherited or not, else
            # the same module.Qualname rule as for functions).
            spec = getattr(cls, "_chaperone_spec", None)
            cls = spec.name if spec is not None and spec.name else _qualified_name(cls)
        return self._with("class", _require_str(cls, "class name"))

    def on_queue(self, queue: str) -> JobQuery:
        """Runs from ``queue``."""
        return self._with("queue", _require_str(queue, "queue"))

    def with_id(self, run_id: str) -> JobQuery:
        """Attempts of the run with this supervision id."""
        return self._with("run_id", _require_str(run_id, "run_id"))

    def between(self, start: Any, end: Any) -> JobQuery:
        """Runs started in ``[start, end)``: datetimes (naive means UTC), Unix seconds or ISO."""
        lo, hi = to_epoch(start, "start"), to_epoch(end, "end")
        if hi < lo:
            raise ConfigurationError(f"between(): end {end!r} is before start {start!r}")
        return self._with("started_between", lo, hi)

    def until(self, when: datetime | timedelta | str | float) -> JobQuery:
        """Runs started before ``when`` (the guide's ``whereBetween`` upper bound alone): a
        datetime, or an age (``timedelta``, ``"1h"``, ``"30d"``, seconds) measured back from
        the query's evaluation time (``at()``, wherever it is in the chain, else the clock
        when the query runs); an age of 0 is that time itself (``until(0)``: started before
        now). ``since(a).until(b)`` is ``between(a, b)``."""
        return self._with("started_between", None, self._moment(when, "until", zero_is_now=True))

    def memory_above(self, limit: int | float | str) -> JobQuery:
        """Runs whose latest memory sample is above ``limit`` (bytes or ``"512MiB"``)."""
        return self._with("memory_above", parse_bytes(limit, what="memory_above"))

    def cpu_above(self, percent: float) -> JobQuery:
        """Runs whose latest CPU sample is above ``percent`` (of one core), counting only
        CPU a run can be charged with: a reading shared with other live runs (``cpu_scope
        = 'shared'``, e.g. concurrent async runs of one event loop) never matches."""
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or not math.isfinite(percent)
        ):
            raise ConfigurationError(f"cpu_above() takes a percent number, got {percent!r}")
        return self._with("cpu_above", float(percent))

    def was_stuck(self) -> JobQuery:
        """Runs that were stuck at some point: still stuck, recovered, or ended since (the
        store keeps ``stuck_since`` and ``stuck_seconds`` once a run was judged stuck).
        ``jobs.was_stuck().today()`` are today's runs that got stuck."""
        return self._with("stuck_since", None)

    def stuck_since(self, when: datetime | timedelta | str | float) -> JobQuery:
        """Runs that first became stuck since ``when`` (a datetime, or an age such as
        ``"1d"`` back from the evaluation time), whenever they started and whatever became
        of them."""
        return self._with("stuck_since", self._moment(when, "stuck_since"))

    def children_of(self, run_id: str) -> JobQuery:
        """Runs started inside the run ``run_id`` (its nested supervised runs)."""
        return self._with("parent_run_id", _require_str(run_id, "run_id"))

    # --- shaping -------------------------------------------------------------------------
    def order_by(self, column: str, desc: bool = False) -> JobQuery:
        """Sort by a record field (``started_at``, ``memory_bytes``, ``progress`` …)."""
        if column not in ORDERABLE:
            raise ConfigurationError(
                f"cannot order by {column!r}; choose from {', '.join(sorted(ORDERABLE))}"
            )
        return self._with("order", column, bool(desc))

    def limit(self, n: int) -> JobQuery:
        """At most ``n`` runs."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63:
            raise ConfigurationError(f"limit() takes an int from 0 to 2**63 - 1, got {n!r}")
        return self._with("limit", n)

    # --- terminals -----------------------------------------------------------------------
    def all(self) -> list[JobRecord]:
        """Run the query; the matching runs (newest start first unless ordered)."""
        return self._sink._fetch(self)

    def first(self) -> JobRecord | None:
        """The first matching run, or None."""
        found = self.limit(1).all()
        return found[0] if found else None

    def count(self) -> int:
        """How many runs match (ordering and limit ignored)."""
        return self._sink._count(self)

    def to_arrow(self) -> Any:
        """The matching runs as a ``pyarrow.Table`` with the :class:`JobRecord` columns:
        times are ``timestamp[us, tz=UTC]`` (the records' tz-aware UTC datetimes);
        ``metadata`` and ``attributes`` are JSON text (``json.loads`` gives the records'
        dicts)."""
        return self._sink._arrow(self)

    def sql(self) -> tuple[str, dict[str, Any]]:
        """The SQL text and named parameters ``all()`` would run (for humans and EXPLAIN)."""
        return self.render(self._sink.policy)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self.all())

    def __repr__(self) -> str:
        return f"<JobQuery {' '.join(str(s[0]) for s in self._steps) or 'all'}>"

    # --- rendering and replay ------------------------------------------------------------
    def render(
        self, policy: HealthPolicy, *, count: bool = False, bulk: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """SQL and parameters of this query (a select of all fields, or a count).

        A filtered select finds its rows' ``rowid`` first (the filter's columns, and the
        sort's, under the limit) and only then reads every field of those rows: DuckDB's
        own late materialization stops at a ``LIMIT`` of 50 and skips unlimited queries, so
        ``running().stuck().limit(100)`` read all sixty columns of every running run
        (issue 16). ``bulk`` (``to_arrow()``, meant for many rows) keeps one scan unless
        limited: for a large share of the store the row-id step costs more than it saves.

        A limited query with a live-only health scope (``stuck``, ``degraded`` …, a few live
        runs) narrows once more: the filter's row ids first, then the sort columns of those
        rows only. In one scan DuckDB fetched the sort columns (``run_id`` …) of every row
        the pushed filters let through, before the rule, which it cannot push, dropped most
        (``running().stuck().limit(100)`` at 10 M runs: 0.85x -> 0.6x the reference). Not
        for other scopes: ``healthy().limit(20)`` would hash millions of row ids (44x).
        """
        sql = SqlBuilder()
        order: list[str] = []
        inner_order: list[str] = []
        limit: int | None = None
        exprs = select_exprs(policy) if not count else {}
        now = self.now  # once: the windows' bounds and $now are the same instant
        steps = self._resolved_steps(now)
        for step in steps:
            render_step(sql, step, policy)
            if step[0] == "order" and not count:
                # a computed field (health, stuck …) sorts by its alias
                stored = field_named(step[1]).stored
                direction = "DESC" if step[2] else "ASC"
                order.append(f"{exprs[step[1]] if stored else step[1]} {direction}")
                inner_order.append(f"{exprs[step[1]]} {direction}")
            elif step[0] == "limit":
                limit = step[1] if limit is None else min(limit, step[1])
        where = sql.where_clause()
        split = self._split_count(policy, steps) if count else None
        if split is not None:
            text, sql = split
        elif count:
            text = f"SELECT count(*) FROM jobs{where}"
        else:
            tie = ["started_at DESC NULLS LAST", "run_id", "attempt"]
            order_by = ", ".join([*order, *tie])
            cut = "" if limit is None else f" LIMIT {sql.bind(limit)}"
            columns = ", ".join(f"{expr} AS {name}" for name, expr in exprs.items())
            if where and (limit is not None or not bulk):
                rows = f"SELECT rowid FROM jobs{where}"
                if limit is not None:
                    if any(s[0] == "health" and live_only(s[1], policy) for s in steps):
                        rows = f"SELECT rowid FROM jobs WHERE rowid IN ({rows})"
                    rows += f" ORDER BY {', '.join([*inner_order, *tie])}{cut}"
                where = f" WHERE rowid IN ({rows})"
            text = f"SELECT {columns} FROM jobs{where} ORDER BY {order_by}{cut}"
        if "$now" in text:
            sql.params["now"] = now
        return text, sql.params

    def _split_count(
        self, policy: HealthPolicy, steps: tuple[Step, ...]
    ) -> tuple[str, SqlBuilder] | None:
        """``count()`` of a query with a verdict scope as the sum of two parts, finished runs
        by their stored verdict plus the rest by the rule (see ``settled_branches``).

        The finished runs' part reads ``verdict_totals`` (a few rows the writer keeps exact)
        when every other step is one the totals can answer (status, name, class, queue);
        else it scans the stored verdicts."""
        for step in steps:
            if step[0] != "health":
                continue
            branches = settled_branches(step[1], policy)
            if branches is None:
                continue
            rest = SqlBuilder()
            others = [other for other in steps if other is not step]
            for other in others:
                render_step(rest, other, policy)
            parts = [" AND ".join([b, *rest.where]) for b in branches]
            counts = [f"(SELECT count(*) FROM jobs WHERE {p})" for p in parts]
            if branches[0] == f"{SETTLED_COLUMN} = '{step[1]}'" and all(
                other[0] in TOTALS_STEP_SQL or other[0] in SHAPING_STEPS for other in others
            ):
                totals = SqlBuilder()
                totals.params = rest.params  # one set of bound values for both parts
                for other in others:
                    if other[0] not in SHAPING_STEPS:
                        TOTALS_STEP_SQL[other[0]](totals, other, policy)
                clauses = " AND ".join([f"health = '{step[1]}'", *totals.where])
                counts[0] = (
                    f"(SELECT CAST(coalesce(sum(stored), 0) AS BIGINT) FROM {VERDICT_TOTALS} "
                    f"WHERE {clauses})"
                )
            return f"SELECT {' + '.join(counts)}", rest
        return None

    @classmethod
    def replay(cls, sink: Sink, steps: Sequence[Sequence[Any]]) -> JobQuery:
        """Rebuild a query from :attr:`steps` received over the wire, validating each.

        Raises:
            SinkError: a step is unknown or malformed.
        """
        out = JobQuery(sink)
        for raw in steps:
            if not isinstance(raw, (list, tuple)) or not raw or not isinstance(raw[0], str):
                raise SinkError(f"malformed query step {raw!r}")
            step = tuple(raw)
            try:
                replay = _REPLAY[step[0]]
            except KeyError as e:
                raise SinkError(f"unknown query step {step[0]!r}") from e
            try:
                out = replay(out, step)
            except (ConfigurationError, TypeError, IndexError, ValueError) as e:
                raise SinkError(f"malformed query step {raw!r}: {e}") from e
        return out


def _replay_named(q: JobQuery, s: Step) -> JobQuery:
    """A status or health step: its value must be a scope of that kind."""
    names = STATUS_SCOPES if s[0] == "status" else HEALTH_SCOPES
    if s[1] not in names:
        raise ValueError(f"no {s[0]} scope {s[1]!r}")
    method: Callable[[], JobQuery] = getattr(q, s[1])
    return method()


def _replay_between(q: JobQuery, s: Step) -> JobQuery:
    """A window: each end open, Unix seconds, or relative (resolved at the owner's
    evaluation time: the chain's ``at()``, else its clock when the query runs)."""
    return q._with("started_between", step_bound(s[1], "start"), step_bound(s[2], "end"))


def _replay_value(name: str) -> Callable[[JobQuery, Step], JobQuery]:
    """A one-argument scope's step: replayed through the scope (which validates it)."""

    def replay(q: JobQuery, s: Step) -> JobQuery:
        method: Callable[[Any], JobQuery] = getattr(q, name)
        return method(s[1])

    return replay


def _replay_table() -> dict[str, Callable[[JobQuery, Step], JobQuery]]:
    """Step kind → replay, driven by the registry: every step a scope can add replays."""
    table: dict[str, Callable[[JobQuery, Step], JobQuery]] = {}
    for spec in SCOPES:
        if spec.step in ("status", "health"):
            table[spec.step] = _replay_named
        elif spec.step == "started_between":  # today, since, until, between: a window
            table[spec.step] = _replay_between
        else:
            table[spec.step] = _replay_value(spec.name)
    table["stuck_since"] = lambda q, s: q._with(  # was_stuck (None) or stuck_since
        "stuck_since", step_bound(s[1], "stuck_since")
    )
    table["order"] = lambda q, s: q.order_by(s[1], desc=bool(s[2]))
    table["limit"] = lambda q, s: q.limit(s[1])
    table["at"] = lambda q, s: q.at(s[1])
    if set(table) - {s.step for s in SCOPES} != set(SHAPING_STEPS):  # pragma: no cover
        raise ValueError("replay must cover exactly the scope and shaping steps")
    return table


_REPLAY: Final = _replay_table()


# --------------------------------------------------------------------------------------------
# Sink: the common surface of a local (DuckDB file) and a remote (HTTP) store.
# --------------------------------------------------------------------------------------------


class Sink(abc.ABC):
    """A job store you can query: a local DuckDB file, or a remote owner's query URL.

    Attributes:
        url: the query URL (remote sinks, or the URL an embedded owner serves), else None.
        policy: the health thresholds scopes are judged with.
    """

    url: str | None = None
    policy: HealthPolicy = DEFAULT_POLICY

    @property
    def jobs(self) -> JobQuery:
        """A new query over every stored run."""
        return JobQuery(self)

    @property
    def schedules(self) -> ScheduleQuery:
        """A new query over the slots of every schedule (``.missed().today()``)."""
        from ._schedule_query import ScheduleQuery  # noqa: PLC0415 - cronsim-free until used

        return ScheduleQuery(self)

    def job(self, run_id: str) -> JobRecord | None:
        """The latest attempt of the run with this supervision id, or None."""
        return self.jobs.with_id(run_id).order_by("attempt", desc=True).first()

    @abc.abstractmethod
    def _fetch(self, query: JobQuery) -> list[JobRecord]: ...

    @abc.abstractmethod
    def _count(self, query: JobQuery) -> int: ...

    @abc.abstractmethod
    def _arrow(self, query: JobQuery) -> Any: ...

    @abc.abstractmethod
    def heartbeats_of(
        self, run_id: str, attempt: int, *, latest: bool = False
    ) -> list[HeartbeatRecord]:
        """Stored heartbeats of one attempt, oldest first (``latest``: only the newest)."""

    @abc.abstractmethod
    def errors_of(self, run_id: str, attempt: int) -> list[ErrorRecord]:
        """Errors of one attempt."""

    @abc.abstractmethod
    def violations_of(self, run_id: str, attempt: int) -> list[ViolationRecord]:
        """Violations of one attempt, oldest first."""

    @abc.abstractmethod
    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SQL statement; returns (column names, rows)."""

    @abc.abstractmethod
    def prune(self, older_than: timedelta | str | float) -> PruneResult:
        """Delete runs whose latest record is older than ``older_than`` and retire the
        schedules with no sign of life since; returns how many runs went, as an ``int``
        whose ``schedules_retired`` says how many schedules went (:class:`PruneResult`)."""

    def forget_schedule(self, name: str) -> bool:
        """Remove the schedule ``name`` with its slots and dispatches (a renamed or removed
        schedule); True if the store had it. A declaration made before the forget and
        delivered after it is ignored; a later one declares it afresh. A writable sink's
        (see :class:`LocalSink`)."""
        raise SinkError(f"{type(self).__name__} cannot forget schedules")

    def close_run(
        self,
        run_id: str,
        *,
        status: str = "failed",
        reason: str | None = None,
        execution_id: str | None = None,
        attempt: int | None = None,
    ) -> JobRecord:
        """End a run no process will finish (lost, or stuck for good) with ``status``
        (``failed`` or ``cancelled``) and a :class:`~chaperone_otel.exceptions.RunClosed`
        error saying ``reason``; returns the closed run. A writable sink's (see
        :class:`LocalSink`)."""
        raise SinkError(f"{type(self).__name__} cannot close runs")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (idempotent)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
