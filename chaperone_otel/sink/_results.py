"""What a query returns: :class:`JobRecord` (one run attempt) and its heartbeats, errors and
violations, and the SELECT list that fills a record from the ``jobs`` table.

A record's fields are the record-visible rows of :data:`chaperone_otel._fields.RUN_FIELDS`:
:class:`JobRecord` declares them with their Python types (for type checkers and readers;
``tests/sink/test_fields.py`` keeps the two equal), and everything else — which fields are
times, how a stored or JSON value becomes a field value, the SQL expression of each field —
is derived from the table. Health, stuck and lost are not stored: the SELECT list renders them
from the one rule definition (``_health.rules``) with ``$now`` bound at query time.

Example::

    run = sink.job(run_id)
    run.duration, run.progress, run.is_healthy(), run.errors, run.heartbeats()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, Final, Protocol, TypeVar

from .._fields import ACTIVE_STATUSES, RUN_FIELDS, Kind, RunField, field_named
from .._health import HealthPolicy
from .._units import parse_iso_datetime
from ..exceptions import SinkError
from ._schema import predicate, stored_health


class RecordSource(Protocol):
    """Where a record's heartbeats, errors and violations are read (a :class:`Sink`)."""

    def heartbeats_of(
        self,
        run_id: str,
        attempt: int,
        *,
        latest: bool = False,
        kind: str | None = None,
        execution_id: str | None = None,
    ) -> list[HeartbeatRecord]: ...

    def errors_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ErrorRecord]: ...

    def violations_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ViolationRecord]: ...


HEARTBEAT_KINDS: Final = ("heartbeat", "liveness")
"""What a heartbeat record is: the job's code beat or progressed, or only its process was
alive (see ``semconv.ATTR_HEARTBEAT_KIND``)."""


def _kind(kind: str | None) -> str | None:
    if kind is not None and kind not in HEARTBEAT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HEARTBEAT_KINDS)} or None, not {kind!r}")
    return kind


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


class SqlResult(tuple[list[str], list[tuple[Any, ...]]]):
    """What ``sink.sql()`` returns: a ``(columns, rows)`` pair, plus :attr:`truncated`.

    Attributes:
        truncated: None when ``rows`` is the whole result; otherwise which limit stopped it
            and what to do (the rows are the first ones the query produced).
    """

    truncated: str | None

    def __new__(
        cls, columns: list[str], rows: list[tuple[Any, ...]], truncated: str | None = None
    ) -> SqlResult:
        self = super().__new__(cls, (columns, rows))
        self.truncated = truncated
        return self

    @property
    def columns(self) -> list[str]:
        """The column names."""
        return self[0]

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The rows, at most the row limit."""
        return self[1]


class PruneResult(int):
    """What ``sink.prune()`` returns: the number of runs deleted (an ``int``, as it always
    was), plus :attr:`schedules_retired`.

    An ``int`` subclass, as :class:`SqlResult` is a tuple: code that compares, adds or
    prints the runs count keeps working, and the schedule count is one attribute away.

    Attributes:
        schedules_retired: schedules prune removed, with their slots and dispatches, for
            having no declaration, run or dispatch since its cutoff.

    .. versionadded:: 0.1
    """

    schedules_retired: int

    def __new__(cls, runs: int, schedules_retired: int = 0) -> PruneResult:
        self = super().__new__(cls, runs)
        self.schedules_retired = schedules_retired
        return self

    @property
    def runs(self) -> int:
        """Runs deleted (the value of this ``int``)."""
        return int(self)

    def __repr__(self) -> str:
        return f"PruneResult(runs={int(self)}, schedules_retired={self.schedules_retired})"

    def __str__(self) -> str:  # the runs count, as before: repr() alone is the long form
        return str(int(self))


def _converter(f: RunField) -> Callable[[Any], Any] | None:
    """How a stored or JSON value becomes the record field's Python value (None: as is)."""
    if f.kind is Kind.TIME:
        return _utc
    if f.kind is Kind.JSON:
        return _json_obj
    if f.kind is Kind.BOOL and not f.stored:  # a computed verdict: never NULL on a record
        return bool
    return None


_Plan = tuple[tuple[str, Callable[[Any], Any] | None], ...]
_PLANS: dict[type[Any], _Plan] = {}


