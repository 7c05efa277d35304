"""What the writer ingests (lifecycle records, finished run spans) → columnar staging tables.

The in-process listener and the OTLP logs decoder hand the writer
:class:`~chaperone_otel._events.LifecycleRecord` objects, the OTLP traces decoder
:class:`SpanRecord` objects; this module is the one place that knows how their flat semconv
attributes map onto the store's columns. Conversion is
columnar (one list comprehension per column, then one ``pyarrow.array`` call) because a
per-row Python loop would cost more than the DuckDB write itself.

A ``started`` or ``finished`` record may leave out what its other values imply (defaults at
a start, times equal to its start, the duration): :func:`stage` puts those back first
(:func:`chaperone_otel._implied.restore`), so a slim record stores the same row as a full one.
A ``finished`` record need not repeat the run's spec: the store keeps those columns once set
(``sticky``), and within one batch :func:`stage` takes them from the run's latest earlier
record.

A value from a remote sender that the store cannot hold never fails the batch and never
touches another value: the column falls back to per-value coercion, and only the bad value
becomes ``NULL`` (counted in :attr:`Staged.coerced`). "Cannot hold" means: the wrong type
(a string or a boolean where a number goes, a number where a boolean goes); a number outside
the column's type (OTLP JSON ``intValue`` has no size limit; ``pid``, ``open_fds``,
``fd_limit`` and ``violation_count`` are ``INTEGER``, i.e. int32, and are staged as int32 so
the range check happens here, not in the final cast, which would fail the whole batch); a NaN
or infinite float (DuckDB sorts NaN above every number, so a NaN ``cpu_percent`` would look
over its limit). A string that is not valid Unicode (a lone UTF-16 surrogate, which Python
strings can hold but UTF-8 cannot) is stored with each lone surrogate replaced by U+FFFD (also
counted). A record whose run id or attempt cannot be stored (not a non-empty valid string, or
an attempt outside int32) is skipped (counted in :attr:`Staged.invalid`): it cannot identify a
run, and an altered id would silently create a different one.

Spans: OTel exports a run's span only when it ends, so a span can only *complete* a run. A
finished run span reaches the writer as what it is, a :class:`SpanRecord` (built by
:func:`record_from_span`, the one place that turns a span's own fields into run state), next
to the lifecycle :class:`~chaperone_otel._events.LifecycleRecord` objects of the same batch.
:func:`stage` stages the spans in a table of their own (:attr:`Staged.spans`); the writer then
fills only the fields the log records left empty, and lets the span's terminal status replace
a non-terminal one (a span proves the run ended). It never overrides anything a lifecycle log
record said.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from .. import semconv as sc
from .._events import AttributeValue, LifecycleRecord
from .._fields import ERROR_STATUSES, RUN_FIELDS, Kind, RunField
from .._implied import DEFAULTS as IMPLIED_DEFAULTS
from .._implied import SPEC_ON_FINISHED, restore
from .._schedules import spec_from_attributes
from .._units import EPOCH_MAX, EPOCH_MIN

CLOSED_SEQ: Final = 2**62
"""The sequence of a ``closed`` record (another process's word on the run's outcome), above
any the run writes itself, so the run's later records only fill in what is empty."""

Key = tuple[str, int, str]
"""A stored run: (run id, attempt, execution id); ``''`` is the execution of a record that
names none (an older sender, or a row stored before executions had ids)."""

_STR = pa.string()
_F64 = pa.float64()
_I64 = pa.int64()
_I32 = pa.int32()
_BOOL = pa.bool_()

_INT_RANGE: Final = {_I64: (-(2**63), 2**63 - 1), _I32: (-(2**31), 2**31 - 1)}
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")

ARROW_TYPES: Final[Mapping[Kind, Any]] = {
    Kind.STR: _STR,
    Kind.BOOL: _BOOL,
    Kind.INT32: _I32,
    Kind.INT64: _I64,
    Kind.FLOAT: _F64,
    # Times are staged as epoch seconds and converted to TIMESTAMP in SQL (see
    # _ingest.ts_sql) so Python never builds datetimes.
    Kind.TIME: _F64,
    Kind.JSON: _STR,
}
"""The staging (Arrow) type of each field kind; ``_schema.SQL_TYPES`` gives the column's."""

JobAttribute = tuple[str, str, Any, bool]
"""(jobs column, record attribute, Arrow type, is a time)."""


