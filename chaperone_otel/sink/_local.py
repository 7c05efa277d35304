"""A sink over a DuckDB file opened in this process, and :func:`open_sink`.

``open_sink(path)`` decides how to reach a store:

1. ``http://…`` / ``https://…``: the remote client of the owner's query API.
2. The file is open in this process (e.g. ``configure(sink=path)``): share that connection.
3. Open the file (read-only unless asked). If another process holds DuckDB's lock and its
   sidecar ``<path>.owner.json`` names a live PID, follow the advertised URL; otherwise raise
   :class:`~chaperone_otel.exceptions.SinkError` naming the PID and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import duckdb

from .._fields import ACTIVE_STATUSES
from .._health import DEFAULT_POLICY, HealthPolicy
from .._units import parse_bytes, parse_duration
from ..exceptions import ConfigurationError, SinkError
from ._close import check_status, close_record, run_to_close, write_close
from ._query import JobQuery, Sink, naive_utc
from ._results import (
    ErrorRecord,
    HeartbeatRecord,
    JobRecord,
    PruneResult,
    SqlResult,
    ViolationRecord,
    _json_obj,
    _utc,
    arrow_timestamps,
)
from ._schedule_store import forget, prune_schedules
from ._schema import PRUNE_TOTALS, predicate
from ._sql_guard import check_select
from ._store import (
    Store,
    acquire,
    lock_holder,
    read_sidecar,
    release,
    sidecar_path,
    sink_error,
    truncation,
)
from ._verdict_totals import PRUNE_VERDICT_TOTALS

_READ_ONLY_TYPES: Final = frozenset({"SELECT", "EXPLAIN"})

ENV_SQL_TIMEOUT: Final = "CHAPERONE_OTEL_SQL_TIMEOUT"
ENV_SQL_MAX_ROWS: Final = "CHAPERONE_OTEL_SQL_MAX_ROWS"
ENV_SQL_MAX_BYTES: Final = "CHAPERONE_OTEL_SQL_MAX_BYTES"
_FETCH_ROWS: Final = 2048


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    """Bounds on every query a :class:`LocalSink` runs.

    DuckDB has no statement timeout, so a watchdog timer calls the cursor's ``interrupt()``
    at ``timeout``; the engine stops at its next check (within milliseconds, even inside a
    cross join). ``sink.sql()`` streams its result and stops at ``max_rows`` rows or about
    ``max_bytes`` of values, and says so in :attr:`SqlResult.truncated`: a
    ``SELECT * FROM range(15000000)`` must not build 15 M tuples in the application.

    Defaults come from ``CHAPERONE_OTEL_SQL_TIMEOUT`` (``30s``, ``2m`` …),
    ``CHAPERONE_OTEL_SQL_MAX_ROWS`` and ``CHAPERONE_OTEL_SQL_MAX_BYTES`` (``32MiB``) when set
    (:meth:`from_env`).

    Args:
        timeout: seconds a query may run (any query of the sink: scopes too).
        max_rows: rows ``sink.sql()`` returns at most.
        max_bytes: bytes of values (strings and blobs by length, 16 per other value)
            ``sink.sql()`` returns at most.

    Raises:
        ConfigurationError: a limit that is not positive.
    """

    timeout: float = 30.0
    max_rows: int = 100_000
    max_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        for name in ("timeout", "max_rows", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"QueryLimits.{name} must be a positive number, got {value!r}"
                )

    @classmethod
    def from_env(cls) -> QueryLimits:
        """The defaults, overridden by the ``CHAPERONE_OTEL_SQL_*`` variables that are set."""
        found: dict[str, Any] = {}
        env = os.environ
        if env.get(ENV_SQL_TIMEOUT, "").strip():
            found["timeout"] = parse_duration(env[ENV_SQL_TIMEOUT], what=ENV_SQL_TIMEOUT)
        if env.get(ENV_SQL_MAX_ROWS, "").strip():
            raw = env[ENV_SQL_MAX_ROWS]
            try:
                rows = int(raw)
            except ValueError:
                rows = 0
            if rows <= 0:  # named here: QueryLimits' own error names no variable
                raise ConfigurationError(
                    f"{ENV_SQL_MAX_ROWS}={raw!r}: expected a positive number of rows"
                )
            found["max_rows"] = rows
        if env.get(ENV_SQL_MAX_BYTES, "").strip():
            found["max_bytes"] = parse_bytes(env[ENV_SQL_MAX_BYTES], what=ENV_SQL_MAX_BYTES)
        return cls(**found)

    def narrowed(
        self, *, timeout: float | None, max_rows: int | None, max_bytes: int | None
    ) -> QueryLimits:
        """These limits, lowered (never raised) by the ones given."""
        return QueryLimits(
            timeout=self.timeout if timeout is None else min(timeout, self.timeout),
            max_rows=self.max_rows if max_rows is None else min(max_rows, self.max_rows),
            max_bytes=self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes),
        )


class _Watchdog:
    """Interrupts one cursor's query after ``timeout`` seconds, unless disarmed first."""

    def __init__(self, cur: Any, timeout: float) -> None:
        self._cur = cur
        self._lock = threading.Lock()
        self._armed = True
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.name = "chaperone-sql-watchdog"

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                self.fired = True
                with contextlib.suppress(duckdb.Error):
                    self._cur.interrupt()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Under the lock: an interrupt must not land on the cursor once its query is over.
        with self._lock:
            self._armed = False
        self._timer.cancel()


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return 16 + sum(_value_bytes(v) for v in value)
    if isinstance(value, dict):
        return 16 + sum(_value_bytes(k) + _value_bytes(v) for k, v in value.items())
    return 16


