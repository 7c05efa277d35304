"""The one writer of a store: a thread draining a bounded queue in bulk transactions.

DuckDB allows one writing process per file, and inside it concurrent writers would conflict
on the same ``jobs`` rows, so every write to a store goes through one :class:`Writer`:

* :meth:`Writer.submit` is quick and never blocks: it appends a batch of
  :class:`~chaperone_otel._events.LifecycleRecord` to the queue and returns ``True``, or returns
  ``False`` when the queue is full (the caller decides: the OTLP receiver answers 503 +
  ``Retry-After``, the embedded listener counts the record as dropped). Nothing is dropped
  silently: rejected records are counted in :attr:`WriterStats.rejected`.
* The thread takes up to ``batch_size`` queued records (waiting ``linger`` seconds for a batch
  to fill), stages them as Arrow tables and writes them with a few set-based statements in one
  transaction (:mod:`._ingest`). Ingest is idempotent: the same record twice, or batches in
  any order, give the same rows.
* **Durability promise**: a record for which ``submit`` returned ``True`` is written unless the
  process dies first: :meth:`close` writes everything queued before it returns, and
  :meth:`flush` returns ``True`` once every record submitted before the call is committed to
  the DuckDB file (a DuckDB commit is durable in its write-ahead log). A caller that must
  acknowledge only durable data calls ``submit`` then ``flush``.
* A batch that fails to write is split in halves and retried, so one bad record cannot take a
  batch down with it; records that still fail are counted in :attr:`WriterStats.dropped` and
  reported through ``_safety.record_internal_error``; the next :meth:`flush` raises
  :class:`~chaperone_otel.exceptions.SinkError` saying why.

Example::

    store = acquire("jobs.duckdb", read_only=False)
    writer = Writer(store)
    if not writer.submit(records):
        ...  # full: retry later
    writer.flush(timeout=5)
    writer.close()
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .._events import LifecycleRecord
from .._safety import record_internal_error
from ..exceptions import SinkError
from ._ingest import write
from ._records import stage
from ._schema import HEARTBEATS_PER_RUN
from ._store import Store

_MAX_RETRIES = 64


@dataclass(frozen=True)
class WriterStats:
    """Counters of one writer (the sink server exports them as fleet metrics).

    Attributes:
        accepted: records accepted by :meth:`Writer.submit`.
        rejected: records refused because the queue was full (the caller was told).
        written: records committed to the store.
        invalid: records skipped because they name no run (no run id).
        coerced: attribute values of a wrong type stored as NULL.
        dropped: accepted records that could not be written (should stay 0).
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
        self._queue: collections.deque[Sequence[LifecycleRecord]] = collections.deque()
        self._depth = 0  # records waiting in the queue
        self._inflight = 0  # records taken by the thread, not yet written
        self._submitted = 0  # records ever accepted (a ticket counter for flush)
        self._done = 0  # records processed (written, invalid or dropped)
        self._flushers = 0
        self._rejected = 0
        self._closing = False
        self._pending_error: str | None = None
        self._stats = WriterStats(capacity=capacity)
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

    def submit(self, records: Sequence[LifecycleRecord]) -> bool:
        """Queue ``records`` for writing; all or none.

        Returns:
            ``True`` when queued (see the durability promise in the module doc), ``False``
            when the queue is full; the records were then not taken and are counted as
            rejected. An empty batch is accepted trivially.

        Raises:
            SinkError: the writer is closed.
        """
        n = len(records)
        with self._cond:
            if self._closing:
                raise SinkError(f"the writer of {self._store.path} is closed")
            if n == 0:
                return True
            # An oversized batch is taken when the queue is empty, or it could never fit.
            held = self._depth + self._inflight
            if held and held + n > self._capacity:
                self._rejected += n
                return False
            was_empty = not self._depth
            self._queue.append(records)
            self._depth += n
            self._submitted += n
            # Wake the thread only when it may be idle or a batch is full: waking it per
            # record would defeat the linger and write tiny batches.
            if was_empty or self._depth >= self._batch_size:
                self._cond.notify_all()
            return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is committed.

        Returns:
            ``True`` when written, ``False`` on timeout.

        Raises:
            SinkError: a write failed since the last flush (records were dropped).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            ticket = self._submitted
            self._flushers += 1
            self._cond.notify_all()
            try:
                while self._done < ticket:
                    if not self._thread.is_alive():
                        raise SinkError(f"the writer of {self._store.path} is not running")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining if remaining is not None else 0.5)
            finally:
                self._flushers -= 1
            error, self._pending_error = self._pending_error, None
        if error is not None:
            raise SinkError(f"writing to {self._store.path} failed: {error}")
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

    def _take(self) -> list[LifecycleRecord] | None:
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
            chunk: list[LifecycleRecord] = []
            while self._queue and len(chunk) < self._batch_size:
                chunk.extend(self._queue.popleft())
            self._depth -= len(chunk)
            self._inflight = len(chunk)
            return chunk

    def _run(self) -> None:
        while True:
            chunk = self._take()
            if chunk is None:
                return
            written, invalid, coerced, dropped, batches = self._write(chunk, [_MAX_RETRIES])
            with self._cond:
                self._inflight = 0
                self._done += len(chunk)
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

    def _write(
        self, chunk: list[LifecycleRecord], budget: list[int]
    ) -> tuple[int, int, int, int, int]:
        """Write ``chunk``; on failure bisect while the retry budget lasts (a systemic failure
        such as a full disk must not cost thousands of attempts).

        Returns (written, invalid, coerced, dropped, batches)."""
        try:
            staged = stage(chunk)
            with self._store.write_lock:
                write(self._cursor, staged, heartbeat_limit=self._heartbeat_limit)
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
        with self._cond:
            self._pending_error = f"{type(error).__name__}: {error}"
            self._stats = replace(self._stats, last_error=self._pending_error)
        return 0, 0, 0, len(chunk), 0
