"""The query API: ``open_sink(path).jobs.running().stuck().order_by(...).all()``.

:class:`JobQuery` is immutable and lazy (STYLE §4.12): each scope returns a new query holding
one more *step*, and SQL runs only in a terminal (``all first count to_arrow``). Steps are
plain JSON values (``("status", "running")``, ``("started_between", lo, hi)`` …), so a remote
sink can ship them to the process that owns the store and replay them there with
:meth:`JobQuery.replay`; SQL never crosses the wire and is never built from user strings:
every value is a bound parameter, and column names come from a fixed allow-list.

Health scopes (``healthy degraded unhealthy stuck lost stalled overtime violated``) are
rendered from :func:`chaperone_otel._health.rules` with ``$now`` bound to the evaluation
time in epoch seconds, so they agree with the runtime's Python verdicts and the alert rules.

Example::

    with open_sink("jobs.duckdb") as sink:
        for run in sink.jobs.running().stuck().order_by("memory_bytes", desc=True).limit(10):
            print(run.id, run.name, run.health, run.progress)
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Final

from .._health import DEFAULT_POLICY, PREDICATES, HealthPolicy
from .._spec import qualified_name as _qualified_name
from .._units import parse_bytes, parse_duration, parse_iso_datetime
from ..exceptions import ConfigurationError, SinkError
from ._schema import health_case, predicate

Step = tuple[Any, ...]

HEALTH_SCOPES: Final = (
    "healthy",
    "degraded",
    "unhealthy",
    "stuck",
    "lost",
    "stalled",
    "overtime",
    "violated",
    "near_limit",
    "heartbeat_missed",
)
STATUS_SCOPES: Final = ("pending", "running", "completed", "failed", "cancelled")


# --------------------------------------------------------------------------------------------
# Records.
# --------------------------------------------------------------------------------------------


def _utc(value: Any) -> datetime | None:
    """A stored naive-UTC TIMESTAMP (or ISO text) as a tz-aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_iso_datetime(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    raise TypeError(f"not a timestamp: {value!r}")


def _json_obj(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {"value": value}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class HeartbeatRecord:
    """One flushed heartbeat: ``calls`` coalesced ``heartbeat()`` calls at ``at``.

    ``kind`` is ``heartbeat`` (the job's code beat) or ``liveness`` (only the process was
    alive); ``count`` is the run's total calls so far; ``progress`` is 0..100.
    """

    at: datetime
    calls: int | None
    kind: str | None
    count: int | None
    progress: float | None
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeartbeatRecord:
        at = _utc(d["at"])
        assert at is not None
        return cls(
            at=at,
            calls=d.get("calls"),
            kind=d.get("kind"),
            count=d.get("count"),
            progress=d.get("progress"),
            metadata=_json_obj(d.get("metadata")),
        )


@dataclass(frozen=True)
class ErrorRecord:
    """The error that failed a run attempt, with its formatted traceback."""

    at: datetime | None
    type: str | None
    message: str | None
    trace: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorRecord:
        return cls(
            at=_utc(d.get("at")), type=d.get("type"), message=d.get("message"), trace=d.get("trace")
        )


@dataclass(frozen=True)
class ViolationRecord:
    """A resource limit crossed: ``type`` (memory, cpu, fds, timeout), ``limit`` and the
    ``actual`` value in the limit's unit, and the run's limit ``policy``."""

    at: datetime | None
    type: str | None
    limit: float | None
    actual: float | None
    policy: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViolationRecord:
        return cls(
            at=_utc(d.get("at")),
            type=d.get("type"),
            limit=d.get("limit"),
            actual=d.get("actual"),
            policy=d.get("policy"),
        )


@dataclass(frozen=True)
class JobRecord:
    """One run attempt as stored, with its health judged at query time.

    Times are tz-aware UTC datetimes; ``duration`` is seconds (so far, for a running run);
    ``progress`` is 0..100; ``health`` is ``healthy``, ``degraded``, ``unhealthy`` or
    ``unknown`` (pending), and ``stuck``/``lost`` are the rules' verdicts at query time.
    ``heartbeats()``, ``errors`` and ``resource_violations`` query the sink the record came
    from.
    """

    id: str
    attempt: int
    name: str | None
    queue: str | None
    status: str | None
    health: str
    stuck: bool
    lost: bool
    host: str | None
    pid: int | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    progress: float | None
    current: float | None
    total: float | None
    phase: str | None
    rate: float | None
    eta: float | None
    heartbeat_count: int | None
    heartbeat_interval: float | None
    last_heartbeat_at: datetime | None
    last_seen_at: datetime | None
    timeout_at: datetime | None
    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_percent: float | None
    open_fds: int | None
    memory_limit_bytes: int | None
    cpu_limit_percent: float | None
    fd_limit: int | None
    violation_count: int | None
    error_type: str | None
    error_message: str | None
    error_trace: str | None
    trace_id: str | None
    span_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    _sink: Sink | None = field(default=None, compare=False, repr=False)

    TIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"started_at", "finished_at", "last_heartbeat_at", "last_seen_at", "timeout_at"}
    )

    def is_healthy(self) -> bool:
        """True when the health rules judge the run healthy (Chaperone's ``isHealthy()``)."""
        return self.health == "healthy"

    def heartbeats(self) -> list[HeartbeatRecord]:
        """The stored heartbeats of this attempt, oldest first (the latest N are kept)."""
        return self._source().heartbeats_of(self.id, self.attempt)

    def latest_heartbeat(self) -> HeartbeatRecord | None:
        """The newest stored heartbeat, or None."""
        found = self._source().heartbeats_of(self.id, self.attempt, latest=True)
        return found[0] if found else None

    @property
    def errors(self) -> list[ErrorRecord]:
        """Errors of this attempt, with tracebacks (at most one: a run fails once)."""
        return self._source().errors_of(self.id, self.attempt)

    @property
    def resource_violations(self) -> list[ViolationRecord]:
        """Limits this attempt crossed, oldest first."""
        return self._source().violations_of(self.id, self.attempt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO 8601 strings); :meth:`from_dict` inverts it."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if not f.name.startswith("_")
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], sink: Sink | None = None) -> JobRecord:
        """Rebuild a record from :meth:`to_dict` output (a remote sink's JSON)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            value = d.get(f.name)
            if f.name in cls.TIME_FIELDS:
                value = _utc(value)
            elif f.name in ("metadata", "attributes"):
                value = _json_obj(value)
            kwargs[f.name] = value
        return cls(**kwargs, _sink=sink)

    def _source(self) -> Sink:
        if self._sink is None:
            raise SinkError("this JobRecord is detached from a sink (built by hand?)")
        return self._sink


# --------------------------------------------------------------------------------------------
# The SQL of a query.
# --------------------------------------------------------------------------------------------

# JobRecord field → SQL expression over the jobs table ($now bound).
_SELECT: Final[dict[str, str]] = {
    "id": "run_id",
    "attempt": "attempt",
    "name": "name",
    "queue": "queue",
    "status": "status",
    "health": "",
    "stuck": "",
    "lost": "",
    "host": "host",
    "pid": "pid",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "duration": "COALESCE(duration, CASE WHEN status IN ('running', 'pending') "
    "THEN greatest(0.0, $now - epoch(started_at)) END)",
    "progress": "progress",
    "current": "current",
    "total": "total",
    "phase": "phase",
    "rate": "rate",
    "eta": "eta",
    "heartbeat_count": "heartbeat_count",
    "heartbeat_interval": "heartbeat_interval",
    "last_heartbeat_at": "last_heartbeat_at",
    "last_seen_at": "last_seen_at",
    "timeout_at": "timeout_at",
    "memory_bytes": "memory_bytes",
    "memory_peak_bytes": "memory_peak_bytes",
    "cpu_percent": "cpu_percent",
    "open_fds": "open_fds",
    "memory_limit_bytes": "memory_limit_bytes",
    "cpu_limit_percent": "cpu_limit_percent",
    "fd_limit": "fd_limit",
    "violation_count": "violation_count",
    "error_type": "error_type",
    "error_message": "error_message",
    "error_trace": "error_trace",
    "trace_id": "trace_id",
    "span_id": "span_id",
    "metadata": "metadata",
    "attributes": "attributes",
}

ORDERABLE: Final = frozenset(_SELECT) - {"metadata", "attributes", "error_trace"}
"""Columns accepted by :meth:`JobQuery.order_by`."""


def select_list(policy: HealthPolicy) -> str:
    exprs = dict(_SELECT)
    exprs["health"] = health_case(policy)
    exprs["stuck"] = predicate("stuck", policy)
    exprs["lost"] = predicate("lost", policy)
    return ", ".join(f"{expr} AS {name}" for name, expr in exprs.items())


def _to_epoch(value: Any, what: str) -> float:
    """datetime (naive = UTC) / epoch number / ISO string → epoch seconds."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a datetime, not a bool")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what} must be finite")
        return float(value)
    if isinstance(value, str):
        try:
            value = parse_iso_datetime(value)
        except ValueError as e:
            raise ConfigurationError(
                f"{what}={value!r} is not a time: use a datetime, Unix seconds or ISO 8601"
            ) from e
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    raise ConfigurationError(f"{what}={value!r} is not a time: use a datetime or Unix seconds")