class LocalSink(Sink):
    """Queries (and, if writable, prunes) a store file through this process's connection.

    Args:
        store: the shared connection (see :func:`~chaperone_otel.sink._store.acquire`).
        read_only: refuse :meth:`prune` even if the connection could write.
        url: the query URL this process serves for the store, if any.
        limits: time and result bounds of queries (default: :meth:`QueryLimits.from_env`).
    """

    def __init__(
        self,
        store: Store,
        *,
        read_only: bool = True,
        url: str | None = None,
        policy: HealthPolicy = DEFAULT_POLICY,
        limits: QueryLimits | None = None,
    ) -> None:
        self._store = store
        self.limits = QueryLimits.from_env() if limits is None else limits
        self._read_only = read_only or store.read_only
        self._closed = False
        self.url = url
        self.policy = policy

    @property
    def path(self) -> str:
        """The store file."""
        return self._store.path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def written_here(self) -> bool:
        """This process's connection can write the file: it owns the store (an embedded
        sink, ``sink serve``, a sink opened with ``read_only=False``). Otherwise no process
        writes the file while this sink is open, since DuckDB lets a process open a file
        only while no other process has it open for writing."""
        return not self._store.read_only

    @property
    def stopping(self) -> bool:
        """The store's owner is shutting down: queries are interrupted and refused."""
        return self._store.stopping

    def cursor(self) -> Any:
        """A fresh DuckDB cursor on the store (the sink server's fleet metrics use it)."""
        if self._closed:
            raise SinkError(f"the sink for {self.path} is closed")
        sync = self._store.before_read
        if sync is not None:
            sync()
        return self._store.cursor()

    @contextlib.contextmanager
    def _bounded(self, timeout: float | None = None) -> Iterator[Any]:
        """A cursor whose query is interrupted at the time limit or when the owner shuts
        down; every ``duckdb.Error`` inside becomes a :class:`SinkError`."""
        limit = self.limits.timeout if timeout is None else timeout
        cur = self.cursor()
        try:
            with self._store.interruptible(cur), _Watchdog(cur, limit) as dog:
                try:
                    yield cur
                except duckdb.InterruptException as e:
                    if dog.fired:
                        raise SinkError(
                            f"query on {self.path} interrupted: it ran longer than the "
                            f"{limit:g} s limit (narrow it with WHERE/LIMIT, or raise "
                            f"{ENV_SQL_TIMEOUT})"
                        ) from e
                    raise SinkError(
                        f"query on {self.path} interrupted: the store is shutting down"
                    ) from e
                except duckdb.PermissionException as e:
                    raise SinkError(
                        "sink.sql() reads only the job store: files, URLs, other databases "
                        f"and extensions are disabled for queries ({e})"
                    ) from e
                except duckdb.CatalogException as e:
                    # Also what a file name spelt as a table gives (FROM '/etc/passwd'): the
                    # replacement scan that would read it is off.
                    raise SinkError(
                        "sink.sql() reads only the job store (tables jobs, heartbeats, "
                        "job_errors, resource_violations, job_totals, verdict_totals, "
                        f"schema_version; views jobs_health, problem_runs): {e}"
                    ) from e
                except duckdb.Error as e:
                    raise truncation(e, self.path) or SinkError(
                        f"query on {self.path} failed: {e}"
                    ) from e
        finally:
            cur.close()

    def _fetch(self, query: JobQuery) -> list[JobRecord]:
        text, params = query.render(self.policy)
        with self._bounded() as cur:
            cur.execute(text, params) if params else cur.execute(text)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [self._record(dict(zip(names, row, strict=True))) for row in rows]

    def _record(self, row: dict[str, Any]) -> JobRecord:
        return JobRecord.from_dict(row, sink=self)

    def _count(self, query: JobQuery) -> int:
        text, params = query.render(self.policy, count=True)
        with self._bounded() as cur:
            found = (cur.execute(text, params) if params else cur.execute(text)).fetchone()
        return int(found[0]) if found else 0

    def _arrow(self, query: JobQuery) -> Any:
        text, params = query.render(self.policy, bulk=True)
        with self._bounded() as cur:
            # A relation (not a DB-API result) streams to Arrow without an extra copy.
            return arrow_timestamps(cur.sql(text, params=params).to_arrow_table())

    def _rows(self, text: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self._bounded() as cur:
            rows: list[tuple[Any, ...]] = cur.execute(text, params).fetchall()
        return rows

    def heartbeats_of(
        self,
        run_id: str,
        attempt: int,
        *,
        latest: bool = False,
        kind: str | None = None,
        execution_id: str | None = None,
    ) -> list[HeartbeatRecord]:
        order = "recorded_at DESC, seq DESC LIMIT 1" if latest else "recorded_at, seq"
        params: dict[str, Any] = {"run_id": run_id, "attempt": attempt}
        which = _execution(params, execution_id)
        if kind is not None:
            which, params["kind"] = which + " AND kind = $kind", kind
        rows = self._rows(
            "SELECT recorded_at, calls, kind, count, progress, metadata FROM heartbeats "
            f"WHERE run_id = $run_id AND attempt = $attempt{which} ORDER BY {order}",
            params,
        )
        out = []
        for at, calls, what, count, progress, metadata in rows:
            when = _utc(at)
            assert when is not None  # NOT NULL column
            out.append(
                HeartbeatRecord(
                    at=when,
                    calls=calls,
                    kind=what,
                    count=count,
                    progress=progress,
                    metadata=_json_obj(metadata),
                )
            )
        return out

    def errors_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ErrorRecord]:
        params: dict[str, Any] = {"run_id": run_id, "attempt": attempt}
        which = _execution(params, execution_id)
        rows = self._rows(
            "SELECT recorded_at, type, message, trace FROM job_errors "
            f"WHERE run_id = $run_id AND attempt = $attempt{which} ORDER BY recorded_at",
            params,
        )
        return [ErrorRecord(at=_utc(a), type=t, message=m, trace=tr) for a, t, m, tr in rows]

    def violations_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ViolationRecord]:
        params: dict[str, Any] = {"run_id": run_id, "attempt": attempt}
        which = _execution(params, execution_id)
        rows = self._rows(
            "SELECT recorded_at, type, limit_value, actual, policy FROM resource_violations "
            f"WHERE run_id = $run_id AND attempt = $attempt{which} ORDER BY recorded_at, seq",
            params,
        )
        return [
            ViolationRecord(at=_utc(a), type=t, limit=lim, actual=act, policy=p)
            for a, t, lim, act, p in rows
        ]

    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> SqlResult:
        """Run one read-only statement (SELECT / EXPLAIN) with bound parameters.

        It runs in a read-only transaction on an engine that cannot reach files, URLs,
        other databases or extensions (see :mod:`._store`), is interrupted after the time
        limit, and its result stops at the row/byte limit (:class:`QueryLimits`; the
        arguments can lower them for this call, not raise them).

        Returns:
            ``(columns, rows)`` as a :class:`SqlResult`; ``result.truncated`` says whether
            and why rows were left out.

        Raises:
            SinkError: not a single read-only statement, refused by the engine (a file, a
                write …), interrupted at the time limit or by shutdown, or failed.
        """
        check_read_only(query)
        limits = self.limits.narrowed(timeout=timeout, max_rows=max_rows, max_bytes=max_bytes)
        with self._bounded(limits.timeout) as cur:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            try:
                cur.execute(query, params) if params else cur.execute(query)
                names = [d[0] for d in cur.description] if cur.description else []
                rows, truncated = _take(cur, limits)
            finally:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
        return SqlResult(names, rows, truncated)

    def prune(self, older_than: timedelta | str | float) -> PruneResult:
        """Delete runs whose latest record (any kind) is older than ``older_than``, with
        their heartbeats, errors and violations. A run still reporting is kept however old
        its last record is (a running run with a long interval is healthy, not stale): a
        running or pending run is deleted only once it is *lost* (its process silent for
        more than ``lost_after`` intervals, the same rule as the ``lost()`` scope).

        It also retires the schedules with no declaration, run or dispatch since the
        cutoff (with their slots and dispatches), and deletes older slots and dispatches
        (each schedule keeps its newest slot).

        Returns:
            The number of runs deleted, an ``int`` whose ``schedules_retired`` is the
            number of schedules retired (:class:`PruneResult`).

        Raises:
            SinkError: the sink is read-only, or the delete failed.
        """
        if self._read_only:
            raise SinkError(
                f"prune needs a writable sink: open_sink({self.path!r}, read_only=False) "
                "(or prune from the process that owns the store)"
            )
        try:
            age = parse_duration(older_than, what="older_than")
        except ConfigurationError as e:
            raise SinkError(str(e)) from e
        import time  # noqa: PLC0415

        now = time.time()
        cutoff = naive_utc(now - age)
        live = f"(status IN ('running', 'pending') AND NOT {predicate('lost', self.policy)})"
        cur = self.cursor()
        try:
            with self._store.write_lock:
                cur.execute("BEGIN TRANSACTION")
                try:
                    cur.execute(
                        "CREATE OR REPLACE TEMP TABLE chaperone_doomed AS "
                        "SELECT run_id, attempt, execution_id FROM jobs "
                        "WHERE COALESCE(last_seen_at, finished_at, started_at) < $cutoff "
                        f"AND NOT {live}",
                        {"cutoff": cutoff, "now": now},
                    )
                    cur.execute(PRUNE_TOTALS)
                    cur.execute(PRUNE_VERDICT_TOTALS)
                    for table in ("heartbeats", "job_errors", "resource_violations", "jobs"):
                        cur.execute(
                            f"DELETE FROM {table} t USING chaperone_doomed d "
                            "WHERE t.run_id = d.run_id AND t.attempt = d.attempt "
                            "AND t.execution_id = d.execution_id"
                        )
                    found = cur.execute("SELECT count(*) FROM chaperone_doomed").fetchone()
                    cur.execute("DROP TABLE chaperone_doomed")
                    retired = prune_schedules(cur, cutoff)  # old slots, retired schedules
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                finally:
                    # The writers' open runs may list pruned runs (a run closed before it
                    # started stays open for them until pruned): forgotten, so they are
                    # read again by the next write and do not grow with every prune.
                    self._store.open_runs.invalidate()
        except duckdb.Error as e:
            raise SinkError(f"prune of {self.path} failed: {e}") from e
        finally:
            cur.close()
        return PruneResult(int(found[0]) if found else 0, retired)

    def forget_schedule(self, name: str) -> bool:
        """Remove the schedule ``name`` from the store: its declaration, slots and
        dispatches (its runs stay, as runs). Its alerts resolve and its ``/metrics`` series
        go. A declaration (or dispatch) of it made before now that arrives later (a delayed
        OTLP batch) is ignored; declared after now (a process still declaring it), it
        starts afresh from that declaration.

        Returns:
            True if the store had the schedule (or slots or dispatches of it).

        Raises:
            SinkError: the sink is read-only, or the delete failed.
            ConfigurationError: ``name`` is not a schedule name.
        """
        if self._read_only:
            raise SinkError(
                f"forget_schedule needs a writable sink: open_sink({self.path!r}, "
                "read_only=False) (or call it in the process that owns the store)"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError("forget_schedule takes a schedule name")
        cur = self.cursor()
        try:
            with self._store.write_lock:
                cur.execute("BEGIN TRANSACTION")
                try:
                    found = forget(cur, name, time.time())
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        except duckdb.Error as e:
            raise SinkError(f"forgetting schedule {name!r} in {self.path} failed: {e}") from e
        finally:
            cur.close()
        return found

    def close_run(
        self,
        run_id: str,
        *,
        status: str = "failed",
        reason: str | None = None,
        execution_id: str | None = None,
        attempt: int | None = None,
    ) -> JobRecord:
        """End a run no process will finish: a lost run (its process died with no parent to
        :func:`~chaperone_otel.close_run` it), or one stuck for good. Its one pending or
        running execution (``execution_id`` and ``attempt`` pick one of several) ends with
        ``status`` (``failed``, the default, or ``cancelled``, which keeps it out of the
        failure ratio) and a :class:`~chaperone_otel.exceptions.RunClosed` error whose
        message is ``reason`` (default: what the store judged, lost or stuck), as a
        parent's ``close_run()`` would end it (``sink/_close.py``). A lost run ends at its
        last sign of life, a live one now. Its process's later records, if it was alive
        after all, only fill in what is still empty.

        Raises:
            SinkError: the sink is read-only; no such run, none of it running or pending,
                or several and nothing to pick one; a status other than those two.
        """
        if self._read_only:
            raise SinkError(
                f"close_run needs a writable sink: open_sink({self.path!r}, read_only=False) "
                "(or call it in the process that owns the store)"
            )
        check_status(status)
        # Read first (an owner's read flushes its writer's queue, which needs the write
        # lock), then checked again under the lock: a commit of the run's own end in
        # between would otherwise be replaced by the close.
        run = run_to_close(self.jobs.with_id(run_id).all(), run_id, execution_id, attempt)
        record = close_record(run, status, reason, time.time())
        cur = self.cursor()
        try:
            with self._store.write_lock:
                found = cur.execute(
                    "SELECT status FROM jobs WHERE run_id = $1 AND attempt = $2 "
                    "AND execution_id = $3",
                    [run.id, run.attempt, run.execution_id],
                ).fetchall()
                if not found or found[0][0] not in ACTIVE_STATUSES:
                    now = found[0][0] if found else "deleted"
                    raise SinkError(f"run {run_id!r} ended ({now}) as it was being closed")
                write_close(self._store, cur, record)
        except duckdb.Error as e:
            raise SinkError(f"closing run {run_id!r} in {self.path} failed: {e}") from e
        finally:
            cur.close()
        key = (run.attempt, run.execution_id)
        for closed in self.jobs.with_id(run_id).all():
            if (closed.attempt, closed.execution_id) == key:
                return closed
        raise SinkError(f"run {run_id!r} was deleted (pruned?) as it was closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self._store)

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"<LocalSink {self.path} {mode}>"


def check_read_only(query: str) -> None:
    """Raise :class:`SinkError` unless ``query`` is one SELECT/EXPLAIN statement that calls
    no refused function and stays within the size the planner can take (:mod:`._sql_guard`).

    This is the first of two layers and only about the *kind* of statement (from DuckDB's
    own parser): what a SELECT can reach is bounded by the engine (see :mod:`._store`), and
    a write hidden in ``EXPLAIN ANALYZE`` fails on the read-only transaction user SQL runs
    in. (An earlier allow-list walk of the parse tree was dropped: it could be bypassed, e.g.
    ``"/dir/k".information_schema.csv``, while the engine refuses every spelling.)
    """
    if not isinstance(query, str) or not query.strip():
        raise SinkError("sink.sql() needs a SQL string")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise SinkError(f"cannot parse SQL: {e}") from e
    if len(statements) != 1:
        raise SinkError(f"sink.sql() runs exactly one statement, got {len(statements)}")
    try:
        kind = statements[0].type.name
    except ValueError:
        # A statement type newer than this duckdb's Python enum ("29 is not a valid
        # StatementType" for UPDATE EXTENSIONS): not a SELECT, whatever it is.
        kind = "this"
    if not kind.isidentifier():  # duckdb 1.x names such a type "???"
        kind = "this"
    if kind not in _READ_ONLY_TYPES:
        raise SinkError(
            f"sink.sql() is read-only: {kind} statements are refused (use SELECT; to delete "
            "old runs use sink.prune(older_than))"
        )
    if kind == "EXPLAIN":
        inner = _explained(statements[0].query)
        try:
            inner_kinds = [st.type.name for st in duckdb.extract_statements(inner)]
        except (duckdb.Error, ValueError):
            inner_kinds = []
        if inner_kinds != ["SELECT"]:
            # EXPLAIN ANALYZE runs what it explains, and the read-only transaction does not
            # stop a COPY … TO into the engine's own spill directory (<store>.tmp/).
            raise SinkError(
                "sink.sql() is read-only: EXPLAIN [ANALYZE] of a SELECT only (EXPLAIN "
                "ANALYZE runs the statement it explains)"
            )
        check_select(inner)
    else:
        check_select(statements[0].query)


_STATEMENT_STARTS: Final = frozenset({"SELECT", "WITH", "FROM", "VALUES", "TABLE", "("})


def _explained(query: str) -> str:
    """The statement an ``EXPLAIN [ANALYZE] [(options)]`` explains, found with DuckDB's own
    tokenizer (comments skipped); "" when there is none."""
    found: list[tuple[int, str]] = []
    tokens = duckdb.tokenize(query)
    for n, (start, kind) in enumerate(tokens):
        if kind == duckdb.token_type.comment:
            continue
        end = tokens[n + 1][0] if n + 1 < len(tokens) else len(query)
        lexeme = re.match(r"[A-Za-z_][A-Za-z_0-9]*|\S", query[start:end])
        found.append((start, lexeme.group(0).upper() if lexeme else ""))
    i = 1  # found[0] is EXPLAIN
    if i < len(found) and found[i][1] == "ANALYZE":
        i += 1
    if i + 1 < len(found) and found[i][1] == "(" and found[i + 1][1] not in _STATEMENT_STARTS:
        depth = 0
        while i < len(found):  # the options, to their closing parenthesis
            depth += {"(": 1, ")": -1}.get(found[i][1], 0)
            i += 1
            if depth == 0:
                break
    return query[found[i][0] :] if i < len(found) else ""


def _take(cur: Any, limits: QueryLimits) -> tuple[list[tuple[Any, ...]], str | None]:
    """Fetch the streaming result in batches, stopping at the row or byte limit.

    A batch is sized by what the rows so far weigh: at most the rows that fit in the bytes
    left, at the largest row's weight (one row first). A fixed batch of 2,048 rows of 1 MB
    values built 2 GB of Python objects before the 32 MiB limit was checked.
    """
    rows: list[tuple[Any, ...]] = []
    size = 0
    heaviest = 0  # the largest row's bytes so far
    while True:
        room = limits.max_bytes - size
        count = 1 if not rows else max(1, room // max(heaviest, 1))
        batch = cur.fetchmany(min(_FETCH_ROWS, limits.max_rows + 1 - len(rows), count))
        if not batch:
            return rows, None
        for row in batch:
            if len(rows) >= limits.max_rows:
                return rows, (
                    f"the result has more than {limits.max_rows} rows, the row limit for "
                    f"queries; these are the first {limits.max_rows} (aggregate, add "
                    f"LIMIT/OFFSET, or raise {ENV_SQL_MAX_ROWS})"
                )
            weight = sum(_value_bytes(v) for v in row)
            heaviest = max(heaviest, weight)
            size += weight
            if size > limits.max_bytes:
                return rows, (
                    f"the result is larger than {limits.max_bytes} bytes, the size limit "
                    f"for queries; these are the first {len(rows)} rows (select fewer or "
                    f"shorter columns, add LIMIT, or raise {ENV_SQL_MAX_BYTES})"
                )
            rows.append(row)


def _remote(url: str, policy: HealthPolicy) -> Sink:
    """The HTTP client of an owner's query API (``chaperone_otel.sink._remote``)."""
    try:
        remote = importlib.import_module("chaperone_otel.sink._remote")
    except ImportError as e:
        raise SinkError(
            f"the store is served at {url}, but this installation has no remote sink client "
            "(chaperone_otel.sink._remote); query it over HTTP (GET {url}/api/jobs), or stop "
            "the owner and open the file directly"
        ) from e
    opener = getattr(remote, "open_remote", None) or remote.RemoteSink
    sink: Sink = opener(url, policy=policy)
    return sink


HANDOVER_TIMEOUT: Final = 5.0
"""Seconds ``open_sink`` keeps retrying a file that is locked by a process advertising no
reachable query URL: an owner in the middle of starting or closing (its sidecar already gone
or not yet written, its server stopped, the DuckDB lock not yet released)."""


def open_sink(
    path: str | os.PathLike[str],
    *,
    read_only: bool = True,
    policy: HealthPolicy = DEFAULT_POLICY,
    handover_timeout: float = HANDOVER_TIMEOUT,
) -> Sink:
    """Open a job store for queries.

    A file locked by another process is reached through the query URL that process
    advertises (``<path>.owner.json``). A lock with no reachable URL is usually an owner
    starting or closing: open_sink retries, opening the file or following the URL as soon as
    one can be, for up to ``handover_timeout`` seconds before it gives up.

    Args:
        path: a DuckDB file, or the ``http://127.0.0.1:PORT`` query URL of its owner.
        read_only: open without write access (the default). ``False`` creates the file if
            missing, migrates an older schema, and allows :meth:`Sink.prune`.
        policy: the health thresholds scopes are judged with.
        handover_timeout: seconds to retry a file locked by a process that serves no
            reachable URL (0: fail at once).

    Returns:
        A :class:`Sink`: local for a file this process can open or already owns, remote when
        another process owns it and advertises a query URL.

    Raises:
        SinkError: no such file (read-only), the file is still held after
            ``handover_timeout`` by a process that serves no URL, or it is not a
            chaperone-otel store.
        SchemaVersionError: the file was written by a newer chaperone-otel.

    .. versionadded:: 0.1
    """
    text = os.fspath(path)
    if text.startswith(("http://", "https://")):
        return _remote(text, policy)
    deadline = time.monotonic() + handover_timeout
    while True:
        try:
            store = acquire(text, read_only=read_only, policy=policy)
        except SinkError as e:
            cause = e.__cause__
            holder = lock_holder(cause) if cause is not None else None
            if holder is None:
                raise
            owner = read_sidecar(text)
            unreachable: SinkError | None = None
            if owner is not None:
                try:
                    remote = _remote(owner["url"], policy)
                    # The owner may exit before a query: follow the store, not that process.
                    if hasattr(remote, "reopen"):
                        remote.reopen = functools.partial(open_sink, text, policy=policy)
                    return remote
                except SinkError as gone:  # its server stopped: the owner is closing
                    unreachable = gone
            if time.monotonic() < deadline:
                time.sleep(_HANDOVER_POLL)
                continue
            if unreachable is not None:
                raise unreachable from unreachable.__cause__
            raise SinkError(
                f"{text} is held by process {holder} and it serves no query URL (no live "
                f"{sidecar_path(text).name}, after {handover_timeout:g} s). DuckDB lets only "
                "one process open a store. Stop that process, or if it is your application, "
                "query through it (configure(sink=...) serves the query API), or copy the "
                "file and open the copy."
            ) from cause
        return LocalSink(store, read_only=read_only, policy=policy)


_HANDOVER_POLL: Final = 0.05


__all__ = [
    "LocalSink",
    "QueryLimits",
    "check_read_only",
    "open_sink",
    "sink_error",
]


def _execution(params: dict[str, Any], execution_id: str | None) -> str:
    """The WHERE clause's execution condition (none: every execution of the attempt)."""
    if execution_id is None:
        return ""
    params["execution_id"] = execution_id
    return " AND execution_id = $execution_id"
