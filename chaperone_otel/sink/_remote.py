"""A :class:`~chaperone_otel.sink.Sink` that queries a live store through its owner's HTTP API.

While a process owns a DuckDB file (the sink server, or an application with the embedded
sink), no other process can open it, not even read-only. The owner serves the query API on
loopback (:mod:`._api`) and advertises the URL in ``<path>.owner.json``; ``open_sink(path)``
follows it and returns a :class:`RemoteSink`. Every scope works unchanged: a
:class:`~chaperone_otel.sink.JobQuery` is a list of JSON steps, which the owner replays
(validating each) and runs against its connection, so local and remote queries are the same
SQL by construction.

Only the standard library is used (``urllib``): no new dependency for a loopback client.
The owner judges health with *its* policy and clock.

Example::

    from chaperone_otel.sink import open_sink
    with open_sink("http://127.0.0.1:4318") as sink:
        sink.jobs.running().stuck().count()
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, TypeVar

from .._health import DEFAULT_POLICY, HealthPolicy
from ..exceptions import SinkError
from ._api import ARROW_STREAM, dumps, encode_sql_params
from ._query import JobQuery, Sink
from ._results import (
    ErrorRecord,
    HeartbeatRecord,
    JobRecord,
    PruneResult,
    SqlResult,
    ViolationRecord,
    arrow_timestamps,
)
from ._store import sidecar_token


def _run_params(run_id: str, attempt: int, execution_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"run_id": run_id, "attempt": attempt}
    if execution_id is not None:
        params["execution_id"] = execution_id
    return params


__all__ = ["TOKEN_ENV", "OwnerUnreachableError", "RemoteSink", "open_remote"]

TOKEN_ENV: Final = "CHAPERONE_OTEL_SINK_TOKEN"  # noqa: S105 - a variable name, not a secret
"""Environment variable with the bearer token of a sink server started with ``--token``."""


class OwnerUnreachableError(SinkError):
    """The owner's server did not answer at all (refused, reset): it may have just exited."""


_T = TypeVar("_T")
_FOLLOW_TIMEOUT: Final = 10.0
"""Seconds a read keeps following a store whose owner is going away (beyond ``open_sink``'s
own handover wait inside each reopen)."""
_FOLLOW_POLL: Final = 0.05


def _follows_the_store(method: Callable[..., _T]) -> Callable[..., _T]:
    """Retry a read whose owner went away, on whoever holds the store now.

    A sink opened by path (``open_sink(path)`` following the sidecar) meets an owner that
    exits between the open and the query (a cron script ending, an app handing the store
    to another). Then it opens the path again, within ``open_sink``'s handover deadline: a
    new owner's URL is followed from now on; a file now free is read directly for this
    call. A sink opened by URL fails as before."""

    @functools.wraps(method)
    def follow(self: RemoteSink, *args: Any, **kwargs: Any) -> _T:
        deadline = time.monotonic() + _FOLLOW_TIMEOUT
        while True:
            try:
                return method(self, *args, **kwargs)
            except OwnerUnreachableError:
                if self.reopen is None or time.monotonic() > deadline:
                    raise
                now = self.reopen()
            if isinstance(now, RemoteSink):
                if now._base == self._base:
                    time.sleep(_FOLLOW_POLL)  # still the one closing: its lock goes soon
                self._base = self.url = now._base
                self._token = now._token
                now.close()
                continue
            try:
                found: _T = getattr(now, method.__name__)(*args, **kwargs)
            finally:
                now.close()
            return found

    return follow


_ANSWER_MARGIN: Final = 1.0
"""Seconds between the time limit a remote query is given and the time its client gives up
waiting (the owner interrupts it first, and answers why)."""


