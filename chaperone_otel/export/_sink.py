"""The embedded sink: record every run of this process in a DuckDB file while it runs.

``configure(sink="jobs.duckdb")`` (or ``CHAPERONE_OTEL_SINK``) calls :func:`install_sink`,
which registers a lifecycle listener (a peer of the OTel log writer, see ``_events``). No
collector, no network beyond loopback: a run shows up in ``jobs.running()`` within one
writer linger (50 ms) of its first record.

**One store for every process of a host.** DuckDB lets one process open the file, so the
sink has two roles, and any number of processes may ask for the same path at any moment:

* the **owner** — the first process to get the file — holds it through a
  :class:`~chaperone_otel.sink._owner.StoreOwner` (the same component ``chaperone-otel sink
  serve`` uses): the writer, a view for queries here, the query API on loopback and the URL
  and token advertised in ``<path>.owner.json`` (mode 0600);
* every other process is a **forwarder**: its records wait in memory and a thread sends
  them to the owner (``POST /api/records``, :mod:`chaperone_otel.sink._forward`), which
  answers only once they are committed; a batch leaves memory only then. When the owner
  cannot be reached (it exited, was killed, or the file is briefly held by a reader), the
  forwarder tries to take the file over and becomes the owner; until one of the two works
  it keeps the records (up to ``capacity``) and tries again, backing off to 1 s.

A forked child (a prefork server's workers, a ``multiprocessing`` fork pool) is a forwarder
from its first record on, to its parent's server: only the parent needs ``configure()``.
The inherited store, writer and server are the parent's and are left alone in the child.

The listener never blocks the job: a full queue counts the record
(:attr:`EmbeddedSink.dropped`) and reports it as an internal error. ``configure()`` fails
only for misuse: a file that is not a chaperone store, a store of a newer version.

Example::

    sink = install_sink("jobs.duckdb")
    ...                         # supervised runs are recorded
    sink.role                   # "owner" or "forwarder"
    sink.close()                # flushes, stops serving or forwarding, removes the listener
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import itertools
import math
import os
import socket
import threading
import time
import weakref
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from .. import semconv as sc
from .._events import LifecycleRecord, add_listener, remove_listener
from .._health import DEFAULT_POLICY, HealthPolicy
from .._safety import record_internal_error
from ..exceptions import SinkError
from ..sink._forward import FORWARD_MAX_BATCH, FORWARD_MAX_BODY, encode_records, post_records
from ..sink._owner import StoreOwner
from ..sink._remote import TOKEN_ENV
from ..sink._store import InheritedStoreError, lock_holder, read_sidecar
from ..sink._writer import Writer

Role = Literal["owner", "forwarder"]

_BACKOFF_FIRST: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_HELD_REPORT_AFTER: Final = 5.0
"""Seconds a file may stay held by a process that serves no URL before it is reported
(a hand-over between owners takes well under that). Not less: a reader that reopens the
file many times a second (``open_sink()`` in a polling loop) is seen holding it at every
take-over attempt for over 2 s on a loaded machine (once in a CI run), though it lets go
between its reads and the records do get stored."""
_ORPHAN_GRACE: Final = 5.0
"""Seconds :meth:`EmbeddedSink.close` of a forked forwarder waits once no owner serves the
store and it cannot take the file over itself (its parent had it open: the parent was the
owner, and was killed). Another process may still open the store and take the records,
but a worker must not hold its exit for its whole close timeout (30 s, gunicorn's graceful
timeout) on the chance."""
_POST_TIMEOUT: Final = 15.0
"""Seconds one forwarded request may take (the owner answers within its 10 s ack wait)."""


_CLOSED_BY_PEER: Final = (
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
"""How a post fails on a keep-alive connection the owner closed while it was idle."""


def _held_elsewhere(error: SinkError) -> bool:
    """True when the file could not be opened because another process holds it."""
    cause = error.__cause__
    return cause is not None and lock_holder(cause) is not None


def _within_limit(
    batch: list[LifecycleRecord],
) -> tuple[list[LifecycleRecord], bytes | None]:
    """The head of ``batch`` whose encoding the owner takes (under ``FORWARD_MAX_BODY``),
    and that encoding; (``[record]``, None) when its first record alone is over it. The owner
    closes the connection on an over-large body, which looked like "owner gone": the same
    batch was sent again for ever, and no later record of the process was delivered."""
    body = encode_records(batch)
    while len(body) > FORWARD_MAX_BODY and len(batch) > 1:
        batch = batch[: len(batch) // 2]
        body = encode_records(batch)
    if len(body) > FORWARD_MAX_BODY:
        return batch, None
    return batch, body


class EmbeddedSink:
    """A lifecycle listener recording into a store file, as its owner or as a forwarder to
    the process that owns it (see the module doc).

    Args:
        path: the DuckDB file (created if missing).
        serve: as owner, serve the query API on 127.0.0.1 and write the sidecar (default
            True; without it no other process can forward here or read the live store).
        capacity: records held at most (the owner's writer queue, or a forwarder's memory).
        policy: health thresholds for the served scopes.
        service_name: stored with each run (``service.name``), as ``sink serve`` stores the
            service of an OTLP sender's resource; records here carry no resource.

    Attributes:
        path: the store file (absolute). url: the query URL this process serves, or None.
        owner: the :class:`~chaperone_otel.sink._owner.StoreOwner` while this process owns
            the file, else None.
        dropped: records refused because the queue was full, or refused by the store.

    Raises:
        SinkError: the file is not a chaperone store, or was written by a newer version
            (another process holding it is not an error: this one forwards).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        serve: bool = True,
        capacity: int = 100_000,
        policy: HealthPolicy = DEFAULT_POLICY,
        service_name: str | None = None,
    ) -> None:
        self.path = os.path.realpath(os.fspath(path))
        self._service = service_name
        self._serve = serve
        self._capacity = capacity
        self._policy = policy
        self.dropped = 0
        self.url: str | None = None
        self.owner: StoreOwner | None = None
        self._writer: Writer | None = None
        self._closed = False
        self._stopping = False
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: collections.deque[LifecycleRecord] = collections.deque()
        self._thread: threading.Thread | None = None
        self._target: tuple[str, str | None] | None = None
        """(URL, token) records are forwarded to; None: read the sidecar."""
        self._conn: http.client.HTTPConnection | None = None  # the forwarder's, for close()
        self._why = "no owner in time"  # why forwarding fails now, for close()'s report
        self._held_since: float | None = None  # since when a holder serves no URL
        # Since when no owner serves the store and this process may not open it (forked
        # from the owner, which has gone): close() then waits _ORPHAN_GRACE, not more.
        self._orphaned_since: float | None = None
        try:
            self._own()
        except SinkError as e:
            if not _held_elsewhere(e):
                raise
        add_listener(self)
        _instances.add(self)

    @property
    def role(self) -> Role:
        """``owner`` while this process holds the file, else ``forwarder``."""
        return "owner" if self._writer is not None else "forwarder"

    @property
    def sink(self) -> Any:
        """A :class:`~chaperone_otel.sink.Sink` over the live store: the owner's view (shares
        the connection), or for a forwarder the store opened by path (through its owner)."""
        if self.owner is not None:
            return self.owner.view
        from ..sink import open_sink  # noqa: PLC0415 - a forwarder's rare read

        return open_sink(self.path, policy=self._policy)

    @property
    def writer(self) -> Writer:
        """The store's writer (owner only)."""
        if self._writer is None:
            raise SinkError(f"this process forwards to the owner of {self.path}; it has no writer")
        return self._writer

    def _own(self) -> None:
        """Acquire the file and serve it; move what waits in memory to the writer.

        Raises:
            SinkError: the file cannot be acquired (held elsewhere, not a store …).
        """
        owner = StoreOwner(
            self.path, policy=self._policy, capacity=self._capacity, read_your_writes=True
        )
        try:
            url = owner.serve() if self._serve else None
        except BaseException:
            owner.close(timeout=5.0)
            raise
        with self._cond:
            stale = self._stopping  # closed while it acquired the file: never the owner then
            if not stale:
                self.owner, self._writer, self.url = owner, owner.writer, url
                waiting = tuple(self._pending)
                self._pending.clear()
                self._cond.notify_all()
        if stale:
            owner.close(timeout=5.0)
            return
        if waiting and not owner.writer.submit(waiting):
            self._count_dropped(len(waiting), "the writer's queue is full")

    def on_record(self, record: LifecycleRecord) -> None:
        """Queue one record for the writer or the forwarder (never blocks; a full queue is
        counted and reported)."""
        if self._closed:
            return
        if self._service is not None and sc.ATTR_SERVICE_NAME not in record.attributes:
            # A copy: the record is shared with the other listeners.
            record = dataclasses.replace(
                record, attributes={**record.attributes, sc.ATTR_SERVICE_NAME: self._service}
            )
        writer = self._writer
        if writer is None:
            with self._cond:
                writer = self._writer
                if writer is None:
                    if len(self._pending) >= self._capacity:
                        self._count_dropped(1, "the forwarding queue is full")
                    self._pending.append(record)
                    if len(self._pending) == 1 or len(self._pending) >= FORWARD_MAX_BATCH:
                        self._cond.notify_all()
                    if self._thread is None:
                        self._start_forwarding()
                    return
        if not writer.submit((record,)):
            self._count_dropped(1, "the writer's queue is full")

    def _count_dropped(self, n: int, why: str) -> None:
        self.dropped += n
        raise SinkError(
            f"record dropped for {self.path}: {why} ({self.dropped} so far): "
            "the store cannot keep up"
        )

    def _start_forwarding(self) -> None:
        # Under self._cond. A thread per process that forwards; a forked child starts its own.
        self._thread = threading.Thread(
            target=self._forward, name="chaperone-sink-forwarder", daemon=True
        )
        self._thread.start()

    def _next_batch(self) -> list[LifecycleRecord] | None:
        """The records to send next (kept in memory until stored); None: nothing more to
        do (stopping with nothing left, or this process owns the file now)."""
        with self._cond:
            while not self._pending and not self._stopping and self._writer is None:
                self._cond.wait()
            if self._writer is not None or not self._pending or self._stopping:
                return None  # owner now, nothing left, or closed: what is left is reported
            return list(itertools.islice(self._pending, FORWARD_MAX_BATCH))

    def _forward(self) -> None:
        try:
            self._forward_until_done()
        except Exception as exc:  # never expected: counted, and the next record restarts it
            record_internal_error("sink.forward", exc)
            with self._cond:
                self._thread = None

    def _forward_until_done(self) -> None:
        conn: http.client.HTTPConnection | None = None
        backoff = _BACKOFF_FIRST
        while (batch := self._next_batch()) is not None:
            status: int | None = None
            target = self._target or self._advertised()
            if target is not None:
                url, token = target
                batch, body = _within_limit(batch)
                try:
                    if body is None:
                        status = 413  # one record over the owner's limit: it cannot go
                    else:
                        if conn is not None:
                            try:
                                status = post_records(conn, token, body)
                            except _CLOSED_BY_PEER:
                                # The owner closes a keep-alive connection idle for 5 s
                                # (uvicorn's default) and a run may report less often: a
                                # closed connection says nothing of the owner. Once more,
                                # on a new one (records are idempotent); not after a
                                # timeout, which is the owner's.
                                conn.close()
                                conn = None
                        if conn is None:
                            parts = urlsplit(url)
                            conn = self._conn = http.client.HTTPConnection(
                                parts.hostname or "127.0.0.1", parts.port, timeout=_POST_TIMEOUT
                            )
                            status = post_records(conn, token, body)
                except (OSError, http.client.HTTPException):
                    status = None
                if status != 200 and conn is not None:
                    conn.close()
                    conn = None
                if status in (None, 401, 404):
                    self._target = None  # gone, or another owner now: read the sidecar again
                if status == 401:
                    self._why = (
                        f"the owner at {url} refused this process's token (401): set {TOKEN_ENV} "
                        "to the token it was given (`sink serve --token`)"
                    )
                    record_internal_error("sink.forward.token", SinkError(self._why))
            if status in (200, 400, 413):
                if status != 200:  # the owner refused these records for good
                    record_internal_error(
                        "sink.forward", SinkError(f"{len(batch)} records refused ({status})")
                    )
                with self._cond:
                    for _ in batch:
                        self._pending.popleft()
                    if status != 200:
                        self.dropped += len(batch)
                    self._cond.notify_all()
                backoff = _BACKOFF_FIRST
                self._held_since = self._orphaned_since = None
                continue
            if status is None and not self._stopping and self._take_over():
                break
            with self._cond:
                if not self._stopping or self._pending:
                    self._cond.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
        if conn is not None:
            conn.close()
        self._conn = None

    def _advertised(self) -> tuple[str, str | None] | None:
        owner = read_sidecar(self.path)
        if owner is None or owner.get("pid") == os.getpid():
            return None
        token = owner.get("token")  # an embedded owner's; `sink serve` takes its --token
        if not isinstance(token, str):
            token = os.environ.get(TOKEN_ENV) or None
        return owner["url"], token

    def _take_over(self) -> bool:
        """Become the owner if the file is free; False while another process holds it."""
        try:
            self._own()
        except SinkError as e:
            if not _held_elsewhere(e):
                record_internal_error("sink.takeover", e)
            elif isinstance(e.__cause__, InheritedStoreError):
                self._why = str(e)
                if self._advertised() is None:  # else an owner serves it: post there again
                    if self._orphaned_since is None:
                        self._orphaned_since = time.monotonic()
                    record_internal_error("sink.takeover.inherited", e)
                else:
                    self._orphaned_since = None
            else:
                self._report_holder(e)
            return False
        except Exception as e:  # a port, a sidecar: counted, tried again later
            record_internal_error("sink.takeover", e)
            return False
        return True

    def _report_holder(self, error: SinkError) -> None:
        """The file is held by a process that advertises no URL to forward to (a reader's
        ``open_sink()``, a crashed owner's file still locked): after a hand-over's while,
        say which process it is, once per spell, instead of retrying in silence."""
        if self._advertised() is not None:
            return  # an owner serves it: the next post goes there
        holder = lock_holder(error.__cause__) if error.__cause__ is not None else None
        who = f"process {holder}" if holder is not None and holder > 0 else "another process"
        self._why = (
            f"{self.path} is held by {who}, which serves no query URL to forward to (an "
            "open_sink() reader keeps the file open): close it, or query through an owner"
        )
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since >= _HELD_REPORT_AFTER:
            self._held_since = math.inf  # reported: not again until a post succeeds
            record_internal_error("sink.held", SinkError(self._why))

    def flush(self, timeout: float | None = None, *, orphan_grace: float | None = None) -> bool:
        """Wait until every record so far is committed, here or by the owner it was
        forwarded to (``False`` on timeout, or once no owner has served the store and this
        process could not take it over for ``orphan_grace`` seconds)."""
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        with self._cond:
            while self._pending and self._writer is None:
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return False
                if orphan_grace is not None:
                    orphaned = self._orphaned_since  # the grace counts from this call at most
                    if orphaned is not None and now - max(orphaned, began) >= orphan_grace:
                        return False
                    left = min(left if left is not None else 0.5, 0.5)  # and look again
                self._cond.wait(left)
            writer = self._writer
        if writer is None:
            return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return writer.flush(left)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop listening, send or write everything held, stop serving, release the file.

        A forwarder waits up to ``timeout`` for its records to be stored (by the owner, or
        by itself once it takes the file over); what is still held then is reported lost.
        """
        if self._closed:
            return
        remove_listener(self)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.flush(timeout, orphan_grace=_ORPHAN_GRACE)
        finally:
            self._closed = True
            with self._cond:
                self._stopping = True
                left = len(self._pending) if self._writer is None else 0
                self._cond.notify_all()
            if left:
                record_internal_error(
                    "sink.close",
                    SinkError(f"{left} records for {self.path} not stored: {self._why}"),
                )
            conn = self._conn
            if conn is not None and conn.sock is not None:
                with contextlib.suppress(OSError):  # a post blocked on a hung owner ends now
                    conn.sock.shutdown(socket.SHUT_RDWR)
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))
            if self.owner is not None:
                remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
                self.owner.close(remaining)

    def _forget_parent(self) -> None:
        """In a forked child: what the parent held is the parent's; records go to it."""
        parent = self.owner
        if parent is not None:
            _inherited.append(parent)  # never closed here, not even by the collector
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending = collections.deque()
        self._thread = None
        self._conn = None
        self._held_since = self._orphaned_since = None
        self._stopping = False
        self.owner = None
        self._writer = None
        self.url = None
        if parent is not None and parent.url is not None:
            self._target = (parent.url, parent.token)

    def __repr__(self) -> str:
        return f"<EmbeddedSink {self.path} {self.role} url={self.url}>"


_instances: weakref.WeakSet[EmbeddedSink] = weakref.WeakSet()
_inherited: list[StoreOwner] = []


def _in_child() -> None:
    for sink in list(_instances):
        try:
            sink._forget_parent()
        except Exception as exc:  # never break the child over it
            record_internal_error("sink.fork", exc)


os.register_at_fork(after_in_child=_in_child)


def install_sink(path: str | os.PathLike[str], **options: Any) -> EmbeddedSink:
    """Record every supervised run of this process in the DuckDB file at ``path``, as its
    owner or by forwarding to the process that owns it.

    Returns:
        The :class:`EmbeddedSink`; ``close()`` flushes and uninstalls it.

    Raises:
        SinkError: the file is not a chaperone store, or is of a newer version.
    """
    return EmbeddedSink(path, **options)
