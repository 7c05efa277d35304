"""A sink over a DuckDB file opened in this process, and :func:`open_sink`.

``open_sink(path)`` decides how to reach a store:

1. ``http://…`` / ``https://…``: the remote client of the owner's query API.
2. The file is open in this process (e.g. ``configure(sink=path)``): share that connection.
3. Open the file (read-only unless asked). If another process holds DuckDB's lock and its
   sidecar ``<path>.owner.json`` names a live PID, follow the advertised URL; otherwise raise
   :class:`~chaperone_otel.exceptions.SinkError` naming the PID and what to do.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import duckdb

from .._health import DEFAULT_POLICY, HealthPolicy
from .._units import parse_duration
from ..exceptions import ConfigurationError, SinkError
from ._query import JobQuery, Sink, naive_utc
from ._results import ErrorRecord, HeartbeatRecord, JobRecord, ViolationRecord, _json_obj, _utc
from ._schema import predicate
from ._store import Store, acquire, lock_holder, read_sidecar, release, sidecar_path, sink_error

_READ_ONLY_TYPES: Final = frozenset({"SELECT", "EXPLAIN"})


class LocalSink(Sink):
    """Queries (and, if writable, prunes) a store file through this process's connection.

    Args:
        store: the shared connection (see :func:`~chaperone_otel.sink._store.acquire`).
        read_only: refuse :meth:`prune` even if the connection could write.
        url: the query URL this process serves for the store, if any.
    """

    def __init__(
        self,
        store: Store,
        *,
        read_only: bool = True,
        url: str | None = None,
        policy: HealthPolicy = DEFAULT_POLICY,
    ) -> None:
        self._store = store
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

    def cursor(self) -> Any:
        """A fresh DuckDB cursor on the store (the sink server's fleet metrics use it)."""
        if self._closed:
            raise SinkError(f"the sink for {self.path} is closed")
        sync = self._store.before_read
        if sync is not None:
            sync()
        return self._store.cursor()

    def _execute(self, text: str, params: Any = None) -> Any:
        cur = self.cursor()
        try:
            return cur.execute(text, params) if params else cur.execute(text)
        except duckdb.Error as e:
            cur.close()
            raise SinkError(f"query on {self.path} failed: {e}") from e

    def _fetch(self, query: JobQuery) -> list[JobRecord]:
        text, params = query.render(self.policy)
        cur = self._execute(text, params)
        try:
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        finally:
            cur.close()
        return [self._record(dict(zip(names, row, strict=True))) for row in rows]

    def _record(self, row: dict[str, Any]) -> JobRecord:
        return JobRecord.from_dict(row, sink=self)

    def _count(self, query: JobQuery) -> int:
        text, params = query.render(self.policy, count=True)
        cur = self._execute(text, params)
        try:
            found = cur.fetchone()
        finally:
            cur.close()
        return int(found[0]) if found else 0

    def _arrow(self, query: JobQuery) -> Any:
        text, params = query.render(self.policy)
        cur = self.cursor()
        try:
            # A relation (not a DB-API result) streams to Arrow without an extra copy.
            return cur.sql(text, params=params).to_arrow_table()
        except duckdb.Error as e:
            raise SinkError(f"query on {self.path} failed: {e}") from e
        finally:
            cur.close()

    def _rows(self, text: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cur = self._execute(text, params)
        try:
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
        finally:
            cur.close()

    def heartbeats_of(
        self, run_id: str, attempt: int, *, latest: bool = False
    ) -> list[HeartbeatRecord]:
        order = "recorded_at DESC, seq DESC LIMIT 1" if latest else "recorded_at, seq"
        rows = self._rows(
            "SELECT recorded_at, calls, kind, count, progress, metadata FROM heartbeats "
            f"WHERE run_id = $run_id AND attempt = $attempt ORDER BY {order}",
            {"run_id": run_id, "attempt": attempt},
        )
        out = []
        for at, calls, kind, count, progress, metadata in rows:
            when = _utc(at)
            assert when is not None  # NOT NULL column
            out.append(
                HeartbeatRecord(
                    at=when,
                    calls=calls,
                    kind=kind,
                    count=count,
                    progress=progress,
                    metadata=_json_obj(metadata),
                )
            )
        return out

    def errors_of(self, run_id: str, attempt: int) -> list[ErrorRecord]:
        rows = self._rows(
            "SELECT recorded_at, type, message, trace FROM job_errors "
            "WHERE run_id = $run_id AND attempt = $attempt ORDER BY recorded_at",
            {"run_id": run_id, "attempt": attempt},
        )
        return [ErrorRecord(at=_utc(a), type=t, message=m, trace=tr) for a, t, m, tr in rows]

    def violations_of(self, run_id: str, attempt: int) -> list[ViolationRecord]:
        rows = self._rows(
            "SELECT recorded_at, type, limit_value, actual, policy FROM resource_violations "
            "WHERE run_id = $run_id AND attempt = $attempt ORDER BY recorded_at, seq",
            {"run_id": run_id, "attempt": attempt},
        )
        return [
            ViolationRecord(at=_utc(a), type=t, limit=lim, actual=act, policy=p)
            for a, t, lim, act, p in rows
        ]

    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement (SELECT / EXPLAIN) with bound parameters.

        Raises:
            SinkError: not a single read-only statement, or the query failed.
        """
        check_read_only(query)
        cur = self._execute(query, params)
        try:
            names = [d[0] for d in cur.description] if cur.description else []
            return names, cur.fetchall()
        except duckdb.Error as e:
            raise SinkError(f"query on {self.path} failed: {e}") from e
        finally:
            cur.close()

    def prune(self, older_than: timedelta | str | float) -> int:
        """Delete runs whose latest record (any kind) is older than ``older_than``, with
        their heartbeats, errors and violations. A run still reporting is kept however old
        its last record is (a running run with a long interval is healthy, not stale): a
        running or pending run is deleted only once it is *lost* (its process silent for
        more than ``lost_after`` intervals, the same rule as the ``lost()`` scope).

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
                        "SELECT run_id, attempt FROM jobs "
                        "WHERE COALESCE(last_seen_at, finished_at, started_at) < $cutoff "
                        f"AND NOT {live}",
                        {"cutoff": cutoff, "now": now},
                    )
                    for table in ("heartbeats", "job_errors", "resource_violations", "jobs"):
                        cur.execute(
                            f"DELETE FROM {table} t USING chaperone_doomed d "
                            "WHERE t.run_id = d.run_id AND t.attempt = d.attempt"
                        )
                    found = cur.execute("SELECT count(*) FROM chaperone_doomed").fetchone()
                    cur.execute("DROP TABLE chaperone_doomed")
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        except duckdb.Error as e:
            raise SinkError(f"prune of {self.path} failed: {e}") from e
        finally:
            cur.close()
        return int(found[0]) if found else 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self._store)

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"<LocalSink {self.path} {mode}>"


