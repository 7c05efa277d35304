"""The fields of a job run, declared once: what a record carries, the store keeps, a query returns.

A run's state travels through five shapes: the flat OTel attributes every lifecycle record
carries (names from :mod:`~chaperone_otel.semconv`), the writer's Arrow staging columns, the
``jobs`` table of the DuckDB store, the :class:`~chaperone_otel.sink.JobRecord` a query
returns, and the CLI's listings. They used to be written out one by one (with ``int32`` on
one side and ``INTEGER`` on the other kept equal by hand); now each is *derived* from
:data:`RUN_FIELDS`, one row per field, so adding a field is one row here plus a migration in
``sink/_schema.py`` (``tests/sink/test_fields.py`` adds one and follows it to a record).

A row's :class:`Kind` is the one statement of its type: ``sink/_schema.py`` maps it to a SQL
type and ``sink/_records.py`` to an Arrow type, each through a table total over the kinds,
so the staged type and the column type cannot disagree.

This module is layer 2: it imports only :mod:`~chaperone_otel.semconv` (no DuckDB, no Arrow,
no SDK), so the runtime may derive its record attributes from it too.

Example::

    from chaperone_otel._fields import RUN_FIELDS, field_named
    field_named("memory_bytes").attribute == semconv.ATTR_MEMORY_USAGE  # True
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from . import semconv as sc

STATUSES: Final = ("pending", "running", "completed", "failed", "cancelled", "retried")
"""Every value of a run's status (``semconv.ATTR_JOB_STATUS``), in lifecycle order.