def _record_plan(cls: type[JobRecord], run_fields: tuple[RunField, ...]) -> _Plan:
    """(field, converter) of every public field of ``cls``: a fetch builds a record per
    row, and looking the fields up for each was ~half its cost (issue 16). Kept per class
    for the run fields (by identity: hashing sixty fields per row cost as much again)."""
    if run_fields is RUN_FIELDS:
        plan = _PLANS.get(cls)
        if plan is not None:
            return plan
    plan = tuple(
        (f.name, _converter(field_named(f.name, run_fields)))
        for f in fields(cls)
        if not f.name.startswith("_")
    )
    if run_fields is RUN_FIELDS:
        _PLANS[cls] = plan  # a race computes it twice, both equal: harmless
    return plan


_R = TypeVar("_R", bound="JobRecord")


@dataclass(frozen=True)
class JobRecord:
    """One run attempt as stored, with its health judged at query time.

    Times are tz-aware UTC datetimes; ``duration`` is seconds (so far, for a running run;
    up to its last record, for a lost one);
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
    service_name: str | None
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
    cpu_scope: str | None = None
    """What ``cpu_percent`` measured: ``thread``, ``process`` or ``shared`` (not the run's own)."""
    stuck_since: datetime | None = None
    """When the run first became stuck (kept after it recovered or ended); None if never."""
    stuck_seconds: float | None = None
    """Seconds the run spent stuck, all spells added up; None if it never was."""
    parent_run_id: str | None = None
    """The run id of the supervised run this one was started in; None for a top-level run."""
    schedule: str | None = None
    """The schedule the run belongs to (``chaperone_otel.schedule``); None if none."""
    scheduled_for: datetime | None = None
    """The slot of its schedule the run serves."""
    execution_id: str = ""
    lease: str | None = None
    scheduled_at: datetime | None = None
    _sink: RecordSource | None = field(default=None, compare=False, repr=False)

    TIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        f.record_name for f in RUN_FIELDS if f.kind is Kind.TIME and f.record_name
    )
    """Fields holding a UTC datetime (derived from the run fields)."""

    def is_healthy(self) -> bool:
        """True when the health rules judge the run healthy (Chaperone's ``isHealthy()``)."""
        return self.health == "healthy"

    @property
    def completed(self) -> bool:
        """The run completed (the guide's ``$job->completed()``)."""
        return self.status == "completed"

    @property
    def failed(self) -> bool:
        """The run failed: it raised (the guide's ``$job->failed()``)."""
        return self.status == "failed"

    @property
    def completed_at(self) -> datetime | None:
        """When it completed (the guide's ``completed_at``); None unless :attr:`completed`.
        :attr:`finished_at` is the end of any finished run, failed or cancelled too."""
        return self.finished_at if self.completed else None

    @property
    def queue_wait(self) -> float | None:
        """Seconds from when it was due (:attr:`scheduled_at`, a pending run's ETA) to its
        start; None unless both are known."""
        if self.scheduled_at is None or self.started_at is None:
            return None
        return (self.started_at - self.scheduled_at).total_seconds()

    def heartbeats(self, kind: str | None = None) -> list[HeartbeatRecord]:
        """The stored heartbeat records of this attempt, oldest first (the latest N are
        kept): every kind, or only ``kind="heartbeat"`` (the job's code beat or progressed)
        or ``kind="liveness"`` (the process was alive, the job said nothing)."""
        return self._source().heartbeats_of(
            self.id, self.attempt, kind=_kind(kind), execution_id=self.execution_id
        )

    def latest_heartbeat(self, kind: str | None = "heartbeat") -> HeartbeatRecord | None:
        """The newest heartbeat of the job's own code (the guide's ``heartbeats()->latest()``),
        or None: liveness records, which the monitor writes while the job is silent, do not
        count unless ``kind=None`` (any) or ``kind="liveness"`` asks for them."""
        found = self._source().heartbeats_of(
            self.id, self.attempt, latest=True, kind=_kind(kind), execution_id=self.execution_id
        )
        return found[0] if found else None

    @property
    def errors(self) -> list[ErrorRecord]:
        """Errors of this attempt, with tracebacks (at most one: a run fails once)."""
        return self._source().errors_of(self.id, self.attempt, execution_id=self.execution_id)

    @property
    def resource_violations(self) -> list[ViolationRecord]:
        """Limits this attempt crossed, oldest first."""
        return self._source().violations_of(self.id, self.attempt, execution_id=self.execution_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO 8601 strings); :meth:`from_dict` inverts it."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if not f.name.startswith("_")
        }

    @classmethod
    def from_dict(
        cls: type[_R],
        d: Mapping[str, Any],
        sink: RecordSource | None = None,
        *,
        run_fields: tuple[RunField, ...] = RUN_FIELDS,
    ) -> _R:
        """Rebuild a record from :meth:`to_dict` output (a remote sink's JSON) or a row of
        :func:`select_list` (a local query); each value is converted by its field's kind.
        A field ``d`` lacks is ``None``."""
        kwargs: dict[str, Any] = {}
        for name, convert in _record_plan(cls, run_fields):
            value = d.get(name)
            kwargs[name] = value if convert is None else convert(value)
        kwargs["_sink"] = sink
        if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
            return cls(**kwargs)
        # Every field is given, so the frozen dataclass's __init__ (one object.__setattr__
        # per field, three quarters of a record's cost) is only a slow way to fill __dict__.
        record = object.__new__(cls)
        record.__dict__.update(kwargs)
        return record

    def _source(self) -> RecordSource:
        if self._sink is None:
            raise SinkError("this JobRecord is detached from a sink (built by hand?)")
        return self._sink


