"""``chaperone-otel sink serve``: an OTLP/HTTP receiver that records runs in one DuckDB file.

Workers (any OTel SDK) or an OpenTelemetry Collector export logs and traces here
(``POST /v1/logs``, ``POST /v1/traces``; protobuf or JSON; gzip/deflate). Each request is
decoded by :mod:`._otlp` into the same records the in-process sink gets (lifecycle records
from logs, span records from traces), then written by the store's one ingest path
(:func:`._records.stage` + :func:`._ingest.write`). The file is owned through the same
:class:`~chaperone_otel.sink._owner.StoreOwner` as the embedded sink's (writer, query view,
HTTP server, sidecar, and their teardown in order); this module adds only the OTLP routes,
``/metrics`` and the answers.

**Durability promise: a 2xx means committed.** The handler waits until *its own* records
have been committed to the DuckDB file before it answers (``Writer.wait`` on the request's
ticket). A sink that is SIGKILLed a moment after answering 200 therefore still has every
acknowledged record when it restarts; anything not acknowledged is retried by the sender's
OTLP exporter (and ingest is idempotent, so a retry of something that *was* committed is
harmless). Concurrent requests share one commit (group commit), so waiting costs latency,
not throughput. A request's records are committed all or none: when a shared commit fails,
the writer retries the requests without the one that cannot be stored, which alone gets the
error status; the others are committed and acknowledged as usual.

Status codes (DESIGN §6): 400 malformed payload, or records the store refuses (e.g. a
constraint or conversion error: resending the same data cannot succeed), 401 missing or
wrong bearer token (when one is configured), 413 body (or its decompressed size) over the
limit, 415 unsupported content type or encoding, 503 + ``Retry-After`` when the writer
queue is full or the store failed (OTLP exporters retry 503), all decided in one place
(``SinkServer._refusal``). Nothing of a refused request is stored (with ``ack="commit"``).
Error bodies are ``google.rpc.Status`` messages, success bodies ``Export…ServiceResponse``,
both in the request's encoding.

The server also serves ``GET /healthz``, fleet-wide ``GET /metrics`` (:mod:`._fleet`) and
the query API (:mod:`._api`, ``/api/...``), and advertises itself in ``<path>.owner.json``
so ``open_sink(path)`` / ``chaperone-otel jobs --db PATH`` in another process reach it.

Example::

    from chaperone_otel.sink._server import SinkServer
    with SinkServer("jobs.duckdb", port=0) as server:
        print(server.url)          # http://127.0.0.1:PORT
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import FrameType
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._health import DEFAULT_POLICY, HealthPolicy
from ..exceptions import ConfigurationError, SinkError
from . import _otlp
from ._api import BodyTooLargeError, bearer_authorizer, query_routes, read_body
from ._fleet import FleetCollector, IngestStats
from ._forward import records_route
from ._owner import BackgroundServer, StoreOwner, is_loopback
from ._records import IngestRecord
from ._remote import TOKEN_ENV
from ._schedule_metrics import ScheduleCollector
from ._schema import HEARTBEATS_PER_RUN
from ._writer import RecordsDroppedError, Writer, committed_within

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_CAPACITY",
    "SinkServer",
    "serve",
]

logger = logging.getLogger("chaperone_otel.sink")

DEFAULT_PORT: Final = 4318
"""The OTLP/HTTP port, so an SDK's default endpoint reaches the sink."""

DEFAULT_QUEUE_CAPACITY: Final = 100_000
"""Records accepted but not yet committed, at most (beyond it: 503 + Retry-After)."""

DEFAULT_MAX_BATCH: Final = 20_000
"""Records committed in one transaction, at most (several requests share a commit)."""

DEFAULT_ACK_TIMEOUT: Final = 30.0
"""Seconds a request waits for its commit before answering 503 (its records stay queued and
are committed later; the sender's retry is then a harmless duplicate)."""

