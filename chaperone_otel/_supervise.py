"""Supervised job runs: ``@supervised``, ``with supervised(...)``, the ``Supervised`` base class.

A *run* is one execution (one attempt) of a job. Starting one opens an OTel span, registers
the run with the process's monitor thread and publishes a ``chaperone.job.started`` record;
ending it records the outcome on the span, publishes ``chaperone.job.finished`` and ends the
span. In between, :meth:`Supervision.heartbeat` and :meth:`Supervision.report_progress` only
touch in-memory fields (a few hundred nanoseconds); the monitor thread turns that state into
coalesced records, span events, samples, limit checks and health verdicts.

Example::

    from chaperone_otel import supervised, heartbeat, report_progress

    @supervised(queue="imports", heartbeat_interval=30, memory_limit="2GiB")
    def import_file(path):
        rows = load(path)
        for i, row in enumerate(rows, 1):
            save(row)
            report_progress(i, len(rows))

    with supervised("nightly.rebuild", timeout="2h") as run:
        for batch in run.track(batches()):
            rebuild(batch)

Only ``opentelemetry-api`` is imported here (the OTel rule for libraries).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import math
import os
import random
import socket
import sys
import threading
import time
import traceback
import types
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, ParamSpec, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import semconv as sc
from ._config import LIMIT_POLICIES, Config, Hooks, LimitPolicy, get_config, validate_interval
from ._events import AttributeValue, LifecycleRecord, Receiver, publish, receivers
from ._health import Health, SignalValue
from ._resources import thread_cpu_clock
from ._safety import internal_error
from ._units import parse_bytes, parse_duration
from ._version import __version__
from .exceptions import ConfigurationError, JobLimitExceeded, NoActiveJobError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_current: contextvars.ContextVar[Supervision | None] = contextvars.ContextVar(
    "chaperone_otel_current_job", default=None
)

_HOST: Final = socket.gethostname()
STATUSES: Final = ("pending", "running", "completed", "failed", "cancelled")

_EVENT_WORDS: Final = {event: event.rsplit(".", 1)[-1] for event in sc.LIFECYCLE_EVENTS}
"""The last word of each lifecycle event name, for record bodies ("etl.load started")."""


def _new_instance_id() -> str:
    return str(uuid.uuid4())


_instance_id = _new_instance_id()
_pid = os.getpid()  # getpid() is a system call; records read it twice per run
_random_bits = random.getrandbits


def _after_fork_in_child() -> None:
    global _instance_id, _pid, _tls
    _instance_id = _new_instance_id()
    _pid = os.getpid()
    _tls = threading.local()  # per-thread CPU clocks: the child's thread has a new one


os.register_at_fork(after_in_child=_after_fork_in_child)


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

    @property
    def percent(self) -> float:
        """Progress 0..100 (the seed's ``progress``)."""
        return self.progress * 100.0

    def is_healthy(self) -> bool:
        """True when the run is judged healthy."""
        return self.health == "healthy"


# --------------------------------------------------------------------------------------------
# The run handle.
# --------------------------------------------------------------------------------------------


class Supervision:
    """The handle of one supervised run (what ``with supervised(...) as run`` gives you).

    ``heartbeat()``, ``report_progress()`` and ``track()`` are safe to call from the run's
    own thread or task at any rate; everything else in here is read by the monitor thread.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_absent",
        "_cancel",
        "_clock",
        "_cpu_clock",
        "_cpu_prev",
        "_decile",
        "_first_progress",
        "_flush_now",
        "_flushed_phase",
        "_flushed_progress_at",
        "_hb_calls",
        "_hb_counted",
        "_hb_flushed",
        "_last_ratio",
        "_lo",
        "_lock",
        "_loop",
        "_meta",
        "_next_flush",
        "_observed",
        "_phases",
        "_seq",
        "_task",
        "_timed_out",
        "_violated",
        "_wake",
        "_width",
        "attempt",
        "attributes",
        "cpu_limit",
        "cpu_percent",
        "error_message",
        "error_stacktrace",
        "error_type",
        "fd_limit",
        "fds",
        "finished_at",
        "health",
        "heartbeat_interval",
        "hooks",
        "id",
        "last_heartbeat",
        "memory",
        "memory_limit",
        "memory_peak",
        "missed",
        "name",
        "on_limit",
        "otel_context",
        "phase",
        "progress_current",
        "progress_total",
        "progress_updated_at",
        "queue",
        "span",
        "stall_timeout",
        "started_at",
        "status",
        "stuck",
        "timeout",
        "timeout_at",
        "violations",
    )

    def __init__(
        self,
        spec: _Spec,
        static: _Static,
        *,
        run_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        # Every slot is set here (a slot has no class-level default); what only depends on
        # the spec and the configuration comes precomputed in ``static`` (see _static()).
        self._clock = clock = static.config.clock
        self.id = run_id or spec.supervision_id or _uuid4()
        self.name = static.name
        self.queue = static.queue
        self.attempt = attempt or spec.attempt or 1
        self.heartbeat_interval = static.heartbeat_interval
        self.timeout = spec.timeout
        self.stall_timeout = spec.stall_timeout
        self.memory_limit = spec.memory_limit
        self.cpu_limit = spec.cpu_limit
        self.fd_limit = spec.fd_limit
        self.on_limit: str = static.on_limit
        self.attributes = dict(spec.attributes) if spec.attributes else {}
        self.hooks = static.hooks
        self._absent = static.absent
        self.status = "pending"
        now = clock()
        self.started_at = now
        self.finished_at: float | None = None
        self.timeout_at = now + self.timeout if self.timeout else None
        self.last_heartbeat = now
        self._hb_calls = 0
        self._hb_flushed = 0  # calls carried by heartbeat records so far (monitor)
        self._hb_counted = 0  # calls added to the heartbeats counter so far (monitor)
        self._meta: dict[str, Any] | None = None
        self.progress_current: float | None = None
        self.progress_total: float | None = None
        self.progress_updated_at = now
        # What observe(started_at) would record: a run starts observed, nothing moved yet.
        self._observed: tuple[object, ...] = (0, None, None, None)
        self._last_ratio = 0.0
        self._first_progress: tuple[float, float, float] | None = None  # (at, ratio, current)
        self.phase: str | None = None
        self._phases: Mapping[str, tuple[float, float]] = _NO_PHASES
        self._lo = 0.0  # the current phase's share of 0..1: [_lo, _lo + _width]
        self._width = 1.0
        self.memory: int | None = None
        self.memory_peak: int | None = None
        self.cpu_percent: float | None = None
        self.fds: int | None = None
        self.violations: list[Violation] = []
        self.health: Health = "healthy"
        self.stuck = False
        self.missed = 0
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.error_stacktrace: str | None = None
        self._cancel: JobLimitExceeded | None = None
        self._flush_now = False
        self._seq = 0  # the last record's sequence number (see record_attributes)
        self._lock = threading.RLock()
        self._cpu_clock: int | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: Callable[[], None] = _noop
        self.span: Span = trace.INVALID_SPAN
        self.otel_context: otel_context.Context | None = None
        # The monitor's memory of this run between passes (only the monitor, or the
        # finishing thread under the lock, writes them).
        self._next_flush = now + static.flush_period
        self._flushed_progress_at = now
        self._decile = 0
        self._flushed_phase: str | None = None
        self._violated: set[str] | None = None  # limit types already recorded
        self._cpu_prev: tuple[float, float] | None = None  # (monotonic, thread cpu seconds)
        self._timed_out = False

    # ---- hot path ------------------------------------------------------------------------

    def heartbeat(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Say the job is alive. O(1): only in-memory state changes here.

        Args:
            metadata: diagnostic values (the latest wins; merged with ``fields``).
            **fields: more metadata as keywords (``heartbeat(batch=7)``).

        Raises:
            JobLimitExceeded: a limit was crossed and the run's policy is ``cancel``.
        """
        # No clock read here: the monitor stamps the time when it sees the count move, which
        # keeps this call under a tqdm update(1) (bench/bench_runtime.py).
        self._hb_calls += 1
        if metadata is not None or fields:
            self._set_meta(metadata, fields)
        if self._cancel is not None:
            self._raise_cancel()
        if self._hb_calls == 1:
            self._wake()

    def report_progress(
        self,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> None:
        """Report ``current`` of ``total`` items done (also counts as a sign of life).

        The overall ratio is ``current / total``, clamped to 0..1; inside a declared phase
        (:meth:`phases`) it is mapped into that phase's share of the run. ``phase`` (or a
        ``"phase"`` key in ``metadata``) switches phase.

        Raises:
            ValueError: ``current`` or ``total`` is negative or NaN, or ``total == 0`` while
                ``current > 0``.
            JobLimitExceeded: a limit was crossed and the run's policy is ``cancel``.
        """
        if not (current >= 0 and total >= 0):  # also rejects NaN
            raise ValueError(
                f"report_progress({current!r}, {total!r}): current and total must be "
                "non-negative numbers"
            )
        if current > total and total == 0:  # checked before anything is stored
            raise ValueError(
                f"report_progress({current!r}, 0): total is 0 but current is not; pass the "
                "real total (or 0, 0 for an empty batch)"
            )
        if fields or metadata is not None:
            self._progress_extras(metadata, fields)
        # The common path stores two numbers; the ratio is derived on read and the monitor
        # stamps when they changed (no clock read per call). A report that repeats the same
        # numbers is not a new sign of life: call heartbeat() to say "alive, no progress".
        self.progress_current = current
        self.progress_total = total
        if self._cancel is not None:
            self._raise_cancel()

    def _progress_extras(self, metadata: Mapping[str, Any] | None, fields: dict[str, Any]) -> None:
        # `phase=` arrives in **fields (a keyword-only parameter would cost every call).
        phase = fields.pop("phase", None)
        if metadata is not None or fields:
            self._set_meta(metadata, fields)
        if phase is None and metadata is not None:
            phase = metadata.get("phase")
        if phase is not None and not isinstance(phase, str):
            raise TypeError(f"phase must be a str, got {phase!r}")
        if phase is not None and phase != self.phase:
            self._enter_phase(phase)

    @property
    def progress_ratio(self) -> float:
        """Overall progress 0..1: ``current / total`` (clamped) mapped into the phase's share."""
        current, total = self.progress_current, self.progress_total
        if current is None or total is None:
            inner = 0.0
        elif total == 0 or current >= total:
            inner = 1.0
        else:
            inner = current / total
        return self._lo + self._width * inner

    def observe(self, now: float) -> bool:
        """Stamp ``last_heartbeat`` / ``progress_updated_at`` if the job moved since the last
        look (monitor thread, and at start/finish). Returns True when it had."""
        seen = (
            self._hb_calls,
            self.progress_current,
            self.progress_total,
            self.phase,
        )
        if seen == self._observed:
            return False
        self._observed = seen
        self.last_heartbeat = now
        ratio = self.progress_ratio
        if self._first_progress is None and self.progress_current is not None:
            self._first_progress = (now, ratio, self.progress_current)
        if ratio != self._last_ratio:
            self._last_ratio = ratio
            self.progress_updated_at = now
        return True

    def track(
        self, iterable: Iterable[T], total: float | None = None, *, phase: str | None = None
    ) -> Iterator[T]:
        """Iterate ``iterable``, reporting progress after each item (like tqdm).

        ``total`` defaults to ``len(iterable)`` where it has one; without a total the run
        still heartbeats per item and reports ``current`` with an unknown total.
        """
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if total is not None and not total >= 0:
            raise ValueError(f"track(total={total!r}): total must be a non-negative number")
        if phase is not None:
            self._enter_phase(phase)
        return self._track(iterable, total)

    def _track(self, iterable: Iterable[T], total: float | None) -> Iterator[T]:
        # An item is reported done when the consumer asks for the next one (as tqdm does).
        self.progress_current = 0
        self.progress_total = total
        for count, item in enumerate(iterable, 1):
            yield item
            self.progress_current = count
            if self._cancel is not None:
                self._raise_cancel()

    # ---- phases --------------------------------------------------------------------------

    def phases(
        self, spec: Mapping[str, float | tuple[float, float]] | None = None, /, **weights: float
    ) -> None:
        """Declare the run's phases so per-phase progress maps into overall progress.

        Either weights (``run.phases(fetch=1, validate=1, process=1.6, cleanup=0.4)``: each
        phase gets its share of 0..1 in declaration order) or explicit percent ranges as in
        the seed's multi-phase example
        (``run.phases({"fetch": (0, 25), "validate": (25, 50), "process": (50, 90)})``).
        """
        items = dict(spec or {}, **weights)
        if not items:
            raise ConfigurationError("phases(): declare at least one phase")
        ranges: dict[str, tuple[float, float]] = {}
        if all(isinstance(v, tuple) for v in items.values()):
            for name, value in items.items():
                lo, hi = cast(tuple[float, float], value)
                if not 0 <= lo < hi <= 100:
                    raise ConfigurationError(
                        f"phase {name!r}: range {value!r} must satisfy 0 <= start < end <= 100"
                    )
                ranges[name] = (lo / 100.0, hi / 100.0)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items.values()):
            total = float(sum(cast(float, v) for v in items.values()))
            if total <= 0 or any(cast(float, v) < 0 for v in items.values()):
                raise ConfigurationError("phases(): weights must be non-negative, not all zero")
            acc = 0.0
            for name, value in items.items():
                share = cast(float, value) / total
                ranges[name] = (acc, min(1.0, acc + share))
                acc += share
        else:
            raise ConfigurationError(
                "phases(): give all weights (numbers) or all (start, end) percent ranges"
            )
        self._phases = ranges

    def phase_scope(self, name: str) -> _PhaseScope:
        """``with run.phase_scope("validate"):`` enters a phase and completes it on exit."""
        return _PhaseScope(self, name)

    def _enter_phase(self, name: str) -> None:
        if self._phases and name not in self._phases:
            raise ValueError(
                f"unknown phase {name!r}; declared phases are {', '.join(self._phases)}"
            )
        lo_hi = self._phases.get(name)
        if lo_hi is not None:
            self._lo, self._width = lo_hi[0], lo_hi[1] - lo_hi[0]
        self.phase = name
        self.progress_current = None  # the new phase starts at its lower bound
        self.progress_total = None
        self._flush_now = True
        self._wake()

    def _complete_phase(self) -> None:
        self.progress_current = self.progress_total = 1

    # ---- helpers -------------------------------------------------------------------------

    def _set_meta(self, metadata: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> None:
        # Merged, not replaced wholesale (REFERENCE: Chaperone lost per-job settings that way).
        meta = self._meta
        if meta is None:
            meta = self._meta = {}
        if metadata is not None:
            meta.update(metadata)
        if fields:
            meta.update(fields)

    def _raise_cancel(self) -> None:
        cancel = cast(JobLimitExceeded, self._cancel)
        raise JobLimitExceeded(cancel.limit, cancel.value, cancel.actual)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The latest merged metadata (a copy)."""
        return dict(self._meta or {})

    @property
    def heartbeat_count(self) -> int:
        """``heartbeat()`` calls so far."""
        return self._hb_calls

    @property
    def stall_deadline(self) -> float | None:
        """When flat progress makes the run stalled (needs ``stall_timeout``)."""
        if self.stall_timeout is None:
            return None
        return self.progress_updated_at + self.stall_timeout

    def rate(self, now: float) -> float | None:
        """Overall progress per second since the first report (None before two points)."""
        first = self._first_progress
        if first is None or now <= first[0]:
            return None
        return (self.progress_ratio - first[1]) / (now - first[0]) or None

    def throughput(self, now: float) -> float | None:
        """Items per second in the current phase since the first report."""
        first = self._first_progress
        if first is None or now <= first[0] or self.progress_current is None:
            return None
        done = self.progress_current - first[2]
        return done / (now - first[0]) if done > 0 else None

    def eta(self, now: float) -> float | None:
        """Seconds to completion at the current rate (None when unknown)."""
        rate = self.rate(now)
        if rate is None or rate <= 0:
            return None
        return max(0.0, (1.0 - self.progress_ratio) / rate)

    def signals(self, now: float) -> dict[str, SignalValue]:
        """The health rules' inputs for this run at ``now`` (see ``_health``)."""
        return {
            "status": self.status,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "last_seen": now,  # in-process: our own process is alive by definition
            "heartbeat_interval": self.heartbeat_interval,
            "timeout_at": self.timeout_at,
            "stall_deadline": self.stall_deadline,
            "memory": self.memory,
            "memory_limit": self.memory_limit,
            "cpu": self.cpu_percent,
            "cpu_limit": self.cpu_limit,
            "fds": self.fds,
            "fd_limit": self.fd_limit,
            "violation_count": len(self.violations),
        }

    def snapshot(self, now: float | None = None) -> JobState:
        """An immutable :class:`JobState` of this run."""
        now = self._clock() if now is None else now
        if self.finished_at is None:
            with self._lock:
                self.observe(now)
        end = self.finished_at if self.finished_at is not None else now
        ctx = self.span.get_span_context()
        return JobState(
            id=self.id,
            name=self.name,
            queue=self.queue,
            attempt=self.attempt,
            status=self.status,
            health=self.health,
            stuck=self.stuck,
            started_at=self.started_at,
            finished_at=self.finished_at,
            duration=max(0.0, end - self.started_at),
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_count=self._hb_calls,
            last_heartbeat=self.last_heartbeat,
            heartbeat_age=max(0.0, now - self.last_heartbeat),
            missed_heartbeats=self.missed,
            timeout_at=self.timeout_at,
            progress=self.progress_ratio,
            current=self.progress_current,
            total=self.progress_total,
            phase=self.phase,
            rate=self.rate(now),
            throughput=self.throughput(now),
            eta=self.eta(now),
            memory=self.memory,
            memory_peak=self.memory_peak,
            cpu_percent=self.cpu_percent,
            fds=self.fds,
            memory_limit=self.memory_limit,
            cpu_limit=self.cpu_limit,
            fd_limit=self.fd_limit,
            violations=tuple(self.violations),
            metadata=self.metadata,
            error_type=self.error_type,
            error_message=self.error_message,
            trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else None,
            span_id=format(ctx.span_id, "016x") if ctx.is_valid else None,
            attributes=dict(self.attributes),
        )

    def _next_seq(self) -> int:
        # Under the run's lock (reentrant: the monitor already holds it when it emits): the
        # started and finished records are built on the job's thread, the others on the
        # monitor's. Only paid when a record is built.
        with self._lock:
            self._seq = seq = self._seq + 1
        return seq

    def record_attributes(self, now: float) -> dict[str, AttributeValue]:
        """The run's full state as flat OTel attributes (every lifecycle record carries it).

        Optional values are added only when the run has them; written out one by one (a
        loop over (key, value) pairs built per call cost ~0.5 us, and this runs twice per
        run and at every flush).
        """
        a: dict[str, AttributeValue] = {
            sc.ATTR_JOB_NAME: self.name,
            sc.ATTR_JOB_QUEUE: self.queue,
            sc.ATTR_JOB_RUN_ID: self.id,
            sc.ATTR_JOB_ATTEMPT: self.attempt,
            sc.ATTR_JOB_STATUS: self.status,
            sc.ATTR_JOB_HEALTH: self.health,
            sc.ATTR_JOB_STUCK: self.stuck,
            sc.ATTR_JOB_SEQUENCE: self._next_seq(),
            sc.ATTR_JOB_STARTED_AT: self.started_at,
            sc.ATTR_HEARTBEAT_INTERVAL: self.heartbeat_interval,
            sc.ATTR_HEARTBEAT_COUNT: self._hb_calls,
            sc.ATTR_HEARTBEAT_LAST: self.last_heartbeat,
            sc.ATTR_PROGRESS_RATIO: self.progress_ratio,
            sc.ATTR_PROGRESS_UPDATED_AT: self.progress_updated_at,
            sc.ATTR_VIOLATION_COUNT: len(self.violations),
            sc.ATTR_LIMIT_POLICY: self.on_limit,
            sc.ATTR_HOST_NAME: _HOST,
            sc.ATTR_PROCESS_PID: _pid,
            sc.ATTR_SERVICE_INSTANCE_ID: _instance_id,
        }
        if self.finished_at is not None:
            a[sc.ATTR_JOB_FINISHED_AT] = self.finished_at
        if self.timeout is not None:
            a[sc.ATTR_JOB_TIMEOUT] = self.timeout
        if self.timeout_at is not None:
            a[sc.ATTR_JOB_TIMEOUT_AT] = self.timeout_at
        if self.stall_timeout is not None:
            a[sc.ATTR_JOB_STALL_TIMEOUT] = self.stall_timeout
        if self.progress_current is not None:
            a[sc.ATTR_PROGRESS_CURRENT] = self.progress_current
        if self.progress_total is not None:
            a[sc.ATTR_PROGRESS_TOTAL] = self.progress_total
        if self.phase is not None:
            a[sc.ATTR_PROGRESS_PHASE] = self.phase
        if self._first_progress is not None:  # no rate nor ETA before a progress report
            rate = self.rate(now)
            if rate is not None:
                a[sc.ATTR_PROGRESS_RATE] = rate
                eta = self.eta(now)
                if eta is not None:
                    a[sc.ATTR_PROGRESS_ETA] = eta
        if self.memory is not None:
            a[sc.ATTR_MEMORY_USAGE] = self.memory
        if self.memory_peak is not None:
            a[sc.ATTR_MEMORY_PEAK] = self.memory_peak
        if self.cpu_percent is not None:
            a[sc.ATTR_CPU_PERCENT] = self.cpu_percent
        if self.fds is not None:
            a[sc.ATTR_OPEN_FDS] = self.fds
        if self.memory_limit is not None:
            a[sc.ATTR_LIMIT_MEMORY] = self.memory_limit
        if self.cpu_limit is not None:
            a[sc.ATTR_LIMIT_CPU] = self.cpu_limit
        if self.fd_limit is not None:
            a[sc.ATTR_LIMIT_FDS] = self.fd_limit
        if self.error_type is not None:
            a[sc.ATTR_ERROR_TYPE] = self.error_type
        if self.error_message is not None:
            a[sc.ATTR_ERROR_MESSAGE] = self.error_message
        if self.error_stacktrace is not None:
            a[sc.ATTR_ERROR_STACKTRACE] = self.error_stacktrace
        if self.finished_at is not None:
            a[sc.ATTR_JOB_DURATION] = max(0.0, self.finished_at - self.started_at)
        if self._meta:
            a[sc.ATTR_METADATA] = _json(self._meta)
        if self.attributes:
            for key, value in self.attributes.items():
                a[sc.ATTR_USER_PREFIX + key] = value
        return a

    def emit(
        self,
        event_name: str,
        now: float,
        *,
        severity: str = "INFO",
        extra: Mapping[str, AttributeValue] | None = None,
        body: str = "",
    ) -> None:
        """Publish one lifecycle record with the run's full state (telemetry-safe)."""
        to = receivers(event_name)
        if to:
            self._publish(to, event_name, now, severity, extra, body)

    def _publish(
        self,
        to: tuple[Receiver, ...],
        event_name: str,
        now: float,
        severity: str = "INFO",
        extra: Mapping[str, AttributeValue] | None = None,
        body: str = "",
    ) -> None:
        """:meth:`emit` to the listeners ``to`` that want it (the caller asked ``receivers``)."""
        try:
            attributes = self.record_attributes(now)
            if extra:
                attributes.update(extra)
            ctx = self.span.get_span_context()
            publish(
                LifecycleRecord(
                    event_name=event_name,
                    timestamp=now,
                    attributes=attributes,
                    trace_id=ctx.trace_id,
                    span_id=ctx.span_id,
                    severity=severity,
                    body=body or f"{self.name} {_EVENT_WORDS.get(event_name, event_name)}",
                    context=self.otel_context,
                ),
                to,
            )
        except Exception as exc:
            internal_error(f"emit:{event_name}", exc)

    def __repr__(self) -> str:
        return (
            f"<Supervision {self.name!r} id={self.id} status={self.status} "
            f"progress={self.progress_ratio:.0%}>"
        )

    def finish(self, error: BaseException | None = None) -> None:
        """End a run started with :meth:`supervised.start` (``error`` marks it failed).

        For frameworks whose start and end arrive in separate callbacks (Celery's
        ``task_prerun`` / ``task_postrun`` signals). Idempotent: a second call does nothing.
        """
        _finish_run(self, error)


_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC << 60))  # version and variant bits
_UUID_SET: Final = (0x4000 << 64) | (0x8 << 60)  # version 4, RFC 4122 variant


