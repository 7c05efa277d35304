"""Records from the other processes of a host, forwarded to the one that owns the store.

DuckDB lets one process open a store file. When several processes on one host record into
the same path (two apps, overlapping cron scripts, the forked workers of a prefork server),
the first owns the file (:class:`~chaperone_otel.sink._owner.StoreOwner`) and every other
one forwards its lifecycle records to the owner over loopback: ``POST /api/records`` on the
owner's query server, with the bearer token of its sidecar (a file only the same user can
read). The owner answers 200 only once the records are committed, so a forwarder drops a
batch from its memory only when it is stored; on any failure it keeps it and tries again,
or takes the file over when the owner has gone (``export/_sink.py`` does that part).

This module is the wire: :func:`encode_records` / :func:`decode_records` (JSON: a record is
a handful of scalars and a flat attribute map) and :func:`records_route` (the owner's end),
and :func:`post_records` (the forwarder's end, ``http.client``: one keep-alive connection to
a loopback port needs nothing more).

Example::

    status, reason = post_records(conn, token, encode_records(batch))
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._events import LifecycleRecord
from ..exceptions import SinkError
from ._api import BodyTooLargeError, read_body
from ._writer import RecordsDroppedError, Writer, committed_within

__all__ = [
    "FORWARD_MAX_BATCH",
    "FORWARD_MAX_BODY",
    "RECORDS_PATH",
    "decode_records",
    "encode_records",
    "post_records",
    "records_route",
]

RECORDS_PATH: Final = "/api/records"
FORWARD_MAX_BODY: Final = 8 * 1024 * 1024
"""Largest forwarded body the owner reads, bytes (a forwarder's batch stays well below)."""
FORWARD_MAX_BATCH: Final = 500
"""Records per forwarded request at most (a few hundred KiB)."""
_ACK_TIMEOUT: Final = 10.0
"""Seconds the owner waits for a forwarded batch's commit before answering 503."""


def _wire(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def encode_records(records: Sequence[LifecycleRecord]) -> bytes:
    """The JSON body of a forwarded batch (what :func:`decode_records` reads back). A
    non-finite float is left out (JSON has none; the store keeps such a value as NULL)."""
    return json.dumps(
        [
            [
                r.event_name,
                r.timestamp,
                {k: _wire(v) for k, v in r.attributes.items() if _finite(v)},
                r.trace_id,
                r.span_id,
                r.severity,
                r.body,
            ]
            for r in records
        ],
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def _attribute(value: Any) -> Any:
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"not an attribute value: {value!r}")


def decode_records(body: bytes) -> list[LifecycleRecord]:
    """The records of a forwarded batch.

    Raises:
        ValueError: the body is not a batch :func:`encode_records` makes.
    """
    rows = json.loads(body)
    if not isinstance(rows, list):
        raise ValueError("a forwarded batch is a JSON array of records")
    out: list[LifecycleRecord] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 7):
            raise ValueError("a forwarded record is an array of 7 fields")
        name, ts, attrs, trace_id, span_id, severity, body_text = row
        if not isinstance(name, str) or not isinstance(attrs, dict):
            raise ValueError("a forwarded record needs an event name and an attribute map")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise ValueError(f"not a timestamp: {ts!r}")
        for ident in (trace_id, span_id):
            if isinstance(ident, bool) or not isinstance(ident, int) or ident < 0:
                raise ValueError(f"not a trace or span id: {ident!r}")
        out.append(
            LifecycleRecord(
                event_name=name,
                timestamp=float(ts),
                attributes={str(k): _attribute(v) for k, v in attrs.items()},
                trace_id=trace_id,
                span_id=span_id,
                severity=str(severity),
                body=str(body_text),
            )
        )
    return out


def records_route(
    writer: Callable[[], Writer | None], authorize: Callable[[Request], bool] | None
) -> Route:
    """The owner's ``POST /api/records``: 200 once the batch is committed; 400 for a batch
    that cannot be stored (resending cannot help), 413 too large, 401 without the token,
    and 503 + ``Retry-After`` for what may pass on a retry (queue full, a slow or failed
    commit, shutting down)."""

    async def receive(request: Request) -> Response:
        if authorize is not None and not authorize(request):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            records = decode_records(await read_body(request, FORWARD_MAX_BODY))
        except BodyTooLargeError as e:
            return JSONResponse({"error": str(e)}, status_code=413, headers={"Connection": "close"})
        except ValueError as e:
            return JSONResponse({"error": f"not a forwarded batch: {e}"}, status_code=400)
        retry = {"Retry-After": "1"}
        live = writer()
        if live is None:
            return JSONResponse({"error": "the owner is closing"}, status_code=503, headers=retry)
        try:
            ticket = live.submit(records)
            if ticket is None:
                return JSONResponse({"error": "writer queue full"}, status_code=503, headers=retry)
            if not await committed_within(live, ticket, _ACK_TIMEOUT):
                return JSONResponse({"error": "commit too slow"}, status_code=503, headers=retry)
        except RecordsDroppedError as e:
            status = 400 if e.permanent else 503
            return JSONResponse({"error": str(e)}, status_code=status, headers=retry)
        except SinkError as e:  # the writer closed under us: shutting down
            return JSONResponse({"error": str(e)}, status_code=503, headers=retry)
        return JSONResponse({"stored": len(records)})

    return Route(RECORDS_PATH, receive, methods=["POST"])


def post_records(conn: http.client.HTTPConnection, token: str | None, body: bytes) -> int:
    """Send one batch on ``conn``; the HTTP status (200: committed).

    Raises:
        OSError, http.client.HTTPException: the owner cannot be reached or went away.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", RECORDS_PATH, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status