def _naive_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    return value


class _Sql:
    """Accumulates WHERE clauses with uniquely named, bound parameters."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "$" + name

    def add(self, clause: str) -> None:
        self.where.append(clause)


def _render_step(sql: _Sql, step: Step, policy: HealthPolicy) -> None:
    kind = step[0]
    if kind == "status":
        sql.add(f"status = {sql.bind(step[1])}")
    elif kind == "health":
        sql.add(predicate(step[1], policy))
    elif kind == "name":
        sql.add(f"name = {sql.bind(step[1])}")
    elif kind == "class":
        sql.add(f"(name = {sql.bind(step[1])} OR starts_with(name, {sql.bind(step[1] + '.')}))")
    elif kind == "queue":
        sql.add(f"queue = {sql.bind(step[1])}")
    elif kind == "run_id":
        sql.add(f"run_id = {sql.bind(step[1])}")
    elif kind == "started_between":
        if step[1] is not None:
            sql.add(f"started_at >= {sql.bind(_naive_utc(step[1]))}")
        if step[2] is not None:
            sql.add(f"started_at < {sql.bind(_naive_utc(step[2]))}")
    elif kind == "memory_above":
        sql.add(f"memory_bytes > {sql.bind(step[1])}")
    elif kind == "cpu_above":
        sql.add(f"cpu_percent > {sql.bind(step[1])}")
    elif kind in ("order", "limit", "at"):
        pass
    else:  # pragma: no cover - steps are validated on entry
        raise SinkError(f"unknown query step {kind!r}")


# --------------------------------------------------------------------------------------------
# JobQuery.
# --------------------------------------------------------------------------------------------


class JobQuery:
    """An immutable, lazy query over stored runs. Scopes return new queries; terminals run.

    Args:
        sink: where terminals run.
        steps: the scopes so far (JSON values; see module doc).
        clock: Unix-seconds clock for relative scopes and the default evaluation time.
    """

    __slots__ = ("_clock", "_sink", "_steps")

    def __init__(self, sink: Sink, steps: tuple[Step, ...] = (), *, clock: Any = time.time) -> None:
        self._sink = sink
        self._steps = steps
        self._clock = clock

    def _with(self, *step: Any) -> JobQuery:
        return JobQuery(self._sink, (*self._steps, tuple(step)), clock=self._clock)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The scopes of this query as JSON-ready tuples (for a remote sink)."""
        return self._steps

    @property
    def now(self) -> float:
        """The evaluation time in Unix seconds (``at()`` if set, else the clock now)."""
        for step in reversed(self._steps):
            if step[0] == "at":
                return float(step[1])
        return float(self._clock())

    # --- status scopes -------------------------------------------------------------------
    def pending(self) -> JobQuery:
        """Runs not started yet."""
        return self._with("status", "pending")

    def running(self) -> JobQuery:
        """Runs in progress (including stuck and lost ones: their last word was running)."""
        return self._with("status", "running")

    def completed(self) -> JobQuery:
        """Runs that finished successfully."""
        return self._with("status", "completed")

    def failed(self) -> JobQuery:
        """Runs that raised."""
        return self._with("status", "failed")

    def cancelled(self) -> JobQuery:
        """Runs cancelled (limit policy ``cancel``, task cancellation, interrupt)."""
        return self._with("status", "cancelled")

    # --- health scopes (rendered from chaperone_otel._health) ----------------------------
    def healthy(self) -> JobQuery:
        """Heartbeat within 1.5 intervals, no limit near, not failed (see DESIGN §5)."""
        return self._with("health", "healthy")

    def degraded(self) -> JobQuery:
        """Heartbeat late (1.5-3 intervals), a resource at 80 % of its limit, or stalled."""
        return self._with("health", "degraded")

    def unhealthy(self) -> JobQuery:
        """Heartbeat over 3 intervals late, past timeout_at, a limit violated, or failed."""
        return self._with("health", "unhealthy")

    def stuck(self) -> JobQuery:
        """Running, process alive, but past timeout_at or heartbeat overdue (hung)."""
        return self._with("health", "stuck")

    def lost(self) -> JobQuery:
        """Running, but no record of any kind for 3 intervals (process gone)."""
        return self._with("health", "lost")

    def stalled(self) -> JobQuery:
        """Running with progress flat past its stall budget."""
        return self._with("health", "stalled")

    def overtime(self) -> JobQuery:
        """Running past ``timeout_at``."""
        return self._with("health", "overtime")

    def violated(self) -> JobQuery:
        """Runs that crossed a resource limit."""
        return self._with("health", "violated")

    def near_limit(self) -> JobQuery:
        """Runs with a resource at or above 80 % of its limit."""
        return self._with("health", "near_limit")

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
        lo, hi = _to_epoch(start, "start"), _to_epoch(end, "end")
        if hi < lo:
            raise ConfigurationError(f"between(): end {end!r} is before start {start!r}")
        return self._with("started_between", lo, hi)

    def since(self, when: datetime | timedelta | str | float) -> JobQuery:
        """Runs started since ``when``: a datetime, or an age (``timedelta``, ``"1h"``,
        ``"30d"``, seconds) measured back from the query's evaluation time."""
        if isinstance(when, datetime):
            return self._with("started_between", _to_epoch(when, "since"), None)
        try:
            age = parse_duration(when, what="since")
        except ConfigurationError:
            if isinstance(when, str):
                return self._with("started_between", _to_epoch(when, "since"), None)
            raise
        return self._with("started_between", self.now - age, None)

    def today(self) -> JobQuery:
        """Runs started since midnight UTC of the evaluation day."""
        now = datetime.fromtimestamp(self.now, timezone.utc)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return self._with("started_between", midnight.timestamp(), None)

    def memory_above(self, limit: int | float | str) -> JobQuery:
        """Runs whose latest memory sample is above ``limit`` (bytes or ``"512MiB"``)."""
        return self._with("memory_above", parse_bytes(limit, what="memory_above"))

    def cpu_above(self, percent: float) -> JobQuery:
        """Runs whose latest CPU sample is above ``percent`` (of one core)."""
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or not math.isfinite(percent)
        ):
            raise ConfigurationError(f"cpu_above() takes a percent number, got {percent!r}")
        return self._with("cpu_above", float(percent))

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
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigurationError(f"limit() takes a non-negative int, got {n!r}")
        return self._with("limit", n)

    def at(self, when: datetime | float) -> JobQuery:
        """Judge health as of ``when`` instead of now (tests, post-mortems)."""
        return self._with("at", _to_epoch(when, "at"))

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
        """The matching runs as a ``pyarrow.Table`` with the :class:`JobRecord` columns."""
        return self._sink._arrow(self)

    def sql(self) -> tuple[str, dict[str, Any]]:
        """The SQL text and named parameters ``all()`` would run (for humans and EXPLAIN)."""
        return self.render(self._sink.policy)

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self.all())

    def __repr__(self) -> str:
        return f"<JobQuery {' '.join(str(s[0]) for s in self._steps) or 'all'}>"

    # --- rendering and replay ------------------------------------------------------------
    def render(self, policy: HealthPolicy, *, count: bool = False) -> tuple[str, dict[str, Any]]:
        """SQL and parameters of this query (a select of all fields, or a count)."""
        sql = _Sql()
        order: list[str] = []
        limit: int | None = None
        for step in self._steps:
            _render_step(sql, step, policy)
            if step[0] == "order":
                order.append(f"{_SELECT[step[1]] or step[1]} {'DESC' if step[2] else 'ASC'}")
            elif step[0] == "limit":
                limit = step[1] if limit is None else min(limit, step[1])
        where = f" WHERE {' AND '.join(sql.where)}" if sql.where else ""
        if count:
            text = f"SELECT count(*) FROM jobs{where}"
        else:
            order.extend(["started_at DESC NULLS LAST", "run_id", "attempt"])
            text = f"SELECT {select_list(policy)} FROM jobs{where} ORDER BY {', '.join(order)}"
            if limit is not None:
                text += f" LIMIT {sql.bind(limit)}"
        if "$now" in text:
            sql.params["now"] = self.now
        return text, sql.params

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
                out = _REPLAY[step[0]](out, step)
            except KeyError as e:
                raise SinkError(f"unknown query step {step[0]!r}") from e
            except (ConfigurationError, TypeError, IndexError, ValueError) as e:
                raise SinkError(f"malformed query step {raw!r}: {e}") from e
        return out


