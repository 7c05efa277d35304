"""The owner of a store file in this process: everything that owning it means, in one place.

DuckDB lets one process open a store file, and while it does no other process can even read
it (see :mod:`._store`). So the process that writes a store also serves it: the embedded sink
(``configure(sink=path)``, :mod:`chaperone_otel.export._sink`) and ``chaperone-otel sink
serve`` (:mod:`._server`) both own their file through a :class:`StoreOwner`, which

1. acquires the file for writing (this process's one connection, migrated to the current
   schema),
2. starts the store's one :class:`~chaperone_otel.sink._writer.Writer`,
3. opens a view over the live store for queries in this process (a
   :class:`~chaperone_otel.sink._local.LocalSink` sharing the connection),
4. serves the query API on loopback (:class:`BackgroundServer`; the sink server passes its
   own app, which also takes OTLP), with ``POST /api/records`` for the records the host's
   other processes forward to it (:mod:`._forward`), and
5. advertises that URL beside the file (``<path>.owner.json``, mode 0600) so
   ``open_sink(path)`` and the CLI in another process follow it;

The query API it serves itself (the embedded sink's) requires a bearer token made for this
process (:attr:`StoreOwner.token`, random) and written into the sidecar: a process of the
same user reads it there and sends it; another local user can reach the port but not read
the file, so gets 401. (``sink serve`` passes its own app, authorized by its ``--token``.)

and :meth:`StoreOwner.close` undoes it in the reverse order: stop advertising, stop serving
(in-flight requests finish), commit everything queued, close the view, release the file.
Between the first step and the last the file is locked with no advertisement: a new reader
is never sent to a server that is going away, and ``open_sink`` retries such a lock (a
handover) until the file is released, then opens it.

Lifecycle: ``open`` (after construction: store, writer, view) → ``serving`` (after
:meth:`~StoreOwner.serve`) → ``closing`` (while :meth:`~StoreOwner.close` runs: the writer
still takes the records of requests in flight) → ``closed``. Construction either completes
or leaves nothing behind (no sidecar, file released); :meth:`~StoreOwner.close` is
idempotent and works from any state.

Example::

    owner = StoreOwner("jobs.duckdb")
    owner.serve()                       # query API on 127.0.0.1:<free port>, sidecar written
    owner.writer.submit(records)
    owner.view.jobs.running().all()
    owner.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, Literal

from starlette.requests import ClientDisconnect

from .._health import DEFAULT_POLICY, HealthPolicy
from ..exceptions import SinkError
from ._api import bearer_authorizer, create_query_app
from ._forward import RECORDS_PATH, records_route
from ._inherited import forget_server, note_server
from ._local import LocalSink
from ._schedule_store import ScheduleEvaluator
from ._schema import HEARTBEATS_PER_RUN
from ._store import Store, acquire, release, remove_sidecar, write_sidecar
from ._writer import Writer

__all__ = [
    "LOOPBACK_NAMES",
    "PROMPT_SWITCH_INTERVAL",
    "BackgroundServer",
    "PromptHandover",
    "OwnerState",
    "RequestGuard",
    "StoreOwner",
    "host_name",
    "is_loopback",
]

OwnerState = Literal["open", "serving", "closing", "closed"]

_READ_FLUSH_TIMEOUT: Final = 5.0
_TICK = 0.1
"""How often the HTTP server's loop looks at the clock (uvicorn's own cadence: its ``on_tick``
refreshes the Date header each tenth tick); :meth:`BackgroundServer.stop` wakes it sooner."""
"""Seconds a query in this process waits for queued records to be committed (read your
writes), at most: a slow disk must not hang a reader."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: ``localhost`` or a loopback IP
    (``127.0.0.0/8``, ``::1``). A wildcard (``0.0.0.0``, ``::``, ``""``) or any other name
    is not: a name may resolve anywhere, so it counts as reachable from the network."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})
"""Host names every server of this package answers to (with any port)."""

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def host_name(value: str) -> str | None:
    """The name part of a ``Host`` header or address, lowercased, IPv6 in brackets:
    ``Example.org:80`` → ``example.org``, ``[::1]:4318`` and ``::1`` → ``[::1]``; None when
    it cannot be a host (empty, a path, spaces, a malformed bracket or port)."""
    text = value.strip().lower()
    if not text or any(c in text for c in "/\\@?# \t"):
        return None
    if text.startswith("["):
        name, bracket, rest = text.partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name + "]"
    if text.count(":") > 1:  # a bare IPv6 address (a bind address, not a Host header)
        return f"[{text}]"
    name, colon, port = text.partition(":")
    if not name or (colon and not port.isdigit()):
        return None
    return name


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


