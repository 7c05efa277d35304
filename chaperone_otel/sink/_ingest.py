"""The bulk, idempotent write of one staged batch: a few small statements per transaction.

Row-at-a-time ``INSERT`` runs at ~1k rows/s on DuckDB; an Arrow table plus one
``INSERT … SELECT`` runs at hundreds of thousands. So each batch is staged as Arrow tables
(:mod:`._records`) and written in one transaction. What a transaction costs is dominated by
*planning* each statement, not by the rows: a ``MERGE`` whose ``SET`` list carries one
``CASE`` per column took ~27 ms to parse and bind whatever the batch size (measured: the same
for 1 row and for 512), i.e. most of the ~48 ms a 512-record request cost. So the upsert rules
are applied here, vectorised over Arrow columns (``pyarrow.compute``, a few µs per column),
and SQL only moves rows, with a constant handful of short statements per commit:

1. ``DELETE … RETURNING``: take the batch's runs out of ``jobs`` (the current rows), read
   only from the row groups that can hold them (:mod:`._probe`: the batch's open runs
   where they were last written, the others from their start time).
2. Heartbeats: built as stored rows in Arrow (times converted, one row per (run, attempt,
   sequence)); one ``SELECT`` finds those already stored (a re-delivery; the probe is limited
   to the batch's time range so zone maps skip old row groups), the rest is appended and
   counted per run.
3. Merge in Arrow (:func:`merge_jobs`), same rules as before: the highest
   ``chaperone.job.sequence`` wins; *sticky* fields (end time, error, trace ids) once set are
   never cleared; a terminal status never reverts to ``running`` (only an older record can say
   so); ``last_seen_at`` is the latest record of any kind from the run's own process (a
   ``closed`` record, another process's word, does not move it); finished-span rows fill only what
   is still empty and let a terminal status replace a non-terminal one. Re-delivering or
   reordering records therefore converges to the same row.
4. ``INSERT`` the merged rows back (one row per run); after the commit, the store's open
   runs (:class:`._probe.OpenRuns`) learn which of them are open and where.
5. Only when needed: the trim of runs over their heartbeat bound, violations (anti-join
   insert), errors (``MERGE``), and, when a run of the batch ended, the ``job_totals``
   summary of ended runs (one ``MERGE`` of a few rows, :func:`totals_delta`) and the
   ``verdict_totals`` of settled verdicts (one more, :mod:`._verdict_totals`). A batch of
   running jobs costs 6 short statements.

Everything runs on the writer's cursor, under the store's write lock, in one transaction: a
failure rolls the whole batch back (the deleted rows come back with it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .._fields import ERROR_STATUSES
from ._probe import OpenChanges, OpenRuns, open_changes, probe_keys, take_current
from ._records import CLOSED_SEQ, STAGED_TIME_COLUMNS, Staged
from ._schedule_store import store_declarations
from ._schema import JOB_COLUMNS, SETTLE_SQL, TERMINAL_STATUSES
from ._settled import SETTLED_COLUMN
from ._verdict_totals import RETURNING, touches_verdicts, update_verdict_totals

_MAX_EPOCH: Final = 32_503_680_000  # year 3000: beyond it a time is garbage, stored as NULL


def ts_sql(expr: str) -> str:
    """Epoch seconds (DOUBLE) → UTC ``TIMESTAMP``; out-of-range or NaN becomes NULL."""
    return (
        f"CASE WHEN {expr} BETWEEN 0 AND {_MAX_EPOCH} "
        f"THEN make_timestamp(CAST(round({expr} * 1000000) AS BIGINT)) END"
    )


_JOB_NAMES: Final = tuple(c.name for c in JOB_COLUMNS)
_HEARTBEAT_TYPES: Final = (
    ("run_id", pa.string()),
    ("attempt", pa.int32()),
    ("seq", pa.int64()),
    ("recorded_at", pa.timestamp("us")),
    ("calls", pa.int64()),
    ("kind", pa.string()),
    ("count", pa.int64()),
    ("progress", pa.float64()),
    ("current", pa.float64()),
    ("total", pa.float64()),
    ("phase", pa.string()),
    ("memory_bytes", pa.int64()),
    ("cpu_percent", pa.float64()),
    ("metadata", pa.string()),
    ("execution_id", pa.string()),  # added by a migration: last
)
"""The ``heartbeats`` table's columns as Arrow types (see ``_schema``)."""
_TIMESTAMP: Final = pa.timestamp("us")
_TERMINAL_SET: Final = pa.array(TERMINAL_STATUSES, type=pa.string())
# Span rows only settle these (a span proves the run ended); every other field they fill.
_SPAN_STATUS_COLUMNS: Final = frozenset({"status", "reported_health", "reported_stuck"})
_ERROR_COLUMNS: Final = frozenset({"error_type", "error_message", "error_trace"})
_ERROR_SET: Final = pa.array(ERROR_STATUSES, type=pa.string())
# Typed scalars: an untyped Python number makes pyarrow infer a type, which tries to import
# dateutil on every call (~90 µs each when it is not installed).
_ZERO: Final = pa.scalar(0.0, pa.float64())
_MAX: Final = pa.scalar(float(_MAX_EPOCH), pa.float64())
_MICROS: Final = pa.scalar(1_000_000.0, pa.float64())
_HUNDRED: Final = pa.scalar(100.0, pa.float64())
_NULL_F64: Final = pa.scalar(None, pa.float64())
_SEQ_ZERO: Final = pa.scalar(0, pa.int64())
_SEQ_CLOSED: Final = pa.scalar(CLOSED_SEQ, pa.int64())
_FALSE: Final = pa.scalar(value=False, type=pa.bool_())

