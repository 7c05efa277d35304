"""The writer's key probe: find a batch's stored rows without reading every stored run.

The ``jobs`` table has no index (``_schema``), so a join of the batch's keys with it reads
every stored row: its cost grew with the store (193 ms of CPU per write at 1,000,000 runs,
``docs/performance.md``). The probe reads instead only the row groups that can hold a
batch key's row, by the zone maps (min/max per row group) of two time columns, and proves
that the others cannot:

* **open runs** (not ended, or without a start time: running, pending, a row a ``closed``
  record made) are listed in the small table ``open_runs`` with the ``ingested_at`` of
  their stored row, kept exact by every write in the same transaction. A batch key found
  there has its row at ``ingested_at >= `` that value: rows are appended when written, so
  a live run that reports is near the end.
* **ended runs with a start time** are the only other rows. An execution has one start
  time, which every record of it that carries one repeats (the runtime sets it once per
  execution and puts it on every lifecycle record and on the span); a batch key not open
  has its row, if any, at ``started_at >=`` the key's start as its records say (less
  :data:`START_SLACK`). ``jobs`` is appended in end order, so the rows of runs that
  started before the batch's earliest start are in row groups the zone maps skip.
* **everything else** is found by the full join, as before: a key neither open nor
  carrying a start time (a ``pending`` or ``closed`` record of a run stored as ended), or
  with no execution id (stores and senders from before executions reuse a key for a
  redelivered run, which starts later than the stored one).

One ``DELETE … RETURNING`` on ``jobs`` in every case, with the two bounds ``OR``-ed (DuckDB
prunes row groups on either). The cost of a write then follows the rows written since the
oldest open run of the batch last reported and since its new runs started, not the number
of runs stored. Reasoning and figures: ``docs/decisions.md``, ``docs/performance.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from .._fields import TERMINAL_STATUSES

START_SLACK: Final = timedelta(seconds=60)
"""How much earlier than a batch record's start time its stored row's may be and still be
found: the span's start and the records' start attribute of one execution agree to the
microsecond, so this only absorbs rounding and a sender that stamps its records a little
differently; it costs nothing (a row group spans far more than a minute of a busy store)."""

NEVER: Final = datetime(9999, 1, 1)
"""A bound no stored time reaches: the half of the probe that has no key to look for."""

_TIMESTAMP: Final = pa.timestamp("us")
_PROBE_SCHEMA: Final = pa.schema(
    [
        ("run_id", pa.string()),
        ("attempt", pa.int64()),
        ("execution_id", pa.string()),
        ("started", _TIMESTAMP),
    ]
)
_FALSE: Final = pa.scalar(value=False, type=pa.bool_())
_TERMINAL: Final = pa.array(TERMINAL_STATUSES, type=pa.string())
_KEY: Final = ("run_id", "attempt", "execution_id")
_MATCH: Final = (
    "jobs.run_id = k.run_id AND jobs.attempt = k.attempt AND jobs.execution_id = k.execution_id"
)

FULL_DELETE: Final = (
    f"DELETE FROM jobs USING chaperone_stage_keys k WHERE {_MATCH} RETURNING jobs.*"
)
"""The batch's rows by a join with every stored row (the fallback, and the reference the
bench compares with)."""
NARROW_DELETE: Final = (
    f"DELETE FROM jobs USING chaperone_stage_keys k WHERE {_MATCH} "
    "AND (jobs.started_at >= $started OR jobs.ingested_at >= $written) RETURNING jobs.*"
)
"""The batch's rows, read only from the row groups that can hold them (see the module doc)."""
TAKE_OPEN: Final = (
    "DELETE FROM open_runs o USING chaperone_stage_keys k WHERE o.run_id = k.run_id "
    "AND o.attempt = k.attempt AND o.execution_id = k.execution_id RETURNING o.*"
)
"""The batch's open runs and where their rows are; the write puts back those still open."""
OPEN_RUNS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS open_runs (run_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, "
    "execution_id VARCHAR NOT NULL, ingested_at TIMESTAMP)"
)
"""One row per stored run the start-time probe cannot find (not ended, or no start time):
its key and its ``jobs`` row's ``ingested_at``."""
OPEN_SQL: Final = (
    "NOT coalesce(status IN ("
    + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES)
    + ") AND started_at IS NOT NULL, FALSE)"
)
"""A ``jobs`` row that belongs in ``open_runs``, as SQL (the writer decides it in Arrow,
:func:`open_rows`; the migration's backfill and the tests use this)."""
PUT_OPEN: Final = (
    "INSERT INTO open_runs SELECT run_id, attempt, execution_id, ingested_at "
    "FROM chaperone_stage_jobs "
    f"WHERE {OPEN_SQL}"
)
"""Lists the open runs among the rows a write puts back (registered as
``chaperone_stage_jobs``)."""
FILL_OPEN: Final = (
    "INSERT INTO open_runs SELECT run_id, attempt, execution_id, ingested_at FROM jobs "
    f"WHERE {OPEN_SQL}"
)
"""Lists the open runs already stored (the migration that adds ``open_runs``)."""


