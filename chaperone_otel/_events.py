"""Lifecycle records and the listener registry: the runtime's one output channel.

A run publishes a :class:`LifecycleRecord` when it starts, at each coalesced heartbeat (or
liveness beat), at progress milestones, on a violation, on a health change and when it
finishes. Each record carries the *whole* current state of the run as flat OTel attributes
(names from :mod:`~chaperone_otel.semconv`), so any one record is enough to upsert the run's
row: the sink never needs an earlier record to make sense of a later one, and repeated or
reordered delivery is resolved by ``chaperone.job.sequence``.

Listeners are peers: the OTel writer (``_otel``), the embedded DuckDB sink
(``export/_sink.py``) and test captures all receive the same records. This is how the
supervisor stays free of duckdb and the OTel SDK (STYLE.md §1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._safety import internal_error

AttributeValue = str | bool | int | float | Sequence[str]


@dataclass(slots=True)
class LifecycleRecord:
    """One lifecycle event of one run. Read-only by convention: one record is shared by
    every listener. (Not a frozen dataclass: its ``__init__`` sets each field through
    ``object.__setattr__``, ~1 us a record, paid twice per run and at every flush; and the
    attribute mapping it carries could be changed anyway.)

    Attributes:
        event_name: one of :data:`chaperone_otel.semconv.LIFECYCLE_EVENTS`.
        timestamp: Unix seconds.
        attributes: the run's full state, flat, semconv names.
        trace_id: the run span's trace id (0 if not recording).
        span_id: the run span's span id (0 if not recording).
        severity: ``INFO``, ``WARN`` or ``ERROR``.
        body: a short human-readable line.
        context: the OTel context of the run span (in-process only; never serialised).
        event_attributes: the event's own attributes (a heartbeat's calls, a violation's
            limit, a health change's previous verdict …), also present in ``attributes``;
            what a writer puts on the run span's event of the same name, so the log record
            and the span event say the same (in-process only; None for started/finished,
            and for records decoded from OTLP).
    """

    event_name: str
    timestamp: float
    attributes: Mapping[str, AttributeValue]
    trace_id: int = 0
    span_id: int = 0
    severity: str = "INFO"
    body: str = ""
    context: Any = field(default=None, compare=False, repr=False)
    event_attributes: Mapping[str, AttributeValue] | None = field(
        default=None, compare=False, repr=False
    )


@runtime_checkable
class RecordListener(Protocol):
    """Receives every lifecycle record. Must be quick and must not block: it runs on the
    job's thread (started/finished) or the monitor thread (everything else)."""

    def on_record(self, record: LifecycleRecord) -> None:
        """Handle one record. Exceptions are swallowed and counted, never reach the job."""


Receiver = tuple[str, Callable[[LifecycleRecord], None]]
"""A listener's ``on_record``, with the place name its failures are counted under."""


def receivers(event_name: str) -> tuple[Receiver, ...]:
    """The listeners that will use a record of this kind (empty: build nothing).

    A listener may define ``wants(event_name) -> bool`` (the OTel writer asks its logger's
    ``enabled()``); one without it wants everything. Runs skip building records nobody
    consumes — the full-state attribute dict is the costliest part of a run's start and
    end — and :func:`publish` delivers a record only to the listeners that wanted it, so a
    listener is asked once per record, not once here and again in its ``on_record``.

    Asked again for every record, never cached: the logs API documents that ``enabled()``
    may change its answer at any time (a processor added, a logger reconfigured), so its
    callers must ask each time they would emit. What is cached is the registry's shape (at
    registration), so the common cases cost one loop over a tuple, with a ``try`` that costs
    nothing until a listener fails.
    """
    nobody_asks, everyone, entries = _registry  # one read: registration replaces it whole
    if nobody_asks:
        return everyone
    wanting: list[Receiver] = []
    for where, wants, on_record in entries:
        if wants is not None:
            try:
                if not wants(event_name):
                    continue
            except Exception as exc:
                internal_error(where, exc)
                continue
        wanting.append((where, on_record))
    return tuple(wanting)


_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # The parent's lock may have been held by another thread at fork: a copy held forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
_listeners: tuple[RecordListener, ...] = ()
_Entry = tuple[str, Callable[[str], object] | None, Callable[[LifecycleRecord], None]]
# Derived from _listeners at (un)registration, in one tuple so a reader gets a consistent
# view in one read: (no listener has wants(), every receiver, (where, wants, on_record)...).
_registry: tuple[bool, tuple[Receiver, ...], tuple[_Entry, ...]] = (True, (), ())


def _derive() -> None:
    global _registry
    entries = tuple(
        (f"listener:{type(x).__name__}", getattr(x, "wants", None), x.on_record) for x in _listeners
    )
    everyone = tuple((where, on_record) for where, _, on_record in entries)
    _registry = (all(wants is None for _, wants, _ in entries), everyone, entries)


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


def publish(record: LifecycleRecord, to: tuple[Receiver, ...] | None = None) -> None:
    """Deliver ``record`` to ``to`` (what :func:`receivers` gave for its event), by default
    to every listener that wants it; one failing listener does not stop the others."""
    for where, on_record in receivers(record.event_name) if to is None else to:
        try:
            on_record(record)
        except Exception as exc:
            internal_error(where, exc)