Key = tuple[str, int, str]
"""(run id, attempt, execution id): one stored run, one row of ``jobs``."""
_KEY: Final = ("run_id", "attempt", "execution_id")

INSERT_JOBS: Final = (
    f"INSERT INTO jobs SELECT * REPLACE ({SETTLE_SQL} AS {SETTLED_COLUMN}) "
    "FROM chaperone_stage_jobs"
)
"""The merged rows go back with their settled verdict computed from the merged values (the
rule tree's SQL, ``sink/_settled.py``): a row ending now gets it, a later record for an ended
run (its span, a close) recomputes it, a live row keeps NULL."""
DUPLICATE_HEARTBEATS: Final = (
    "SELECT h.run_id, h.attempt, h.execution_id, h.seq FROM heartbeats h "
    "SEMI JOIN chaperone_stage_heartbeats s "
    "ON h.run_id = s.run_id AND h.attempt = s.attempt AND h.execution_id = s.execution_id "
    "AND h.seq = s.seq "
    "WHERE h.recorded_at BETWEEN $lo AND $hi"
)
INSERT_HEARTBEATS: Final = "INSERT INTO heartbeats SELECT * FROM chaperone_stage_new_heartbeats"
TRIM_HEARTBEATS: Final = (
    "DELETE FROM heartbeats WHERE rowid IN (SELECT rid FROM ("
    "SELECT h.rowid AS rid, row_number() OVER (PARTITION BY h.run_id, h.attempt, "
    "h.execution_id ORDER BY h.recorded_at DESC, h.seq DESC) AS rn FROM heartbeats h "
    "SEMI JOIN chaperone_stage_over o ON h.run_id = o.run_id AND h.attempt = o.attempt "
    "AND h.execution_id = o.execution_id"
    ") WHERE rn > $limit)"
)
INSERT_VIOLATIONS: Final = (
    "INSERT INTO resource_violations SELECT s.run_id, s.attempt, s.seq, "
    f"{ts_sql('s.ts')}, s.type, s.limit_value, s.actual, s.policy, s.execution_id "
    "FROM (SELECT DISTINCT ON (run_id, attempt, execution_id, seq) * "
    "FROM chaperone_stage_violations) s "
    "WHERE NOT EXISTS (SELECT 1 FROM resource_violations r WHERE r.run_id = s.run_id "
    "AND r.attempt = s.attempt AND r.execution_id = s.execution_id AND r.seq = s.seq)"
)
MERGE_ERRORS: Final = (
    "MERGE INTO job_errors AS e USING (SELECT run_id, attempt, execution_id, "
    f"{ts_sql('ts')} AS recorded_at, type, message, trace, trace_id, span_id, from_span "
    "FROM chaperone_stage_errors) AS s ON e.run_id = s.run_id AND e.attempt = s.attempt "
    "AND e.execution_id = s.execution_id "
    "WHEN MATCHED THEN UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN s.from_span THEN COALESCE(e.{c}, s.{c}) ELSE COALESCE(s.{c}, e.{c}) END"
        for c in ("recorded_at", "type", "message", "trace", "trace_id", "span_id")
    )
    + " WHEN NOT MATCHED THEN INSERT (run_id, attempt, execution_id, recorded_at, type, "
    "message, trace, trace_id, span_id) VALUES (s.run_id, s.attempt, s.execution_id, "
    "s.recorded_at, s.type, s.message, s.trace, s.trace_id, s.span_id)"
)


