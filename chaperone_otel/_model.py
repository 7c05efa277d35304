"""The value types a run is described by: :class:`JobState` snapshots and :class:`Violation`.

Immutable and free of behaviour, so hooks, ``Supervision.snapshot()``, the monitor and tests
can share them across threads. (The live, mutable state of a run is ``_run.Run``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._events import AttributeValue
from ._health import Health


@dataclass(frozen=True, slots=True)
class Violation:
    """A resource limit crossed by a run.

    Attributes:
        limit: ``memory`` (bytes), ``cpu`` (percent of one core), ``fds`` or ``timeout`` (s).
        value: the limit.
        actual: what was measured.
        at: Unix seconds.
        policy: the run's policy when it happened.
    """

    limit: str
    value: float
    actual: float
    at: float
    policy: str


@dataclass(frozen=True, slots=True)
class JobState:
    """An immutable snapshot of a run, as hooks and ``Supervision.snapshot()`` see it."""

    id: str
    name: str
    queue: str
    attempt: int
    status: str
    health: Health
    stuck: bool
    started_at: float
    finished_at: float | None
    duration: float
    heartbeat_interval: float
    heartbeat_count: int
    last_heartbeat: float
    heartbeat_age: float
    missed_heartbeats: int
    timeout_at: float | None
    progress: float
    current: float | None
    total: float | None
    phase: str | None
    rate: float | None
    throughput: float | None
    eta: float | None
    memory: int | None
    memory_peak: int | None
    cpu_percent: float | None
    fds: int | None
    memory_limit: int | None
    cpu_limit: float | None
    fd_limit: int | None
    violations: tuple[Violation, ...]
    metadata: Mapping[str, Any]
    error_type: str | None = None
    error_message: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    parent_run_id: str | None = None
    """The id of the supervised run this one was started in (None: a top-level run)."""
    stuck_since: float | None = None
    """When the run first became stuck (Unix seconds), None if it never was."""
    stuck_seconds: float | None = None
    """Seconds the run has been stuck, all spells added up, None if it never was."""
    cpu_scope: str | None = None
    """What ``cpu_percent`` measured: ``thread``, ``process`` or ``shared`` (not its own)."""

    @property
    def percent(self) -> float:
        """Progress 0..100 (the seed's ``progress``)."""
        return self.progress * 100.0

    def is_healthy(self) -> bool:
        """True when the run is judged healthy."""
        return self.health == "healthy"