class RemoteSink(Sink):
    """Queries a store through the query API of the process that owns it.

    Args:
        url: the owner's base URL (``http://127.0.0.1:PORT``).
        token: bearer token, if the owner requires one. Default: the token of the owner's
            sidecar if this process read it (``open_sink(path)`` does: the embedded sink's
            per-process token), else ``$CHAPERONE_OTEL_SINK_TOKEN`` (``sink serve --token``).
        timeout: seconds per HTTP request.
        policy: kept for the :class:`Sink` interface; the owner judges with its own policy.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        policy: HealthPolicy = DEFAULT_POLICY,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SinkError(f"not a query URL: {url!r} (expected http://HOST:PORT)")
        self._base = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.url = self._base
        self.policy = policy
        if token is None:
            token = sidecar_token(self._base) or os.environ.get(TOKEN_ENV)
        self._token = token or None
        self._timeout = timeout
        self._closed = False
        self.path: str | None = None
        self.reopen: Callable[[], Sink] | None = None
        """Opens the store again by path (set by ``open_sink(path)``; see
        :func:`_follows_the_store`)."""

    # ---- transport -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        accept: str = "application/json",
        timeout: float | None = None,
    ) -> bytes:
        if self._closed:
            raise SinkError(f"the remote sink {self.url} is closed")
        url = self._base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = dumps(body)
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http(s) checked in __init__
        try:
            wait = self._timeout if timeout is None else timeout
            with urllib.request.urlopen(request, timeout=wait) as response:  # noqa: S310
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            if e.code == 503:  # the owner is closing (or busy): see _follows_the_store
                raise OwnerUnreachableError(f"{self.url}{path}: HTTP 503: {detail}") from e
            if e.code == 401:
                raise SinkError(
                    f"{self.url} needs a bearer token: pass token= or set {TOKEN_ENV} (a sink "
                    "server's --token); for an application's embedded sink open the store by "
                    "its path, whose PATH.owner.json holds the token (readable only by the "
                    "user running the application)"
                ) from e
            raise SinkError(f"{self.url}{path}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise OwnerUnreachableError(
                f"cannot reach the store's owner at {self.url}: {reason}. Is the sink server "
                "(or the application with the embedded sink) still running?"
            ) from e

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        raw = self._request(method, path, **kwargs)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise SinkError(f"{self.url}{path} answered something that is not JSON") from e

    def info(self) -> dict[str, Any]:
        """The owner's ``/api/info``: store path, PID, URL, version."""
        found: dict[str, Any] = self._json("GET", "/api/info")
        self.path = found.get("path")
        return found

    # ---- Sink -----------------------------------------------------------------------------

    def _query(self, query: JobQuery, terminal: str, **kwargs: Any) -> Any:
        return self._json(
            "POST",
            "/api/query",
            body={"steps": [list(s) for s in query.steps], "terminal": terminal},
            **kwargs,
        )

    @_follows_the_store
    def _fetch(self, query: JobQuery) -> list[JobRecord]:
        # As Arrow, not JSON: the owner's Python work per query is then a few calls, not a
        # dict per record and a JSON encoding. The owner is often an application whose own
        # job is CPU-bound, and every step it takes in Python waits for that job's GIL.
        # Naive again (zero-copy) before to_pylist: Python builds a tz-aware datetime at
        # about twice the cost of a naive one, and from_dict reads naive values as UTC.
        table = arrow_timestamps(self._arrow(query), tz=None)
        return [JobRecord.from_dict(row, sink=self) for row in table.to_pylist()]

    @_follows_the_store
    def _count(self, query: JobQuery) -> int:
        return int(self._query(query, "count")["count"])

    @_follows_the_store
    def _arrow(self, query: JobQuery) -> Any:
        import pyarrow as pa  # noqa: PLC0415

        raw = self._request(
            "POST",
            "/api/query",
            params={"format": "arrow"},
            body={"steps": [list(s) for s in query.steps], "terminal": "all"},
            accept=ARROW_STREAM,
        )
        # UTC timestamps as a local sink's to_arrow() has them (an owner of this version
        # sends them so already).
        return arrow_timestamps(pa.ipc.open_stream(raw).read_all())

    @_follows_the_store
    def remote_sql(self, query: JobQuery) -> tuple[str, dict[str, Any]]:
        """The SQL the owner runs for ``query`` (``JobQuery.sql()`` renders it locally)."""
        found = self._query(query, "sql")
        return found["sql"], found["params"]

    @_follows_the_store
    def heartbeats_of(
        self,
        run_id: str,
        attempt: int,
        *,
        latest: bool = False,
        kind: str | None = None,
        execution_id: str | None = None,
    ) -> list[HeartbeatRecord]:
        params = _run_params(run_id, attempt, execution_id)
        params["latest"] = int(latest)
        if kind is not None:
            params["kind"] = kind
        found = self._json("GET", "/api/heartbeats", params=params)
        return [HeartbeatRecord.from_dict(d) for d in found["heartbeats"]]

    @_follows_the_store
    def errors_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ErrorRecord]:
        params = _run_params(run_id, attempt, execution_id)
        found = self._json("GET", "/api/errors", params=params)
        return [ErrorRecord.from_dict(d) for d in found["errors"]]

    @_follows_the_store
    def violations_of(
        self, run_id: str, attempt: int, *, execution_id: str | None = None
    ) -> list[ViolationRecord]:
        params = _run_params(run_id, attempt, execution_id)
        found = self._json("GET", "/api/violations", params=params)
        return [ViolationRecord.from_dict(d) for d in found["violations"]]

    @_follows_the_store
    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> SqlResult:
        """Run one read-only statement on the owner. Values keep their types (the rows
        travel as Arrow), so timestamps are datetimes as with a local sink.

        ``timeout``, ``max_rows`` and ``max_bytes`` lower the owner's limits for this query,
        as with a local sink. The owner is always asked to stop the query a second before
        this client stops waiting (``timeout``, else the client's own): a query the client
        gave up on must not go on holding a query slot there.
        """
        import pyarrow as pa  # noqa: PLC0415

        wait = self._timeout if timeout is None else min(timeout, self._timeout)
        body: dict[str, Any] = {
            "query": query,
            "params": encode_sql_params(params),
            "timeout": max(wait - _ANSWER_MARGIN, _ANSWER_MARGIN),
        }
        if max_rows is not None:
            body["max_rows"] = max_rows
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        raw = self._request(
            "POST",
            "/api/sql",
            params={"format": "arrow"},
            body=body,
            accept=ARROW_STREAM,
            timeout=wait + _ANSWER_MARGIN,
        )
        table = pa.ipc.open_stream(raw).read_all()
        columns = [str(c) for c in table.column_names]
        data = [col.to_pylist() for col in table.columns]
        rows = [tuple(col[i] for col in data) for i in range(table.num_rows)]
        truncated = (table.schema.metadata or {}).get(b"truncated")
        return SqlResult(columns, rows, truncated.decode() if truncated else None)

    def prune(self, older_than: timedelta | str | float) -> PruneResult:
        """Ask the owner to prune (the sink server allows it; an embedded owner may not).
        Returns the runs it deleted and the schedules it retired, as a local sink does."""
        value = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        found = self._json("POST", "/api/prune", body={"older_than": value})
        return PruneResult(int(found["deleted"]), int(found["schedules_retired"]))

    def forget_schedule(self, name: str) -> bool:
        """Ask the owner to forget the schedule ``name`` (as :meth:`prune`: the sink server
        allows it, with its token if it has one; an embedded owner answers 403)."""
        found = self._json("POST", "/api/schedules/forget", body={"name": name})
        return bool(found["forgotten"])

    def close_run(
        self,
        run_id: str,
        *,
        status: str = "failed",
        reason: str | None = None,
        execution_id: str | None = None,
        attempt: int | None = None,
    ) -> JobRecord:
        """Ask the owner to close a run no process will finish (as :meth:`prune`: the sink
        server allows it, with its token if it has one; an embedded owner answers 403).
        See :meth:`LocalSink.close_run`."""
        body = {
            "run_id": run_id,
            "status": status,
            "reason": reason,
            "execution_id": execution_id,
            "attempt": attempt,
        }
        found = self._json("POST", "/api/close", body=body)
        return JobRecord.from_dict(found["job"], sink=self)

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"<RemoteSink {self.url}>"


def open_remote(
    url: str,
    *,
    policy: HealthPolicy = DEFAULT_POLICY,
    token: str | None = None,
    timeout: float = 30.0,
) -> RemoteSink:
    """Connect to an owner's query API and check that it answers.

    Raises:
        SinkError: the URL is malformed, unreachable, or not a chaperone-otel query API.
    """
    sink = RemoteSink(url, token=token, timeout=timeout, policy=policy)
    info = sink.info()
    if "version" not in info:
        raise SinkError(f"{url} is not a chaperone-otel query API (no /api/info)")
    return sink