class RequestGuard:
    """ASGI middleware in front of every route of both servers: refuse a request whose
    ``Host`` is not an allowed name (421) and a cross-origin browser request (403).

    Why: after DNS rebinding, a web page's ``attacker.example`` resolves to 127.0.0.1, so
    the browser reaches a loopback sink with ``Host: attacker.example`` and the page's
    ``Origin``; without these checks that page could read and prune the store. Allowed
    hosts are :data:`LOOPBACK_NAMES`, the bind address, the ``allowed_hosts`` given, and any
    IP literal (rebinding needs a DNS name, so an IP in ``Host`` cannot come from it; fleet
    senders that use the server's IP then need no option). An ``Origin`` is allowed only
    when it is the server itself (``scheme://`` + the request's ``Host``); OTLP exporters,
    Collectors, the CLI and :class:`~chaperone_otel.sink._remote.RemoteSink` send none.
    ``Sec-Fetch-Site: cross-site``/``same-site`` (what browsers send on a cross-origin GET
    that carries no ``Origin``) is refused the same way.

    Starlette's ``TrustedHostMiddleware`` was the first choice, but it answers 400, has no
    Origin check, and would need every IP literal listed.

    Args:
        app: the ASGI app to guard.
        allowed_hosts: further host names (``sink.internal``; a port is ignored).
        on_refusal: called with the status of each refused request (the server's counters).
    """

    def __init__(
        self,
        app: Any,
        *,
        allowed_hosts: Iterable[str] = (),
        on_refusal: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        names = set(LOOPBACK_NAMES)
        for raw in allowed_hosts:
            name = host_name(raw)
            if name is None:
                raise ValueError(f"not a host name: {raw!r} (give a name such as sink.internal)")
            names.add(name)
        self.allowed_hosts = frozenset(names)
        self._on_refusal = on_refusal

    def allows_host(self, name: str) -> bool:
        """True for a host name (as :func:`host_name` gives it) this server answers to."""
        return name in self.allowed_hosts or _is_ip_literal(name)

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        """The (status, reason) that refuses a request with these headers, or None."""
        hosts: list[str] = []
        origin: str | None = None
        fetch_site = ""
        for key, value in headers:
            if key == b"host":
                hosts.append(value.decode("latin-1"))
            elif key == b"origin":
                origin = value.decode("latin-1").strip()
            elif key == b"sec-fetch-site":
                fetch_site = value.decode("latin-1").strip().lower()
        if len(hosts) != 1:
            return 421, "the request needs exactly one Host header"
        name = host_name(hosts[0])
        if name is None or not self.allows_host(name):
            return (
                421,
                f"Host {hosts[0]!r} is not a name of this server: use 127.0.0.1, localhost or "
                "its IP address, or start it with --allowed-host NAME",
            )
        if origin is not None:
            scheme, sep, netloc = origin.partition("://")
            same = sep and scheme in ("http", "https") and netloc.lower() == hosts[0].lower()
            if not same:
                return 403, f"cross-origin requests are refused (Origin {origin!r})"
        if fetch_site in ("cross-site", "same-site"):
            return 403, f"cross-origin requests are refused (Sec-Fetch-Site: {fetch_site})"
        return None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope.get("headers", ()))
        if refused is None:
            try:
                await self.app(scope, receive, send)
            except ClientDisconnect:
                # The client went away while its body was read (or a read deadline closed
                # it): nobody to answer, nothing stored, not a server error. Uncaught, it
                # was a 40-line "Exception in ASGI application" per aborted upload.
                return
            return
        status, reason = refused
        if self._on_refusal is not None:
            self._on_refusal(status)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


PROMPT_SWITCH_INTERVAL: Final = 0.001
"""The interpreter's switch interval while the embedded query API answers (see
:class:`PromptHandover`)."""