def check_read_only(query: str) -> None:
    """Raise :class:`SinkError` unless ``query`` is one SELECT/EXPLAIN statement."""
    if not isinstance(query, str) or not query.strip():
        raise SinkError("sink.sql() needs a SQL string")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise SinkError(f"cannot parse SQL: {e}") from e
    if len(statements) != 1:
        raise SinkError(f"sink.sql() runs exactly one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _READ_ONLY_TYPES:
        raise SinkError(
            f"sink.sql() is read-only: {kind} statements are refused (use SELECT; to delete "
            "old runs use sink.prune(older_than))"
        )
    _check_sources(_EXPLAIN.sub("", query, count=1) if kind == "EXPLAIN" else query)


# What user SQL may read: the store's tables and views, CTEs, and table functions that touch
# no file or network. `read_text('/etc/passwd')`, `glob(...)`, `read_csv(...)` and
# `FROM 'some/file.parquet'` would otherwise be readable through the owner's HTTP API.
_STORE_RELATIONS: Final = frozenset(
    {
        "jobs",
        "heartbeats",
        "job_errors",
        "resource_violations",
        "jobs_health",
        "problem_runs",
        "schema_version",
    }
)
_EXPLAIN: Final = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)
_SAFE_TABLE_FUNCTIONS: Final = frozenset({"range", "generate_series", "unnest"})
_METADATA_PREFIXES: Final = ("duckdb_", "pragma_")


def _check_sources(query: str) -> None:
    """Refuse SQL that reads anything but the store (files, URLs, other databases)."""
    with duckdb.connect() as con:  # in-memory: parsing only, nothing is executed
        try:
            raw = con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
        except duckdb.Error as e:
            raise SinkError(f"cannot parse SQL: {e}") from e
    tree = json.loads(raw[0]) if raw else {}
    if tree.get("error"):
        raise SinkError(f"cannot parse SQL: {tree.get('error_message', 'unsupported statement')}")
    refused: list[str] = []

    def walk(node: Any, ctes: frozenset[str]) -> None:
        # ``ctes``: the CTE names in scope here, i.e. defined by this node or an ancestor. A
        # name a CTE defines elsewhere (in a sibling subquery) is not in scope: outside its
        # subquery the same name is a replacement scan of the file it spells.
        if isinstance(node, list):
            for item in node:
                walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        defined = [
            entry["key"].lower()
            for entry in (node.get("cte_map") or {}).get("map", [])
            if isinstance(entry, dict) and isinstance(entry.get("key"), str)
        ]
        if defined:
            ctes = ctes.union(defined)
        kind = node.get("type")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "")).lower()
            if schema not in ("", "main", "information_schema") or (
                schema != "information_schema" and name not in _STORE_RELATIONS and name not in ctes
            ):
                refused.append(f"{schema + '.' if schema else ''}{name}")
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in _SAFE_TABLE_FUNCTIONS and not name.startswith(_METADATA_PREFIXES):
                refused.append(f"{name}()")
        for value in node.values():
            walk(value, ctes)

    walk(tree.get("statements", []), frozenset())
    if refused:
        raise SinkError(
            "sink.sql() reads only the job store (tables jobs, heartbeats, job_errors, "
            "resource_violations and the views jobs_health, problem_runs); refused: "
            + ", ".join(sorted(set(refused)))
        )


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
                    return _remote(owner["url"], policy)
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


__all__ = ["LocalSink", "check_read_only", "open_sink", "sink_error"]