def _uuid4() -> str:
    """A random (version 4) UUID string without a syscall per run.

    ``uuid.uuid4()`` reads ``os.urandom`` (~2.5 us); run ids need uniqueness, not secrecy, so
    122 bits from the ``random`` module (seeded from the OS, reseeded after fork) do.
    """
    h = (_random_bits(128) & _UUID_CLEAR | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _noop() -> None:
    return None


_NO_PHASES: Final[Mapping[str, tuple[float, float]]] = types.MappingProxyType({})


def _json(value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(value, default=str, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return json.dumps({str(k): repr(v) for k, v in value.items()})


class _PhaseScope:
    __slots__ = ("_name", "_run")

    def __init__(self, run: Supervision, name: str) -> None:
        self._run, self._name = run, name

    def __enter__(self) -> Supervision:
        self._run._enter_phase(self._name)
        return self._run

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self._run._complete_phase()


# --------------------------------------------------------------------------------------------
# Specs and the `supervised` decorator / context manager.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str | None = None
    queue: str | None = None
    attempt: int | None = None
    heartbeat_interval: float | None = None
    timeout: float | None = None
    stall_timeout: float | None = None
    memory_limit: int | None = None
    cpu_limit: float | None = None
    fd_limit: int | None = None
    on_limit: LimitPolicy | None = None
    supervision_id: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    hooks: Hooks = field(default_factory=Hooks)
    tracer_provider: Any = None


def _make_spec(
    name: str | None,
    *,
    queue: str | None,
    attempt: int | None,
    heartbeat_interval: Any,
    timeout: Any,
    stall_timeout: Any,
    memory_limit: Any,
    cpu_limit: Any,
    fd_limit: Any,
    on_limit: Any,
    supervision_id: str | None,
    attributes: Mapping[str, Any] | None,
    hooks: Mapping[str, Any],
    tracer_provider: Any,
) -> _Spec:
    """Validate every option now: misuse fails at decoration time (DESIGN §8)."""
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise ConfigurationError(f"queue must be a non-empty string, got {queue!r}")
    if attempt is not None and (
        not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1
    ):
        raise ConfigurationError(f"attempt must be an int >= 1, got {attempt!r}")
    if supervision_id is not None and (not isinstance(supervision_id, str) or not supervision_id):
        raise ConfigurationError("supervision_id must be a non-empty string")
    if cpu_limit is not None and (
        isinstance(cpu_limit, bool)
        or not isinstance(cpu_limit, (int, float))
        or not math.isfinite(cpu_limit)
        or cpu_limit <= 0
    ):
        raise ConfigurationError(
            f"cpu_limit is percent of one core (e.g. 80, or 200 for two cores), got {cpu_limit!r}"
        )
    if fd_limit is not None and (
        isinstance(fd_limit, bool) or not isinstance(fd_limit, int) or fd_limit <= 0
    ):
        raise ConfigurationError(f"fd_limit must be a positive int, got {fd_limit!r}")
    if on_limit is not None and on_limit not in LIMIT_POLICIES:
        raise ConfigurationError(
            f"on_limit={on_limit!r}: choose one of {', '.join(LIMIT_POLICIES)}"
        )
    attrs: dict[str, AttributeValue] = {}
    for key, value in (attributes or {}).items():
        if not isinstance(key, str) or not isinstance(value, (str, bool, int, float)):
            raise ConfigurationError(
                f"attributes[{key!r}]: keys must be str and values str, bool, int or float"
            )
        attrs[key] = value
    return _Spec(
        name=name.strip() if name else None,
        queue=queue.strip() if queue else None,
        attempt=attempt,
        heartbeat_interval=(
            validate_interval(heartbeat_interval, "heartbeat_interval")
            if heartbeat_interval is not None
            else None
        ),
        timeout=parse_duration(timeout, what="timeout") if timeout is not None else None,
        stall_timeout=(
            parse_duration(stall_timeout, what="stall_timeout")
            if stall_timeout is not None
            else None
        ),
        memory_limit=parse_bytes(memory_limit) if memory_limit is not None else None,
        cpu_limit=float(cpu_limit) if cpu_limit is not None else None,
        fd_limit=fd_limit,
        on_limit=on_limit,
        supervision_id=supervision_id,
        attributes=attrs,
        hooks=Hooks.from_kwargs(hooks),
        tracer_provider=tracer_provider,
    )


def _qualified_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "job"))
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


def _runtime() -> Any:
    # Replaced by _runtime.py when it is imported (it imports this module, so this module
    # cannot import it at load time; a function-level import cost ~3 us per run).
    from ._runtime import runtime  # noqa: PLC0415

    return runtime()


_tracers: dict[int, tuple[Any, Any]] = {}


def _tracer(provider: Any) -> Any:
    """The provider's tracer for our scope, cached (the SDK builds a new one per call)."""
    cached = _tracers.get(id(provider))
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(sc.INSTRUMENTATION_SCOPE, __version__)
    if len(_tracers) > 64:  # providers come and go in test suites; never grow without bound
        _tracers.clear()
    _tracers[id(provider)] = (provider, tracer)
    return tracer


class _Static:
    """What a run's start derives from its spec and the configuration alone, computed once
    per (spec, configuration) instead of at every run (see :func:`_static`)."""

    __slots__ = (
        "absent",
        "config",
        "flush_period",
        "heartbeat_interval",
        "hooks",
        "name",
        "on_limit",
        "queue",
        "tail",
    )

    def __init__(self, spec: _Spec, config: Config) -> None:
        self.config = config
        self.name = cast(str, spec.name)
        self.queue = spec.queue or "default"
        self.heartbeat_interval = spec.heartbeat_interval or config.heartbeat_interval
        self.flush_period = config.flush_period_for(self.heartbeat_interval)
        self.on_limit: str = spec.on_limit or config.on_limit
        self.hooks = (
            config.hooks.merged(spec.hooks)
            if config.hooks and spec.hooks
            else spec.hooks or config.hooks
        )
        # The span's start attributes after the per-run ones, in the order they always had
        # (timeout_at, per run, is inserted by _start_run when there is a timeout).
        tail: dict[str, AttributeValue] = {}
        limits: tuple[tuple[str, float | None], ...] = (
            (sc.ATTR_JOB_TIMEOUT, spec.timeout),
            (sc.ATTR_LIMIT_MEMORY, spec.memory_limit),
            (sc.ATTR_LIMIT_CPU, spec.cpu_limit),
            (sc.ATTR_LIMIT_FDS, spec.fd_limit),
        )
        for key, limit in limits:
            if limit is not None:
                tail[key] = limit
                tail[sc.ATTR_LIMIT_POLICY] = self.on_limit
        for key, user_value in spec.attributes.items():
            tail[sc.ATTR_USER_PREFIX + key] = user_value
        self.tail = tail
        # The health signals no run of this spec has (see Rules.settled).
        optional_signals: tuple[tuple[str, float | None], ...] = (
            ("timeout_at", spec.timeout),
            ("stall_deadline", spec.stall_timeout),
            ("memory_limit", spec.memory_limit),
            ("cpu_limit", spec.cpu_limit),
            ("fd_limit", spec.fd_limit),
        )
        self.absent = frozenset(name for name, value in optional_signals if value is None)


def _static(spec: _Spec, config: Config) -> _Static:
    """The spec's :class:`_Static` for ``config``, cached on the (frozen) spec itself."""
    static: _Static | None = spec.__dict__.get("_static")
    if static is None or static.config is not config:
        static = _Static(spec, config)
        object.__setattr__(spec, "_static", static)
    return static


_tls = threading.local()


def _thread_cpu_clock() -> int | None:
    """The calling thread's CPU-time clock id, looked up once per thread (~0.5 us a call).

    Thread-local, so a thread that ends takes its entry with it (a new thread may reuse its
    ident, never its clock); a forked child starts with a fresh cache (its thread has a new
    kernel tid, hence a new clock).
    """
    try:
        clock: int | None = _tls.clock
        return clock
    except AttributeError:
        pass
    try:
        clock = thread_cpu_clock()
    except Exception as exc:
        internal_error("run.cpu_clock", exc)
        return None
    _tls.clock = clock
    return clock


def _start_run(
    spec: _Spec, *, run_id: str | None = None, attempt: int | None = None, bind_thread: bool = True
) -> Supervision:
    """Create and start a run: span, monitor registration, started record, counters.

    Telemetry failures are swallowed with a bare ``try`` (:func:`_safety.internal_error`):
    free until something fails, where a guard object costs on every run.
    """
    config = get_config()
    static = _static(spec, config)
    run = Supervision(spec, static, run_id=run_id, attempt=attempt)
    rt = _runtime()
    try:
        provider = spec.tracer_provider or config.tracer_provider or trace.get_tracer_provider()
        start_attrs: dict[str, AttributeValue] = {
            sc.ATTR_JOB_NAME: run.name,
            sc.ATTR_JOB_QUEUE: run.queue,
            sc.ATTR_JOB_RUN_ID: run.id,
            sc.ATTR_JOB_ATTEMPT: run.attempt,
            sc.ATTR_HEARTBEAT_INTERVAL: run.heartbeat_interval,
        }
        tail = static.tail
        if tail:
            if run.timeout_at is not None:
                start_attrs[sc.ATTR_JOB_TIMEOUT] = tail[sc.ATTR_JOB_TIMEOUT]
                start_attrs[sc.ATTR_LIMIT_POLICY] = run.on_limit
                start_attrs[sc.ATTR_JOB_TIMEOUT_AT] = run.timeout_at
            start_attrs.update(tail)
        run.span = span = _tracer(provider).start_span(
            run.name,
            kind=SpanKind.INTERNAL,
            attributes=start_attrs,
            start_time=int(run.started_at * 1e9),
        )
        run.otel_context = trace.set_span_in_context(span)
    except Exception as exc:
        internal_error("run.start", exc)
    if bind_thread:
        run._cpu_clock = _thread_cpu_clock()
    run.status = "running"
    rt.started(run)
    to = receivers(sc.EVENT_JOB_STARTED)
    if to:
        run._publish(to, sc.EVENT_JOB_STARTED, run.started_at)
    return run


_CANCELLED: Final = (
    JobLimitExceeded,
    asyncio.CancelledError,
    KeyboardInterrupt,
    GeneratorExit,
    SystemExit,
)


def _finish_run(run: Supervision, exc: BaseException | None) -> None:
    """Record the outcome, publish the finished record, end the span. Never raises.

    Each step is guarded on its own, and ending the span and unregistering the run happen
    whatever failed before: a run whose finish half-failed must not stay "live" for ever (its
    gauges reported, the sink calling it lost).
    """
    try:
        now = run._clock()
    except Exception as error:
        internal_error("run.clock", error)
        now = time.time()
    rt = _runtime()
    with run._lock:
        if run.finished_at is not None:
            return
        run.finished_at = now
        if exc is None:
            run.status = "completed"
        else:
            run.status = "cancelled" if isinstance(exc, _CANCELLED) else "failed"
            if not isinstance(exc, GeneratorExit):
                run.error_type = _error_type(exc)
                run.error_message = _safe_str(exc)
                if run.status == "failed":
                    run.error_stacktrace = _safe_traceback(exc)
        actions: list[Callable[[], object]] = []
        try:
            actions = rt.judge(run, now)  # in the same locked section: the monitor sees it judged
        except Exception as error:
            internal_error("run.judge", error)
    if actions:
        rt.dispatch(actions)
    span = run.span
    try:
        to = receivers(sc.EVENT_JOB_FINISHED)
        if to:
            run._publish(
                to, sc.EVENT_JOB_FINISHED, now, "ERROR" if run.status == "failed" else "INFO"
            )
        if span.is_recording():
            # One set_attributes call (the SDK validates per call), and only what the span's
            # own fields (start, end, status) do not already say.
            end_attrs: dict[str, AttributeValue] = {
                sc.ATTR_JOB_STATUS: run.status,
                sc.ATTR_JOB_HEALTH: run.health,
                sc.ATTR_HEARTBEAT_COUNT: run._hb_calls,
                sc.ATTR_PROGRESS_RATIO: run.progress_ratio,
            }
            if run.violations:
                end_attrs[sc.ATTR_VIOLATION_COUNT] = len(run.violations)
            if run.memory_peak is not None:
                end_attrs[sc.ATTR_MEMORY_PEAK] = run.memory_peak
            if run.error_type is not None:
                end_attrs[sc.ATTR_ERROR_TYPE] = run.error_type
            span.set_attributes(end_attrs)
            if exc is not None and run.status == "failed":
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{run.error_type}: {run.error_message}"))
            elif run.status == "cancelled" and run.error_type is not None:
                span.set_status(Status(StatusCode.ERROR, f"cancelled: {run.error_message}"))
    except Exception as error:
        internal_error("run.finish", error)
    finally:
        try:
            span.end(end_time=int(now * 1e9))
        except Exception as error:
            internal_error("run.span_end", error)
        finally:
            rt.finished(run)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _safe_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return f"{type(exc).__name__}: <traceback could not be formatted>"


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"


def _activate(run: Supervision) -> tuple[contextvars.Token[Supervision | None], object]:
    token = _current.set(run)
    otel_token = otel_context.attach(run.otel_context) if run.otel_context is not None else None
    return token, otel_token


def _deactivate(tokens: tuple[contextvars.Token[Supervision | None], object]) -> None:
    token, otel_token = tokens
    if otel_token is not None:
        otel_context.detach(otel_token)  # type: ignore[arg-type]  # the API never raises here
    try:
        _current.reset(token)
    except ValueError as error:  # exited in another context than entered: user code's doing
        internal_error("run.context", error)
        _current.set(None)


def _limit_error(run: Supervision, exc: BaseException | None) -> BaseException | None:
    """The exception a run ends with: a cancellation caused by its limit policy is the
    ``JobLimitExceeded`` the caller will see, not the ``CancelledError`` that carried it."""
    if isinstance(exc, asyncio.CancelledError) and run._cancel is not None:
        return JobLimitExceeded(run._cancel.limit, run._cancel.value, run._cancel.actual)
    return exc


class supervised:
    """Supervise a function, coroutine, generator or block as a job run.

    Use it bare (``@supervised``), with options (``@supervised(queue="etl", timeout="1h")``)
    or as a context manager (``with supervised("name") as run:``, also ``async with``).

    Args:
        name: the job name (default: the function's qualified name). Bounded: a metric label.
        queue: the queue or pool the run belongs to (default ``"default"``).
        heartbeat_interval: the lease in seconds (default from ``configure()``, 60 s).
        timeout: max runtime (seconds, ``timedelta`` or ``"2h"``); past it the run is overtime.
        stall_timeout: flat progress this long while alive means *stalled* (degraded).
        memory_limit: bytes or ``"512MiB"`` (process RSS).
        cpu_limit: percent of one core.
        fd_limit: open file descriptors.
        on_limit: ``"record"`` (default), ``"warn"`` (also logs) or ``"cancel"``
            (``JobLimitExceeded`` inside the run at its next heartbeat/progress call; an async
            run's task is cancelled).
        supervision_id: the run id (default uuid4; pass a Celery task id to correlate).
        attempt: the attempt number (default 1).
        attributes: static span/record attributes (``chaperone.job.attr.<key>``).
        tracer_provider: a provider to use instead of the global one.
        on_heartbeat_missed, on_stuck, on_timeout, on_violation, on_failure, on_complete,
        on_health_change: local hooks, called on the ``chaperone-hooks`` thread with a ``JobState``.

    Raises:
        ConfigurationError: an option is invalid (at decoration time, not at run time).

    .. versionadded:: 0.1
    """

    @overload
    def __new__(cls, func: Callable[P, R], /) -> Callable[P, R]: ...  # type: ignore[misc]

    @overload
    def __new__(cls, name: str | None = None, /, **options: Any) -> supervised: ...

    def __new__(cls, func_or_name: Any = None, /, **options: Any) -> Any:
        if callable(func_or_name) and not isinstance(func_or_name, str):
            if options:
                raise ConfigurationError(
                    "use @supervised(...) with keyword options, or bare @supervised"
                )
            return cls(None)(func_or_name)
        return super().__new__(cls)

    def __init__(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        heartbeat_interval: Any = None,
        timeout: Any = None,
        stall_timeout: Any = None,
        memory_limit: Any = None,
        cpu_limit: float | None = None,
        fd_limit: int | None = None,
        on_limit: LimitPolicy | None = None,
        supervision_id: str | None = None,
        attempt: int | None = None,
        attributes: Mapping[str, Any] | None = None,
        tracer_provider: Any = None,
        on_heartbeat_missed: Callable[..., object] | None = None,
        on_stuck: Callable[..., object] | None = None,
        on_timeout: Callable[..., object] | None = None,
        on_violation: Callable[..., object] | None = None,
        on_failure: Callable[..., object] | None = None,
        on_complete: Callable[..., object] | None = None,
        on_health_change: Callable[..., object] | None = None,
    ) -> None:
        self._spec = _make_spec(
            name,
            queue=queue,
            attempt=attempt,
            heartbeat_interval=heartbeat_interval,
            timeout=timeout,
            stall_timeout=stall_timeout,
            memory_limit=memory_limit,
            cpu_limit=cpu_limit,
            fd_limit=fd_limit,
            on_limit=on_limit,
            supervision_id=supervision_id,
            attributes=attributes,
            hooks={
                "on_heartbeat_missed": on_heartbeat_missed,
                "on_stuck": on_stuck,
                "on_timeout": on_timeout,
                "on_violation": on_violation,
                "on_failure": on_failure,
                "on_complete": on_complete,
                "on_health_change": on_health_change,
            },
            tracer_provider=tracer_provider,
        )
        # Which run this object entered, per thread and per task: one `supervised(...)`
        # object may be entered concurrently (a module-level context manager used by many
        # workers), so the stack of entered runs lives in a ContextVar, not on the object.
        self._entered: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
            "chaperone_otel_entered", default=None
        )

    # ---- decorator ------------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if not callable(func):
            raise ConfigurationError(f"@supervised decorates a callable, got {func!r}")
        spec = self._spec
        if spec.name is None:
            spec = _replace_spec(spec, name=_qualified_name(func))
        if spec.supervision_id is not None:
            # One fixed id for every call would merge unrelated runs (REFERENCE: "Use Unique
            # Supervision IDs"); a fixed id belongs on `with supervised(...)` for one run.
            raise ConfigurationError(
                "supervision_id= on a decorator would give every call the same run id; pass "
                "it to `with supervised(name, supervision_id=...)` or use the Supervised class"
            )
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(func):
            wrapper = _wrap_async_generator(func, spec)
        elif inspect.iscoroutinefunction(func):
            wrapper = _wrap_coroutine(func, spec)
        elif inspect.isgeneratorfunction(func):
            wrapper = _wrap_generator(func, spec)
        else:
            wrapper = _wrap_function(func, spec)
        functools.update_wrapper(wrapper, func)
        setattr(wrapper, "__chaperone_spec__", spec)  # noqa: B010 - a marker for introspection
        return cast(Callable[P, R], wrapper)

    def start(self) -> Supervision:
        """Start a run now without entering it; end it with :meth:`Supervision.finish`.

        The run is not made current (``current_job()``); use the handle it returns.
        """
        return _start_run(self._require_name())

    # ---- context manager -----------------------------------------------------------------

    def _require_name(self) -> _Spec:
        if self._spec.name is None:
            raise ConfigurationError(
                'with supervised(...) needs a job name: `with supervised("etl.import") as run:`'
            )
        return self._spec

    def _push(self, run: Supervision) -> Supervision:
        entry: list[Any] = [run, _activate(run), None]
        entry[2] = self._entered.set(entry)
        return run

    def _pop(self, exc: BaseException | None) -> Supervision:
        entry = self._entered.get()
        if entry is None:
            raise RuntimeError("supervised.__exit__ without a matching __enter__ in this context")
        run, tokens, token = entry
        self._entered.reset(token)
        try:
            _deactivate(tokens)
        finally:
            _finish_run(run, _limit_error(run, exc))
        return cast(Supervision, run)

    def __enter__(self) -> Supervision:
        return self._push(_start_run(self._require_name()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        self._pop(exc)
        return False

    async def __aenter__(self) -> Supervision:
        run = _start_run(self._require_name(), bind_thread=False)
        _bind_task(run)
        return self._push(run)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        run = self._pop(exc)
        outcome = _limit_error(run, exc)
        if outcome is not exc:
            _uncancel(run)
            raise cast(BaseException, outcome) from exc
        return False


def _replace_spec(spec: _Spec, **changes: Any) -> _Spec:
    from dataclasses import replace  # noqa: PLC0415

    return replace(spec, **changes)


def _bind_task(run: Supervision) -> None:
    try:
        run._task = asyncio.current_task()
        run._loop = asyncio.get_running_loop()
    except RuntimeError:
        run._task = None


def _uncancel(run: Supervision) -> None:
    task = run._task
    if task is not None and sys.version_info >= (3, 11):
        task.uncancel()


def _call(run: Supervision, func: Callable[..., R], args: Any, kwargs: Any) -> R:
    """Run ``func`` as ``run``: current while it runs, finished however it ends."""
    # _activate/_deactivate inlined: this wraps every call of a decorated sync function.
    token = _current.set(run)
    ctx = run.otel_context
    otel_token = otel_context.attach(ctx) if ctx is not None else None
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        try:
            _deactivate((token, otel_token))
        finally:
            _finish_run(run, exc)
        raise
    try:
        # _deactivate inlined for the normal return (every call of a decorated function).
        if otel_token is not None:
            otel_context.detach(otel_token)
        try:
            _current.reset(token)
        except ValueError as error:  # exited in another context than entered
            internal_error("run.context", error)
            _current.set(None)
    finally:
        _finish_run(run, None)
    return result


async def _acall(run: Supervision, func: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    """Await ``func`` as ``run``; a cancellation caused by a limit becomes JobLimitExceeded."""
    _bind_task(run)
    tokens = _activate(run)
    try:
        result = await func(*args, **kwargs)
    except BaseException as exc:
        outcome = _limit_error(run, exc)
        try:
            _deactivate(tokens)
        finally:
            _finish_run(run, outcome)
        if outcome is not exc:
            _uncancel(run)
            raise cast(BaseException, outcome) from exc
        raise
    try:
        _deactivate(tokens)
    finally:
        _finish_run(run, None)
    return result


def _wrap_function(func: Callable[..., R], spec: _Spec) -> Callable[..., R]:
    def wrapper(*args: Any, **kwargs: Any) -> R:
        return _call(_start_run(spec), func, args, kwargs)

    return wrapper


def _wrap_coroutine(func: Callable[..., Awaitable[R]], spec: _Spec) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        return await _acall(_start_run(spec, bind_thread=False), func, args, kwargs)

    return wrapper


def _wrap_generator(
    func: Callable[..., Generator[Any, Any, R]], spec: _Spec
) -> Callable[..., Generator[Any, Any, R]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, R]:
        gen = func(*args, **kwargs)
        run = _start_run(spec)
        error: BaseException | None = None
        try:
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                # The run is current only while the generator's own code runs, never in the
                # consumer between items.
                tokens = _activate(run)
                try:
                    item = gen.throw(to_throw) if to_throw is not None else gen.send(to_send)
                except StopIteration as stop:
                    return cast(R, stop.value)
                finally:
                    _deactivate(tokens)
                to_throw = None
                try:
                    to_send = yield item
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as thrown:
                    to_throw = thrown
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish_run(run, error)

    return wrapper


def _wrap_async_generator(
    func: Callable[..., AsyncGenerator[Any, Any]], spec: _Spec
) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        agen = func(*args, **kwargs)
        run = _start_run(spec, bind_thread=False)
        _bind_task(run)
        error: BaseException | None = None
        try:
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                tokens = _activate(run)
                try:
                    if to_throw is not None:
                        item = await agen.athrow(to_throw)
                    else:
                        item = await agen.asend(to_send)
                except StopAsyncIteration:
                    return
                finally:
                    _deactivate(tokens)
                to_throw = None
                try:
                    to_send = yield item
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as thrown:
                    to_throw = thrown
        except BaseException as exc:
            # As for a coroutine run (_acall): a cancellation caused by the run's limit
            # policy is the JobLimitExceeded the caller sees, and the task is uncancelled.
            error = _limit_error(run, exc)
            if error is not exc:
                _uncancel(run)
                raise cast(BaseException, error) from exc
            raise
        finally:
            _finish_run(run, error)

    return wrapper


# --------------------------------------------------------------------------------------------
# Module-level helpers acting on the current run.
# --------------------------------------------------------------------------------------------


def current_job(*, required: bool = False) -> Supervision | None:
    """The run of the calling thread or asyncio task, or None outside any run.

    Each thread and each asyncio task sees its own run (contextvars); a task created inside
    a run inherits it.

    Raises:
        NoActiveJobError: ``required=True`` and there is no current run.
    """
    run = _current.get()
    if run is None and required:
        raise NoActiveJobError(
            "current_job(required=True) called outside a supervised run: decorate the job "
            "with @supervised or wrap it in `with supervised(name):`"
        )
    return run


def heartbeat(metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> bool:
    """``heartbeat()`` on the current run. Outside a run it does nothing and returns False,
    so library code can call it unconditionally; inside, it returns True."""
    run = _current.get()
    if run is None:
        return False
    run.heartbeat(metadata, **fields)
    return True


def report_progress(
    current: float, total: float, metadata: Mapping[str, Any] | None = None, /, **fields: Any
) -> bool:
    """``report_progress()`` on the current run; outside a run it validates its arguments,
    does nothing else and returns False."""
    run = _current.get()
    if run is None:
        if not (current >= 0 and total >= 0) or (total == 0 and current > 0):
            raise ValueError(f"report_progress({current!r}, {total!r}): invalid progress")
        return False
    run.report_progress(current, total, metadata, **fields)
    return True


def track(
    iterable: Iterable[T], total: float | None = None, *, phase: str | None = None
) -> Iterator[T]:
    """``track()`` on the current run; outside a run it yields the items unchanged."""
    run = _current.get()
    if run is None:
        return iter(iterable)
    return run.track(iterable, total, phase=phase)


# --------------------------------------------------------------------------------------------
# The class-based form.
# --------------------------------------------------------------------------------------------


class Supervised:
    """Base class for class-based jobs, the Python form of Chaperone's ``Supervised`` contract.

    Subclass it and implement ``run()`` (sync or ``async``). Calling ``run()`` supervises the
    call; inside it, ``self.heartbeat()`` and ``self.report_progress()`` act on that run. The
    ``supervision_id`` is fixed when the object is created, so a test or a caller can look
    the run up afterwards; calling ``run()`` again on the same object is the next attempt of
    the same id.

    Class attributes configure the runs: ``job_name``, ``queue``, ``heartbeat_interval``,
    ``timeout``, ``stall_timeout``, ``memory_limit``, ``cpu_limit``, ``fd_limit``,
    ``on_limit``.

    Example::

        class ProcessDataset(Supervised):
            heartbeat_interval = 30

            def run(self, path):
                rows = read(path)
                for i, row in enumerate(rows, 1):
                    handle(row)
                    self.report_progress(i, len(rows))

    .. versionadded:: 0.1
    """

    job_name: ClassVar[str | None] = None
    queue: ClassVar[str | None] = None
    heartbeat_interval: ClassVar[float | None] = None
    timeout: ClassVar[Any] = None
    stall_timeout: ClassVar[Any] = None
    memory_limit: ClassVar[Any] = None
    cpu_limit: ClassVar[float | None] = None
    fd_limit: ClassVar[int | None] = None
    on_limit: ClassVar[LimitPolicy | None] = None

    _chaperone_spec: ClassVar[_Spec]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._chaperone_spec = _make_spec(
            cls.job_name or _qualified_name(cls),
            queue=cls.queue,
            attempt=None,
            heartbeat_interval=cls.heartbeat_interval,
            timeout=cls.timeout,
            stall_timeout=cls.stall_timeout,
            memory_limit=cls.memory_limit,
            cpu_limit=cls.cpu_limit,
            fd_limit=cls.fd_limit,
            on_limit=cls.on_limit,
            supervision_id=None,
            attributes=None,
            hooks={},
            tracer_provider=None,
        )
        body = cls.__dict__.get("run")
        if body is None or getattr(body, "__chaperone_wrapped__", False):
            return
        if inspect.isgeneratorfunction(body) or inspect.isasyncgenfunction(body):
            # Its run would end when run() returns the generator, before any item.
            raise ConfigurationError(
                f"{cls.__qualname__}.run() is a generator: a Supervised run() must return "
                "when the job is done (a function or a coroutine); supervise a generator with "
                "@supervised on it instead"
            )
        # A subclass's run() that calls super().run() is inside this object's own run: the
        # parent's body is part of it, not a second run (which would look like a retry).
        if inspect.iscoroutinefunction(body):

            async def arun(self: Supervised, *args: Any, **kw: Any) -> Any:
                if self._in_own_run():
                    return await body(self, *args, **kw)
                return await _acall(self._start(bind_thread=False), body, (self, *args), kw)

            wrapped: Callable[..., Any] = arun
        else:

            def srun(self: Supervised, *args: Any, **kw: Any) -> Any:
                if self._in_own_run():
                    return body(self, *args, **kw)
                return _call(self._start(bind_thread=True), body, (self, *args), kw)

            wrapped = srun
        functools.update_wrapper(wrapped, body)
        wrapped.__chaperone_wrapped__ = True  # type: ignore[attr-defined]
        cls.run = wrapped  # type: ignore[method-assign]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The job's body; override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    @property
    def supervision_id(self) -> str:
        """This job's run id, fixed at creation (uuid4)."""
        sid: str | None = self.__dict__.get("_chaperone_id")
        if sid is None:
            sid = self.__dict__["_chaperone_id"] = str(uuid.uuid4())
        return sid

    def get_supervision_id(self) -> str:
        """Alias of :attr:`supervision_id` (the seed's ``getSupervisionId()``)."""
        return self.supervision_id

    def _start(self, *, bind_thread: bool) -> Supervision:
        run = _start_run(
            self._chaperone_spec,
            run_id=self.supervision_id,
            attempt=self._next_attempt(),
            bind_thread=bind_thread,
        )
        self.__dict__["_chaperone_run"] = run
        return run

    def _next_attempt(self) -> int:
        attempt: int = self.__dict__.get("_chaperone_attempts", 0) + 1
        self.__dict__["_chaperone_attempts"] = attempt
        return attempt

    @property
    def supervision(self) -> Supervision | None:
        """The handle of this object's latest run (None before ``run()``)."""
        run: Supervision | None = self.__dict__.get("_chaperone_run")
        return run

    def _in_own_run(self) -> bool:
        """True inside this object's unfinished run, in the run's own thread or task."""
        run: Supervision | None = self.__dict__.get("_chaperone_run")
        return run is not None and run.finished_at is None and _current.get() is run

    def _active_run(self) -> Supervision | None:
        run: Supervision | None = self.__dict__.get("_chaperone_run")
        if run is not None and run.finished_at is None:
            return run
        return _current.get()

    def heartbeat(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Heartbeat this job's current run (no-op outside ``run()``)."""
        run = self._active_run()
        if run is not None:
            run.heartbeat(metadata, **fields)

    def report_progress(
        self,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> None:
        """Report progress of this job's current run (validates even outside ``run()``)."""
        run = self._active_run()
        if run is None:
            report_progress(current, total, metadata, **fields)
            return
        run.report_progress(current, total, metadata, **fields)

    def track(self, iterable: Iterable[T], total: float | None = None) -> Iterator[T]:
        """:meth:`Supervision.track` on this job's current run."""
        run = self._active_run()
        return iter(iterable) if run is None else run.track(iterable, total)


__all__ = [
    "JobState",
    "STATUSES",
    "Supervised",
    "Supervision",
    "Violation",
    "current_job",
    "heartbeat",
    "report_progress",
    "supervised",
    "track",
]