class PromptHandover:
    """ASGI middleware of the embedded query API: while a query is answered, the interpreter
    hands the GIL between threads every 1 ms instead of every 5 ms, and restores the
    previous interval when the last one is done.

    Why: the server shares the application's interpreter. When the application's own job is
    CPU-bound, every step the server takes (the event loop, the query thread, DuckDB handing
    back its result) waits one switch interval for the GIL, and a query takes several: a
    CLI ``jobs`` took 2.8x as long as with the application idle, a ``count()`` 14x. The
    application's threads switch more often only while a query is being answered; the
    records other processes forward (``/api/records``) are frequent and not interactive,
    so they leave the interval alone. (``sink serve`` sets 1 ms for its whole process.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._active = 0
        self._saved: float | None = None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http" or scope.get("path") == RECORDS_PATH:
            await self.app(scope, receive, send)
            return
        with self._lock:
            if self._active == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, PROMPT_SWITCH_INTERVAL))
            self._active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._saved is not None:
                    sys.setswitchinterval(self._saved)
                    self._saved = None


class StoreOwner:
    """Owns one store file for this process: the writable connection, the writer, a view for
    queries, the query server and the sidecar (see the module doc).

    Args:
        path: the DuckDB file (created if missing).
        policy: health thresholds of the view's scopes.
        capacity: the writer's queue bound, in records.
        batch_size: records per write transaction at most.
        heartbeat_limit: stored heartbeats per run at most.
        writable_view: the view may prune (the sink server's query API allows it).
        read_your_writes: a query in this process first waits (bounded) until what is queued
            is committed, so a run that just ended is found (the embedded sink; the sink
            server acknowledges only committed records anyway).

    Attributes:
        path: the store file (absolute). store: the connection. writer: the one writer.
        view: a Sink over the live store for this process. url: the served URL, or None.
        token: the bearer token the query API it serves itself requires (written into the
            sidecar), or None before :meth:`serve` and when serving another app.

    Raises:
        SinkError: the file cannot be opened (held by another process, newer schema …).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        policy: HealthPolicy = DEFAULT_POLICY,
        capacity: int = 100_000,
        batch_size: int = 20_000,
        heartbeat_limit: int = HEARTBEATS_PER_RUN,
        writable_view: bool = False,
        read_your_writes: bool = False,
    ) -> None:
        self.policy = policy
        self.url: str | None = None
        self.token: str | None = None
        self._state: OwnerState = "open"
        self._server: BackgroundServer | None = None
        self._advertised = False
        self._writer: Writer | None = None
        self._schedules: ScheduleEvaluator | None = None
        self._view: LocalSink | None = None
        self.store: Store = acquire(path, read_only=False, policy=policy)
        self.path = self.store.path
        try:
            self._writer = Writer(
                self.store,
                capacity=capacity,
                batch_size=batch_size,
                heartbeat_limit=heartbeat_limit,
            )
            # Detection runs where the store is: missed slots are found here (issue 15).
            self._schedules = ScheduleEvaluator(self.store)
            view_store = acquire(self.path, read_only=not writable_view, policy=policy)
            self._view = LocalSink(view_store, read_only=not writable_view, policy=policy)
            if read_your_writes:
                self.store.before_read = self._read_your_writes
        except BaseException:
            self._close_quietly()
            raise

    @property
    def state(self) -> OwnerState:
        """``open``, ``serving``, ``closing`` or ``closed``."""
        return self._state

    @property
    def writer(self) -> Writer:
        """The store's one writer."""
        if self._writer is None:
            raise SinkError(f"the owner of {self.path} is closed")
        return self._writer

    @property
    def view(self) -> LocalSink:
        """A Sink over the live store, sharing this process's connection."""
        if self._view is None:
            raise SinkError(f"the owner of {self.path} is closed")
        return self._view

    def _closing_sink(self) -> LocalSink:
        """A writable Sink over the store, for ``POST /api/close`` (the view is read-only)."""
        if self._state not in ("open", "serving"):
            raise SinkError(f"the owner of {self.path} is {self._state}")
        return LocalSink(self.store, read_only=False, policy=self.policy)

    def serve(
        self,
        server: BackgroundServer | None = None,
        *,
        advertise: bool = True,
        background: bool = True,
        timeout: float = 10.0,
    ) -> str:
        """Serve the store and advertise the URL: ``open`` → ``serving``.

        Args:
            server: what to serve (bound or not); by default a new loopback server of the
                query API over :attr:`view`, on a free port, requiring :attr:`token`.
            advertise: write the sidecar ``<path>.owner.json``.
            background: start ``server`` in a daemon thread (returns once listening);
                ``False``: the caller runs it in the foreground (``server.run()``), the
                owner still stops it on :meth:`close`.
            timeout: seconds to wait for the server to listen.

        Returns:
            The served URL.

        Raises:
            SinkError: not ``open``, the server did not start, or the sidecar cannot be
                written.
            OSError: the address cannot be bound.
        """
        if self._state != "open":
            raise SinkError(f"the owner of {self.path} is {self._state}, not open")
        if server is None:
            server = BackgroundServer(None)
            server.bind()  # the port must be known before the app (which reports its URL)
            url = server.url
            self.token = secrets.token_urlsafe(32)
            authorize = bearer_authorizer(self.token)
            server.app = PromptHandover(
                create_query_app(
                    self.view,
                    url=lambda: url,
                    authorize=authorize,
                    # Other processes of the host forward their records here (_forward).
                    routes=[records_route(lambda: self._writer, authorize)],
                    # `chaperone-otel close` of a lost run (one record, as forwarders
                    # send); prune stays the owning process's.
                    closer=self._closing_sink,
                )
            )
        elif not server.bound:
            server.bind()
        self._server, self.url = server, server.url
        self.view.url = server.url
        server.on_shutdown = self.store.interrupt_queries
        try:
            if background:
                server.start(timeout)
            if advertise:
                try:
                    write_sidecar(self.path, server.url, token=self.token)
                except OSError as e:  # not the address: the sidecar's directory
                    raise SinkError(
                        f"cannot advertise the query URL of {self.path} beside it: {e}"
                    ) from e
                self._advertised = True
        except BaseException:
            self._close_quietly()
            raise
        self._state = "serving"
        return server.url

    def close(self, timeout: float | None = 30.0) -> None:
        """Undo everything, in reverse order: remove the sidecar, stop serving (in-flight
        requests finish), commit everything queued, close the view, release the file.
        Idempotent; the file is released even when the writer fails.

        Raises:
            SinkError: the writer could not commit everything queued within ``timeout``
                (or a batch was dropped); the file is released all the same.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        try:
            self._teardown(timeout)
        finally:
            self._state = "closed"

    def _teardown(self, timeout: float | None) -> None:
        self.store.before_read = None
        if self._advertised:
            remove_sidecar(self.path)
            self._advertised = False
        # Stopping the server waits for in-flight requests: interrupt their queries first,
        # so a long /api/sql cannot hold shutdown (and the file lock) for its whole run.
        self.store.interrupt_queries()
        if self._server is not None:
            self._server.stop(timeout or 15.0)
            self._server = None
        errors: list[SinkError] = []
        schedules, self._schedules = self._schedules, None
        if schedules is not None:
            schedules.close()
        if self._writer is not None:
            try:
                self._writer.close(timeout)
            except SinkError as e:
                errors.append(e)
            self._writer = None
        if schedules is not None and not self.store.closed:
            # Slots due since the last pass, with the runs just committed: a cron script
            # that owns the store for a moment makes its slots, and the next owner judges
            # them (missed, late) however long the store stays unowned meanwhile.
            schedules.evaluate_counted()
        if self._view is not None:
            self._view.close()
            self._view = None
        if not self.store.closed:
            release(self.store)
        self.store.accept_queries()  # other sinks in this process may still share it
        if errors:
            raise errors[0]

    def _close_quietly(self) -> None:
        # A failed open or serve: leave nothing behind; the original error is what matters.
        with contextlib.suppress(SinkError):
            self.close(timeout=5.0)

    def _read_your_writes(self) -> None:
        if self._state in ("open", "serving") and self._writer is not None:
            # report=False: a write failure belongs to whoever flushes for it, not to a
            # reader that happened to query first.
            self._writer.flush(_READ_FLUSH_TIMEOUT, report=False)

    def __enter__(self) -> StoreOwner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StoreOwner {self.path} {self._state} url={self.url}>"


async def _off_the_loop(fn: Callable[[], object]) -> None:
    """Call ``fn``, which may wait briefly, on a thread of its own; inline once the
    interpreter is exiting (the owner closed by ``shutdown()`` at exit), where no new thread
    may start and the server has nothing left to answer but what it is stopping anyway.

    Not ``asyncio.to_thread``: that creates the loop's default executor, and ``asyncio.run``
    then shuts it down on a new thread as the loop closes, which Python 3.12 refuses at exit
    ("can't create new thread at interpreter shutdown", printed from the server's thread),
    even when the call itself had fallen back to running inline.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as e:  # handed to the awaiting coroutine
            error = e
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(settle, error)

    try:
        threading.Thread(target=work, name="chaperone-sink-stop", daemon=True).start()
    except RuntimeError:  # the interpreter is exiting: no new threads (3.12+)
        fn()
        return
    await done


class BackgroundServer:
    """Serve an ASGI app with uvicorn in a daemon thread (the embedded sink's query API).

    Args:
        app: the ASGI app (e.g. :func:`create_query_app`), served behind a
            :class:`RequestGuard`.
        host: bind address. port: TCP port, 0 for a free one.
        allowed_hosts: host names to answer besides loopback, IP literals and ``host``.
        on_refusal: called with the status of each request the guard refuses.

    Example::

        server = BackgroundServer(create_query_app(sink)).start()
        write_sidecar(path, server.url)
        ...
        server.stop()
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        server_class: Any = None,
        allowed_hosts: Iterable[str] = (),
        on_refusal: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        bound = host_name(host)
        extra = [bound] if bound and host not in ("0.0.0.0", "::", "") else []  # noqa: S104
        # Built now, so a bad name fails the constructor (a usage error), not the start.
        self.guard = RequestGuard(
            None, allowed_hosts=[*extra, *allowed_hosts], on_refusal=on_refusal
        )
        self._server_class = server_class
        self.on_shutdown: Callable[[], object] | None = None
        """Called as shutdown begins, before uvicorn waits for in-flight requests (the
        owner interrupts their queries here)."""
        self._server: Any = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound(self) -> bool:
        """The socket is bound and listening (:meth:`bind`)."""
        return self._socket is not None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (a wildcard bind is reported as loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def bind(self) -> socket.socket:
        """Bind and listen (so the port is known before serving)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        note_server(sock.getsockname()[0], self.port, sock.fileno())  # a forked child lets go
        return sock

    def server(self) -> Any:
        """The uvicorn server object (created on first use)."""
        if self._server is None:
            import uvicorn  # noqa: PLC0415

            from ._http import accept_backlog, protocol_class  # noqa: PLC0415 (uvicorn)

            self.guard.app = self.app  # every route, of either server, behind the guard
            config = uvicorn.Config(
                self.guard,
                http=protocol_class(),  # header/body deadlines, a connection cap (slowloris)
                backlog=accept_backlog(),
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=10,
                server_header=False,
            )
            base = self._server_class or uvicorn.Server
            owner = self

            class _Server(base):  # type: ignore[misc,valid-type]
                # uvicorn polls ``should_exit`` every 0.1 s and sleeps 0.1 s more in shutdown
                # even with no connection open: 0.2 s added to the exit of every process with
                # an embedded sink (a cron script's whole run, often). Here stop() wakes the
                # loop at once, and an idle server skips the grace sleep (with connections
                # open, uvicorn's own graceful shutdown runs unchanged).
                wake: asyncio.Event | None = None
                loop: asyncio.AbstractEventLoop | None = None

                async def main_loop(self) -> None:
                    self.loop = asyncio.get_running_loop()
                    self.wake = asyncio.Event()
                    counter = 0
                    should_exit = await self.on_tick(counter)
                    while not should_exit:
                        counter = (counter + 1) % 864000  # on_tick's once-a-second cadence
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), _TICK)
                        should_exit = await self.on_tick(counter)

                def wake_up(self) -> None:
                    loop, wake = self.loop, self.wake
                    if loop is not None and wake is not None:
                        with contextlib.suppress(RuntimeError):  # the loop already closed
                            loop.call_soon_threadsafe(wake.set)

                async def shutdown(self, sockets: Any = None) -> None:
                    if owner.on_shutdown is not None:
                        await _off_the_loop(owner.on_shutdown)
                    if self.server_state.connections or self.server_state.tasks:
                        await super().shutdown(sockets)
                        return
                    for server in self.servers:
                        server.close()
                    for sock in sockets or []:
                        sock.close()
                    for server in self.servers:
                        await server.wait_closed()
                    if not self.force_exit:
                        await self.lifespan.shutdown()

            self._server = _Server(config)
        return self._server

    def run(self) -> None:
        """Serve in the calling thread until asked to exit."""
        if self._socket is None:
            self.bind()
        self.server().run(sockets=[self._socket])

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Serve in a daemon thread; returns once listening.

        Raises:
            SinkError: it did not start within ``timeout``.
        """
        if self._socket is None:
            self.bind()
        server = self.server()
        self._thread = threading.Thread(target=self.run, name="chaperone-sink-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SinkError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Finish in-flight requests and stop (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.wake_up()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            with contextlib.suppress(OSError):
                forget_server(self._socket.getsockname()[0], self.port)
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
