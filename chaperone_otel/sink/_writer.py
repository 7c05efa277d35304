"""The one writer of a store: a thread draining a bounded queue in bulk transactions.

DuckDB allows one writing process per file, and inside it concurrent writers would conflict
on the same ``jobs`` rows, so every write to a store goes through one :class:`Writer`:

* :meth:`Writer.submit` is quick and never blocks: it appends a batch of
  :class:`~chaperone_otel._events.LifecycleRecord` and
  :class:`~chaperone_otel.sink._records.SpanRecord` objects to the queue and returns its
  :class:`Ticket` (truthy), or returns ``None`` when the queue is full (the caller decides: the
  OTLP receiver answers 503 + ``Retry-After``, the embedded listener counts the record as
  dropped). Nothing is dropped silently: rejected records are counted in
  :attr:`WriterStats.rejected`.
* The thread takes up to ``batch_size`` queued records (waiting ``linger`` seconds for a batch
  to fill), stages them as Arrow tables and writes them with a few set-based statements in one
  transaction (:mod:`._ingest`). Ingest is idempotent: the same record twice, or batches in
  any order, give the same rows.
* **Durability promise**: a batch for which ``submit`` returned a ticket is written unless the
  process dies first or the write fails: :meth:`close` writes everything queued before it
  returns, and :meth:`wait` returns ``True`` once *that batch* is committed to the DuckDB file
  (a DuckDB commit is durable in its write-ahead log). A caller that must acknowledge only
  durable data calls ``submit`` then ``wait(ticket)``; :meth:`flush` is the barrier for
  "everything so far".
* **A submitted batch is committed all or none.** The thread writes several batches (several
  requests) in one transaction; if that transaction fails it is split in halves *at batch
  boundaries* and retried, so one bad batch cannot take the others down with it, and a batch
  is never split: a batch that still fails alone is dropped whole (no partial rows). Its
  ticket records why, so :meth:`wait` on *that* ticket raises :class:`RecordsDroppedError`
  (``permanent`` when the batch's own data was refused, e.g. a constraint or conversion error,
  so a retry of the same data cannot succeed; otherwise the failure is the store's, e.g. I/O,
  and a retry may). Drops are also counted in :attr:`WriterStats.dropped` and reported through
  ``_safety.record_internal_error``.

Example::

    store = acquire("jobs.duckdb", read_only=False)
    writer = Writer(store)
    ticket = writer.submit(records)
    if ticket is None:
        ...  # full: retry later
    writer.wait(ticket, timeout=5)  # True once committed; raises RecordsDroppedError if not
    writer.close()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import duckdb
import pyarrow as pa

from .._safety import record_internal_error
from ..exceptions import SinkError
from ._ingest import write
from ._records import IngestRecord, stage
from ._schema import HEARTBEATS_PER_RUN
from ._store import Store

_MAX_RETRIES = 64
_UNREPORTED_MAX = 1000

_DATA_ERRORS: Final[tuple[type[BaseException], ...]] = (
    duckdb.DataError,  # conversion, out of range, type mismatch
    duckdb.IntegrityError,  # constraint
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    ValueError,
    TypeError,
    ArithmeticError,
)
"""Failures caused by the data of the batch being written (retrying it cannot help), as
opposed to the store's own failures (I/O, memory, a closed or broken database). When unsure,
a failure is the store's: a needless retry costs little, a wrongly permanent answer loses
data the sender would have resent."""


_Counts = tuple[int, int, int, int, int]
"""(written, invalid, coerced, dropped, batches) of one write."""

_REOPEN_INTERVAL: Final = 1.0
"""Seconds between attempts to reopen an invalidated store (each attempt replays its log)."""


class Ticket:
    """One submitted batch: its place in the writer's order and, once written, its outcome.

    ``first`` and ``end`` are the global positions of its records (``end`` exclusive):
    everything submitted before it has a lower position and is written no later.

    Attributes:
        first: position of the batch's first record.
        end: one past the position of its last record.
        error: why the batch was dropped (``None`` while pending or when committed).
        permanent: the drop was caused by the batch's own data (a retry cannot succeed).
    """

    __slots__ = ("callbacks", "end", "error", "first", "permanent")

    def __init__(self, first: int, end: int) -> None:
        self.first = first
        self.end = end
        self.error: str | None = None
        self.permanent = False
        self.callbacks: list[Callable[[], object]] | None = None  # see Writer.when_done

    def __len__(self) -> int:
        return self.end - self.first

    def __bool__(self) -> bool:
        return True  # accepted, even when empty (``submit`` returns None when refused)

    def __repr__(self) -> str:
        return f"<Ticket [{self.first}, {self.end}) error={self.error!r}>"


class RecordsDroppedError(SinkError):
    """The batch of a :class:`Ticket` could not be stored; none of its records were.

    Attributes:
        ticket: the batch's ticket.
        permanent: its own data was refused (do not retry the same data); otherwise the
            store failed and a retry may succeed.
    """

    def __init__(self, message: str, ticket: Ticket) -> None:
        super().__init__(message)
        self.ticket = ticket
        self.permanent = ticket.permanent


@dataclass(frozen=True)
class WriterStats:
    """Counters of one writer (the sink server exports them as fleet metrics).

    Attributes:
        accepted: records accepted by :meth:`Writer.submit`.
        rejected: records refused because the queue was full (the caller was told).
        written: records committed to the store.
        invalid: records skipped because they name no run (no run id).
        coerced: attribute values of a wrong type stored as NULL.
        dropped: accepted records that could not be written (their batch's :meth:`Writer.wait`
            raised; should stay 0).
        batches: committed write transactions.
        queue_depth: records waiting (not yet taken by the thread).
        capacity: the bound on records held (waiting plus the batch being written).
        last_ingest: Unix time of the latest commit (0 before the first).
        last_error: text of the latest write failure, if any.
    """

    accepted: int = 0
    rejected: int = 0
    written: int = 0
    invalid: int = 0
    coerced: int = 0
    dropped: int = 0
    batches: int = 0
    queue_depth: int = 0
    capacity: int = 0
    last_ingest: float = 0.0
    last_error: str | None = None


class Writer:
    """The single writer thread of one store.

    Args:
        store: a writable :class:`~chaperone_otel.sink._store.Store`.
        capacity: queue bound, in records.
        batch_size: most records per write transaction.
        linger: seconds to wait for a batch to fill before writing a smaller one.
        heartbeat_limit: heartbeat rows kept per run (the latest).
        clock: Unix-seconds clock for ``last_ingest``.
    """

    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 100_000,
        batch_size: int = 20_000,
        linger: float = 0.05,
        heartbeat_limit: int = HEARTBEATS_PER_RUN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store.read_only:
            raise SinkError(f"{store.path} is open read-only: a writer needs read_only=False")
        if capacity < 1 or batch_size < 1 or heartbeat_limit < 1 or linger < 0:
            raise ValueError("capacity, batch_size and heartbeat_limit must be >= 1, linger >= 0")
        self._store = store
        self._capacity = capacity
        self._batch_size = batch_size
        self._linger = linger
        self._heartbeat_limit = heartbeat_limit
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._depth = 0  # records waiting in the queue
        self._inflight = 0  # records taken by the thread, not yet written
        self._submitted = 0  # records ever accepted (the position counter of tickets)
        self._done = 0  # records processed (written, invalid or dropped), in order
        self._flushers = 0
        self._rejected = 0
        self._closing = False
        # Drops not yet reported by flush(): (end position of the dropped batch, why).
        self._unreported: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=_UNREPORTED_MAX
        )
        self._stats = WriterStats(capacity=capacity)
        self._fatal: str | None = None
        self._reopened_at = 0.0  # monotonic time of the last reopen attempt
        self._cursor = store.cursor()
        self._thread = threading.Thread(target=self._run, name="chaperone-sink-writer", daemon=True)
        self._thread.start()

    @property
    def store(self) -> Store:
        return self._store

    @property
    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        with self._cond:
            return replace(
                self._stats,
                queue_depth=self._depth,
                accepted=self._submitted,
                rejected=self._rejected,
            )

    @property
    def fatal(self) -> str | None:
        """Why the database was invalidated (DuckDB's first fatal error, e.g. a checkpoint
        that met a full disk), or None. While set, no write can succeed: the writer reopens
        the file (at most once a second, when records arrive) and clears it once that works;
        ``/healthz`` reports it (503) meanwhile."""
        with self._cond:
            return self._fatal

    def submit(self, records: Sequence[IngestRecord]) -> Ticket | None:
        """Queue ``records`` for writing as one batch, committed all or none.

        Returns:
            The batch's :class:`Ticket` (truthy) when queued: pass it to :meth:`wait` to
            learn when it is committed, or that it was dropped (see the durability promise in
            the module doc). ``None`` when the queue is full; the records were then not taken
            and are counted as rejected. An empty batch is accepted trivially.

        Raises:
            SinkError: the writer is closed.
        """
        n = len(records)
        with self._cond:
            if self._closing:
                raise SinkError(f"the writer of {self._store.path} is closed")
            if n == 0:
                return Ticket(self._submitted, self._submitted)
            # An oversized batch is taken when the queue is empty, or it could never fit.
            held = self._depth + self._inflight
            if held and held + n > self._capacity:
                self._rejected += n
                return None
            was_empty = not self._depth
            ticket = Ticket(self._submitted, self._submitted + n)
            # A copy: the positions count these records, whatever the caller does with its list.
            self._queue.append(_Entry(tuple(records), ticket))
            self._depth += n
            self._submitted += n
            # Wake the thread only when it may be idle or a batch is full: waking it per
            # record would defeat the linger and write tiny batches.
            if was_empty or self._depth >= self._batch_size:
                self._cond.notify_all()
            return ticket

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """Wait until the batch of ``ticket`` (and everything submitted before it) is written.

        Only this batch's fate is reported: a failure of another batch written in the same
        transaction does not raise here (the writer retries the others without it).

        Returns:
            ``True`` when the batch is committed, ``False`` on timeout (it stays queued and
            is written later).

        Raises:
            RecordsDroppedError: the batch could not be stored; none of its records were.
            SinkError: the writer thread is not running.
        """
        if not self._await(ticket.end, timeout):
            return False
        with self._cond:
            error = ticket.error
        if error is not None:
            kind = "its data was refused" if ticket.permanent else "the store failed"
            raise RecordsDroppedError(
                f"{len(ticket)} record(s) not stored in {self._store.path} ({kind}): {error}",
                ticket,
            )
        return True

    def when_done(self, ticket: Ticket, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the batch of ``ticket`` is processed (committed or
        dropped; then :meth:`wait` with timeout 0 tells which), on the writer's thread, or at
        once if it already is. For an event loop that must not park a thread per waiting
        request (the sink server): the callback only hands the news to the loop. A callback
        that raises is counted, never stops the writer. Like :meth:`wait`, a pending callback
        makes the thread write without lingering."""
        with self._cond:
            if self._done < ticket.end:
                if ticket.callbacks is None:
                    ticket.callbacks = []
                ticket.callbacks.append(callback)
                self._flushers += 1
                self._cond.notify_all()
                return
        _call_back(callback)

    def flush(self, timeout: float | None = None, *, report: bool = True) -> bool:
        """Wait until everything submitted before this call is written.

        A barrier, not an acknowledgement of particular records: use :meth:`wait` with the
        ticket from :meth:`submit` for that. A drop is reported once, to the first ``flush``
        that returns after it and was called after its batch was submitted.

        Args:
            timeout: seconds to wait at most (``None``: no limit).
            report: ``False`` for a caller that only needs recent writes to be visible (a
                reader): it neither raises for drops nor takes the report from the caller
                that flushes to learn about them.

        Returns:
            ``True`` when written, ``False`` on timeout.

        Raises:
            SinkError: a batch submitted before this call was dropped since the last flush
                that reported one, or the writer thread is not running.
        """
        with self._cond:
            position = self._submitted
        if not self._await(position, timeout):
            return False
        if not report:
            return True
        with self._cond:
            mine = [why for end, why in self._unreported if end <= position]
            if mine:
                kept = [(end, why) for end, why in self._unreported if end > position]
                self._unreported.clear()
                self._unreported.extend(kept)
        if mine:
            more = f" (and {len(mine) - 1} more dropped batch(es))" if len(mine) > 1 else ""
            raise SinkError(f"writing to {self._store.path} failed: {mine[-1]}{more}")
        return True

    def _await(self, position: int, timeout: float | None) -> bool:
        """Wait until the records before ``position`` are processed; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushers += 1  # someone waits: the thread writes without lingering
            self._cond.notify_all()
            try:
                while self._done < position:
                    if not self._thread.is_alive():
                        raise SinkError(f"the writer of {self._store.path} is not running")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining if remaining is not None else 0.5)
            finally:
                self._flushers -= 1
        return True

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the thread (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SinkError(
                f"the writer of {self._store.path} did not finish within {timeout}s "
                f"({self._depth} records still queued)"
            )
        self._cursor.close()

    # --- the thread ------------------------------------------------------------------------

    def _take(self) -> list[_Entry] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None  # closing and drained
            if (
                self._depth < self._batch_size
                and not self._closing
                and not self._flushers
                and self._linger > 0
            ):
                self._cond.wait(self._linger)
            # Whole batches only: a batch is committed all or none.
            chunk: list[_Entry] = []
            n = 0
            while self._queue and n < self._batch_size:
                entry = self._queue.popleft()
                chunk.append(entry)
                n += len(entry.records)
            self._depth -= n
            self._inflight = n
            return chunk

    def _run(self) -> None:
        while True:
            chunk = self._take()
            if chunk is None:
                return
            if self._recover():
                counts = self._write(chunk, [_MAX_RETRIES])
            else:  # the database is invalidated: refuse with its cause, write nothing
                counts = self._drop(chunk, f"the store must be reopened: {self._fatal}")
            written, invalid, coerced, dropped, batches = counts
            callbacks: list[Callable[[], object]] = []
            with self._cond:
                self._inflight = 0
                self._done += sum(len(entry.ticket) for entry in chunk)
                for entry in chunk:
                    if entry.ticket.callbacks:
                        callbacks.extend(entry.ticket.callbacks)
                        self._flushers -= len(entry.ticket.callbacks)
                        entry.ticket.callbacks = None
                s = self._stats
                self._stats = replace(
                    s,
                    written=s.written + written,
                    invalid=s.invalid + invalid,
                    coerced=s.coerced + coerced,
                    dropped=s.dropped + dropped,
                    batches=s.batches + batches,
                    last_ingest=self._clock() if batches else s.last_ingest,
                )
                self._cond.notify_all()
            for callback in callbacks:  # outside the lock: a callback may call wait()
                _call_back(callback)

    def _write(self, chunk: list[_Entry], budget: list[int]) -> _Counts:
        """Write ``chunk`` (whole batches) in one transaction; on failure bisect at batch
        boundaries while the retry budget lasts (a systemic failure such as a full disk must
        not cost thousands of attempts). A batch is never split, so a dropped batch leaves no
        rows, and its ticket alone carries the error.

        Returns (written, invalid, coerced, dropped, batches)."""
        try:
            staged = stage([record for entry in chunk for record in entry.records])
            with self._store.write_lock:
                write(
                    self._cursor,
                    staged,
                    heartbeat_limit=self._heartbeat_limit,
                    open_runs=self._store.open_runs,
                )
            return staged.records, staged.invalid, staged.coerced, 0, 1
        except Exception as exc:
            error: Exception = exc
        if len(chunk) > 1 and budget[0] > 0:
            budget[0] -= 1
            mid = len(chunk) // 2
            a = self._write(chunk[:mid], budget)
            b = self._write(chunk[mid:], budget)
            return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])
        record_internal_error("sink.write", error)
        why = f"{type(error).__name__}: {error}"
        # Only a batch that failed alone is known to be refused for its own data; batches
        # dropped together once the budget ran out may be innocent, so a retry may succeed.
        permanent = len(chunk) == 1 and isinstance(error, _DATA_ERRORS)
        if isinstance(error, duckdb.FatalException):
            with self._cond:
                self._fatal = self._fatal or why  # the first one names the cause
        return self._drop(chunk, why, permanent=permanent)

    def _drop(self, chunk: list[_Entry], why: str, *, permanent: bool = False) -> _Counts:
        with self._cond:
            for entry in chunk:
                entry.ticket.error = why
                entry.ticket.permanent = permanent
                self._unreported.append((entry.ticket.end, why))
            self._stats = replace(self._stats, last_error=why)
        return 0, 0, 0, sum(len(entry.records) for entry in chunk), 0

    def _recover(self) -> bool:
        """After DuckDB invalidated the database: reopen the store (at most once per
        :data:`_REOPEN_INTERVAL`), so writes resume once the cause (a full disk) is gone.
        True when the store is usable."""
        if self._fatal is None:
            return True
        now = time.monotonic()
        if now - self._reopened_at < _REOPEN_INTERVAL:
            return False
        self._reopened_at = now
        try:
            with self._store.write_lock:
                self._store.reopen()
                self._cursor = self._store.cursor()
        except SinkError:
            return False  # still failing: keep the first cause
        with self._cond:
            self._fatal = None
        return True


async def committed_within(writer: Writer, ticket: Ticket, timeout: float) -> bool:
    """``writer.wait(ticket, timeout)`` without parking a thread: the writer calls back when
    the batch is processed and the loop is woken. Waiting in the shared thread pool (40
    threads) made the 41st waiting request, and ``/metrics`` and the query API behind it,
    wait for a thread before it even started waiting: answers came at multiples of the
    timeout exactly when the store was slow. True when committed, False on timeout; raises
    as :meth:`Writer.wait` does for a dropped batch."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def wake() -> None:  # on the writer's thread
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(resolve)

    writer.when_done(ticket, wake)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return False
    return writer.wait(ticket, 0)


def _call_back(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception as exc:
        record_internal_error("sink.callback", exc)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A queued batch and its ticket."""

    records: Sequence[IngestRecord]
    ticket: Ticket
