"""Counts of finished runs per stored verdict, kept by the writer: ``healthy().count()`` at
10 M runs without scanning the history.

A finished run's verdict is stored in ``settled_health`` (:mod:`._settled`), and a verdict
scope's ``count()`` was two scans: the one-byte column of every finished run plus the rule
over the live runs (issue 16: 0.86-1.48x a ``GROUP BY status`` at 10 M runs, for the first
scan alone 0.28x). The ``verdict_totals`` table holds, per (name, queue, status, verdict),
how many stored runs have that settled verdict; ``count()`` reads those few rows for the
finished runs and judges only the live ones by the rule.

The table is exact, not approximate: it equals ``SELECT coalesce(name, ''),
coalesce(queue, ''), status, settled_health, count(*) FROM jobs WHERE settled_health IS NOT
NULL GROUP BY ALL`` after every committed transaction, because every statement that changes
a stored verdict changes the totals in the same transaction:

* the writer (:func:`update_verdict_totals`): every batch deletes its runs' rows and inserts
  the merged ones, so the change is "minus the deleted rows' verdicts, plus the inserted
  rows'"; a re-delivered end, a late record that rewrites an ended run, a finish recorded by
  another process (``close_run``) and a re-finish are all that one case;
* prune (:data:`PRUNE_VERDICT_TOTALS`, before it deletes the doomed runs);
* the migration that creates the table fills it from the stored verdicts
  (``sink/_schema.py``, :func:`~._schema.verdict_totals_statements`).

The inserted rows' verdicts are the ones the ``INSERT`` itself stores (computed there by
:data:`._schema.SETTLE_SQL`), handed back by its ``RETURNING`` (:data:`RETURNING`); the
replaced rows' are in the ``DELETE … RETURNING`` rows the writer already holds. The delta,
a few rows, is aggregated in Arrow and applied by one ``MERGE``. A batch that neither ends a
run nor rewrites a finished one (the common one: heartbeats of running jobs) skips it all.
Measured against computing the verdicts again in a ``MERGE`` over the staged rows: the
step's writer-thread CPU went from ~6 to ~2.7 ms a write (``bench_sink_writes.py
--statements``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from ._schema import TERMINAL_STATUSES, VERDICT_TOTALS
from ._settled import SETTLED_COLUMN

_ON: Final = "t.name = s.name AND t.queue = s.queue AND t.status = s.status AND t.health = s.health"
_TERMINAL: Final = pa.array(TERMINAL_STATUSES, type=pa.string())
_GROUP: Final = ["name", "queue", "status", "health"]
_KEY: Final = "coalesce(name, '') AS name, coalesce(queue, '') AS queue, status"


RETURNING: Final = f" RETURNING {_KEY}, CAST({SETTLED_COLUMN} AS VARCHAR) AS health"
"""What the ``INSERT`` of a batch that ends or rewrites finished runs returns: each inserted
row's key and the verdict the ``INSERT`` itself computed and stored."""
WRITE_DELTA: Final = (
    f"MERGE INTO {VERDICT_TOTALS} AS t USING chaperone_verdicts_delta AS s ON {_ON} "
    "WHEN MATCHED AND t.stored + s.n = 0 THEN DELETE "
    "WHEN MATCHED THEN UPDATE SET stored = t.stored + s.n "
    "WHEN NOT MATCHED THEN INSERT VALUES (s.name, s.queue, s.status, s.health, s.n)"
)
"""The batch's change, a few rows aggregated in Arrow: the rows before it (as the ``DELETE …
RETURNING`` gave them) count -1 in their stored verdict, the inserted ones +1 in the verdict
their ``INSERT`` stored. A group that reaches 0 is deleted, so the table never holds empty
groups."""

PRUNE_VERDICT_TOTALS: Final = (
    f"MERGE INTO {VERDICT_TOTALS} AS t USING (SELECT {_KEY}, {SETTLED_COLUMN} AS health, "
    "count(*) AS n FROM jobs SEMI JOIN chaperone_doomed d "
    "ON jobs.run_id = d.run_id AND jobs.attempt = d.attempt "
    "AND jobs.execution_id = d.execution_id "
    f"WHERE {SETTLED_COLUMN} IS NOT NULL GROUP BY ALL) AS s ON {_ON} "
    "WHEN MATCHED AND t.stored = s.n THEN DELETE "
    "WHEN MATCHED THEN UPDATE SET stored = t.stored - s.n"
)
"""Run by prune before it deletes the ``chaperone_doomed`` runs."""


def touches_verdicts(before: pa.Table, after: pa.Table) -> bool:
    """Whether a batch replacing ``before`` by ``after`` can change the totals: a row before
    it had a stored verdict, or a row after it has ended."""
    return bool(
        pc.any(pc.is_valid(before.column(SETTLED_COLUMN))).as_py()
        or pc.any(pc.is_in(after.column("status"), value_set=_TERMINAL)).as_py()
    )


def update_verdict_totals(
    cur: Any, register: Callable[[str, pa.Table], None], before: pa.Table, inserted: pa.Table
) -> bool:
    """Apply a batch's change to the totals, in the batch's transaction on ``cur``.

    Args:
        before: the batch's runs as stored before it (deleted by the batch).
        inserted: what the batch's ``INSERT … RETURNING`` (:data:`RETURNING`) gave.

    Returns:
        False when nothing changed (no statement was run).
    """
    settled = before.column(SETTLED_COLUMN)
    old = before.filter(pc.is_valid(settled))
    new = inserted.filter(pc.is_valid(inserted.column("health")))
    if not (old.num_rows or new.num_rows):
        return False
    parts = [
        pa.table(
            [
                pc.fill_null(old.column("name"), ""),
                pc.fill_null(old.column("queue"), ""),
                old.column("status").cast(pa.string()),
                old.column(SETTLED_COLUMN).cast(pa.string()),
                pa.array([-1] * old.num_rows, pa.int64()),
            ],
            names=[*_GROUP, "n"],
        ),
        pa.table(
            [*(new.column(c).cast(pa.string()) for c in _GROUP), pa.array([1] * new.num_rows)],
            names=[*_GROUP, "n"],
        ),
    ]
    delta = pa.concat_tables(parts).group_by(_GROUP, use_threads=False).aggregate([("n", "sum")])
    delta = delta.filter(pc.not_equal(delta.column("n_sum"), 0))
    if not delta.num_rows:
        return False
    register("chaperone_verdicts_delta", delta.rename_columns([*_GROUP, "n"]))
    cur.execute(WRITE_DELTA)
    return True