# --------------------------------------------------------------------------------------------
# The SQL of a query.
# --------------------------------------------------------------------------------------------


def _duration_so_far(policy: HealthPolicy) -> str:
    """The one record field whose value is not its column: a live run's duration so far,
    and a lost run's frozen at its last sign of life (else it would grow for ever)."""
    return (
        "COALESCE(duration, CASE WHEN status IN ("
        + ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)
        + f") THEN CASE WHEN ({predicate('lost', policy)}) AND last_seen_at IS NOT NULL"
        " THEN greatest(0.0, epoch(last_seen_at) - epoch(started_at))"
        " ELSE greatest(0.0, $now - epoch(started_at)) END END)"
    )


def _select_expr(f: RunField, policy: HealthPolicy) -> str:
    if f.name == "health":
        return stored_health(policy)
    if not f.stored:  # stuck, lost: a health rule's verdict
        return predicate(f.name, policy)
    if f.name == "duration":
        return _duration_so_far(policy)
    return f.name


def select_exprs(
    policy: HealthPolicy,
    *,
    record: type[JobRecord] | None = None,
    run_fields: tuple[RunField, ...] = RUN_FIELDS,
) -> dict[str, str]:
    """Record field → SQL expression over ``jobs`` (``$now`` unbound), in record order."""
    cls = JobRecord if record is None else record
    return {
        f.name: _select_expr(field_named(f.name, run_fields), policy)
        for f in fields(cls)
        if not f.name.startswith("_")
    }


def select_list(
    policy: HealthPolicy,
    *,
    record: type[JobRecord] | None = None,
    run_fields: tuple[RunField, ...] = RUN_FIELDS,
) -> str:
    """The SELECT list of a query returning ``record`` objects (``$now`` unbound)."""
    exprs = select_exprs(policy, record=record, run_fields=run_fields)
    return ", ".join(f"{expr} AS {name}" for name, expr in exprs.items())


def arrow_timestamps(table: Any, tz: str | None = "UTC") -> Any:
    """``table`` (a ``pyarrow.Table`` of records) with its timestamp columns in zone ``tz``:
    ``"UTC"`` for ``to_arrow()``, as the record's tz-aware datetimes; ``None`` for the
    naive-UTC values the ``jobs`` table holds. A zero-copy cast: the values stay the same
    UTC instants, only the type says so."""
    import pyarrow as pa  # noqa: PLC0415 - pyarrow loads with the first Arrow result

    schema = pa.schema(
        [
            f.with_type(pa.timestamp(f.type.unit, tz=tz)) if pa.types.is_timestamp(f.type) else f
            for f in table.schema
        ],
        metadata=table.schema.metadata,
    )
    return table if schema.equals(table.schema) else table.cast(schema)


ORDERABLE: Final = frozenset(
    f.name
    for f in fields(JobRecord)
    if not f.name.startswith("_")
    and f.name != "error_trace"
    and field_named(f.name).kind is not Kind.JSON
)
"""Columns accepted by :meth:`JobQuery.order_by` (not JSON, not tracebacks)."""