def _replay_health(q: JobQuery, s: Step) -> JobQuery:
    if s[1] not in HEALTH_SCOPES or s[1] not in PREDICATES:
        raise ValueError(f"no health scope {s[1]!r}")
    return q._with("health", s[1])


def _replay_status(q: JobQuery, s: Step) -> JobQuery:
    if s[1] not in STATUS_SCOPES:
        raise ValueError(f"no status {s[1]!r}")
    return q._with("status", s[1])


def _replay_between(q: JobQuery, s: Step) -> JobQuery:
    lo = None if s[1] is None else _to_epoch(s[1], "start")
    hi = None if s[2] is None else _to_epoch(s[2], "end")
    return q._with("started_between", lo, hi)


_REPLAY: Final[dict[str, Any]] = {
    "status": _replay_status,
    "health": _replay_health,
    "name": lambda q, s: q.named(s[1]),
    "class": lambda q, s: q.by_class(s[1]),
    "queue": lambda q, s: q.on_queue(s[1]),
    "run_id": lambda q, s: q.with_id(s[1]),
    "started_between": _replay_between,
    "memory_above": lambda q, s: q.memory_above(s[1]),
    "cpu_above": lambda q, s: q.cpu_above(s[1]),
    "order": lambda q, s: q.order_by(s[1], desc=bool(s[2])),
    "limit": lambda q, s: q.limit(s[1]),
    "at": lambda q, s: q.at(s[1]),
}


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
    def prune(self, older_than: timedelta | str | float) -> int:
        """Delete runs whose latest record is older than ``older_than``; returns how many."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (idempotent)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
