"""uvicorn's HTTP/1.1 protocol with read deadlines and a connection cap (slowloris).

uvicorn (0.55, h11) has ``timeout_keep_alive`` for an idle connection *between* requests,
but no deadline for reading a request's headers or body, and ``limit_concurrency`` answers
503 only once a request's headers have arrived: 1,100 connections that each send half a
request hold 1,100 file descriptors for ever, and under a 1024-descriptor limit ``accept``
fails (EMFILE) for everyone, ``/healthz`` included. This protocol adds, per connection:

* a **header deadline**: a request's headers (from the first byte, or from the connection
  being made) must arrive within ``header_timeout`` seconds;
* a **body deadline**: its body within ``body_timeout`` seconds of the headers;
* a **connection cap**: beyond ``max_connections`` (kept below the process's descriptor
  limit), a new connection evicts the oldest one that is not in a request (half-sent
  headers, or idle keep-alive); when every connection is inside a request, the new one is
  closed instead.

A connection past its deadline is closed (an app still waiting for the body sees a
disconnect). Imported only when a server starts (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "ACCEPT_BACKLOG",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "GuardedH11Protocol",
    "accept_backlog",
    "connection_cap",
    "protocol_class",
]

DEFAULT_HEADER_TIMEOUT: Final = 5.0
"""Seconds a client has to send a request's headers."""

DEFAULT_BODY_TIMEOUT: Final = 60.0
"""Seconds a client has to send a request's body once its headers are in (8 MiB at ~1 Mbit/s)."""

DEFAULT_MAX_CONNECTIONS: Final = 1000
"""Open connections at most (lowered to the descriptor limit minus a reserve)."""

ACCEPT_BACKLOG: Final = 128
"""uvicorn's ``backlog`` under a usual descriptor limit: asyncio accepts up to this many
connections per wake-up before any of their protocols runs, so the cap must leave room for
three such batches (see :func:`accept_backlog`)."""

_FD_BASE: Final = 64
"""Descriptors kept for the store, DuckDB, logs and threads."""

_MIN_BACKLOG: Final = 8


def _soft_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def accept_backlog(soft: int | None = None) -> int:
    """The listen backlog, which is also how many connections asyncio accepts per wake-up:
    :data:`ACCEPT_BACKLOG`, smaller under a low descriptor limit (``soft``, default the
    process's), so that the three batches :func:`connection_cap` leaves room for do not take
    every descriptor (macOS's default soft limit is 256: three batches of 128 left one
    connection)."""
    if soft is None:
        soft = _soft_limit()
    if soft is None:
        return ACCEPT_BACKLOG
    return max(_MIN_BACKLOG, min(ACCEPT_BACKLOG, (soft - _FD_BASE) // 7))


def connection_cap(wanted: int = DEFAULT_MAX_CONNECTIONS, soft: int | None = None) -> int:
    """``wanted``, lowered so that the process's soft descriptor limit (``soft``, default the
    process's) is never reached: 1024 descriptors allow 576 connections, 256 allow 111.

    The cap leaves free 64 descriptors for the store, DuckDB, logs and threads, and three
    accept batches (:func:`accept_backlog`). asyncio makes a batch's transports one loop
    pass after accepting it and calls their ``connection_made`` (where the cap is applied)
    one pass later, and a connection evicted there closes its socket one pass after that:
    while a batch is accepted, the batch before it is not counted yet and the evictions of
    the one before that are still open. With two batches left free, 1,100 half-sent
    connections under a 1024-descriptor limit made ``accept`` fail with EMFILE in about 1
    run of 4 (asyncio then pauses accepting for a second).
    """
    if soft is None:
        soft = _soft_limit()
    if soft is None:
        return wanted
    return max(1, min(wanted, soft - _FD_BASE - 3 * accept_backlog(soft)))


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with read deadlines and a connection cap (see the module doc). The
    settings are class attributes, set by :func:`protocol_class`."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    _deadline: asyncio.TimerHandle | None = None
    _reading: str = ""  # "headers", "body" or "" (not reading a request)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            self.transport.abort()  # every connection is inside a request: refuse this one
            return
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ---- deadlines ----------------------------------------------------------------------

    def _track(self) -> None:
        """After bytes arrived: which part of a request is still to come."""
        state = self.conn.their_state
        if state is h11.IDLE:  # (part of) the next request's headers
            if self._reading != "headers":
                self._arm("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if self._reading != "body":
                self._arm("body", self.body_timeout)
        else:  # the request is in (DONE), or the connection is closing
            self._disarm()

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._reading = what
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._reading = ""

    def _expired(self) -> None:
        self._deadline = None
        if self._reading and not self.transport.is_closing():
            self.logger.debug("closing a connection: request %s not in time", self._reading)
            self.transport.close()

    # ---- the cap ------------------------------------------------------------------------

    def _idle(self) -> bool:
        """Not inside a request: waiting for (the rest of) headers, or idle keep-alive."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _evict_one(self) -> bool:
        """Close the oldest other connection that is not inside a request (the set keeps
        no order, so the one with the earliest deadline goes)."""
        victims = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()
        ]
        if not victims:
            return False
        oldest = min(victims, key=lambda c: c._deadline.when() if c._deadline else 0.0)
        oldest.transport.abort()
        self.connections.discard(oldest)
        return True


def protocol_class(
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_connections: int | None = None,
) -> type[Any]:
    """A :class:`GuardedH11Protocol` with these settings (uvicorn's ``Config(http=…)``);
    ``max_connections`` defaults to :func:`connection_cap`."""
    return type(
        "GuardedH11",
        (GuardedH11Protocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections or connection_cap(),
        },
    )
