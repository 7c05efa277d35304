"""Lifecycle records and the listener registry: the runtime's one output channel.

A run publishes a :class:`LifecycleRecord` when it starts, at each coalesced heartbeat (or
liveness beat), at progress milestones, on a violation, on a health change and when it
finishes. Each record carries the *whole* current state of the run as flat OTel attributes
(names from :mod:`~chaperone_otel.semconv`), so any one record is enough to upsert the run's
row: the sink never needs an earlier record to make sense of a later one, and repeated or
reordered delivery is resolved by ``chaperone.job.sequence``.

Listeners are peers: the OTel log writer (``_otel``), the embedded DuckDB sink
(``export/_sink.py``) and test captures all receive the same records. This is how the
supervisor stays free of duckdb and the OTel SDK (STYLE.md §1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._safety import handle_internal_errors, internal_error

AttributeValue = str | bool | int | float | Sequence[str]


@dataclass(frozen=True, slots=True)
class LifecycleRecord:
    """One lifecycle event of one run.

    Attributes:
        event_name: one of :data:`chaperone_otel.semconv.LIFECYCLE_EVENTS`.
        timestamp: Unix seconds.
        attributes: the run's full state, flat, semconv names.
        trace_id: the run span's trace id (0 if not recording).
        span_id: the run span's span id (0 if not recording).
        severity: ``INFO``, ``WARN`` or ``ERROR``.
        body: a short human-readable line.
        context: the OTel context of the run span (in-process only; never serialised).
    """

    event_name: str
    timestamp: float
    attributes: Mapping[str, AttributeValue]
    trace_id: int = 0
    span_id: int = 0
    severity: str = "INFO"
    body: str = ""
    context: Any = field(default=None, compare=False, repr=False)


@runtime_checkable
class RecordListener(Protocol):
    """Receives every lifecycle record. Must be quick and must not block: it runs on the
    job's thread (started/finished) or the monitor thread (everything else)."""

    def on_record(self, record: LifecycleRecord) -> None:
        """Handle one record. Exceptions are swallowed and counted, never reach the job."""


def wanted(event_name: str) -> bool:
    """True if some listener will use a record of this kind.

    A listener may define ``wants(event_name) -> bool`` (the OTel writer asks its logger's
    ``enabled()``); one without it wants everything. Runs skip building records nobody
    consumes — the full-state attribute dict is the costliest part of a run's start and end.

    Asked again for every record, never cached per run: the logs API documents that
    ``enabled()`` may change its answer at any time (a processor added, a logger
    reconfigured), so its callers must ask each time they would emit. What is cached is
    which listeners have a ``wants()`` (at registration), so a call is one loop over bound
    methods with a ``try`` that costs nothing until a listener fails.
    """
    wanting = _wants  # one read: registration may replace it concurrently
    if wanting is None:
        return True
    for where, wants in wanting:
        try:
            if wants(event_name):
                return True
        except Exception as exc:
            internal_error(where, exc)
    return False


_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # The parent's lock may have been held by another thread at fork: a copy held forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
_listeners: tuple[RecordListener, ...] = ()
# Derived from _listeners at (un)registration: the ``wants`` methods, each with the place
# name its failures are counted under; None when some listener wants everything.
_wants: tuple[tuple[str, Callable[[str], object]], ...] | None = ()


def _derive() -> None:
    global _wants
    wants: list[tuple[str, Callable[[str], object]]] = []
    for listener in _listeners:
        method = getattr(listener, "wants", None)
        if method is None:
            _wants = None
            return
        wants.append((f"listener:{type(listener).__name__}", method))
    _wants = tuple(wants)


def add_listener(listener: RecordListener) -> None:
    """Register ``listener`` (idempotent)."""
    global _listeners
    if not isinstance(listener, RecordListener):
        raise TypeError(f"{listener!r} has no on_record(record) method")
    with _lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)
            _derive()


def remove_listener(listener: RecordListener) -> None:
    """Unregister ``listener`` (no error if absent)."""
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x is not listener)
        _derive()


def listeners() -> tuple[RecordListener, ...]:
    """The registered listeners, in registration order."""
    return _listeners


def publish(record: LifecycleRecord) -> None:
    """Deliver ``record`` to every listener; one failing listener does not stop the others."""
    for listener in _listeners:  # a tuple snapshot: registration may change concurrently
        with handle_internal_errors(f"listener:{type(listener).__name__}"):
            listener.on_record(record)