UPSERT_TOTALS: Final = (
    "MERGE INTO job_totals AS t USING chaperone_stage_totals AS s "
    "ON t.name = s.name AND t.queue = s.queue AND t.status = s.status "
    "WHEN MATCHED THEN UPDATE SET finished = t.finished + s.finished, "
    "stored = t.stored + s.stored, "
    "last_finished_at = greatest(t.last_finished_at, s.last_finished_at) "
    "WHEN NOT MATCHED THEN INSERT VALUES (s.name, s.queue, s.status, s.finished, s.stored, "
    "s.last_finished_at)"
)
_TOTALS_TYPES: Final = (
    ("name", pa.string()),
    ("queue", pa.string()),
    ("status", pa.string()),
    ("finished", pa.int64()),
    ("stored", pa.int64()),
    ("last_finished_at", pa.timestamp("us")),
)


@dataclass
class WriteResult:
    """What one batch wrote (for counters and tests)."""

    records: int = 0
    runs: int = 0
    heartbeats: int = 0
    trimmed: int = 0


def utc_now_naive() -> datetime:
    """Current UTC time as a naive datetime (the store's TIMESTAMP convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def write(
    cur: Any, staged: Staged, *, heartbeat_limit: int, open_runs: OpenRuns | None = None
) -> WriteResult:
    """Write one staged batch in one transaction on ``cur`` (caller holds the write lock).

    ``open_runs``: the store's :class:`~._probe.OpenRuns`, which narrows the key probe and
    is kept here (without it every write joins the batch's keys with every stored row)."""
    result = WriteResult(records=staged.records, runs=len(staged.keys))
    if not staged.records:
        return result
    registered: list[str] = []

    def register(name: str, table: pa.Table) -> None:
        cur.register(name, table)
        registered.append(name)

    now = utc_now_naive()
    changes: OpenChanges = ({}, set())
    committing = False
    cur.execute("BEGIN TRANSACTION")
    try:
        if staged.keys:
            changes = _write_runs(cur, staged, register, now, heartbeat_limit, result, open_runs)
        if staged.schedules:
            store_declarations(cur, staged.schedules)
        committing = True
        cur.execute("COMMIT")
        if open_runs is not None:
            open_runs.apply(changes)
    except BaseException:
        # A failed COMMIT (a full disk) has already ended the transaction: the ROLLBACK's
        # "no transaction is active" must not hide the real cause.
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        if committing and open_runs is not None:  # committed or not, we cannot tell
            open_runs.invalidate()  # the next write reads them again
        raise
    finally:
        for name in registered:
            cur.unregister(name)
    return result


def _errors_of_failed_runs(errors: pa.Table | None, rows: pa.Table) -> pa.Table | None:
    """The staged errors of runs whose merged status carries an error (a finished span with
    an error adds none to a run that completed); of a run another process closed, only the
    closer's (the run's own later error does not replace it)."""
    if errors is None:
        return None
    index = _index(rows)
    picks = pa.array([index.get(k) for k in _keys(errors)], type=pa.int64())
    status = rows.column("status").take(picks)
    closed_row = pc.fill_null(pc.equal(rows.column("seq").take(picks), _SEQ_CLOSED), _FALSE)
    keep = pc.and_(
        pc.fill_null(pc.is_in(status, value_set=_ERROR_SET), _FALSE),
        pc.or_(pc.invert(closed_row), errors.column("closed")),
    )
    kept = errors.filter(keep)
    return kept if kept.num_rows else None


def _write_runs(
    cur: Any,
    staged: Staged,
    register: Callable[[str, pa.Table], None],
    now: datetime,
    heartbeat_limit: int,
    result: WriteResult,
    open_runs: OpenRuns | None,
) -> OpenChanges:
    """The runs' part of :func:`write` (a batch of schedule declarations alone has none).
    Returns the change to the open runs, applied once the transaction is committed."""
    # The stored rows of the batch's runs, read only where they can be (``_probe``).
    known = open_runs.load(cur) if open_runs is not None else None
    keys = probe_keys(staged.logs, staged.spans, _timestamps)
    current, _full = take_current(cur, keys, register, known)
    new_beats: dict[Key, int] = {}
    if staged.heartbeats is not None:
        new_beats = _insert_heartbeats(cur, staged.heartbeats, current, register)
        result.heartbeats = sum(new_beats.values())
    rows = merge_jobs(current, staged.logs, staged.spans, now)
    over: list[Key] = []
    if new_beats:
        rows, over = _count_heartbeats(rows, new_beats, heartbeat_limit)
    # Exactly the stored types, so the INSERT is a plain positional copy.
    stored = _cast_like(rows, current.schema)
    register("chaperone_stage_jobs", stored)
    if touches_verdicts(current, stored):  # the INSERT returns the verdicts it stored
        inserted = cur.sql(INSERT_JOBS + RETURNING).to_arrow_table()
        update_verdict_totals(cur, register, current, inserted)
    else:
        cur.execute(INSERT_JOBS)
    totals = totals_delta(current, stored)
    if totals is not None:
        register("chaperone_stage_totals", totals)
        cur.execute(UPSERT_TOTALS)
    if over:
        register("chaperone_stage_over", _keys_table(over))
        deleted = cur.execute(TRIM_HEARTBEATS, {"limit": heartbeat_limit}).fetchall()
        result.trimmed = int(deleted[0][0]) if deleted else 0
    if staged.violations is not None:
        register("chaperone_stage_violations", staged.violations)
        cur.execute(INSERT_VIOLATIONS)
    errors = _errors_of_failed_runs(staged.errors, rows)
    if errors is not None:
        register("chaperone_stage_errors", errors)
        cur.execute(MERGE_ERRORS)
    return open_changes(stored)


def totals_delta(before: pa.Table, after: pa.Table) -> pa.Table | None:
    """The change to ``job_totals`` when a batch replaces the ``before`` rows of its runs by
    the ``after`` rows; ``None`` when no ended run is involved (the common batch).

    An ended run after the batch counts +1 ``stored`` in its (name, queue, status) and, when
    it had not ended before, +1 ``finished``; an ended run before the batch counts -1
    ``stored`` in its old group, so a re-delivered end changes nothing.
    """
    old_end = pc.is_in(before.column("status"), value_set=_TERMINAL_SET)
    new_end = pc.is_in(after.column("status"), value_set=_TERMINAL_SET)
    if not (pc.any(old_end).as_py() or pc.any(new_end).as_py()):
        return None
    ended = before.filter(old_end)
    was_ended = set(zip(*(ended.column(c).to_pylist() for c in _KEY), strict=True))
    delta: dict[tuple[str, str, str], list[Any]] = {}

    def add(table: pa.Table, sign: int, *, finished: bool) -> None:
        columns = (*_KEY, "name", "queue", "status", "finished_at")
        for run_id, attempt, execution, name, queue, status, at in zip(
            *(table.column(c).to_pylist() for c in columns), strict=True
        ):
            entry = delta.setdefault((name or "", queue or "", status), [0, 0, None])
            entry[1] += sign
            if finished and (run_id, attempt, execution) not in was_ended:
                entry[0] += 1
            if finished and at is not None and (entry[2] is None or at > entry[2]):
                entry[2] = at

    add(ended, -1, finished=False)
    add(after.filter(new_end), 1, finished=True)
    changed = [(k, v) for k, v in delta.items() if v[0] or v[1] or v[2] is not None]
    if not changed:
        return None
    values = [
        [k[0] for k, _v in changed],
        [k[1] for k, _v in changed],
        [k[2] for k, _v in changed],
        [v[0] for _k, v in changed],
        [v[1] for _k, v in changed],
        [v[2] for _k, v in changed],
    ]
    return pa.table(
        [pa.array(col, type=t) for col, (_n, t) in zip(values, _TOTALS_TYPES, strict=True)],
        names=[n for n, _t in _TOTALS_TYPES],
    )


def _keys_table(keys: Any) -> pa.Table:
    keys = list(keys)
    return pa.table(
        {
            "run_id": pa.array([k[0] for k in keys], type=pa.string()),
            "attempt": pa.array([k[1] for k in keys], type=pa.int64()),
            "execution_id": pa.array([k[2] for k in keys], type=pa.string()),
        }
    )


def _insert_heartbeats(
    cur: Any, table: pa.Table, current: pa.Table, register: Any
) -> dict[Key, int]:
    """Insert the batch's heartbeats not stored yet; returns new rows per run.

    Built in Arrow (time conversion, one row per (run, attempt, sequence)). A stored
    heartbeat's sequence is never above its run's ``jobs.seq`` (the highest sequence of any
    log record ingested), so only heartbeats at or below the stored ``seq`` of their run can
    be re-deliveries: only those are looked up (none when records arrive in order), the
    rest is appended."""
    rows = _heartbeat_rows(table)
    if not rows.num_rows:
        return {}
    if current.num_rows:
        stored_seq = _by_run(current, "seq")
        keys = list(
            zip(
                rows.column("run_id").to_pylist(),
                rows.column("attempt").to_pylist(),
                rows.column("execution_id").to_pylist(),
                rows.column("seq").to_pylist(),
                strict=True,
            )
        )
        maybe = [q <= (stored_seq.get((r, a, e)) or 0) for r, a, e, q in keys]
        if any(maybe):
            known = _stored_heartbeats(cur, rows.filter(pa.array(maybe, type=pa.bool_())), register)
            if known:
                keep = [k not in known for k in keys]
                rows = rows.filter(pa.array(keep, type=pa.bool_()))
                if not rows.num_rows:
                    return {}
    register("chaperone_stage_new_heartbeats", rows)
    cur.execute(INSERT_HEARTBEATS)
    counts = rows.group_by(list(_KEY)).aggregate([([], "count_all")])
    return _by_run(counts, "count_all")


def _keys(table: pa.Table) -> list[Key]:
    """Each row's (run_id, attempt, execution_id)."""
    columns = [table.column(name).to_pylist() for name in _KEY]
    return list(zip(*columns, strict=True))


def _by_run(table: pa.Table, column: str) -> dict[Key, Any]:
    """``{(run_id, attempt, execution_id): value}`` from a table with those columns and
    ``column``."""
    return dict(zip(_keys(table), table.column(column).to_pylist(), strict=True))


def _stored_heartbeats(
    cur: Any, candidates: pa.Table, register: Any
) -> set[tuple[str, int, str, int]]:
    """Which of ``candidates`` are stored already (the probe is limited to their time range,
    widened by 1 ms, so zone maps skip old row groups)."""
    register("chaperone_stage_heartbeats", candidates)
    at = candidates.column("recorded_at")
    pad = timedelta(milliseconds=1)
    bounds = {"lo": pc.min(at).as_py() - pad, "hi": pc.max(at).as_py() + pad}
    stored = cur.execute(DUPLICATE_HEARTBEATS, bounds).fetchall()
    return {(r, int(a), e, int(q)) for r, a, e, q in stored}


def _heartbeat_rows(staged: pa.Table) -> pa.Table:
    """Staged heartbeats as ``heartbeats`` rows: stored types, times converted, rows without a
    valid time dropped, one row per (run, attempt, sequence)."""
    recorded = _timestamps(staged.column("ts"))
    columns: list[Any] = []
    for name, arrow_type in _HEARTBEAT_TYPES:
        if name == "recorded_at":
            columns.append(recorded)
        elif name == "progress":
            columns.append(pc.multiply(staged.column(name), _HUNDRED))
        else:
            columns.append(staged.column(name).cast(arrow_type))
    rows = pa.table(columns, names=[n for n, _t in _HEARTBEAT_TYPES])
    rows = rows.filter(pc.is_valid(recorded))
    if rows.num_rows > 1:
        # DISTINCT ON (run_id, attempt, execution_id, seq): the first of repeated deliveries.
        index = pa.array(range(rows.num_rows), type=pa.int64())
        first = (
            rows.select([*_KEY, "seq"])
            .append_column("i", index)
            .group_by([*_KEY, "seq"], use_threads=False)
            .aggregate([("i", "min")])
            .column("i_min")
        )
        if len(first) < rows.num_rows:
            rows = rows.take(first.take(pc.sort_indices(first)))
    return rows


def _cast_like(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with exactly the column types of ``schema``.

    The cast is safe (it raises rather than wrap) but cannot fail on remote data: the
    ``INTEGER`` state columns are staged as int32, with out-of-range values already NULL
    (:mod:`._records`), ``attempt`` is range-checked when the record's key is read, and
    ``heartbeat_rows`` is at most the heartbeat bound. A raise here would fail the batch (the
    writer bisects and drops the record, and ``sink serve`` answers 503 to a value that never
    gets better), so nothing that depends on what a sender wrote may reach it."""
    return pa.table([rows.column(f.name).cast(f.type) for f in schema], names=list(schema.names))


def _count_heartbeats(
    rows: pa.Table, new_beats: dict[Key, int], limit: int
) -> tuple[pa.Table, list[Key]]:
    """Add the new heartbeat rows to each run's ``heartbeat_rows``; runs over ``limit`` are
    returned (their oldest heartbeats get trimmed) and recorded at ``limit``."""
    keys = _keys(rows)
    stored = rows.column("heartbeat_rows").to_pylist()
    over: list[Key] = []
    counted: list[int] = []
    for key, had in zip(keys, stored, strict=True):
        n = (had or 0) + new_beats.get(key, 0)
        if n > limit and key in new_beats:
            over.append(key)
            n = limit
        counted.append(n)
    index = rows.schema.get_field_index("heartbeat_rows")
    return rows.set_column(index, "heartbeat_rows", pa.array(counted, type=pa.int64())), over


# --- the upsert rules, vectorised -------------------------------------------------------------


def _timestamps(epoch: pa.ChunkedArray) -> pa.ChunkedArray:
    """Epoch seconds → ``timestamp[us]``, exactly as :func:`ts_sql` does in SQL (round half
    away from zero; out of range or NaN → NULL)."""
    ok = pc.and_(pc.greater_equal(epoch, _ZERO), pc.less_equal(epoch, _MAX))
    kept = pc.if_else(ok, epoch, _NULL_F64)
    micros = pc.round(pc.multiply(kept, _MICROS), round_mode="half_towards_infinity")
    return pc.cast(pc.cast(micros, pa.int64()), _TIMESTAMP)


def _as_rows(staged: pa.Table, now: datetime, *, span: bool) -> pa.Table:
    """A staging table as ``jobs`` rows (column order and store units; ``attempt`` and
    ``heartbeat_rows`` stay int64 until :func:`_cast_like`; the other INTEGER columns are
    staged as int32 already)."""
    n = staged.num_rows
    columns: list[Any] = []
    for name in _JOB_NAMES:
        if name == "span_seen":
            columns.append(pa.array([span] * n, type=pa.bool_()))
        elif name == "heartbeat_rows":
            columns.append(pa.array([0] * n, type=pa.int64()))
        elif name == "ingested_at":
            columns.append(pa.array([now] * n, type=_TIMESTAMP))
        elif name == SETTLED_COLUMN:  # computed by INSERT_JOBS from the merged row
            columns.append(pa.nulls(n, type=pa.string()))
        elif name == "progress":
            columns.append(pc.multiply(staged.column(name), _HUNDRED))
        elif name in STAGED_TIME_COLUMNS:
            columns.append(_timestamps(staged.column(name)))
        else:
            columns.append(staged.column(name))
    return pa.table(columns, names=list(_JOB_NAMES))


def _like(current: pa.Table, schema: pa.Schema) -> pa.Table:
    """Stored rows cast to the staged rows' types (INTEGER → int64: lossless)."""
    return pa.table([current.column(f.name).cast(f.type) for f in schema], names=list(schema.names))


def _terminal(status: Any) -> Any:
    return pc.fill_null(pc.is_in(status, value_set=_TERMINAL_SET), _FALSE)


def _align(source: pa.Table, index: dict[Key, int], keys: pa.Table) -> pa.Table:
    """Rows of ``source`` matching each row of ``keys`` (all-NULL rows where none)."""
    picks = [index.get(k) for k in _keys(keys)]
    return source.take(pa.array(picks, type=pa.int64()))


def _index(table: pa.Table) -> dict[Key, int]:
    return {k: i for i, k in enumerate(_keys(table))}


def _merge_logs(j: pa.Table, s: pa.Table) -> pa.Table:
    """Log state ``s`` over stored rows ``j`` (aligned; ``j`` all NULL for new runs)."""
    j_seq, s_seq = j.column("seq"), s.column("seq")
    newer = pc.or_kleene(pc.is_null(j_seq), pc.greater(s_seq, j_seq))
    keeps_end = pc.and_(_terminal(j.column("status")), pc.invert(_terminal(s.column("status"))))
    eff = pc.and_(newer, pc.invert(keeps_end))
    # known only from its span, or closed by another process: the run's records fill in
    span_only = pc.fill_null(
        pc.is_in(j_seq, value_set=pa.array([0, CLOSED_SEQ], pa.int64())), _FALSE
    )
    columns: list[Any] = []
    for col in JOB_COLUMNS:
        n = col.name
        jc, sc_ = j.column(n), s.column(n)
        if col.kind == "key":
            columns.append(sc_)
        elif n in ("seq", "last_seen_at"):
            columns.append(pc.max_element_wise(jc, sc_))
        elif n == "ingested_at":
            columns.append(sc_)
        elif n in ("span_seen", "heartbeat_rows"):
            columns.append(pc.coalesce(jc, sc_))
        elif col.kind == "sticky":
            columns.append(pc.if_else(eff, pc.coalesce(sc_, jc), pc.coalesce(jc, sc_)))
        else:
            older = pc.if_else(span_only, pc.coalesce(jc, sc_), jc)
            columns.append(pc.if_else(eff, sc_, older))
    return pa.table(columns, names=list(_JOB_NAMES))


def _merge_spans(j: pa.Table, s: pa.Table) -> pa.Table:
    """Finished-span (or ``closed``) rows ``s`` over current rows ``j``: fill only what is
    empty; a terminal status replaces a non-terminal one, and then the duration is the
    span's, else the end minus the start (a running row's is only "so far"); the violation
    count is the larger."""
    ends = pc.and_(pc.invert(_terminal(j.column("status"))), _terminal(s.column("status")))
    # A closed record (another process's word, close_run()) sets the outcome whatever the
    # run wrote: a child killed by SIGTERM at its time limit only saw SystemExit.
    closing = pc.fill_null(pc.equal(s.column("seq"), _SEQ_CLOSED), _FALSE)
    decides = pc.or_(ends, closing)
    # An error belongs to the outcome that carries it: filled in when this row ends the run
    # or agrees with its stored outcome, never onto a run that ended otherwise.
    same_end = pc.fill_null(pc.equal(j.column("status"), s.column("status")), _FALSE)
    takes_error = pc.or_(ends, pc.or_(same_end, pc.is_null(j.column("status"))))
    finished = pc.coalesce(j.column("finished_at"), s.column("finished_at"))
    started = pc.coalesce(j.column("started_at"), s.column("started_at"))
    # In float before the division: Arrow's safe int64 -> float64 cast refuses magnitudes
    # past 2**53 us (~285 years), and one such row (a time far off, but a valid one) failed
    # the whole write.
    micros = pc.cast(pc.cast(pc.subtract(finished, started), pa.duration("us")), pa.int64())
    elapsed = pc.divide(pc.cast(micros, pa.float64(), safe=False), _MICROS)
    columns: list[Any] = []
    for col in JOB_COLUMNS:
        n = col.name
        jc, sc_ = j.column(n), s.column(n)
        if col.kind == "key":
            columns.append(sc_)
        elif n == "last_seen_at":
            columns.append(pc.max_element_wise(jc, sc_))
        elif n == "span_seen":
            columns.append(sc_)  # TRUE
        elif n in _SPAN_STATUS_COLUMNS:
            columns.append(pc.if_else(decides, sc_, pc.coalesce(jc, sc_)))
        elif n == "duration":
            columns.append(pc.if_else(decides, pc.coalesce(sc_, elapsed, jc), pc.coalesce(jc, sc_)))
        elif n == "violation_count":
            columns.append(pc.max_element_wise(jc, sc_))
        elif n == "seq":
            columns.append(pc.if_else(closing, sc_, pc.coalesce(jc, sc_)))
        elif n in _ERROR_COLUMNS:
            kept = pc.if_else(takes_error, pc.coalesce(jc, sc_), jc)
            columns.append(pc.if_else(closing, pc.coalesce(sc_, jc), kept))
        else:  # incl. seq / heartbeat_rows / ingested_at: kept when the row exists
            columns.append(pc.coalesce(jc, sc_))
    return pa.table(columns, names=list(_JOB_NAMES))


def merge_jobs(
    current: pa.Table, logs: pa.Table | None, spans: pa.Table | None, now: datetime
) -> pa.Table:
    """The ``jobs`` rows after applying a staged batch to the stored rows of its runs.

    Args:
        current: the stored rows of the batch's runs (any subset; ``jobs`` columns).
        logs: staged log state, one row per run (see :class:`._records.Staged`).
        spans: staged finished-span rows, one per run.
        now: ``ingested_at`` of rows written by log records.

    Returns:
        One row per run of ``logs`` and ``spans`` (new or merged), ``jobs`` column order.
        Logs are applied first, then spans, as two ``MERGE`` statements in a row would.
    """
    log_rows = _as_rows(logs, now, span=False) if logs is not None else None
    span_rows = _as_rows(spans, now, span=True) if spans is not None else None
    schema = (log_rows if log_rows is not None else span_rows).schema  # type: ignore[union-attr]
    stored = _like(current, schema)
    stored_index = _index(stored)
    state = stored
    state_index = stored_index
    if log_rows is not None:
        merged = _merge_logs(_align(stored, stored_index, log_rows), log_rows)
        if span_rows is None:
            return merged
        # Current state for the spans: merged rows first, then stored rows of span-only runs.
        state = pa.concat_tables([merged, stored])
        state_index = {k: i + merged.num_rows for k, i in stored_index.items()}
        state_index.update(_index(merged))
    assert span_rows is not None
    finished = _merge_spans(_align(state, state_index, span_rows), span_rows)
    if log_rows is None:
        return finished
    done = _index(finished)
    untouched = [i for k, i in _index(merged).items() if k not in done]
    return pa.concat_tables([merged.take(pa.array(untouched, type=pa.int64())), finished])


def _naive(epoch: float | None, pad: float) -> datetime | None:
    if epoch is None or not 0 <= epoch <= _MAX_EPOCH:
        return None
    return datetime.fromtimestamp(epoch + pad, timezone.utc).replace(tzinfo=None)