``retried`` ends an attempt that a task framework will run again (Celery's ``Retry``): terminal
and not a failure (no failure ratio or ``failed()`` scope counts it); the retry's cause is its
error."""

ACTIVE_STATUSES: Final = STATUSES[:2]
"""Statuses of a run that has not ended (``pending``, ``running``)."""

TERMINAL_STATUSES: Final = STATUSES[2:]
"""Statuses of a run that has ended (``completed``, ``failed``, ``cancelled``, ``retried``)."""

ERROR_STATUSES: Final = ("failed", "cancelled", "retried")
"""Terminal statuses whose record may carry the error that ended the run."""

CLOSE_STATUSES: Final = ("failed", "cancelled")
"""What a run closed by hand (``sink.close_run``, ``chaperone-otel close``) may end as."""


class Kind(enum.Enum):
    """A field's value type; each layer maps it to its own type system (SQL, Arrow, Python).

    ``TIME`` is Unix seconds on a record, staged as float64 and stored as a UTC
    ``TIMESTAMP``; ``JSON`` is JSON text on a record and in the store, a dict on a record
    object. ``INT32`` is a SQL ``INTEGER``: a remote sender's value outside int32 is NULLed
    at staging instead of failing the batch's final cast.
    """

    STR = "str"
    BOOL = "bool"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT = "float"
    TIME = "time"
    JSON = "json"


Merge = Literal["key", "state", "sticky", "internal", "computed"]
"""How the writer's upsert treats a column: ``key`` identifies the row; ``state`` takes the
newest record's value; ``sticky`` keeps a value once set (ids, end, error, and the run's spec,
which a ``finished`` record does not repeat: see ``_implied``), a newer record's replacing
it; ``internal`` is writer bookkeeping. ``computed`` fields are not stored: a query derives
them (health)."""


@dataclass(frozen=True)
class RunField:
    """One field of a run.

    Attributes:
        name: the ``jobs`` column (and staging column) name.
        kind: the value type (see :class:`Kind`).
        attribute: the semconv attribute a lifecycle record carries it in; ``None`` when
            no record attribute holds it (trace ids come from the record's context,
            bookkeeping from the writer).
        merge: how an upsert merges it (see :data:`Merge`).
        record: the :class:`~chaperone_otel.sink.JobRecord` field name (usually ``name``);
            ``None`` when a record object does not show it.
        signal: the health-rule signal (``chaperone_otel._health``) this field is, if any.
        required: the column is ``NOT NULL``.
        resource: only the OTel resource carries the attribute (``service.name``): the sink
            reads it from OTLP, a run's own records do not repeat it.
        doc: what the field means, for people.
    """

    name: str
    kind: Kind
    attribute: str | None = None
    merge: Merge = "state"
    record: str | None = ""
    signal: str | None = None
    required: bool = False
    resource: bool = False
    doc: str = ""

    @property
    def record_name(self) -> str | None:
        """The JobRecord field name, or ``None`` when records do not show this field."""
        if self.record is None:
            return None
        return self.record or self.name

    @property
    def stored(self) -> bool:
        """True for a column of the ``jobs`` table (everything except computed fields)."""
        return self.merge != "computed"

    @property
    def staged(self) -> bool:
        """True when the writer stages it from a record attribute (state and sticky)."""
        return self.attribute is not None and self.merge in ("state", "sticky")


def _f(
    name: str,
    kind: Kind,
    attribute: str | None = None,
    merge: Merge = "state",
    *,
    record: str | None = "",
    signal: str | None = None,
    required: bool = False,
    resource: bool = False,
    doc: str = "",
) -> RunField:
    return RunField(name, kind, attribute, merge, record, signal, required, resource, doc)


_S, _B, _I32, _I64, _F, _T, _J = (
    Kind.STR,
    Kind.BOOL,
    Kind.INT32,
    Kind.INT64,
    Kind.FLOAT,
    Kind.TIME,
    Kind.JSON,
)

# In ``jobs`` column order (a store file's column order is fixed by its first migration).
RUN_FIELDS: Final[tuple[RunField, ...]] = (
    _f("run_id", _S, sc.ATTR_JOB_RUN_ID, "key", record="id", required=True, doc="Run id."),
    _f("attempt", _I32, sc.ATTR_JOB_ATTEMPT, "key", required=True, doc="Attempt number."),
    _f("seq", _I64, sc.ATTR_JOB_SEQUENCE, "internal", record=None, doc="Latest record seq."),
    _f("name", _S, sc.ATTR_JOB_NAME, doc="Job name."),
    _f("queue", _S, sc.ATTR_JOB_QUEUE, doc="Queue."),
    _f("status", _S, sc.ATTR_JOB_STATUS, signal="status", doc="One of STATUSES."),
    _f("health", _S, None, "computed", doc="Health judged at query time."),
    _f("stuck", _B, None, "computed", doc="Stuck at query time."),
    _f("lost", _B, None, "computed", doc="Lost at query time."),
    _f("reported_health", _S, sc.ATTR_JOB_HEALTH, record=None, doc="Runtime's verdict."),
    _f("reported_stuck", _B, sc.ATTR_JOB_STUCK, record=None, doc="Runtime's stuck flag."),
    _f("host", _S, sc.ATTR_HOST_NAME, doc="Host name."),
    _f("pid", _I32, sc.ATTR_PROCESS_PID, doc="Process id."),
    _f("service_name", _S, sc.ATTR_SERVICE_NAME, resource=True, doc="Service."),
    _f("service_instance_id", _S, sc.ATTR_SERVICE_INSTANCE_ID, record=None, doc="Instance."),
    _f("started_at", _T, sc.ATTR_JOB_STARTED_AT, signal="started_at", doc="Start time."),
    _f("finished_at", _T, sc.ATTR_JOB_FINISHED_AT, "sticky", doc="End time."),
    _f("duration", _F, sc.ATTR_JOB_DURATION, "sticky", doc="Seconds (so far, if running)."),
    _f("timeout", _F, sc.ATTR_JOB_TIMEOUT, "sticky", record=None, doc="Max runtime, seconds."),
    _f("timeout_at", _T, sc.ATTR_JOB_TIMEOUT_AT, signal="timeout_at", doc="Deadline."),
    _f("stall_timeout", _F, sc.ATTR_JOB_STALL_TIMEOUT, "sticky", record=None, doc="Stall, s."),
    _f("heartbeat_interval", _F, sc.ATTR_HEARTBEAT_INTERVAL, "sticky", signal="heartbeat_interval"),
    _f("heartbeat_count", _I64, sc.ATTR_HEARTBEAT_COUNT, doc="heartbeat() calls so far."),
    _f("last_heartbeat_at", _T, sc.ATTR_HEARTBEAT_LAST, signal="last_heartbeat"),
    _f(
        "last_seen_at",
        _T,
        None,
        "internal",
        signal="last_seen",
        doc="Latest time of a record from the run's own process.",
    ),
    _f("progress", _F, sc.ATTR_PROGRESS_RATIO, doc="0..1 on a record, 0..100 stored."),
    _f("current", _F, sc.ATTR_PROGRESS_CURRENT, doc="Items done."),
    _f("total", _F, sc.ATTR_PROGRESS_TOTAL, doc="Items in all."),
    _f("phase", _S, sc.ATTR_PROGRESS_PHASE, doc="Current phase."),
    _f("rate", _F, sc.ATTR_PROGRESS_RATE, doc="Progress ratio per second."),
    _f("eta", _F, sc.ATTR_PROGRESS_ETA, doc="Seconds to completion."),
    _f("progress_updated_at", _T, sc.ATTR_PROGRESS_UPDATED_AT, record=None),
    _f("memory_bytes", _I64, sc.ATTR_MEMORY_USAGE, signal="memory", doc="RSS, bytes."),
    _f("memory_peak_bytes", _I64, sc.ATTR_MEMORY_PEAK, doc="Peak RSS, bytes."),
    _f("cpu_percent", _F, sc.ATTR_CPU_PERCENT, signal="cpu", doc="CPU, % of one core."),
    _f("open_fds", _I32, sc.ATTR_OPEN_FDS, signal="fds", doc="Open file descriptors."),
    _f("memory_limit_bytes", _I64, sc.ATTR_LIMIT_MEMORY, "sticky", signal="memory_limit"),
    _f("cpu_limit_percent", _F, sc.ATTR_LIMIT_CPU, "sticky", signal="cpu_limit"),
    _f("fd_limit", _I32, sc.ATTR_LIMIT_FDS, "sticky", signal="fd_limit"),
    _f("limit_policy", _S, sc.ATTR_LIMIT_POLICY, "sticky", record=None, doc="On a limit."),
    _f("violation_count", _I32, sc.ATTR_VIOLATION_COUNT, signal="violation_count"),
    _f("error_type", _S, sc.ATTR_ERROR_TYPE, "sticky", doc="Exception class."),
    _f("error_message", _S, sc.ATTR_ERROR_MESSAGE, "sticky", doc="Exception message."),
    _f("error_trace", _S, sc.ATTR_ERROR_STACKTRACE, "sticky", doc="Formatted traceback."),
    _f("trace_id", _S, None, "sticky", doc="Trace id (hex), from the record's context."),
    _f("span_id", _S, None, "sticky", doc="Span id (hex), from the record's context."),
    _f("metadata", _J, sc.ATTR_METADATA, doc="Latest heartbeat/progress metadata."),
    _f("attributes", _J, None, doc=f"User attributes ({sc.ATTR_USER_PREFIX}*), as JSON."),
    _f("span_seen", _B, None, "internal", record=None, doc="A finished span arrived."),
    _f("heartbeat_rows", _I32, None, "internal", record=None, doc="Stored heartbeat rows."),
    _f("ingested_at", _T, None, "internal", record=None, doc="Last write time."),
    # Added by migration 2 (issue 12: CPU attribution, stuck history, parent run).
    _f("cpu_scope", _S, sc.ATTR_CPU_SCOPE, doc="What cpu_percent measured."),
    _f("stuck_since", _T, sc.ATTR_JOB_STUCK_SINCE, "sticky", doc="When it first became stuck."),
    _f("stuck_seconds", _F, sc.ATTR_JOB_STUCK_DURATION, "sticky", doc="Seconds spent stuck."),
    _f("parent_run_id", _S, sc.ATTR_JOB_PARENT_RUN_ID, "sticky", doc="Enclosing run's id."),
    # Added by migration 3 (issue 15: schedules).
    _f("schedule", _S, sc.ATTR_SCHEDULE_NAME, doc="The schedule the run belongs to."),
    _f("scheduled_for", _T, sc.ATTR_SCHEDULE_SCHEDULED_FOR, doc="The slot it serves."),
    # Added by migration 4 (issue 13: executions, the lease, a pending run's due time).
    _f("execution_id", _S, sc.ATTR_JOB_EXECUTION_ID, "key", doc="Id of this start ('' old)."),
    _f("lease", _S, sc.ATTR_JOB_LEASE, "sticky", signal="lease", doc="heartbeat or liveness."),
    _f("scheduled_at", _T, sc.ATTR_JOB_SCHEDULED_AT, "sticky", doc="Due time (ETA) if pending."),
    # Added by migration 6 (issue 16: a finished run's verdict, computed by the writer).
    _f("settled_health", _S, None, "internal", record=None, doc="Finished run's verdict."),
)
"""Every field of a run, one row each (see the module doc for what derives from it)."""

LISTED: Final = (
    "id",
    "name",
    "queue",
    "status",
    "health",
    "progress",
    "started_at",
    "duration",
    "last_heartbeat_at",
    "memory_bytes",
)
"""Record fields of the CLI's one-line-per-run listings (``jobs --csv``), in column order."""

