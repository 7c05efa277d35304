"""The embedded sink: record every run of this process in a DuckDB file while it runs.

``configure(sink="jobs.duckdb")`` (or ``CHAPERONE_OTEL_SINK``) calls :func:`install_sink`,
which registers a lifecycle listener (a peer of the OTel log writer, see ``_events``) feeding
the store's single writer thread. No collector, no network: a run shows up in
``jobs.running()`` within one writer linger (50 ms) of its first record.

Because DuckDB lets only one process open the file, this process owns it through a
:class:`~chaperone_otel.sink._owner.StoreOwner` (the same component ``chaperone-otel sink
serve`` uses): the writer, a view for queries here, the query API on loopback (a free port)
and the URL advertised in ``<path>.owner.json``, so ``open_sink(path)`` / ``chaperone-otel
jobs --db PATH`` from a second terminal reach the live store. In this process,
``open_sink(path)`` shares the connection.

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
from ..sink._owner import StoreOwner


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
        owner: the :class:`~chaperone_otel.sink._owner.StoreOwner` of the file.
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
        self.dropped = 0
        self._closed = False
        # Read your writes: a query in this process (the API, the HTTP endpoint) first
        # commits what is queued, so a run that just ended is found.
        self.owner = StoreOwner(path, policy=policy, capacity=capacity, read_your_writes=True)
        self.path = self.owner.path
        self.writer = self.owner.writer
        self.sink = self.owner.view
        self.url: str | None = None
        try:
            if serve:
                self.url = self.owner.serve()
            add_listener(self)
        except BaseException:
            self._closed = True
            self.owner.close()
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

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record so far is committed (``False`` on timeout). In a forked
        child, True at once: the child writes nothing here (the parent owns the file)."""
        if os.getpid() != self._pid:
            return True
        return self.writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop listening, stop serving, write everything queued, release the file.

        In a forked child it only stops listening: the store, its writer and its server are
        the parent's (closing the child's copy of the DuckDB connection would checkpoint the
        parent's file from a stale state, and crashes), so the child abandons them.
        """
        if self._closed:
            return
        self._closed = True
        remove_listener(self)
        if os.getpid() != self._pid:
            return
        self.owner.close(timeout)

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
