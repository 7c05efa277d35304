"""The bulk, idempotent write of one staged batch: a handful of set-based statements.

Row-at-a-time ``INSERT`` runs at ~1k rows/s on DuckDB; an Arrow table plus one
``MERGE``/``INSERT … SELECT`` runs at hundreds of thousands. So each batch is staged as Arrow
tables (:mod:`._records`) and written in one transaction:

1. ``MERGE`` the per-run log state into ``jobs``: the highest ``chaperone.job.sequence`` wins;
   *sticky* fields (end time, error, trace ids) once set are never cleared; a terminal status
   never reverts to ``running`` (only an older record can say so); ``last_seen_at`` is the
   latest record of any kind. Re-delivering or reordering records therefore converges to the
   same row.
2. ``MERGE`` finished-span rows: they fill only what is still empty, and let a terminal status
   replace a non-terminal one.
3. Insert heartbeats, violations and errors that are not already stored (anti-join on
   (run, attempt, sequence); the heartbeat probe is limited to the batch's time range so zone
   maps skip old row groups), then trim each run's heartbeats to the latest N.

Everything runs on the writer's cursor, under the store's write lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from ._records import STAGED_TIME_COLUMNS, Staged
from ._schema import JOB_COLUMNS, TERMINAL_STATUSES

_TERMINAL: Final = "(" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")"
_MAX_EPOCH: Final = 32_503_680_000  # year 3000: beyond it a time is garbage, stored as NULL


def ts_sql(expr: str) -> str:
    """Epoch seconds (DOUBLE) → UTC ``TIMESTAMP``; out-of-range or NaN becomes NULL."""
    return (
        f"CASE WHEN {expr} BETWEEN 0 AND {_MAX_EPOCH} "
        f"THEN make_timestamp(CAST(round({expr} * 1000000) AS BIGINT)) END"
    )


def _staged_select(source: str, *, span: bool) -> str:
    """SELECT over a staging table producing exactly the ``jobs`` columns."""
    parts: list[str] = []
    for col in JOB_COLUMNS:
        n = col.name
        if n == "span_seen":
            parts.append(f"{'TRUE' if span else 'FALSE'} AS span_seen")
        elif n == "heartbeat_rows":
            parts.append("0 AS heartbeat_rows")
        elif n == "ingested_at":
            parts.append("CAST($ingested_at AS TIMESTAMP) AS ingested_at")
        elif n == "progress":
            parts.append("progress * 100.0 AS progress")
        elif n in STAGED_TIME_COLUMNS:
            parts.append(f"{ts_sql(n)} AS {n}")
        else:
            parts.append(n)
    return f"SELECT {', '.join(parts)} FROM {source}"


def _is_terminal(expr: str) -> str:
    return f"COALESCE({expr} IN {_TERMINAL}, FALSE)"


def _log_merge_sql() -> str:
    newer = "(j.seq IS NULL OR s.seq > j.seq)"
    keeps_end = f"({_is_terminal('j.status')} AND NOT {_is_terminal('s.status')})"
    eff = f"({newer} AND NOT {keeps_end})"
    sets: list[str] = []
    for col in JOB_COLUMNS:
        n = col.name
        if col.kind == "key" or n in ("span_seen", "heartbeat_rows"):
            continue
        if n == "seq":
            sets.append("seq = greatest(j.seq, s.seq)")
        elif n == "last_seen_at":
            sets.append("last_seen_at = greatest(j.last_seen_at, s.last_seen_at)")
        elif n == "ingested_at":
            sets.append("ingested_at = s.ingested_at")
        elif col.kind == "sticky":
            sets.append(
                f"{n} = CASE WHEN {eff} THEN COALESCE(s.{n}, j.{n}) ELSE COALESCE(j.{n}, s.{n}) END"
            )
        else:
            # A row known only from its span (seq 0) takes what an older record adds.
            sets.append(
                f"{n} = CASE WHEN {eff} THEN s.{n} WHEN j.seq = 0 "
                f"THEN COALESCE(j.{n}, s.{n}) ELSE j.{n} END"
            )
    return _merge("chaperone_stage_logs", sets, span=False)


def _span_merge_sql() -> str:
    ends = f"(NOT {_is_terminal('j.status')} AND {_is_terminal('s.status')})"
    sets: list[str] = []
    for col in JOB_COLUMNS:
        n = col.name
        if col.kind == "key" or n in ("seq", "heartbeat_rows", "ingested_at"):
            continue
        if n == "last_seen_at":
            sets.append("last_seen_at = greatest(j.last_seen_at, s.last_seen_at)")
        elif n == "span_seen":
            sets.append("span_seen = TRUE")
        elif n in ("status", "reported_health", "reported_stuck"):
            sets.append(f"{n} = CASE WHEN {ends} THEN s.{n} ELSE COALESCE(j.{n}, s.{n}) END")
        else:
            sets.append(f"{n} = COALESCE(j.{n}, s.{n})")
    return _merge("chaperone_stage_spans", sets, span=True)


def _merge(source: str, sets: list[str], *, span: bool) -> str:
    names = [c.name for c in JOB_COLUMNS]
    return (
        f"MERGE INTO jobs AS j USING ({_staged_select(source, span=span)}) AS s "
        "ON j.run_id = s.run_id AND j.attempt = s.attempt "
        f"WHEN MATCHED THEN UPDATE SET {', '.join(sets)} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
        f"VALUES ({', '.join('s.' + n for n in names)})"
    )


LOG_MERGE: Final = _log_merge_sql()
SPAN_MERGE: Final = _span_merge_sql()

NEW_HEARTBEATS: Final = (
    "CREATE OR REPLACE TEMP TABLE chaperone_new_heartbeats AS "
    "SELECT s.run_id, CAST(s.attempt AS INTEGER) AS attempt, s.seq, "
    f"{ts_sql('s.ts')} AS recorded_at, s.calls, s.kind, s.count, s.progress * 100.0 AS progress, "
    "s.current, s.total, s.phase, s.memory_bytes, s.cpu_percent, s.metadata "
    "FROM (SELECT DISTINCT ON (run_id, attempt, seq) * FROM chaperone_stage_heartbeats) s "
    "WHERE NOT EXISTS (SELECT 1 FROM heartbeats h WHERE h.recorded_at BETWEEN $lo AND $hi "
    "AND h.run_id = s.run_id AND h.attempt = s.attempt AND h.seq = s.seq)"
)
INSERT_HEARTBEATS: Final = (
    "INSERT INTO heartbeats SELECT * FROM chaperone_new_heartbeats WHERE recorded_at IS NOT NULL"
)
COUNT_HEARTBEATS: Final = (
    "UPDATE jobs SET heartbeat_rows = COALESCE(jobs.heartbeat_rows, 0) + n.k "
    "FROM (SELECT run_id, attempt, count(*) AS k FROM chaperone_new_heartbeats "
    "WHERE recorded_at IS NOT NULL GROUP BY ALL) n "
    "WHERE jobs.run_id = n.run_id AND jobs.attempt = n.attempt "
    "RETURNING jobs.run_id, jobs.attempt, jobs.heartbeat_rows"
)
TRIM_HEARTBEATS: Final = (
    "DELETE FROM heartbeats WHERE rowid IN (SELECT rid FROM ("
    "SELECT h.rowid AS rid, row_number() OVER (PARTITION BY h.run_id, h.attempt "
    "ORDER BY h.recorded_at DESC, h.seq DESC) AS rn FROM heartbeats h "
    "SEMI JOIN chaperone_stage_over o ON h.run_id = o.run_id AND h.attempt = o.attempt"
    ") WHERE rn > $limit)"
)
SET_TRIMMED: Final = (
    "UPDATE jobs SET heartbeat_rows = $limit FROM chaperone_stage_over o "
    "WHERE jobs.run_id = o.run_id AND jobs.attempt = o.attempt"
)
INSERT_VIOLATIONS: Final = (
    "INSERT INTO resource_violations SELECT s.run_id, s.attempt, s.seq, "
    f"{ts_sql('s.ts')}, s.type, s.limit_value, s.actual, s.policy "
    "FROM (SELECT DISTINCT ON (run_id, attempt, seq) * FROM chaperone_stage_violations) s "
    "WHERE NOT EXISTS (SELECT 1 FROM resource_violations r WHERE r.run_id = s.run_id "
    "AND r.attempt = s.attempt AND r.seq = s.seq)"
)
MERGE_ERRORS: Final = (
    "MERGE INTO job_errors AS e USING (SELECT run_id, attempt, "
    f"{ts_sql('ts')} AS recorded_at, type, message, trace, trace_id, span_id, from_span "
    "FROM chaperone_stage_errors) AS s ON e.run_id = s.run_id AND e.attempt = s.attempt "
    "WHEN MATCHED THEN UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN s.from_span THEN COALESCE(e.{c}, s.{c}) ELSE COALESCE(s.{c}, e.{c}) END"
        for c in ("recorded_at", "type", "message", "trace", "trace_id", "span_id")
    )
    + " WHEN NOT MATCHED THEN INSERT (run_id, attempt, recorded_at, type, message, trace, "
    "trace_id, span_id) VALUES (s.run_id, s.attempt, s.recorded_at, s.type, s.message, "
    "s.trace, s.trace_id, s.span_id)"
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


def write(cur: Any, staged: Staged, *, heartbeat_limit: int) -> WriteResult:
    """Write one staged batch in one transaction on ``cur`` (caller holds the write lock)."""
    result = WriteResult(records=staged.records, runs=len(staged.keys))
    if not staged.records:
        return result
    registered: list[str] = []

    def register(name: str, table: pa.Table) -> None:
        cur.register(name, table)
        registered.append(name)

    ingested = {"ingested_at": utc_now_naive()}
    cur.execute("BEGIN TRANSACTION")
    try:
        if staged.logs is not None:
            register("chaperone_stage_logs", staged.logs)
            cur.execute(LOG_MERGE, ingested)
        if staged.spans is not None:
            register("chaperone_stage_spans", staged.spans)
            cur.execute(SPAN_MERGE, ingested)
        if staged.heartbeats is not None:
            result.heartbeats, result.trimmed = _heartbeats(
                cur, staged.heartbeats, heartbeat_limit, register
            )
        if staged.violations is not None:
            register("chaperone_stage_violations", staged.violations)
            cur.execute(INSERT_VIOLATIONS)
        if staged.errors is not None:
            register("chaperone_stage_errors", staged.errors)
            cur.execute(MERGE_ERRORS)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    finally:
        for name in registered:
            cur.unregister(name)
    return result


def _heartbeats(cur: Any, table: pa.Table, limit: int, register: Any) -> tuple[int, int]:
    register("chaperone_stage_heartbeats", table)
    at = table.column("ts")
    lo, hi = pc.min(at).as_py(), pc.max(at).as_py()
    # Widened by 1 ms: Python and DuckDB may round a time to microseconds differently.
    bounds = {"lo": _naive(lo, -0.001), "hi": _naive(hi, 0.001)}
    cur.execute(NEW_HEARTBEATS, bounds)
    inserted = cur.execute(INSERT_HEARTBEATS).fetchone()
    added = int(inserted[0]) if inserted else 0
    counts = cur.execute(COUNT_HEARTBEATS).fetchall()
    cur.execute("DROP TABLE chaperone_new_heartbeats")
    over: list[tuple[str, int]] = []
    for run_id, attempt, rows in counts:
        if rows is not None and rows > limit:
            over.append((run_id, attempt))
    trimmed = 0
    if over:
        register(
            "chaperone_stage_over",
            pa.table(
                {
                    "run_id": pa.array([k[0] for k in over], type=pa.string()),
                    "attempt": pa.array([k[1] for k in over], type=pa.int64()),
                }
            ),
        )
        deleted = cur.execute(TRIM_HEARTBEATS, {"limit": limit}).fetchone()
        trimmed = int(deleted[0]) if deleted else 0
        cur.execute(SET_TRIMMED, {"limit": limit})
    return added, trimmed


def _naive(epoch: float | None, pad: float) -> datetime | None:
    if epoch is None or not 0 <= epoch <= _MAX_EPOCH:
        return None
    return datetime.fromtimestamp(epoch + pad, timezone.utc).replace(tzinfo=None)