DEFAULT_DECODE_THREADS: Final = 1
"""Requests decoded at once, at most (each in a worker thread, never on the event loop: a
2 MiB body decoded inline blocked ``/healthz`` for seconds with 4 senders). The rest wait
without holding a thread, so decoding never takes the threads the query API and
``/metrics`` use, and its memory is bounded by this times ``max_decompressed``."""

_SWITCH_INTERVAL: Final = 0.001
"""The interpreter's thread switch interval in ``sink serve`` (see :func:`serve`)."""

_SOURCES: Final = {"logs": "otlp.logs", "traces": "otlp.traces"}
_CONTENT_TYPES: Final = {"protobuf": "application/x-protobuf", "json": "application/json"}


class _BodyTooLargeError(_otlp.PayloadTooLargeError):
    """The body as sent is over ``max_body`` (413 and the connection is closed: the rest of
    the body is not read)."""


class _Uvicorn:
    """Lazy import holder: uvicorn is imported only when a server starts."""

    @staticmethod
    def server_class() -> type[Any]:
        import uvicorn  # noqa: PLC0415

        class _Server(uvicorn.Server):
            """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill
            the process before the writer is flushed; here the signal only asks to exit."""

            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                signals = (signal.SIGINT, signal.SIGTERM)
                previous = {sig: signal.signal(sig, self._exit) for sig in signals}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def _exit(self, sig: int, frame: FrameType | None) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                self.should_exit = True

        return _Server


