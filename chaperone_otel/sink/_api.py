"""The store's query API over HTTP (JSON), served by whichever process owns the file.

DuckDB lets one process open a store file, and while it does, no other process can even
read it. So the owner — the sink server, or an application running the embedded sink —
serves the same scopes over loopback, and :class:`~chaperone_otel.sink._remote.RemoteSink`
(what ``open_sink(path)`` returns when the file is held by a live owner) speaks to it.

Endpoints (all ``GET`` unless noted; JSON unless asked for Arrow):

``GET /api/jobs``
    Scopes as repeated ``scope=`` flags (``running``, ``stuck``, ``failed`` …), and
    ``name=``, ``class=``, ``queue=``, ``id=``, ``since=`` (``1h``, ``30d`` or ISO 8601),
    ``start=``/``end=`` (between), ``memory_above=`` (bytes or ``512MiB``), ``cpu_above=``,
    ``order_by=``, ``desc=1``, ``limit=``. ``count=1`` returns ``{"count": n}`` only;
    ``format=arrow`` returns the rows as an Arrow IPC stream. Otherwise
    ``{"jobs": [JobRecord.to_dict() ...]}``.
``GET /api/jobs/{run_id}``
    The latest attempt (or ``attempt=N``) with its heartbeats, errors and violations; 404
    when unknown.
``POST /api/sql``
    ``{"query": "...", "params": [...] | {...}}`` → ``{"columns": [...], "rows": [...],
    "truncated": null | "why"}``; read-only (writes, files, URLs and extensions are refused:
    400), interrupted at the owner's time limit, cut at its row/byte limit (``timeout``,
    ``max_rows``, ``max_bytes`` in the body lower them). ``format=arrow`` (query string)
    returns an Arrow IPC stream, with ``truncated`` in the schema metadata.
``POST /api/prune``
    ``{"older_than": "30d"}`` → ``{"deleted": n, "schedules_retired": m}`` (runs deleted,
    schedules retired), where the owner allows writes (the sink server does), else 403.
``POST /api/schedules/forget``
    ``{"name": "nightly"}`` → ``{"forgotten": true | false}``: the schedule, its slots and
    dispatches deleted, and a tombstone kept so that a declaration made before the forget
    and delivered after it is ignored; allowed as prune is.
``POST /api/close``
    ``{"run_id": "ID", "status": "failed" | "cancelled", "reason": "...", "execution_id":
    null | "...", "attempt": null | n}`` → ``{"job": {...}}``: a run no process will finish
    (lost) ended in the store (``sink.close_run``); allowed as prune is.
``GET /api/info``
    ``{"path", "pid", "url", "version"}`` of the owner.

Times are ISO 8601 strings with ``+00:00``. Bad parameters get 400 with ``{"error": ...}``:
every number and time is checked here (finite, and within what a ``datetime`` can hold)
before it reaches a scope, so no value a client sends ends in a 500. Request bodies over
:data:`MAX_BODY` get 413 before they are read whole.

Example::

    app = create_query_app(sink)             # a Starlette app (the store's owner serves it)
    routes = query_routes(lambda: sink)      # or add the routes to another app
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._scopes import FLAG_SCOPES, SCOPES, Arg, ScopeSpec, scope_named
from .._units import EPOCH_MAX, EPOCH_MIN, parse_duration, parse_iso_datetime
from .._version import __version__
from ..exceptions import ConfigurationError, SinkError
from ._query import JobQuery
from ._results import HEARTBEAT_KINDS, JobRecord

__all__ = [
    "FLAG_SCOPES",
    "MAX_BODY",
    "VALUE_SCOPES",
    "DEFAULT_QUERY_SLOTS",
    "DEFAULT_QUERY_WAIT",
    "BodyTooLargeError",
    "QueryGate",
    "apply_scopes",
    "bearer_authorizer",
    "create_query_app",
    "dumps",
    "query_routes",
    "read_body",
]

VALUE_SCOPES: Final = {
    param: spec.name
    for spec in SCOPES
    if spec.arg not in ("none", "range")
    for param in spec.params
}
"""Query parameter → the JobQuery scope it calls with its value (from the scope registry)."""

RANGE_SCOPES: Final = {spec.params: spec.name for spec in SCOPES if spec.arg == "range"}
"""(start parameter, end parameter) → the JobQuery scope they call together."""

SHAPING_PARAMS: Final = ("order_by", "desc", "limit", "count", "format")
"""Parameters that shape the answer rather than select runs."""

ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"

MAX_BODY: Final = 1024 * 1024
"""Largest ``/api/*`` request body, bytes (a query's steps or a SQL text are a few KiB):
a larger one gets 413 before it is read whole, so a client cannot make the owner (perhaps
the user's application) buffer an unbounded body."""

_EPOCH_RANGE: Final = (EPOCH_MIN, EPOCH_MAX)
"""Unix seconds a ``datetime`` can hold (years 1 to 9999)."""


_DURATION_TEXT: Final = re.compile(r"^\s*[0-9.]+\s*[a-zA-Z]+\s*$")
"""Looks like an age (``30d``): :func:`duration_seconds` checks it reaches no further back
than the calendar."""


class _BadRequest(ValueError):
    pass


class BodyTooLargeError(_BadRequest):
    """A request body over the limit (413; the rest of it is not read)."""


async def read_body(request: Request, limit: int, *, keep: bool = True) -> bytes:
    """The body as sent, refused once it is larger than ``limit`` bytes: by its declared
    ``Content-Length`` before anything is read, else as it streams in (a chunked body).

    Starlette's ``request.body()`` reads everything into memory first, and neither
    Starlette nor uvicorn has a body limit of its own, hence this loop.

    Raises:
        BodyTooLargeError: the body is over ``limit``.
    """
    too_large = BodyTooLargeError(f"request body over {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        if keep:
            chunks += chunk
    return bytes(chunks)


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    try:  # Decimal, UUID, numpy scalars …
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity: they become null rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """JSON bytes for API responses (datetimes as ISO 8601 UTC, NaN as null)."""
    return json.dumps(
        _clean(value), default=_default, allow_nan=False, separators=(",", ":")
    ).encode()


_PARAM_TYPE: Final = "$type"


def encode_sql_params(params: Any) -> Any:
    """SQL parameters as JSON for ``/api/sql``: datetimes, dates and timedeltas are tagged
    (``{"$type": "datetime", "value": iso}``) so the owner binds them with their own types.
    Sent as ISO strings they would bind as VARCHAR, and DuckDB's cast of a string to
    TIMESTAMP drops its UTC offset: the same ``sink.sql()`` would answer differently through
    a remote sink than locally."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {str(k): _encode_param(v) for k, v in params.items()}
    return [_encode_param(v) for v in params]


def _encode_param(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {_PARAM_TYPE: "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {_PARAM_TYPE: "date", "value": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_PARAM_TYPE: "timedelta", "value": value.total_seconds()}
    return value


def decode_sql_params(params: Any) -> Any:
    """The inverse of :func:`encode_sql_params` (a malformed tag is a 400)."""
    if params is None:
        return None
    if isinstance(params, dict):
        return {k: _decode_param(v) for k, v in params.items()}
    return [_decode_param(v) for v in params]


def _decode_param(value: Any) -> Any:
    if not (isinstance(value, dict) and _PARAM_TYPE in value):
        return value
    kind, raw = value.get(_PARAM_TYPE), value.get("value")
    try:
        if kind == "datetime" and isinstance(raw, str):
            return dt.datetime.fromisoformat(raw)
        if kind == "date" and isinstance(raw, str):
            return dt.date.fromisoformat(raw)
        if kind == "timedelta" and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return dt.timedelta(seconds=raw)
    except (ValueError, OverflowError) as e:
        raise _BadRequest(f"bad {kind} parameter {raw!r}: {e}") from e
    raise _BadRequest(
        f"unknown typed parameter {value!r}: $type must be datetime, date or timedelta"
    )


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def epoch_seconds(value: float, what: str) -> float:
    """``value`` as Unix seconds a datetime can hold, else a 400 that says the range.

    Raises:
        ValueError: not finite, or outside years 1 to 9999.
    """
    lo, hi = _EPOCH_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _BadRequest(
            f"{what}={value!r} is out of range: use Unix seconds from {lo:.0f} to {hi:.0f} "
            "(years 1 to 9999), an ISO 8601 time or an age such as 1h"
        )
    return value


def duration_seconds(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` (seconds, or ``"30d"``) as a positive age (or 0, ``allow_zero``) that can be
    subtracted from now.

    Raises:
        ValueError: not a positive duration, or longer than the calendar reaches back.
    """
    try:
        seconds = parse_duration(value, what=what, allow_zero=allow_zero)
    except ConfigurationError as e:
        raise _BadRequest(str(e)) from e
    try:
        dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    except OverflowError:
        raise _BadRequest(
            f"{what}={value!r} reaches back before year 1: use a shorter duration such as 30d"
        ) from None
    return seconds


def _time(value: str, what: str) -> dt.datetime | str:
    try:
        parsed = parse_iso_datetime(value)
    except ValueError:
        number = _float(value)
        if number is not None:
            return dt.datetime.fromtimestamp(epoch_seconds(number, what), dt.timezone.utc)
        if what in ("since", "until") and _DURATION_TEXT.match(value):
            # Too long an age is a 400 here, not an overflow; 0 (now) is the scope's to judge.
            duration_seconds(value, what, allow_zero=True)
        return value  # "1h", "30d": the scope parses it (and says what is wrong otherwise)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _number(value: str, what: str) -> int | float | str:
    try:
        return int(value)
    except ValueError:
        number = _float(value)
        if number is None:
            return value  # "512MiB": the scope parses it
        if not math.isfinite(number):
            raise _BadRequest(f"{what}={value!r} must be a finite number") from None
        return number


def _integer(raw: str, what: str, *, minimum: int) -> int:
    """A query-string integer in ``[minimum, 2**63)`` (DuckDB's BIGINT), else a 400."""
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{what} must be an integer, got {raw!r}") from None
    if not minimum <= value < 2**63:
        raise _BadRequest(f"{what} must be an integer from {minimum} to {2**63 - 1}, got {raw}")
    return value


def _value(arg: Arg, raw: str, what: str) -> Any:
    """An HTTP parameter's text as the scope's argument (the scope validates the rest)."""
    if arg in ("since", "range"):
        return _time(raw, what)
    if arg in ("bytes", "percent"):
        return _number(raw, what)
    return raw


def _call(query: JobQuery, spec: ScopeSpec, *args: Any) -> JobQuery:
    method: Callable[..., JobQuery] = getattr(query, spec.name)
    return method(*args)


def apply_scopes(query: JobQuery, params: Mapping[str, Sequence[str]]) -> JobQuery:
    """Apply query-string parameters (``scope=``, ``name=`` …) to a JobQuery.

    The parameters are those of the scope registry (:data:`~._scopes.SCOPES`): ``scope=NAME``
    for an argument-free scope, a scope's own parameter otherwise, plus the shaping ones.

    Args:
        query: a JobQuery (``sink.jobs``).
        params: parameter name → values, as parsed from the query string.

    Raises:
        ValueError: unknown scope or parameter, or a bad value.
    """
    known = {p for spec in SCOPES for p in spec.params} | set(SHAPING_PARAMS)
    unknown = sorted(set(params) - known)
    if unknown:
        raise _BadRequest(f"unknown parameter(s): {', '.join(unknown)}")
    for scope in params.get("scope", ()):
        for raw_name in scope.split(","):
            name = raw_name.strip()
            if name not in FLAG_SCOPES:
                raise _BadRequest(f"unknown scope {name!r}; choose from {', '.join(FLAG_SCOPES)}")
            query = _call(query, scope_named(name))
    for spec in SCOPES:
        if spec.arg == "none":
            continue
        if spec.arg == "range":
            start_param, end_param = spec.params
            start, end = params.get(start_param), params.get(end_param)
            if start or end:
                if not (start and end):
                    raise _BadRequest(f"{spec.name} needs both {start_param}= and {end_param}=")
                start_value = _value(spec.arg, start[-1], start_param)
                end_value = _value(spec.arg, end[-1], end_param)
                query = _call(query, spec, start_value, end_value)
            continue
        for raw in params.get(spec.stem, ()):
            query = _call(query, spec, _value(spec.arg, raw, spec.stem))
    if params.get("order_by"):
        desc = (params.get("desc") or ["0"])[-1].lower() in ("1", "true", "yes")
        query = query.order_by(params["order_by"][-1], desc=desc)
    if params.get("limit"):
        query = query.limit(_integer(params["limit"][-1], "limit", minimum=0))
    return query


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _arrow_response(table: Any) -> Response:
    import pyarrow as pa  # noqa: PLC0415

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)


def _writes_refused(what: str, instead: str) -> Response:
    """The 403 of an owner that serves no writes over HTTP (an application's embedded sink:
    ``allow_prune`` is the sink server's)."""
    return _JSON(
        {"error": f"this owner does not allow {what} over HTTP; {instead}"}, status_code=403
    )


def _detail(record: JobRecord) -> dict[str, Any]:
    data: dict[str, Any] = dict(record.to_dict())
    data["heartbeats"] = [h.to_dict() for h in record.heartbeats()]
    data["errors"] = [e.to_dict() for e in record.errors]
    data["resource_violations"] = [v.to_dict() for v in record.resource_violations]
    return data


def bearer_authorizer(token: str | None) -> Callable[[Request], bool] | None:
    """The one bearer-token check of both servers: a request is authorized when it carries
    ``Authorization: Bearer <token>`` (compared in constant time). None without a token.

    Raises:
        ValueError: ``token`` is empty or blank (that would turn auth off silently), or
            starts or ends with whitespace (HTTP strips it, so no request could match).
    """
    if token is None:
        return None
    if not token.strip():
        raise ValueError(
            "the bearer token is empty: give a non-empty token (e.g. `openssl rand -hex 32`), "
            "or none at all to serve loopback without auth"
        )
    if token != token.strip():
        raise ValueError("the bearer token must not start or end with whitespace")
    expected = token.encode()

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected)

    return authorized


def _unauthorized() -> Response:
    return _JSON(
        {"error": "missing or wrong bearer token"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="chaperone-otel"'},
    )


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY)
    try:
        payload = json.loads(raw)
    except ValueError as e:
        raise _BadRequest(f"body must be JSON: {e}") from e
    except RecursionError as e:  # [[[[…]]]]: the decoder's depth is the interpreter's
        raise _BadRequest("body must be JSON nested less deeply") from e
    if not isinstance(payload, dict):
        raise _BadRequest("body must be a JSON object")
    return payload


def _run_key(request: Request) -> tuple[str, int, str | None]:
    run_id = request.query_params.get("run_id")
    attempt = request.query_params.get("attempt", "1")
    if not run_id:
        raise _BadRequest("run_id= is required")
    execution = request.query_params.get("execution_id")  # absent: every execution
    return run_id, _integer(attempt, "attempt", minimum=1), execution


def _sql_arrow(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    """The rows as an Arrow table, each column typed by Arrow from its Python values. A
    column Arrow cannot take so (a ``MAP`` with integer keys, a ``HUGEINT`` past 64 bits)
    travels as text, rather than failing the whole query with a 400 that a local sink
    would not give."""
    import pyarrow as pa  # noqa: PLC0415

    arrays = []
    for i in range(len(columns)):
        values = [row[i] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    return pa.Table.from_arrays(arrays, names=list(columns))


DEFAULT_QUERY_SLOTS: Final = 4
"""Queries of the API running at once, at most (each on its own thread)."""

DEFAULT_QUERY_WAIT: Final = 2.0
"""Seconds a query waits for a slot before it is refused (503 + ``Retry-After``)."""


class QueryGate:
    """Bounded concurrency for the query API, apart from ingest: at most ``slots`` handlers
    run at once, on threads of their own limiter (never the shared pool that ingest and
    ``/metrics`` use); one that finds no slot within ``wait`` seconds gets 503 +
    ``Retry-After``. 50 concurrent long queries used to take the 40-thread pool, and ingest
    and ``/metrics`` with it.

    Args:
        slots: handlers at once. wait: seconds to wait for a slot. retry_after: the
            ``Retry-After`` of the 503, seconds.
    """

    def __init__(
        self,
        slots: int = DEFAULT_QUERY_SLOTS,
        wait: float = DEFAULT_QUERY_WAIT,
        retry_after: int = 1,
    ) -> None:
        if slots < 1 or wait < 0:
            raise ValueError("slots must be >= 1 and wait >= 0")
        self.slots = slots
        self.wait = wait
        self.retry_after = retry_after
        self._semaphore: anyio.Semaphore | None = None  # made in the server's event loop
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, handler: Callable[..., Response], *args: Any) -> Response:
        """``handler(*args)`` on a query thread, or a 503 when no slot frees in time."""
        if self._semaphore is None or self._limiter is None:
            self._semaphore = anyio.Semaphore(self.slots)
            self._limiter = anyio.CapacityLimiter(self.slots)
        acquired = False
        with anyio.move_on_after(self.wait):
            await self._semaphore.acquire()
            acquired = True
        if not acquired:
            return _JSON(
                {"error": f"too many queries at once ({self.slots} running); retry later"},
                status_code=503,
                headers={"Retry-After": str(self.retry_after)},
            )
        try:
            return await anyio.to_thread.run_sync(lambda: handler(*args), limiter=self._limiter)
        finally:
            self._semaphore.release()


def query_routes(
    sink: Callable[[], Any],
    *,
    authorize: Callable[[Request], bool] | None = None,
    url: Callable[[], str | None] | None = None,
    allow_prune: bool = False,
    gate: QueryGate | None = None,
    closer: Callable[[], Any] | None = None,
) -> list[BaseRoute]:
    """The query API's routes, to add to an existing Starlette app.

    Args:
        gate: bounds how many of their handlers run at once (a new :class:`QueryGate`
            with the defaults when not given).
        sink: returns the (local) Sink to query; called per request, so it may open lazily.
        authorize: returns False to answer 401 (the server's bearer-token check).
        url: returns this endpoint's base URL for ``/api/info``.
        allow_prune: serve the writes, ``POST /api/prune``, ``POST /api/schedules/forget``
            and ``POST /api/close`` (the sink must be writable); else they answer 403.
        closer: returns the writable Sink ``POST /api/close`` closes runs on, where prune
            is not allowed (an application's embedded sink: a close is one record of a
            run, as the ``/api/records`` its forwarders send, never a deletion).
    """
    gate = gate or QueryGate()

    def endpoint(
        handler: Callable[[Request, dict[str, Any]], Response], *, body: bool = False
    ) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            if authorize is not None and not authorize(request):
                return _unauthorized()
            if body and request.headers.get("content-type", "").split(";")[0].strip() != (
                "application/json"
            ):
                # A browser's "simple" cross-site POST cannot send application/json: requiring
                # it keeps a web page from driving /api/sql or /api/prune on a loopback sink.
                return _JSON({"error": "Content-Type must be application/json"}, status_code=415)
            try:
                payload = await _json_body(request) if body else {}
                return await gate.run(handler, request, payload)
            except BodyTooLargeError as e:
                # Connection: close: the rest of the body is not read, so the connection
                # cannot carry another request.
                return _JSON({"error": str(e)}, status_code=413, headers={"Connection": "close"})
            except (_BadRequest, ValueError, TypeError, KeyError) as e:
                return _JSON({"error": str(e) or type(e).__name__}, status_code=400)
            except OverflowError as e:
                # A value the checks above let through (e.g. a replayed step) that no
                # datetime can hold: still the client's value, so a 400, never a 500.
                return _JSON({"error": f"a value is out of range: {e}"}, status_code=400)
            except SinkError as e:
                if getattr(sink(), "stopping", False):  # the owner is closing: ask elsewhere
                    return _JSON({"error": str(e)}, status_code=503, headers={"Retry-After": "1"})
                return _JSON({"error": str(e)}, status_code=400)

        return wrapped

    def respond(query: JobQuery, terminal: str, fmt: str) -> Response:
        if terminal == "count":
            return _JSON({"count": query.count()})
        if terminal == "sql":
            text, params = query.sql()
            return _JSON({"sql": text, "params": params})
        if terminal != "all":
            raise _BadRequest(f"unknown terminal {terminal!r}; use all, count or sql")
        if fmt == "arrow":
            return _arrow_response(query.to_arrow())
        return _JSON({"jobs": [r.to_dict() for r in query.all()]})

    def jobs(request: Request, _payload: dict[str, Any]) -> Response:
        params = _params(request)
        query = apply_scopes(sink().jobs, params)
        terminal = "count" if (params.get("count") or ["0"])[-1] in ("1", "true") else "all"
        return respond(query, terminal, (params.get("format") or ["json"])[-1])

    def query(request: Request, payload: dict[str, Any]) -> Response:
        steps = payload.get("steps", [])
        if not isinstance(steps, list):
            raise _BadRequest("steps must be a list")
        q = JobQuery.replay(sink(), steps)
        return respond(
            q, str(payload.get("terminal", "all")), request.query_params.get("format", "json")
        )

    def job(request: Request, _payload: dict[str, Any]) -> Response:
        run_id = request.path_params["run_id"]
        raw_attempt = request.query_params.get("attempt")
        s = sink()
        if raw_attempt is None:
            record = s.job(run_id)
        else:
            attempt = _integer(raw_attempt, "attempt", minimum=1)
            found = [r for r in s.jobs.with_id(run_id).all() if r.attempt == attempt]
            record = found[0] if found else None
        if record is None:
            return _JSON({"error": f"no run {run_id!r}"}, status_code=404)
        return _JSON({"job": _detail(record)})

    def heartbeats(request: Request, _payload: dict[str, Any]) -> Response:
        run_id, attempt, execution = _run_key(request)
        latest = request.query_params.get("latest", "0") in ("1", "true")
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in HEARTBEAT_KINDS:
            raise _BadRequest(f"kind must be one of {', '.join(HEARTBEAT_KINDS)}, not {kind!r}")
        found = sink().heartbeats_of(
            run_id, attempt, latest=latest, kind=kind, execution_id=execution
        )
        return _JSON({"heartbeats": [h.to_dict() for h in found]})

    def errors(request: Request, _payload: dict[str, Any]) -> Response:
        run_id, attempt, execution = _run_key(request)
        found = sink().errors_of(run_id, attempt, execution_id=execution)
        return _JSON({"errors": [e.to_dict() for e in found]})

    def violations(request: Request, _payload: dict[str, Any]) -> Response:
        run_id, attempt, execution = _run_key(request)
        found = sink().violations_of(run_id, attempt, execution_id=execution)
        return _JSON({"violations": [v.to_dict() for v in found]})

    def sql(request: Request, payload: dict[str, Any]) -> Response:
        text = payload.get("query")
        if not isinstance(text, str):
            raise _BadRequest('body must be {"query": "...", "params": [...]}')
        params = payload.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            raise _BadRequest("params must be a list or an object")
        # A client may lower the owner's limits for its query (never raise them).
        limits: dict[str, float] = {}
        for key in ("timeout", "max_rows", "max_bytes"):
            value = payload.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise _BadRequest(f"{key} must be a positive number")
            limits[key] = value if key == "timeout" else int(value)
        store = sink()
        try:
            result = store.sql(text, decode_sql_params(params), **limits)
        except SinkError as e:
            if getattr(store, "stopping", False):  # interrupted by shutdown: retry elsewhere
                return _JSON({"error": str(e)}, status_code=503, headers={"Retry-After": "1"})
            raise
        columns, rows = result
        truncated = getattr(result, "truncated", None)
        if request.query_params.get("format") == "arrow":
            table = _sql_arrow(columns, rows)
            if truncated:
                table = table.replace_schema_metadata({"truncated": truncated})
            return _arrow_response(table)
        return _JSON(
            {"columns": list(columns), "rows": [list(r) for r in rows], "truncated": truncated}
        )

    def prune(request: Request, payload: dict[str, Any]) -> Response:
        if not allow_prune:
            return _writes_refused("prune", "prune in the owning process")
        older_than = payload.get("older_than")
        if not isinstance(older_than, (str, int, float)) or isinstance(older_than, bool):
            raise _BadRequest('body must be {"older_than": "30d"}')
        pruned = sink().prune(duration_seconds(older_than, "older_than"))
        return _JSON({"deleted": int(pruned), "schedules_retired": pruned.schedules_retired})

    def forget(request: Request, payload: dict[str, Any]) -> Response:
        if not allow_prune:
            return _writes_refused(
                "forgetting a schedule", "call sink.forget_schedule(name) in the owning process"
            )
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise _BadRequest('body must be {"name": "SCHEDULE"}')
        return _JSON({"forgotten": sink().forget_schedule(name)})

    def close_run(request: Request, payload: dict[str, Any]) -> Response:
        if not allow_prune and closer is None:
            return _writes_refused(
                "closing a run", "call sink.close_run(run_id) in the owning process"
            )
        run_id, status = payload.get("run_id"), payload.get("status", "failed")
        reason, execution = payload.get("reason"), payload.get("execution_id")
        if not isinstance(run_id, str) or not run_id or not isinstance(status, str):
            raise _BadRequest('body must be {"run_id": "ID", "status": "failed"}')
        if not all(v is None or isinstance(v, str) for v in (reason, execution)):
            raise _BadRequest("reason and execution_id must be strings")
        raw_attempt = payload.get("attempt")
        attempt = None if raw_attempt is None else _integer(str(raw_attempt), "attempt", minimum=1)
        target = sink() if allow_prune or closer is None else closer()
        closed = target.close_run(
            run_id, status=status, reason=reason, execution_id=execution, attempt=attempt
        )
        return _JSON({"job": closed.to_dict()})

    def info(request: Request, _payload: dict[str, Any]) -> Response:
        s = sink()
        return _JSON(
            {
                "path": getattr(s, "path", None),
                "pid": os.getpid(),
                "url": url() if url is not None else None,
                "version": __version__,
            }
        )

    return [
        Route("/api/jobs", endpoint(jobs), methods=["GET"]),
        Route("/api/jobs/{run_id:path}", endpoint(job), methods=["GET"]),
        Route("/api/query", endpoint(query, body=True), methods=["POST"]),
        Route("/api/heartbeats", endpoint(heartbeats), methods=["GET"]),
        Route("/api/errors", endpoint(errors), methods=["GET"]),
        Route("/api/violations", endpoint(violations), methods=["GET"]),
        Route("/api/sql", endpoint(sql, body=True), methods=["POST"]),
        Route("/api/prune", endpoint(prune, body=True), methods=["POST"]),
        Route("/api/schedules/forget", endpoint(forget, body=True), methods=["POST"]),
        Route("/api/close", endpoint(close_run, body=True), methods=["POST"]),
        Route("/api/info", endpoint(info), methods=["GET"]),
    ]


def create_query_app(
    sink: Any,
    *,
    authorize: Callable[[Request], bool] | None = None,
    url: Callable[[], str | None] | None = None,
    allow_prune: bool = False,
    routes: Sequence[BaseRoute] = (),
    closer: Callable[[], Any] | None = None,
) -> Starlette:
    """A Starlette app serving the query API for ``sink`` (the embedded sink serves this).

    Args:
        sink: a Sink, or a zero-argument callable returning one (opened lazily).
        authorize: returns False to answer 401.
        url: returns the served base URL (for ``/api/info``).
        routes: further routes (the embedded owner's ``/api/records``).
        closer: the writable Sink ``POST /api/close`` uses (see :func:`query_routes`).
    """
    getter: Callable[[], Any] = (
        sink if callable(sink) and not hasattr(sink, "jobs") else (lambda: sink)
    )
    return Starlette(
        routes=[
            *query_routes(
                getter, authorize=authorize, url=url, allow_prune=allow_prune, closer=closer
            ),
            *routes,
        ]
    )