def job_attributes(fields: tuple[RunField, ...] = RUN_FIELDS) -> tuple[JobAttribute, ...]:
    """How each state or sticky column of ``jobs`` is read from a record's attributes."""
    return tuple(
        (f.name, f.attribute, ARROW_TYPES[f.kind], f.kind is Kind.TIME)
        for f in fields
        if f.staged and f.attribute is not None
    )


JOB_ATTRIBUTES: Final = job_attributes()
"""The staged columns of the store's run fields (see :func:`job_attributes`)."""

STAGED_TIME_COLUMNS: Final = frozenset(
    [c for c, _a, _t, is_time in JOB_ATTRIBUTES if is_time] + ["last_seen_at"]
)

_HEARTBEAT_ATTRIBUTES: Final = (
    ("calls", sc.ATTR_HEARTBEAT_CALLS, _I64),
    ("kind", sc.ATTR_HEARTBEAT_KIND, _STR),
    ("count", sc.ATTR_HEARTBEAT_COUNT, _I64),
    ("progress", sc.ATTR_PROGRESS_RATIO, _F64),
    ("current", sc.ATTR_PROGRESS_CURRENT, _F64),
    ("total", sc.ATTR_PROGRESS_TOTAL, _F64),
    ("phase", sc.ATTR_PROGRESS_PHASE, _STR),
    ("memory_bytes", sc.ATTR_MEMORY_USAGE, _I64),
    ("cpu_percent", sc.ATTR_CPU_PERCENT, _F64),
    ("metadata", sc.ATTR_METADATA, _STR),
)

_VIOLATION_ATTRIBUTES: Final = (
    ("type", sc.ATTR_LIMIT_TYPE, _STR),
    ("limit_value", sc.ATTR_LIMIT_VALUE, _F64),
    ("actual", sc.ATTR_LIMIT_ACTUAL, _F64),
    ("policy", sc.ATTR_LIMIT_POLICY, _STR),
)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A finished run span, as the sink ingests it (built by :func:`record_from_span`).

    A peer of :class:`~chaperone_otel._events.LifecycleRecord` in the writer's batches, not a
    kind of it: a lifecycle record is the run's state at one moment and wins by sequence; a
    span is the post-hoc view of the whole run and only completes what the records left empty.

    Attributes:
        attributes: the run's state as the span tells it (semconv names): the span's
            attributes, with its start, end, duration, terminal status and exception filled
            in where the attributes are silent.
        start_time: span start, Unix seconds.
        end_time: span end, Unix seconds (the time the run was last heard of).
        trace_id: the span's trace id. span_id: its span id.
    """

    attributes: Mapping[str, AttributeValue]
    start_time: float
    end_time: float
    trace_id: int = 0
    span_id: int = 0

    @property
    def key(self) -> Key | None:
        """The run's (run id, attempt, execution), ``None`` when the span cannot identify
        a run."""
        return record_key(self.attributes)

    @property
    def timestamp(self) -> float:
        """When the run was last heard of: the span's end (the staging code reads every
        record's time under this name)."""
        return self.end_time


IngestRecord = LifecycleRecord | SpanRecord
"""What the writer takes: lifecycle records and finished run spans, in any mix and order."""


@dataclass
class Staged:
    """One batch, split and collapsed, ready for the writer's bulk statements.

    Attributes:
        logs: one row per run: the state of the highest-sequence log record in the batch,
            plus ``last_seen_at`` = the latest time the run's own process was heard from:
            its latest record of any kind but ``closed`` (another process's word, sent
            when the run's process may be long gone; NULL if the batch has only that).
        spans: one row per run completed by a finished span (:class:`SpanRecord`).
        heartbeats: one row per heartbeat record.
        violations: one row per violation record.
        errors: one row per failed run attempt.
        schedules: schedule declarations and dispatches (``chaperone.schedule.*``), as they came.
        records: records accepted. invalid: records skipped (no run id). coerced: values
            dropped to NULL because of a wrong type.
    """

    logs: pa.Table | None = None
    spans: pa.Table | None = None
    heartbeats: pa.Table | None = None
    violations: pa.Table | None = None
    errors: pa.Table | None = None
    schedules: list[LifecycleRecord] = field(default_factory=list)
    records: int = 0
    invalid: int = 0
    coerced: int = 0
    keys: set[Key] = field(default_factory=set)


def _hex(value: int, width: int) -> str | None:
    return format(value, f"0{width}x") if value else None