class SinkServer:
    """The sink server: owns the store file, the writer and the HTTP endpoint.

    Use :meth:`start`/:meth:`stop` (or ``with``) to run it in a background thread of this
    process (tests, embedding), or :meth:`serve_forever` in the main thread (the CLI), which
    returns after SIGTERM/SIGINT once everything queued is committed.

    Args:
        path: the DuckDB store file (created if missing).
        host: bind address (loopback unless told otherwise).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        token: when set, ``Authorization: Bearer <token>`` is required on ``/v1/*`` and
            ``/api/*`` (``/healthz`` and ``/metrics`` stay open for probes and scrapers). An
            empty or blank token is refused (it would turn auth off).
        max_body: largest accepted request body as sent, bytes.
        max_decompressed: largest body after decompression, bytes.
        max_records: records or spans per request at most (resource and scope groups and
            span events count too); 413 beyond, found before they are walked.
        max_attributes: attributes of one record, resource or event at most (413 beyond).
        queue_capacity: records waiting for the writer at most (then 503).
        max_batch: records per transaction at most.
        retry_after: seconds put in ``Retry-After`` on a 503.
        ack_timeout: seconds a request waits for its commit before a 503.
        ack: ``commit`` (default): answer 2xx once the records are committed, so an
            acknowledged record survives a SIGKILL of the sink. ``queue``: answer once queued
            (committed within the writer's next batch, flushed on graceful shutdown); several
            times the throughput for a single sequential sender, but a SIGKILL loses what was
            still queued.
        heartbeat_limit: stored heartbeats per run at most.
        policy: health thresholds for ``/metrics`` and the query API.
        advertise: write ``<path>.owner.json`` so other processes find the query API.
        insecure: allow a non-loopback ``host`` without a token (a trusted network only).
        allowed_hosts: ``Host`` names to answer besides loopback names, IP literals and
            ``host`` (e.g. the DNS name workers use); every other name gets 421, and a
            cross-origin browser request 403 (:class:`~._owner.RequestGuard`).

    Raises:
        ValueError: an empty token, a bad limit, or an allowed host that is not a name.
        ConfigurationError: a non-loopback ``host`` without a token or ``insecure``.
    """

    def __init__(
        self,
        path: str,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        max_body: int = _otlp.DEFAULT_MAX_BODY,
        max_decompressed: int = _otlp.DEFAULT_MAX_DECOMPRESSED,
        max_records: int = _otlp.DEFAULT_MAX_RECORDS,
        max_attributes: int = _otlp.DEFAULT_MAX_ATTRIBUTES,
        queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
        max_batch: int = DEFAULT_MAX_BATCH,
        retry_after: int = 1,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        ack: Literal["commit", "queue"] = "commit",
        heartbeat_limit: int = HEARTBEATS_PER_RUN,
        policy: HealthPolicy = DEFAULT_POLICY,
        advertise: bool = True,
        insecure: bool = False,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        if min(max_body, max_decompressed, max_records, max_attributes) < 1:
            raise ValueError(
                "max_body, max_decompressed, max_records and max_attributes must be >= 1"
            )
        self._authorize = bearer_authorizer(token)  # ValueError: an empty token
        if token is None and not insecure and not is_loopback(host):
            raise ConfigurationError(
                f"refusing to serve {host!r} without a token: anyone who can reach it could "
                "send records and read or prune the store. Give a token (--token or "
                f"{TOKEN_ENV}; senders set OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20"
                "<token>), bind 127.0.0.1, or pass --insecure (insecure=True) if every host "
                "that can reach it is trusted"
            )
        self.path = path
        self.host = host
        self.port = port
        self.token = token
        self.insecure = insecure
        self.max_body = max_body
        self.max_decompressed = max_decompressed
        self.max_records = max_records
        self.max_attributes = max_attributes
        self._decode_limiter: Any = None  # an anyio CapacityLimiter, made in the loop
        self.retry_after = max(0, int(retry_after))
        self.ack_timeout = ack_timeout
        if ack not in ("commit", "queue"):
            raise ValueError("ack must be 'commit' or 'queue'")
        self.ack = ack
        self.policy = policy
        self._queue_capacity = queue_capacity
        self._max_batch = max_batch
        self._heartbeat_limit = heartbeat_limit
        self._advertise = advertise
        self._stats = IngestStats(queue_capacity=queue_capacity)
        self._stats_lock = threading.Lock()
        self._owner: StoreOwner | None = None
        self._http = BackgroundServer(
            None,
            host=host,
            port=port,
            server_class=_Uvicorn.server_class(),
            allowed_hosts=allowed_hosts,
            on_refusal=self._reject,
        )
        self._registry = CollectorRegistry(auto_describe=False)
        self.app = Starlette(routes=self._routes())
        self._http.app = self.app

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the server (the OTLP endpoint and the query URL)."""
        return self._http.url

    @property
    def writer(self) -> Writer:
        """The store's one writer (its ``stats`` feed ``/metrics``)."""
        writer = self._live_writer()
        if writer is None:
            raise SinkError("the sink server is not started")
        return writer

    def _live_writer(self) -> Writer | None:
        """The writer while it takes records: also while the owner is closing, so requests
        still in flight when shutdown begins are committed, not refused."""
        owner = self._owner
        if owner is None:
            return None
        try:
            return owner.writer
        except SinkError:  # closed
            return None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the store's write lock: the writer stops committing while requests keep
        queueing (then 503 once the queue is full). For tests and maintenance."""
        if self._owner is None:
            raise SinkError("the sink server is not started")
        with self._owner.store.write_lock:
            yield

    def _open(self, *, background: bool, timeout: float = 10.0) -> None:
        # Bind first: a port that cannot be had must not leave a new, empty store file behind
        # (nor hold the store's lock while failing).
        self._http.bind()
        self.port = self._http.port
        try:
            owner = StoreOwner(
                self.path,
                policy=self.policy,
                capacity=self._queue_capacity,
                batch_size=self._max_batch,
                heartbeat_limit=self._heartbeat_limit,
                writable_view=True,  # the query API may prune (it takes the write lock)
            )
        except OSError as e:
            # Not a bind failure (the socket is bound): the store's directory cannot be
            # made or used (read-only file system, a file in the way). Say so, not "bind".
            self._http.stop()
            raise SinkError(f"cannot open the store {self.path}: {e}") from e
        except BaseException:
            self._http.stop()
            raise
        self._owner = owner
        self._registry.register(
            FleetCollector(
                owner.store.cursor, stats=self.stats, store_path=owner.path, policy=self.policy
            )
        )
        self._registry.register(ScheduleCollector(owner.store.cursor))  # issue 15
        try:
            owner.serve(
                self._http, advertise=self._advertise, background=background, timeout=timeout
            )
        except BaseException:
            self._cleanup()
            raise

    def start(self, timeout: float = 10.0) -> SinkServer:
        """Open the store and serve in a background thread; returns once listening."""
        self._open(background=True, timeout=timeout)
        return self

    def serve_forever(self, ready: Callable[[SinkServer], None] | None = None) -> None:
        """Serve in this thread until SIGTERM/SIGINT, then commit everything queued, remove
        the sidecar and return.

        Args:
            ready: called once the socket is bound (the CLI prints the URL).
        """
        self._open(background=False)
        try:
            if ready is not None:
                ready(self)
            self._http.run()
        finally:
            self._cleanup()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish in-flight requests, commit everything queued, clean up."""
        self._cleanup(timeout)

    def _cleanup(self, timeout: float = 30.0) -> None:
        owner = self._owner
        if owner is not None:
            try:
                owner.close(timeout)  # sidecar, HTTP (in-flight requests finish), writer, file
            except SinkError as e:
                logger.error("%s", e)
            self._owner = None
        self._http.stop()

    def __enter__(self) -> SinkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- writing ------------------------------------------------------------------------

    def _committed(self, source: str, count: int) -> None:
        with self._stats_lock:
            self._stats.ingested[source] = self._stats.ingested.get(source, 0) + count

    def _reject(self, status: int) -> None:
        with self._stats_lock:
            self._stats.rejected[status] = self._stats.rejected.get(status, 0) + 1

    def stats(self) -> IngestStats:
        """A snapshot of the ingest counters and queue gauges."""
        writer = self._live_writer()
        w = writer.stats if writer is not None else None
        with self._stats_lock:
            return IngestStats(
                ingested=dict(self._stats.ingested),
                rejected=dict(self._stats.rejected),
                dropped=w.dropped if w else 0,
                queue_depth=w.queue_depth if w else 0,
                queue_capacity=self._queue_capacity,
                last_ingest=w.last_ingest if w else 0.0,
            )

    # ---- HTTP ---------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/v1/logs", self._logs, methods=["POST"]),
            Route("/v1/traces", self._traces, methods=["POST"]),
            Route("/v1/metrics", self._otlp_metrics, methods=["POST"]),
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        routes.extend(
            query_routes(
                self._query_sink, authorize=self._authorized, url=lambda: self.url, allow_prune=True
            )
        )
        # Applications on this host that configure(sink=) the file it serves forward here.
        routes.append(records_route(self._live_writer, self._authorized))
        return routes

    def _query_sink(self) -> Any:
        """The read side for the query API: the owner's view (shares the connection; prune
        takes the write lock)."""
        if self._owner is None:
            raise SinkError("the sink server is not started")
        return self._owner.view

    def _authorized(self, request: Request) -> bool:
        return self._authorize is None or self._authorize(request)

    async def _logs(self, request: Request) -> Response:
        return await self._export(request, "logs")

    async def _traces(self, request: Request) -> Response:
        return await self._export(request, "traces")

    async def _otlp_metrics(self, request: Request) -> Response:
        """OTLP metrics are accepted and discarded: workers that export everything to one
        endpoint must not log 404s; fleet metrics come from the store (``/metrics``)."""
        encoding, refused = self._admit(request)
        if refused is not None:
            return refused
        try:
            await self._read_body(request, keep=False)
        except SinkError as e:
            return self._refusal(e, encoding)
        return Response(b"{}" if encoding == "json" else b"", media_type=_CONTENT_TYPES[encoding])

    def _error(
        self,
        status: int,
        message: str,
        encoding: _otlp.Encoding,
        headers: dict[str, str] | None = None,
    ) -> Response:
        self._reject(status)
        return Response(
            _otlp.encode_error(status, message, encoding),
            status_code=status,
            media_type=_CONTENT_TYPES[encoding],
            headers=headers,
        )

    def _refusal(self, error: SinkError, encoding: _otlp.Encoding) -> Response:
        """The one mapping of ingest failures to OTLP/HTTP answers (DESIGN §6): 400 when
        resending the same bytes cannot succeed (malformed, or refused by the store), 413 too
        large, 415 unsupported, and 503 + ``Retry-After`` for everything that may pass on a
        retry (queue full, shutting down, a slow or failed commit): OTLP exporters retry
        exactly those."""
        if isinstance(error, _otlp.OTLPDecodeError):
            return self._error(400, str(error), encoding)
        if isinstance(error, RecordsDroppedError) and error.permanent:
            return self._error(400, f"records refused by the store: {error}", encoding)
        if isinstance(error, _otlp.PayloadTooLargeError):
            close = {"Connection": "close"} if isinstance(error, _BodyTooLargeError) else None
            return self._error(413, str(error), encoding, close)
        if isinstance(error, _otlp.UnsupportedMediaTypeError):
            return self._error(415, str(error), encoding)
        message = (
            f"store write failed: {error}" if isinstance(error, RecordsDroppedError) else str(error)
        )
        return self._error(503, message, encoding, {"Retry-After": str(self.retry_after)})

    def _admit(self, request: Request) -> tuple[_otlp.Encoding, Response | None]:
        """The request's encoding, or the 401/415 response that refuses it (in the
        encoding the client most likely reads)."""
        content_type = request.headers.get("content-type")
        guess: _otlp.Encoding = "json" if content_type and "json" in content_type else "protobuf"
        if not self._authorized(request):
            return guess, self._error(
                401,
                "missing or wrong bearer token",
                guess,
                {"WWW-Authenticate": 'Bearer realm="chaperone-otel"'},
            )
        try:
            return _otlp.media_type(content_type), None
        except _otlp.UnsupportedMediaTypeError as e:
            return guess, self._refusal(e, guess)

    async def _read_body(self, request: Request, *, keep: bool = True) -> bytes:
        """The body as sent, refused (413, connection closed: the rest is not read) once it
        is larger than ``max_body``, by its declared length or as it streams in (the query
        API's :func:`~._api.read_body`, answered in OTLP's terms)."""
        try:
            return await read_body(request, self.max_body, keep=keep)
        except BodyTooLargeError:
            raise _BodyTooLargeError(f"body over {self.max_body} bytes") from None

    async def _export(self, request: Request, signal_name: _otlp.Signal) -> Response:
        encoding, refused = self._admit(request)
        if refused is not None:
            return refused
        try:
            body = await self._read_body(request)
            decoded = await self._decode(signal_name, body, encoding, request)
            if decoded.records:
                await self._store(decoded.records)
                self._committed(_SOURCES[signal_name], len(decoded.records))
        except SinkError as e:
            return self._refusal(e, encoding)
        return Response(
            _otlp.encode_response(
                signal_name, encoding, rejected=decoded.rejected, error=decoded.error
            ),
            media_type=_CONTENT_TYPES[encoding],
        )

    async def _decode(
        self, signal_name: _otlp.Signal, body: bytes, encoding: _otlp.Encoding, request: Request
    ) -> _otlp.Decoded:
        """Decode in a worker thread, at most :data:`DEFAULT_DECODE_THREADS` at once."""
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(DEFAULT_DECODE_THREADS)
        call = functools.partial(
            _otlp.decode,
            signal_name,
            body,
            encoding,
            request.headers.get("content-encoding"),
            max_size=self.max_decompressed,
            max_records=self.max_records,
            max_attributes=self.max_attributes,
        )
        return await anyio.to_thread.run_sync(call, limiter=self._decode_limiter)

    async def _store(self, records: Sequence[IngestRecord]) -> None:
        """Hand ``records`` to the writer; with ``ack="commit"`` return once they are
        committed. Concurrent requests share one commit; each learns only its own records'
        fate.

        Raises:
            RecordsDroppedError: the records could not be stored.
            SinkError: they were not taken, or not committed in time (see :meth:`_refusal`).
        """
        writer = self._live_writer()
        if writer is None:
            raise SinkError("the sink is shutting down")
        ticket = writer.submit(records)  # SinkError once closed: shutting down
        if ticket is None:
            raise SinkError(f"writer queue full ({self._queue_capacity} records)")
        if self.ack == "queue":
            return
        try:
            committed = await committed_within(writer, ticket, self.ack_timeout)
        except RecordsDroppedError:
            raise
        except SinkError as e:
            raise SinkError(f"store write failed: {e}") from e
        if not committed:
            raise SinkError("store commit is slow; retry")

    async def _healthz(self, request: Request) -> Response:
        """200 while records can be stored; 503 while stopping, or once the store failed
        fatally (DuckDB invalidated the database, e.g. on a full disk): then ``error`` says
        the cause and a restart of the sink, once the cause is gone, replays its log."""
        stats = self.stats()
        writer = self._live_writer()
        fatal = writer.fatal if writer is not None else None
        body: dict[str, Any] = {
            "status": "stopping" if writer is None else "failed" if fatal else "ok",
            "store": self.path,
            "queue_depth": stats.queue_depth,
            "queue_capacity": stats.queue_capacity,
            "last_ingest": stats.last_ingest,
        }
        if fatal:
            body["error"] = f"the store failed and must be reopened (restart the sink): {fatal}"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def _metrics(self, request: Request) -> Response:
        writer = self._live_writer()
        fatal = writer.fatal if writer is not None else None
        if fatal:
            return Response(
                f"store unavailable: {fatal}\n", status_code=503, media_type="text/plain"
            )
        try:
            body = await run_in_threadpool(generate_latest, self._registry)
        except SinkError as e:
            return Response(f"store unavailable: {e}\n", status_code=503, media_type="text/plain")
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def serve(
    path: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    **options: Any,
) -> None:
    """Run the sink server in the foreground until SIGTERM/SIGINT (the CLI entry).

    Args:
        path: the DuckDB store file.
        host: bind address (``127.0.0.1`` unless told otherwise).
        port: TCP port (4318, the OTLP/HTTP default; 0 = any free port).
        token: require ``Authorization: Bearer <token>`` on ingest and the query API
            (needed for a non-loopback ``host`` unless ``insecure``).
        **options: further :class:`SinkServer` keyword options (``max_body``,
            ``queue_capacity``, ``retry_after`` …).

    Raises:
        ValueError: an empty token. ConfigurationError: a non-loopback ``host`` without a
            token (pass ``insecure=True`` to allow it).
        SinkError: the store cannot be opened (held by another process, newer schema).
        OSError: the address cannot be bound.
    """

    def ready(server: SinkServer) -> None:
        print(
            f"chaperone-otel sink: {server.path} on {server.url} "
            f"(OTLP: {server.url}/v1/logs, {server.url}/v1/traces; /metrics; /api)",
            file=sys.stderr,
            flush=True,
        )

    # Decoding and staging are Python under the interpreter lock: a thread that wants it back
    # waits a switch interval per hand-off (5 ms by default), and answering one request
    # takes several. 1 ms keeps /healthz and small requests quick while big bodies decode
    # (this process is the server's own, so the setting harms no application).
    sys.setswitchinterval(_SWITCH_INTERVAL)
    SinkServer(path, host=host, port=port, token=token, **options).serve_forever(ready)
