"""The writer's key probe: find a batch's stored rows without reading every stored run.

The ``jobs`` table has no index (``_schema``), so a join of the batch's keys with it reads
every stored row: its cost grew with the store (193 ms of CPU per write at 1,000,000 runs,
``docs/performance.md``). The probe reads instead only the row groups that can hold a
batch key's row, by the zone maps (min/max per row group) of two time columns, and proves
that the others cannot:

* **open runs** (not ended, or without a start time: running, pending, a row a ``closed``
  record made) are known to the store's writers: :class:`OpenRuns` maps each to its row's
  ``ingested_at``, loaded once from ``jobs`` and kept by every write after its commit. A
  batch key found there has its row at ``ingested_at >=`` that value: a row is appended
  each time it is written, so a live run that reports is near the end of the table.
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
prunes row groups on either), and no other statement: the open runs are a dictionary, not a
table, because a table's look-up and upkeep cost two statements per write (~2-4 ms, more
than the probe saves below ~250,000 stored runs). The cost of a write then follows the
rows written since the oldest open run of the batch last reported and since its new runs
started, not the number of runs stored. Reasoning and figures: ``docs/decisions.md``,
``docs/performance.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from .._fields import TERMINAL_STATUSES

Key = tuple[str, int, str]
"""(run id, attempt, execution id): one stored run, one row of ``jobs``."""

OpenChanges = tuple[dict[Key, "int | None"], set[Key]]
"""What a write changed in the open runs: (open rows → ``ingested_at`` in microseconds since
the epoch, rows not open)."""

START_SLACK: Final = timedelta(seconds=60)
"""How much earlier than a batch record's start time its stored row's may be and still be
found: the span's start and the records' start attribute of one execution agree to the
microsecond, so this only absorbs rounding and a sender that stamps its records a little
differently; it costs nothing (a row group spans far more than a minute of a busy store)."""

NEVER: Final = datetime(9999, 1, 1)
"""A bound no stored time reaches: the half of the probe that has no key to look for."""

_TIMESTAMP: Final = pa.timestamp("us")
_FALSE: Final = pa.scalar(value=False, type=pa.bool_())
_TERMINAL: Final = pa.array(TERMINAL_STATUSES, type=pa.string())
_KEY: Final = ("run_id", "attempt", "execution_id")
_PROBE_SCHEMA: Final = pa.schema(
    [
        ("run_id", pa.string()),
        ("attempt", pa.int64()),
        ("execution_id", pa.string()),
        ("started", _TIMESTAMP),
    ]
)
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
OPEN_SQL: Final = (
    "NOT coalesce(status IN ("
    + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES)
    + ") AND started_at IS NOT NULL, FALSE)"
)
"""An open ``jobs`` row, as SQL (:func:`open_changes` decides the same in Arrow)."""
LOAD_OPEN: Final = (
    f"SELECT run_id, attempt, execution_id, epoch_us(ingested_at) FROM jobs WHERE {OPEN_SQL}"
)
_EPOCH: Final = datetime(1970, 1, 1)
_NOT_OPEN: Final = -(2**63)  # below any stored time: a key the open runs do not list


class OpenRuns:
    """The open runs of one store and where their rows are: key → the row's ``ingested_at``
    (microseconds since the epoch: cheaper than ``datetime`` objects; ``None`` if unset).

    Shared by the writers of a :class:`~chaperone_otel.sink._store.Store` (one per store
    and process) and used under its write lock. Loaded from ``jobs`` by the first write
    (inside its transaction), changed only by :meth:`apply` after a commit, and forgotten
    (:meth:`invalidate`) when a write's commit fails (it may or may not have happened;
    a failure before it rolls back, which leaves this true), the store is reopened or a
    prune ran, so it never says less than the file: a key it lacks has no open row.
    Nothing else in the process changes ``jobs`` rows; ``prune`` only deletes them, and
    forgets this map so that runs it deleted (e.g. runs closed before they started, open
    here for ever otherwise) do not pile up in it.
    """

    def __init__(self) -> None:
        self._at: dict[Key, int | None] | None = None
        self._lock = threading.Lock()

    def load(self, cur: Any) -> Mapping[Key, int | None]:
        """The open runs (read from ``jobs`` on ``cur`` if not known yet)."""
        with self._lock:
            if self._at is None:
                rows = cur.execute(LOAD_OPEN).fetchall()
                self._at = {(r, int(a), e): at for r, a, e, at in rows}
            return self._at

    def apply(self, changes: OpenChanges) -> None:
        """After a commit: the written runs that are open (with their rows' ``ingested_at``)
        and those that are not (any more)."""
        opened, ended = changes
        with self._lock:
            if self._at is None:
                return
            for key in ended:
                self._at.pop(key, None)
            self._at.update(opened)

    def invalidate(self) -> None:
        """Forget everything: the next write loads the open runs again."""
        with self._lock:
            self._at = None

    def snapshot(self) -> dict[Key, int | None] | None:
        """A copy of what is known (``None``: not loaded), for tests and diagnostics."""
        with self._lock:
            return None if self._at is None else dict(self._at)


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
    if not parts:
        return _PROBE_SCHEMA.empty_table()
    rows = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if len(parts) > 1:  # a run with a log and a span row: one key, its earliest start
        rows = rows.group_by(list(_KEY), use_threads=False).aggregate([("started", "min")])
        rows = rows.rename_columns([*_KEY, "started"])
    return rows.select([*_KEY, "started"]).cast(_PROBE_SCHEMA)


def take_current(
    cur: Any,
    keys: pa.Table,
    register: Callable[[str, pa.Table], None],
    open_runs: Mapping[Key, int | None] | None,
) -> tuple[pa.Table, bool]:
    """Delete the stored rows of ``keys`` (from :func:`probe_keys`) from ``jobs`` and return
    them (``jobs`` columns), with whether the full join was needed.

    Args:
        open_runs: :meth:`OpenRuns.load`'s map; ``None``: the full join (no writer keeps
            the open runs of this store).
    """
    register("chaperone_stage_keys", keys.select(list(_KEY)))
    if open_runs is None:
        return cur.sql(FULL_DELETE).to_arrow_table(), True
    batch = zip(*(keys.column(c).to_pylist() for c in _KEY), strict=True)
    where = [open_runs.get(k, _NOT_OPEN) for k in batch]
    written: list[int] = []
    for at in where:
        if at is None:  # an open row stored without a write time: no bound for it
            return cur.sql(FULL_DELETE).to_arrow_table(), True
        if at != _NOT_OPEN:
            written.append(at)
    rest = keys.filter(pa.array([at == _NOT_OPEN for at in where], type=pa.bool_()))
    started = NEVER
    if rest.num_rows:
        if (
            rest.column("started").null_count
            or not pc.all(pc.not_equal(rest.column("execution_id"), "")).as_py()
        ):
            return cur.sql(FULL_DELETE).to_arrow_table(), True
        started = pc.min(rest.column("started")).as_py() - START_SLACK
    bounds = {
        "started": started,
        "written": _EPOCH + timedelta(microseconds=min(written)) if written else NEVER,
    }
    return cur.sql(NARROW_DELETE, params=bounds).to_arrow_table(), False


def open_changes(rows: pa.Table) -> OpenChanges:
    """For :meth:`OpenRuns.apply`: which of ``rows`` (``jobs`` rows as stored) are open (not
    ended, or without a start time), with their ``ingested_at``, and which are not."""
    ended = pc.fill_null(pc.is_in(rows.column("status"), value_set=_TERMINAL), _FALSE)
    closed = pc.and_(ended, pc.is_valid(rows.column("started_at"))).to_pylist()
    at = rows.column("ingested_at").cast(pa.int64()).to_pylist()  # microseconds
    keys = zip(*(rows.column(c).to_pylist() for c in _KEY), strict=True)
    opened: dict[Key, int | None] = {}
    done: set[Key] = set()
    for (r, a, e), is_closed, when in zip(keys, closed, at, strict=True):
        if is_closed:
            done.add((r, int(a), e))
        else:
            opened[(r, int(a), e)] = when
    return opened, done