def text(value: str) -> str:
    """``value`` with each lone UTF-16 surrogate replaced by U+FFFD, so it encodes as UTF-8.

    Python strings (``json.loads`` of ``"\\ud800"``, or a job's own data) can hold lone
    surrogates; Arrow and DuckDB cannot. ASCII strings (almost all) cost one flag check."""
    if value.isascii():
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)


def _number(v: Any, arrow_type: Any) -> Any:
    """``v`` as a value of ``arrow_type`` (int32, int64 or float64), or ``None`` when it is
    not one: a boolean, a non-numeric string, NaN/infinity, or out of the type's range."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = int(v, 10)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                return None
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
    elif not isinstance(v, int):
        return None
    if arrow_type == _F64:
        try:
            return float(v)
        except OverflowError:  # an int beyond the float range
            return None
    lo, hi = _INT_RANGE[arrow_type]
    n = int(v)
    return n if lo <= n <= hi else None


def _coerce(arrow_type: Any) -> Callable[[Any], Any]:
    if arrow_type in _INT_RANGE or arrow_type == _F64:
        return lambda v: _number(v, arrow_type)
    if arrow_type == _BOOL:
        return lambda v: v if isinstance(v, bool) else None

    def string(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if v is None:
            return None
        if isinstance(v, (bytes, bytearray)):
            return text(bytes(v).decode("utf-8", "replace"))
        try:  # ensure_ascii (the default) escapes lone surrogates: always valid UTF-8
            return json.dumps(_jsonable(v), default=str)
        except (TypeError, ValueError):
            return None

    return string


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class _Columns:
    """Builds Arrow columns, counting values that had to be coerced (see the module doc)."""

    def __init__(self) -> None:
        self.coerced = 0

    def array(self, values: list[Any], arrow_type: Any) -> pa.Array:
        try:
            array = pa.array(values, type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            # incl. UnicodeEncodeError (a ValueError): a lone surrogate in a string
            return self._coerced(values, arrow_type)
        if arrow_type == _F64 and array.null_count < len(array):
            # Arrow accepts True as 1.0 and stores NaN/inf as sent: neither is a measurement.
            # One sum finds both NaN and inf (a finite sum that overflows only costs the
            # slow path, which keeps those values).
            total = pc.sum(array).as_py()
            if not math.isfinite(total) or bool in set(map(type, values)):
                return self._coerced(values, arrow_type)
        return array

    def _coerced(self, values: list[Any], arrow_type: Any) -> pa.Array:
        fix = _coerce(arrow_type)
        fixed = [fix(v) for v in values]
        self.coerced += sum(
            1
            for a, b in zip(values, fixed, strict=True)
            if a is not None and (b is None or (isinstance(a, str) and b != a))
        )
        try:
            return pa.array(fixed, type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            # Should not happen (every fixed value fits); if it does, NULL only the values
            # Arrow refuses, never the whole column (other runs' values are in it).
            kept = [v if _fits(v, arrow_type) else None for v in fixed]
            self.coerced += sum(1 for a, b in zip(fixed, kept, strict=True) if a is not b)
            return pa.array(kept, type=arrow_type)


def _fits(value: Any, arrow_type: Any) -> bool:
    try:
        pa.array([value], type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
    return True


_ATTEMPT_MAX = _INT_RANGE[_I32][1]  # jobs.attempt is INTEGER
_SEQ_MIN, _SEQ_MAX = _INT_RANGE[_I64]


FUTURE_SLACK: Final = 300.0
"""Seconds a record's time may be ahead of the sink's clock and still count as when its run
was last seen (senders' clocks drift); later times count as that much ahead."""


def record_key(attrs: Mapping[str, AttributeValue]) -> Key | None:
    """The record's (run id, attempt, execution id), or ``None`` when one cannot be stored
    as is. A record without an execution id (an older sender) is execution ``''``."""
    run_id = attrs.get(sc.ATTR_JOB_RUN_ID)
    if not isinstance(run_id, str) or not run_id:
        return None
    if not run_id.isascii() and _LONE_SURROGATE.search(run_id):
        return None
    attempt = attrs.get(sc.ATTR_JOB_ATTEMPT, 1)
    # An integer (a JSON sender's 3.0 too), 1 or more: 1.5, "3" or -7 filed under another
    # attempt than the sender's, or one no run can have.
    if isinstance(attempt, float) and attempt.is_integer():
        attempt = int(attempt)
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        return None
    n = attempt
    if not 1 <= n <= _ATTEMPT_MAX:
        return None
    execution = attrs.get(sc.ATTR_JOB_EXECUTION_ID, "")
    if not isinstance(execution, str):
        return None
    if not execution.isascii() and _LONE_SURROGATE.search(execution):
        return None
    return run_id, n, execution


def _seq(attrs: Mapping[str, AttributeValue]) -> int | None:
    """The record's sequence (1 when absent), ``None`` when present but unusable."""
    seq = attrs.get(sc.ATTR_JOB_SEQUENCE, 1)
    if isinstance(seq, bool) or not isinstance(seq, (int, float)):
        return None
    if isinstance(seq, float) and not math.isfinite(seq):
        return None
    n = int(seq)
    return n if _SEQ_MIN <= n <= _SEQ_MAX else None


def _user_value(v: Any) -> Any:
    if isinstance(v, str):
        return text(v)
    if isinstance(v, (list, tuple)):
        return [text(x) if isinstance(x, str) else x for x in v]
    return v


def _user_attributes(attrs: Mapping[str, AttributeValue]) -> str | None:
    prefix = sc.ATTR_USER_PREFIX
    user = {
        text(k[len(prefix) :]): _user_value(v) for k, v in attrs.items() if k.startswith(prefix)
    }
    if not user:
        return None
    # ensure_ascii (the default) escapes lone surrogates, so the stored text is valid UTF-8;
    # default=str keeps a value JSON cannot encode (bytes) instead of failing the batch.
    return json.dumps(user, sort_keys=True, default=str)


_SCHEDULE_EVENTS: Final = frozenset((sc.EVENT_SCHEDULE_DECLARED, sc.EVENT_SCHEDULE_DISPATCHED))


def _storable_time(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and EPOCH_MIN < value < EPOCH_MAX
    )


def schedule_record_ok(event: str, attrs: Mapping[str, AttributeValue], timestamp: float) -> bool:
    """Whether a schedule record (declared, dispatched) can be stored: a valid declaration,
    or a dispatch naming its schedule; its times within what the store holds. The OTLP
    decoder rejects any other through partial success (it was dropped behind a 200, or its
    value failed the whole request)."""
    if not _storable_time(timestamp):
        return False
    if event == sc.EVENT_SCHEDULE_DECLARED:
        return spec_from_attributes(attrs) is not None
    name = attrs.get(sc.ATTR_SCHEDULE_NAME)
    due = attrs.get(sc.ATTR_SCHEDULE_SCHEDULED_FOR)
    return isinstance(name, str) and bool(name) and (due is None or _storable_time(due))


def _schedule_record_ok(record: LifecycleRecord) -> bool:
    return schedule_record_ok(record.event_name, record.attributes, record.timestamp)


def stage(
    records: Iterable[IngestRecord], *, attributes: Sequence[JobAttribute] = JOB_ATTRIBUTES
) -> Staged:
    """Split a batch into the writer's staging tables (see :class:`Staged`); ``attributes``
    is for tests that add a run field (the writer always stages :data:`JOB_ATTRIBUTES`)."""
    out = Staged()
    # A run is seen no later than a little after the sink's own clock: a sender's clock far
    # ahead (or a time of 2^64 ns, year 2554) made ``last_seen_at`` stay in the future, and
    # the run could never be judged lost.
    horizon = time.time() + FUTURE_SLACK
    best: dict[Key, tuple[int, LifecycleRecord]] = {}
    specs: dict[Key, tuple[int, LifecycleRecord]] = {}
    seen: dict[Key, float | None] = {}
    spans: dict[Key, IngestRecord] = {}
    heartbeats: list[tuple[Key, int, LifecycleRecord]] = []
    violations: list[tuple[Key, int, LifecycleRecord]] = []
    failed: dict[Key, IngestRecord] = {}
    closers: dict[Key, IngestRecord] = {}
    for record in records:
        attrs = record.attributes
        if isinstance(record, LifecycleRecord) and record.event_name in _SCHEDULE_EVENTS:
            # not a run's record: the schedule tables
            if _schedule_record_ok(record):
                out.schedules.append(record)
                out.records += 1
            else:
                out.invalid += 1
            continue
        if isinstance(record, LifecycleRecord) and record.event_name in IMPLIED_DEFAULTS:
            # what the sender left out because it is implied (_implied.slim), put back
            restored = restore(record.event_name, attrs)
            if restored is not attrs:
                record = dataclasses.replace(record, attributes=restored)  # noqa: PLW2901
                attrs = restored
        key = record_key(attrs)
        ts = record.timestamp
        if key is None or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            out.invalid += 1
            continue
        out.records += 1
        last = seen.get(key)
        if _closed(record):  # not the run's process: "process seen" keeps its own time
            seen.setdefault(key, None)
        elif last is None or ts > last:
            seen[key] = min(float(ts), horizon)
        if isinstance(record, SpanRecord) or record.event_name == sc.EVENT_JOB_CLOSED:
            # Completes the run only: a finished span fills what is empty and ends a running
            # run; a closed record (close_run(): another process's word on the outcome, none
            # of the run's state) sets the outcome (see _ingest._merge_spans).
            spans[key] = record
            if attrs.get(sc.ATTR_ERROR_TYPE) is not None:
                if isinstance(record, SpanRecord):
                    failed.setdefault(key, record)
                else:  # the closer's error wins over the run's own in the batch
                    closers[key] = record
            if isinstance(record, LifecycleRecord) and attrs.get(sc.ATTR_LIMIT_TYPE) is not None:
                violations.append((key, 0, record))  # a closed run's timeout: sequence 0
            continue
        seq = _seq(attrs)
        if seq is None:  # NaN, inf, beyond int64, wrong type: ordered as the first record
            out.coerced += 1
            seq = 1
        current = best.get(key)
        if current is None or seq > current[0]:
            best[key] = (seq, record)
        event = record.event_name
        if event != sc.EVENT_JOB_FINISHED:  # carries the run's spec (a finished one may not)
            latest = specs.get(key)
            if latest is None or seq > latest[0]:
                specs[key] = (seq, record)
        if event == sc.EVENT_JOB_HEARTBEAT:
            heartbeats.append((key, seq, record))
        elif event == sc.EVENT_JOB_VIOLATION:
            violations.append((key, seq, record))
        elif (
            attrs.get(sc.ATTR_ERROR_TYPE) is not None
            and attrs.get(sc.ATTR_JOB_STATUS) in ERROR_STATUSES
        ):
            failed[key] = record
    failed.update(closers)
    for key, (seq, record) in best.items():
        # A finished record need not repeat the run's spec (``_implied``): the store keeps it
        # from the run's earlier records, and in one batch it is taken from the latest of them.
        source = specs.get(key)
        if record.event_name == sc.EVENT_JOB_FINISHED and source is not None:
            spec = {
                k: v
                for k, v in source[1].attributes.items()
                if k in SPEC_ON_FINISHED and k not in record.attributes
            }
            if spec:
                best[key] = (
                    seq,
                    dataclasses.replace(record, attributes={**record.attributes, **spec}),
                )
    cols = _Columns()
    out.keys = set(seen)
    if best:
        out.logs = _job_table(cols, [(k, s, r) for k, (s, r) in best.items()], seen, attributes)
    if spans:
        rows = [(k, 0 if isinstance(r, SpanRecord) else CLOSED_SEQ, r) for k, r in spans.items()]
        out.spans = _job_table(cols, rows, seen, attributes)
    if heartbeats:
        out.heartbeats = _event_table(cols, heartbeats, _HEARTBEAT_ATTRIBUTES)
    if violations:
        out.violations = _event_table(cols, violations, _VIOLATION_ATTRIBUTES)
    if failed:
        out.errors = _error_table(cols, failed)
    out.coerced += cols.coerced
    return out


def _closed(record: IngestRecord) -> bool:
    return isinstance(record, LifecycleRecord) and record.event_name == sc.EVENT_JOB_CLOSED


def _key_columns(keys: Sequence[Key]) -> dict[str, pa.Array]:
    """The ``(run_id, attempt, execution_id)`` columns every staged table starts with."""
    return {
        "run_id": pa.array([k[0] for k in keys], type=_STR),
        "attempt": pa.array([k[1] for k in keys], type=_I64),
        "execution_id": pa.array([k[2] for k in keys], type=_STR),
    }


def _job_table(
    cols: _Columns,
    rows: Sequence[tuple[Key, int, IngestRecord]],
    seen: Mapping[Key, float | None],
    attributes: Sequence[JobAttribute],
) -> pa.Table:
    attrs = [r.attributes for _k, _s, r in rows]
    data = _key_columns([k for k, _s, _r in rows])
    data["seq"] = pa.array([s for _k, s, _r in rows], type=_I64)
    for column, attribute, arrow_type, _is_time in attributes:
        data[column] = cols.array([a.get(attribute) for a in attrs], arrow_type)
    data["trace_id"] = pa.array([_hex(r.trace_id, 32) for _k, _s, r in rows], type=_STR)
    data["span_id"] = pa.array([_hex(r.span_id, 16) for _k, _s, r in rows], type=_STR)
    data["attributes"] = pa.array([_user_attributes(a) for a in attrs], type=_STR)
    data["last_seen_at"] = pa.array([seen[k] for k, _s, _r in rows], type=_F64)
    return pa.table(data)


def _event_table(
    cols: _Columns,
    rows: Sequence[tuple[Key, int, LifecycleRecord]],
    spec: Sequence[tuple[str, str, Any]],
) -> pa.Table:
    attrs = [r.attributes for _k, _s, r in rows]
    data = _key_columns([k for k, _s, _r in rows])
    data["seq"] = pa.array([s for _k, s, _r in rows], type=_I64)
    data["ts"] = pa.array([float(r.timestamp) for _k, _s, r in rows], type=_F64)
    for column, attribute, arrow_type in spec:
        data[column] = cols.array([a.get(attribute) for a in attrs], arrow_type)
    return pa.table(data)


def _error_table(cols: _Columns, failed: Mapping[Key, IngestRecord]) -> pa.Table:
    keys = list(failed)
    recs = [failed[k] for k in keys]
    attrs = [r.attributes for r in recs]
    at = [a.get(sc.ATTR_JOB_FINISHED_AT, r.timestamp) for a, r in zip(attrs, recs, strict=True)]
    return pa.table(
        {
            **_key_columns(keys),
            "ts": cols.array(at, _F64),
            "type": cols.array([a.get(sc.ATTR_ERROR_TYPE) for a in attrs], _STR),
            "message": cols.array([a.get(sc.ATTR_ERROR_MESSAGE) for a in attrs], _STR),
            "trace": cols.array([a.get(sc.ATTR_ERROR_STACKTRACE) for a in attrs], _STR),
            "trace_id": pa.array([_hex(r.trace_id, 32) for r in recs], type=_STR),
            "span_id": pa.array([_hex(r.span_id, 16) for r in recs], type=_STR),
            "from_span": pa.array([isinstance(r, SpanRecord) for r in recs], type=_BOOL),
            "closed": pa.array([_closed(r) for r in recs], type=_BOOL),
        }
    )


def record_from_span(
    attributes: Mapping[str, AttributeValue],
    *,
    start_time: float,
    end_time: float,
    trace_id: int = 0,
    span_id: int = 0,
    failed: bool | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    error_stacktrace: str | None = None,
) -> SpanRecord:
    """A finished run span (decoded from OTLP, or read from the SDK) as a :class:`SpanRecord`.

    The one place that turns a span's own fields into run state, so every producer of spans
    (the OTLP traces decoder, an SDK span exporter) gives the store the same row.

    Args:
        attributes: the span's attributes (semconv names; run id and attempt required for
            the span to be stored).
        start_time: span start, Unix seconds (becomes ``started_at`` if absent).
        end_time: span end, Unix seconds (becomes ``finished_at`` if absent).
        trace_id: the span's trace id. span_id: its span id.
        failed: the span's status is ERROR (``True``) or not (``False``); sets the terminal
            ``chaperone.job.status`` when the attributes carry none (a span that ended is no
            longer running). ``None``: status unknown, left as the attributes say.
        error_type: ``exception.type`` of the span's exception event, if any.
        error_message: ``exception.message`` of that event, if any.
        error_stacktrace: ``exception.stacktrace`` of that event, if any.

    Returns:
        The span record; it only fills fields the log records did not (see module doc).
    """
    attrs: dict[str, AttributeValue] = dict(attributes)
    if error_type is not None:
        attrs.setdefault(sc.ATTR_ERROR_TYPE, error_type)
    if failed is not None:
        attrs.setdefault(sc.ATTR_JOB_STATUS, "failed" if failed else "completed")
    attrs.setdefault(sc.ATTR_JOB_STARTED_AT, float(start_time))
    attrs.setdefault(sc.ATTR_JOB_FINISHED_AT, float(end_time))
    attrs.setdefault(sc.ATTR_JOB_DURATION, max(0.0, float(end_time) - float(start_time)))
    if error_message is not None:
        attrs.setdefault(sc.ATTR_ERROR_MESSAGE, error_message)
    if error_stacktrace is not None:
        attrs.setdefault(sc.ATTR_ERROR_STACKTRACE, error_stacktrace)
    return SpanRecord(
        attributes=attrs,
        start_time=float(start_time),
        end_time=float(end_time),
        trace_id=trace_id,
        span_id=span_id,
    )