def probe_keys(
    logs: pa.Table | None,
    spans: pa.Table | None,
    timestamps: Callable[[pa.ChunkedArray], pa.ChunkedArray],
) -> pa.Table:
    """The batch's keys (every key has a log or a span row) with each one's earliest start
    time as its records give it (``started``, ``timestamp[us]``; NULL when none carries one).

    Args:
        logs, spans: the staged log and span rows (``_records.Staged``), whose
            ``started_at`` is epoch seconds.
        timestamps: the writer's conversion of epoch seconds to stored times.
    """
    parts = [
        pa.table(
            [*(t.column(c) for c in _KEY), timestamps(t.column("started_at"))],
            names=[*_KEY, "started"],
        )
        for t in (logs, spans)
        if t is not None
    ]
    rows = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if len(parts) > 1:  # a run with a log and a span row: one key, its earliest start
        rows = rows.group_by(list(_KEY), use_threads=False).aggregate([("started", "min")])
        rows = rows.rename_columns([*_KEY, "started"])
    return rows.select([*_KEY, "started"]).cast(_PROBE_SCHEMA)


def take_current(
    cur: Any, keys: pa.Table, register: Callable[[str, pa.Table], None]
) -> tuple[pa.Table, bool]:
    """Delete the stored rows of ``keys`` (from :func:`probe_keys`) from ``jobs`` and from
    ``open_runs`` and return them (``jobs`` columns), with whether the full join was needed.

    The caller writes the merged rows back and calls :func:`put_open` with them, in the
    same transaction.
    """
    register("chaperone_stage_keys", keys.select(list(_KEY)))
    found = cur.sql(TAKE_OPEN).to_arrow_table()
    written = NEVER
    if found.num_rows:
        at = found.column("ingested_at")
        if at.null_count:  # a row stored without a write time: no bound for it
            return cur.sql(FULL_DELETE).to_arrow_table(), True
        written = pc.min(at).as_py()
    started = NEVER
    rest = keys
    if found.num_rows:
        open_keys = set(zip(*(found.column(c).to_pylist() for c in _KEY), strict=True))
        mask = [
            k not in open_keys
            for k in zip(*(keys.column(c).to_pylist() for c in _KEY), strict=True)
        ]
        rest = keys.filter(pa.array(mask, type=pa.bool_()))
    if rest.num_rows:
        unbounded = pc.or_(
            pc.is_null(rest.column("started")), pc.equal(rest.column("execution_id"), "")
        )
        if pc.any(unbounded).as_py():
            return cur.sql(FULL_DELETE).to_arrow_table(), True
        started = pc.min(rest.column("started")).as_py() - START_SLACK
    rows = cur.sql(NARROW_DELETE, params={"started": started, "written": written})
    return rows.to_arrow_table(), False


def open_rows(rows: pa.Table) -> pa.Table:
    """The ``open_runs`` rows of ``rows`` (``jobs`` rows as stored): those not ended or
    without a start time."""
    ended = pc.fill_null(pc.is_in(rows.column("status"), value_set=_TERMINAL), _FALSE)
    closed = pc.and_(ended, pc.is_valid(rows.column("started_at")))
    kept = rows.filter(pc.invert(closed))
    return kept.select([*_KEY, "ingested_at"])


def put_open(cur: Any, rows: pa.Table) -> None:
    """List the open runs among the rows just written: ``rows``, the ``jobs`` rows as
    stored, registered as ``chaperone_stage_jobs`` (no statement when none is open)."""
    if open_rows(rows).num_rows:
        cur.execute(PUT_OPEN)
