"""The embedded sink: record every run of this process in a DuckDB file while it runs.

``configure(sink="jobs.duckdb")`` (or ``CHAPERONE_OTEL_SINK``) calls :func:`install_sink`,
which registers a lifecycle listener (a peer of the OTel log writer, see ``_events``) feeding
the store's single writer thread. No collector, no network: a run shows up in
``jobs.running()`` within one writer linger (50 ms) of its first record.

Because DuckDB lets only one process open the file, the owner also serves the query API on
loopback (``chaperone_otel.sink._api.create_query_app``, on a free port) and advertises the URL
in ``<path>.owner.json``, so ``open_sink(path)`` / ``chaperone-otel jobs --db PATH`` from a
second terminal reach the live store. In this process, ``open_sink(path)`` shares the
connection.

The listener never blocks the job: if the writer's queue is full the record is counted
(:attr:`EmbeddedSink.dropped`) and reported as an internal error. After ``fork`` a child does
not write (the parent owns the file): use ``chaperone-otel sink serve`` + OTLP for prefork
workers.

Example::

    sink = install_sink("jobs.duckdb")
    ...                         # supervised runs are recorded
    sink.sink.jobs.running().all()
    sink.close()                # flushes, stops serving, removes the listener
"""

from __future__ import annotations

import os
from typing import Any

from .._events import LifecycleRecord, add_listener, remove_listener
from .._health import DEFAULT_POLICY, HealthPolicy
from ..exceptions import SinkError
from ..sink._local import LocalSink
from ..sink._store import Store, acquire, release, remove_sidecar, write_sidecar
from ..sink._writer import Writer

_SERVER_START_TIMEOUT = 10.0
_READ_FLUSH_TIMEOUT = 5.0


class EmbeddedSink:
    """A lifecycle listener writing to a store file, plus the owner's query endpoint.

    Args:
        path: the DuckDB file (created if missing).
        serve: serve the query API on 127.0.0.1 and write the sidecar (default True).
        capacity: writer queue bound, in records.
        policy: health thresholds for the served scopes.

    Attributes:
        path: the store file. url: the served query URL, or None.
        sink: a :class:`~chaperone_otel.sink.Sink` over the live store (read-only).
        writer: the store's :class:`~chaperone_otel.sink.Writer`.
        dropped: records refused because the writer's queue was full.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        serve: bool = True,
        capacity: int = 100_000,
        policy: HealthPolicy = DEFAULT_POLICY,
    ) -> None:
        self._pid = os.getpid()
        self._store: Store = acquire(path, read_only=False, policy=policy)
        self.path = self._store.path
        self.dropped = 0
        self.url: str | None = None
        self._server: Any = None
        self._closed = False
        try:
            self.writer = Writer(self._store, capacity=capacity)
            self.sink = LocalSink(
                acquire(self.path, read_only=True, policy=policy), read_only=True, policy=policy
            )
            self._store.before_read = self._read_your_writes
            if serve:
                self._serve()
            add_listener(self)
        except BaseException:
            self._close_parts()
            raise

    def on_record(self, record: LifecycleRecord) -> None:
        """Queue one record for the writer (never blocks; a full queue is counted)."""
        if os.getpid() != self._pid or self._closed:
            return  # a forked child: the parent owns the file
        if not self.writer.submit((record,)):
            self.dropped += 1
            raise SinkError(
                f"the sink writer's queue for {self.path} is full; record dropped "
                f"({self.dropped} so far): the store cannot keep up"
            )

    def _read_your_writes(self) -> None:
        # Before a query in this process (the API, the HTTP endpoint), commit what is queued,
        # so a run that just ended is found. Bounded: a slow disk must not hang a reader.
        if not self._closed:
            # report=False: a write failure belongs to whoever flushes for it (flush()),
            # not to a reader that happened to query first.
            self.writer.flush(_READ_FLUSH_TIMEOUT, report=False)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record so far is committed (``False`` on timeout)."""
        return self.writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop listening, write everything queued, stop serving, release the file."""
        if self._closed:
            return
        self._closed = True
        remove_listener(self)
        self._close_parts(timeout)

    def _close_parts(self, timeout: float | None = 30.0) -> None:
        self._closed = True
        self._store.before_read = None
        if self._server is not None:
            remove_sidecar(self.path)
            self._server.stop(timeout or 15.0)
            self._server = None
        errors: list[BaseException] = []
        writer = getattr(self, "writer", None)
        if writer is not None:
            try:
                writer.close(timeout)
            except SinkError as e:
                errors.append(e)
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()
        if not self._store.closed:
            release(self._store)
        if errors:
            raise errors[0]

    # --- the query endpoint ---------------------------------------------------------------

    def _serve(self) -> None:
        from ..sink._api import BackgroundServer, create_query_app  # noqa: PLC0415

        server = BackgroundServer(None)
        server.bind()  # the port must be known before the app (which reports its URL) exists
        url = server.url
        server.app = create_query_app(self.sink, url=lambda: url)
        server.start(_SERVER_START_TIMEOUT)
        self._server, self.url = server, url
        self.sink.url = url
        write_sidecar(self.path, url)

    def __repr__(self) -> str:
        return f"<EmbeddedSink {self.path} url={self.url}>"


def install_sink(path: str | os.PathLike[str], **options: Any) -> EmbeddedSink:
    """Record every supervised run of this process in the DuckDB file at ``path``.

    Returns:
        The :class:`EmbeddedSink`; ``close()`` flushes and uninstalls it.

    Raises:
        SinkError: the file cannot be opened (held by another process, newer schema …).
    """
    return EmbeddedSink(path, **options)