_BY_NAME: Final[Mapping[str, RunField]] = {f.name: f for f in RUN_FIELDS}
_BY_RECORD: Final[Mapping[str, RunField]] = {
    f.record_name: f for f in RUN_FIELDS if f.record_name is not None
}


def field_named(name: str, fields: tuple[RunField, ...] = RUN_FIELDS) -> RunField:
    """The row whose column (or JobRecord field) is ``name``.

    Raises:
        KeyError: no such field.
    """
    if fields is RUN_FIELDS:
        found = _BY_NAME.get(name) or _BY_RECORD.get(name)
        if found is None:
            raise KeyError(name)
        return found
    for f in fields:
        if name in (f.name, f.record_name):
            return f
    raise KeyError(name)


def record_attributes(fields: tuple[RunField, ...] = RUN_FIELDS) -> frozenset[str]:
    """Every semconv attribute a run's own lifecycle records carry for these fields (the
    resource-only ones, such as ``service.name``, excluded)."""
    return frozenset(f.attribute for f in fields if f.attribute is not None and not f.resource)


def record_fields(fields: tuple[RunField, ...] = RUN_FIELDS) -> tuple[RunField, ...]:
    """The rows a :class:`~chaperone_otel.sink.JobRecord` shows, in table order."""
    return tuple(f for f in fields if f.record_name is not None)


def signal_fields(fields: tuple[RunField, ...] = RUN_FIELDS) -> Mapping[str, RunField]:
    """Health-rule signal name → the row that is that signal."""
    return {f.signal: f for f in fields if f.signal is not None}


def _check(fields: tuple[RunField, ...]) -> None:
    names = [f.name for f in fields]
    records = [f.record_name for f in fields if f.record_name is not None]
    attributes = [f.attribute for f in fields if f.attribute is not None]
    for label, values in (("name", names), ("record", records), ("attribute", attributes)):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"run fields repeat a {label}: {', '.join(map(str, dupes))}")
    missing = [c for c in LISTED if c not in records]
    if missing:
        raise ValueError(f"LISTED names fields records do not have: {', '.join(missing)}")


_check(RUN_FIELDS)
