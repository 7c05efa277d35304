"""One run: its public handle (:class:`Supervision`, the hot path) and its state (:class:`Run`).

The two are split by who uses them. The user holds a :class:`Supervision`: ``heartbeat()``,
``report_progress()`` and ``track()`` (the hot path, called millions of times: each only
updates a few of the handle's own slots, no clock read, no lock), phases, ``snapshot()``,
``finish()`` and read-only views of the run. Everything the runtime needs — mutable status
and health, resource readings, the span it was given, the full-state record attributes,
publishing records — is on the internal :class:`Run`, which the lifecycle, the monitor and
the OTel writer share and the user never sees (its records are built by ``_record``).

Hot-path fields stay on the handle (one attribute store per call, as before the split);
:class:`Run` reads them through its properties (``calls``, ``current``, ``total``, …) on the
monitor's thread, and talks back to the hot path through three small methods
(:meth:`Run.set_wake`, :meth:`Run.arm_cancel`, :meth:`Run.take_flush_now`).

Only the standard library is used here: the run's span is opaque to it (the OTel writer
starts and ends it; the run only carries it, its context and its ids for the records).
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from . import _process, _track, _values
from ._health import Health, SignalValue
from ._model import JobState, Violation
from ._spec import phase_ranges
from ._values import FirstProgress, StuckTime, not_a_mapping, present, was_replaced
from .exceptions import JobLimitExceeded

if TYPE_CHECKING:
    import asyncio

    from ._config import Hooks
    from ._spec import Spec, Static

T = TypeVar("T")

Finisher = Callable[["Run", "BaseException | None"], None]
"""Ends a run (``_lifecycle.finish_run``), given to each run at its start so the handle's
:meth:`Supervision.finish` needs no import of the layer that starts runs."""


def _noop() -> None:
    return None


_NO_PHASES: Final[Mapping[str, tuple[float, float]]] = types.MappingProxyType({})


# --------------------------------------------------------------------------------------------
# The public handle.
# --------------------------------------------------------------------------------------------


class Supervision:
    """The handle of one supervised run (what ``with supervised(...) as run`` gives you).

    ``heartbeat()``, ``report_progress()`` and ``track()`` are safe to call from the run's
    own thread or task at any rate. The read-only properties show the run's latest state;
    :meth:`snapshot` gives all of it at once, consistently.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_cancel",
        "_current",
        "_flush_now",
        "_frames",
        "_lo",
        "_meta",
        "_meta_dirty",
        "_phase",
        "_phases",
        "_run",
        "_superseded",
        "_total",
        "_wake",
        "_width",
    )

    def __init__(self, run: Run) -> None:
        # Created by Run.__init__ only; the fields are the hot path's, nothing else.
        self._run = run
        self._calls = 0
        self._meta: dict[str, Any] | None = None
        self._meta_dirty = False  # metadata changed since a heartbeat record carried it
        self._superseded: tuple[int, dict[str, Any]] | None = None  # see _set_meta
        self._current: float | None = None
        self._total: float | None = None
        self._phase: str | None = None
        self._phases: Mapping[str, tuple[float, float]] = _NO_PHASES
        self._lo = 0.0  # the current phase's share of 0..1: [_lo, _lo + _width]
        self._width = 1.0
        self._cancel: JobLimitExceeded | None = None
        self._flush_now = False
        self._wake: Callable[[], None] = _noop
        self._frames: list[list[Any]] = []  # the live track() loops (_track)

    # ---- hot path ------------------------------------------------------------------------

    def heartbeat(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Say the job is alive. O(1): only in-memory state changes here.

        Args:
            metadata: diagnostic values, merged into the run's metadata (the latest value of
                a key wins; ``None`` removes the key).
            **fields: more metadata as keywords (``heartbeat(batch=7)``).

        Raises:
            JobLimitExceeded: a limit was crossed and the run's policy is ``cancel``.
        """
        # No clock read here: the monitor stamps the time when it sees the count move, which
        # keeps this call under a tqdm update(1) (bench/bench_runtime.py).
        if metadata is not None and not isinstance(metadata, Mapping):
            not_a_mapping(metadata)  # refused before the call counts
        self._calls += 1
        if metadata is not None or fields:
            self._set_meta(metadata, fields, 1)
        if self._cancel is not None:
            self._raise_cancel()
        if self._calls == 1:
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

        ``current`` and ``total`` are ``int`` or ``float``; another real number
        (``Decimal``, ``Fraction``, a numpy scalar, ``bool``) is stored as a ``float``.

        Raises:
            TypeError: ``current`` or ``total`` is not a real number (a ``str``, ``None``).
            ValueError: ``current`` or ``total`` is negative or NaN, or ``total == 0`` while
                ``current > 0``, or too large for a float.
            JobLimitExceeded: a limit was crossed and the run's policy is ``cancel``.
        """
        # Records, ratios and the store need plain numbers: a Decimal stored here broke the
        # run's finish later. Two class checks and two comparisons, the cheapest tests there
        # are; anything else (coercion, the error) is checked_progress's, off the hot path.
        cls = current.__class__
        if (
            (cls is not int and cls is not float)
            or (total.__class__ is not int and total.__class__ is not float)
            or not (current >= 0 and total >= 0)  # also NaN
            or (current > total and total == 0)
        ):
            current, total = _values.checked_progress(current, total)
        if fields or metadata is not None:
            self._progress_extras(metadata, fields)
        # The common path stores two numbers; the ratio is derived on read and the monitor
        # stamps when they changed (no clock read per call). A report that repeats the same
        # numbers is not a new sign of life: call heartbeat() to say "alive, no progress".
        self._current = current
        self._total = total
        if self._cancel is not None:
            self._raise_cancel()

    def _progress_extras(self, metadata: Mapping[str, Any] | None, fields: dict[str, Any]) -> None:
        # `phase=` arrives in **fields (a keyword-only parameter would cost every call).
        phase = fields.pop("phase", None)
        if metadata is not None or fields:
            self._set_meta(metadata, fields, 0)
        if phase is None and metadata is not None:
            phase = metadata.get("phase")
        if phase is not None and not isinstance(phase, str):
            raise TypeError(f"phase must be a str, got {phase!r}")
        if phase is not None and phase != self._phase:
            self._enter_phase(phase)

    def track(
        self, iterable: Iterable[T], total: float | None = None, *, phase: str | None = None
    ) -> Iterator[T]:
        """Iterate ``iterable``, reporting progress after each item (like tqdm).

        ``total`` defaults to ``len(iterable)`` where it has one; without a total the run
        still heartbeats per item and reports ``current`` with an unknown total.
        """
        total = _values.track_total(iterable, total)
        if phase is not None:
            self._enter_phase(phase)
        return _track.items(self, iterable, total)  # nested loops: see _track

    # ---- phases --------------------------------------------------------------------------

    def phases(
        self, spec: Mapping[str, float | tuple[float, float]] | None = None, /, **weights: float
    ) -> None:
        """Declare the run's phases so per-phase progress maps into overall progress.

        Either weights (``run.phases(fetch=1, validate=1, process=1.6, cleanup=0.4)``: each
        phase gets its share of 0..1 in declaration order) or explicit percent ranges as in
        the seed's multi-phase example
        (``run.phases({"fetch": (0, 25), "validate": (25, 50), "process": (50, 90)})``).

        Raises:
            ConfigurationError: the declaration is empty, mixed, or out of range.
        """
        self._phases = phase_ranges(spec, weights)

    @contextlib.contextmanager
    def phase_scope(self, name: str) -> Iterator[Supervision]:
        """``with run.phase_scope("validate"):`` enters a phase and completes it on exit
        (not when the block raises)."""
        self._enter_phase(name)
        yield self
        self._complete_phase()

    def _enter_phase(self, name: str) -> None:
        if self._phases and name not in self._phases:
            raise ValueError(
                f"unknown phase {name!r}; declared phases are {', '.join(self._phases)}"
            )
        lo_hi = self._phases.get(name)
        if lo_hi is not None:
            self._lo, self._width = lo_hi[0], lo_hi[1] - lo_hi[0]
        self._phase = name
        self._current = None  # the new phase starts at its lower bound
        self._total = None
        self._flush_now = True
        self._wake()

    def _complete_phase(self) -> None:
        self._current = self._total = 1

    def _set_meta(
        self, metadata: Mapping[str, Any] | None, fields: Mapping[str, Any], beat: int
    ) -> None:
        """Merge into the run's metadata (never replaced wholesale: REFERENCE, Chaperone lost
        per-job settings that way). A ``None`` value is stored as is and means "no such
        key": readers drop it (:func:`present`), so the hot path pays no scan for it.

        Heartbeat records are coalesced, so a value replaced before any record carried it
        would never be on record (the guide's ``status="started"`` followed by
        ``status="done"`` within a second). The second metadata call after a flush keeps
        the state it is about to change in ``_superseded`` (with the ``heartbeat()`` calls made
        before it; ``beat`` is 1 when this call is one): one dict copy per flush period,
        whatever the call rate. The monitor records it
        first at its next flush if a value in it was since replaced or removed
        (:meth:`Run.take_superseded`), and drops it otherwise.
        """
        if metadata is not None and not isinstance(metadata, Mapping):
            not_a_mapping(metadata)
        meta = self._meta
        if meta is None:
            meta = self._meta = {}
            self._meta_dirty = True
        elif not self._meta_dirty:
            self._meta_dirty = True  # the state before this call is on record already
        elif self._superseded is None:
            self._superseded = (self._calls - beat, dict(meta))
        if metadata is not None:
            meta.update(metadata)
        if fields:
            meta.update(fields)

    def _copy(self) -> Supervision:
        """A copy of the hot path's fields, without the link to the run's state (see
        :meth:`Run.detach`)."""
        copy = Supervision.__new__(Supervision)
        copy._calls, copy._meta = self._calls, self._meta
        copy._meta_dirty, copy._superseded = False, None
        copy._current, copy._total, copy._phase = self._current, self._total, self._phase
        copy._phases, copy._lo, copy._width = self._phases, self._lo, self._width
        copy._cancel, copy._flush_now, copy._wake = self._cancel, False, _noop
        return copy

    def _raise_cancel(self) -> None:
        cancel = cast(JobLimitExceeded, self._cancel)
        raise JobLimitExceeded(cancel.limit, cancel.value, cancel.actual)

    # ---- what the user reads -------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id (uuid4 unless given, e.g. a Celery task id)."""
        return self._run.id

    @property
    def name(self) -> str:
        """The job name."""
        return self._run.name

    @property
    def queue(self) -> str:
        """The queue or pool the run belongs to."""
        return self._run.queue

    @property
    def attempt(self) -> int:
        """The attempt number (1 for a first run)."""
        return self._run.attempt

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``completed``, ``failed``, ``cancelled`` or ``retried``."""
        return self._run.status

    @property
    def health(self) -> Health:
        """The latest verdict of the health rules (the monitor judges it)."""
        return self._run.health

    @property
    def stuck(self) -> bool:
        """Running past its deadline or silent for over 3 leases, while the process lives."""
        return self._run.stuck

    @property
    def started_at(self) -> float:
        """Unix seconds."""
        return self._run.started_at

    @property
    def finished_at(self) -> float | None:
        """Unix seconds, or None while the run is alive."""
        return self._run.finished_at

    @property
    def timeout_at(self) -> float | None:
        """``started_at + timeout``, or None without a timeout."""
        return self._run.timeout_at

    @property
    def heartbeat_interval(self) -> float:
        """The run's lease in seconds."""
        return self._run.heartbeat_interval

    @property
    def heartbeat_count(self) -> int:
        """``heartbeat()`` calls so far."""
        return self._calls

    @property
    def last_heartbeat(self) -> float:
        """When the monitor last saw the job move (Unix seconds)."""
        return self._run.last_heartbeat

    @property
    def progress_ratio(self) -> float:
        """Overall progress 0..1: ``current / total`` (clamped) mapped into the phase's share."""
        current, total = self._current, self._total
        if current is None or total is None:
            inner = 0.0
        elif total == 0 or current >= total:
            inner = 1.0
        else:
            inner = current / total
        return self._lo + self._width * inner

    @property
    def progress_current(self) -> float | None:
        """The latest ``current`` reported (None before any report in this phase)."""
        return self._current

    @property
    def progress_total(self) -> float | None:
        """The latest ``total`` reported (None when unknown)."""
        return self._total

    @property
    def phase(self) -> str | None:
        """The current phase, if any."""
        return self._phase

    @property
    def memory(self) -> int | None:
        """Process RSS in bytes at the latest sample (None before one)."""
        return self._run.memory

    @property
    def cpu_percent(self) -> float | None:
        """CPU percent of one core at the latest sample (None before one)."""
        return self._run.cpu_percent

    @property
    def violations(self) -> list[Violation]:
        """The limits crossed so far, in order (a copy)."""
        return list(self._run.violations)

    @property
    def error_type(self) -> str | None:
        """The qualified type of the exception the run ended with."""
        return self._run.error_type

    @property
    def error_message(self) -> str | None:
        """``str()`` of the exception the run ended with."""
        return self._run.error_message

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The latest merged metadata (a copy; a key set to ``None`` is removed)."""
        return present(self._meta) or {}

    def snapshot(self, now: float | None = None) -> JobState:
        """An immutable :class:`JobState` of this run."""
        return self._run.snapshot(now, self)

    def finish(self, error: BaseException | None = None) -> None:
        """End a run started with :meth:`supervised.start` (``error`` marks it failed).

        For frameworks whose start and end arrive in separate callbacks (Celery's
        ``task_prerun`` / ``task_postrun`` signals). Idempotent: a second call does nothing.
        """
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"finish(error={error!r}): expected an exception or None")
        run = self._run
        run.finisher(run, error)

    def __repr__(self) -> str:
        run = self._run
        return (
            f"<Supervision {run.name!r} id={run.id} status={run.status} "
            f"progress={self.progress_ratio:.0%}>"
        )


# --------------------------------------------------------------------------------------------
# The runtime's state of a run.
# --------------------------------------------------------------------------------------------


class Run:
    """The mutable state of one run, shared by the lifecycle, the monitor and the writers.

    Internal: users see it only through its :attr:`handle`. Fields the monitor writes are
    written under :attr:`lock` (the monitor's pass, and the finishing thread, hold it).
    """

    __slots__ = (
        "_first_progress",
        "_last_ratio",
        "_observed",
        "_seq",
        "absent",
        "attempt",
        "attributes",
        "clock",
        "cpu_clock",
        "cpu_limit",
        "cpu_percent",
        "cpu_scope",
        "error_message",
        "error_stacktrace",
        "error_type",
        "execution_id",
        "fd_limit",
        "fds",
        "finished_at",
        "finisher",
        "handle",
        "health",
        "heartbeat_interval",
        "hooks",
        "id",
        "last_heartbeat",
        "lock",
        "loop",
        "memory",
        "memory_limit",
        "memory_peak",
        "missed",
        "name",
        "on_limit",
        "otel_context",
        "parent",
        "pid",
        "progress_updated_at",
        "queue",
        "schedule",
        "scheduled_for",
        "span",
        "span_id",
        "stall_timeout",
        "started_at",
        "static",
        "status",
        "stuck",
        "stuck_time",
        "task",
        "timeout",
        "timeout_at",
        "trace_id",
        "violations",
    )

    def __init__(
        self,
        spec: Spec,
        static: Static,
        finisher: Finisher,
        *,
        run_id: str | None = None,
        attempt: int | None = None,
        execution_id: str | None = None,
    ) -> None:
        # Every slot is set here (a slot has no class-level default); what only depends on
        # the spec and the configuration comes precomputed in ``static`` (see _spec.Static).
        self.clock = clock = static.config.clock
        self.static = static
        self.finisher = finisher
        self.pid = _process.pid  # the process the run belongs to (see ``inherited``)
        self.handle = Supervision(self)
        self.id = run_id or spec.supervision_id or _values.new_run_id()
        self.name = static.name
        self.queue = static.queue
        self.attempt = attempt or spec.attempt or 1
        self.execution_id = execution_id or _values.new_run_id()  # this start's own id
        self.heartbeat_interval = static.heartbeat_interval
        self.timeout = spec.timeout
        self.stall_timeout = spec.stall_timeout
        self.memory_limit = spec.memory_limit
        self.cpu_limit = spec.cpu_limit
        self.fd_limit = spec.fd_limit
        self.on_limit: str = static.on_limit
        self.attributes = dict(spec.attributes) if spec.attributes else {}
        self.schedule, self.scheduled_for = spec.schedule, spec.scheduled_for
        self.hooks: Hooks = static.hooks
        self.absent = static.absent
        self.status = "pending"
        now = clock()
        self.started_at = now
        self.finished_at: float | None = None
        self.timeout_at = now + self.timeout if self.timeout else None
        self.last_heartbeat = now
        self.progress_updated_at = now
        # What observe(started_at) would record: a run starts observed, nothing moved yet.
        self._observed: tuple[object, ...] = (0, None, None, None)
        self._last_ratio = 0.0
        self._first_progress: FirstProgress | None = None
        self.memory: int | None = None
        self.memory_peak: int | None = None
        self.cpu_percent: float | None = None
        self.cpu_scope: str | None = None  # what cpu_percent measured (see _resources)
        self.fds: int | None = None
        self.violations: list[Violation] = []
        self.health: Health = "healthy"
        self.stuck = False
        self.stuck_time: StuckTime | None = None  # set the first time it is judged stuck
        self.parent: Run | None = None  # the run current where this one started (_lifecycle)
        self.missed = 0
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.error_stacktrace: str | None = None
        self._seq = 0  # the last record's sequence number (see record_attributes)
        self.lock = threading.RLock()
        self.cpu_clock: int | None = None
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Given by the OTel writer at start, opaque here (None: no span was started).
        self.span: Any = None
        self.otel_context: Any = None
        self.trace_id = 0
        self.span_id = 0

    @property
    def inherited(self) -> bool:
        """True in a forked child of the process that started the run: the run is the
        parent's, and the child must never finish, beat or publish for it."""
        return self.pid != _process.pid

    # ---- the hot path's fields, read ------------------------------------------------------

    @property
    def calls(self) -> int:
        """``heartbeat()`` calls so far."""
        return self.handle._calls

    @property
    def meta(self) -> dict[str, Any] | None:
        """The merged metadata without removed keys (a copy), None when there is none."""
        return present(self.handle._meta)

    @property
    def current(self) -> float | None:
        """The latest ``current`` reported."""
        return self.handle._current

    @property
    def total(self) -> float | None:
        """The latest ``total`` reported."""
        return self.handle._total

    @property
    def phase(self) -> str | None:
        """The current phase."""
        return self.handle._phase

    @property
    def progress_ratio(self) -> float:
        """Overall progress 0..1 (see :attr:`Supervision.progress_ratio`)."""
        return self.handle.progress_ratio

    @property
    def cancel(self) -> JobLimitExceeded | None:
        """The armed cancellation, if the run's limit policy asked for one."""
        return self.handle._cancel

    # ---- talking back to the hot path ----------------------------------------------------

    def set_wake(self, wake: Callable[[], None]) -> None:
        """What the hot path calls to ask the monitor for a prompt pass (first heartbeat,
        phase change)."""
        self.handle._wake = wake

    def arm_cancel(self, error: JobLimitExceeded) -> None:
        """Make the run's next ``heartbeat()``/``report_progress()`` raise ``error``'s kind."""
        self.handle._cancel = error

    def take_superseded(self) -> tuple[int, dict[str, Any]] | None:
        """The metadata state a later call replaced before a record carried it, with the
        ``heartbeat()`` calls made up to then (taken once: see ``Supervision._set_meta``)."""
        handle = self.handle
        kept = handle._superseded
        if kept is None:
            return None
        handle._superseded = None
        if not was_replaced(kept[1], handle._meta):
            return None
        return kept[0], present(kept[1]) or {}

    @property
    def superseded_pending(self) -> bool:
        """A metadata state that was replaced before a record carried it waits for one."""
        kept = self.handle._superseded
        return kept is not None and was_replaced(kept[1], self.handle._meta)

    def meta_recorded(self) -> None:
        """A record now carries the run's current metadata."""
        self.handle._meta_dirty = False

    def take_flush_now(self) -> bool:
        """Whether a prompt flush was asked for (a phase change) since the last call."""
        handle = self.handle
        asked = handle._flush_now
        handle._flush_now = False
        return asked

    # ---- derived state -------------------------------------------------------------------

    def observe(self, now: float) -> bool:
        """Stamp ``last_heartbeat`` / ``progress_updated_at`` if the job moved since the last
        look (monitor thread, and at start/finish). Returns True when it had."""
        handle = self.handle
        seen = (handle._calls, handle._current, handle._total, handle._phase)
        if seen == (before := self._observed):
            return False
        self._observed = seen
        self.last_heartbeat = now
        ratio = handle.progress_ratio
        current, was = handle._current, before[1]
        if current is not None and (
            self._first_progress is None
            or seen[3] != before[3]  # a new phase: its items are counted from here
            or (isinstance(was, (int, float)) and current < was)  # a new loop (track() again)
        ):
            self._first_progress = (now, ratio, current)
        if ratio != self._last_ratio or seen[1] != before[1]:  # a count with no total moves
            self._last_ratio = ratio
            self.progress_updated_at = now
        return True

    @property
    def stall_deadline(self) -> float | None:
        """When flat progress makes the run stalled (needs ``stall_timeout``)."""
        if self.stall_timeout is None:
            return None
        return self.progress_updated_at + self.stall_timeout

    def rate(self, now: float) -> float | None:
        """Overall progress per second since the current phase's (or loop's) first report
        (None before two points)."""
        return _values.progress_rate(self._first_progress, self.handle.progress_ratio, now)

    def throughput(self, now: float) -> float | None:
        """Items per second in the current phase (or loop) since its first report."""
        return _values.progress_throughput(self._first_progress, self.handle._current, now)

    def eta(self, now: float) -> float | None:
        """Seconds to completion at the current rate (None when unknown)."""
        return _values.progress_eta(self.rate(now), self.handle.progress_ratio)

    def signals(self, now: float) -> dict[str, SignalValue]:
        """The health rules' inputs for this run at ``now`` (see ``_health``)."""
        return {
            "status": self.status,
            "started_at": self.started_at,
            "last_heartbeat": self.last_heartbeat,
            "last_seen": now,  # in-process: our own process is alive by definition
            "lease": self.static.lease,
            "heartbeat_interval": self.heartbeat_interval,
            "timeout_at": self.timeout_at,
            "stall_deadline": self.stall_deadline,
            "memory": self.memory,
            "memory_limit": self.memory_limit,
            "cpu": self.cpu_percent if self.cpu_scope != "shared" else None,
            "cpu_limit": self.cpu_limit,
            "fds": self.fds,
            "fd_limit": self.fd_limit,
            "violation_count": len(self.violations),
        }

    def detach(self) -> None:
        """Let go of the user's handle once the run has finished, keeping a copy of its
        hot-path fields for late readers (a gauge collection racing the finish). The handle
        refers to this state and this state to the handle: a cycle, which kept every finished
        run (and its span) alive until the cyclic garbage collector ran, ~8 us a run
        (bench/bench_runtime.py). Without it, a finished run nobody holds is freed at once."""
        self.handle = self.handle._copy()

    def snapshot(self, now: float | None = None, handle: Supervision | None = None) -> JobState:
        """An immutable :class:`JobState` of this run (``handle``: the user's, whose
        fields are read live even after :meth:`detach`)."""
        now = self.clock() if now is None else now
        if self.finished_at is None:
            with self.lock:
                self.observe(now)
        end = self.finished_at if self.finished_at is not None else now
        if handle is None:
            handle = self.handle
        traced = self.trace_id != 0 and self.span_id != 0
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
            heartbeat_count=handle._calls,
            last_heartbeat=self.last_heartbeat,
            heartbeat_age=max(0.0, now - self.last_heartbeat),
            missed_heartbeats=self.missed,
            timeout_at=self.timeout_at,
            progress=handle.progress_ratio,
            current=handle._current,
            total=handle._total,
            phase=handle._phase,
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
            metadata=handle.metadata,
            error_type=self.error_type,
            error_message=self.error_message,
            trace_id=format(self.trace_id, "032x") if traced else None,
            span_id=format(self.span_id, "016x") if traced else None,
            attributes=dict(self.attributes),
            parent_run_id=self.parent.id if self.parent is not None else None,
            stuck_since=self.stuck_time.since if self.stuck_time is not None else None,
            stuck_seconds=self.stuck_time.seconds(end) if self.stuck_time is not None else None,
            cpu_scope=self.cpu_scope,
        )

    def next_seq(self) -> int:
        """The next record's sequence number (``chaperone.job.sequence``).

        Under the run's lock (reentrant: the monitor already holds it when it emits): the
        started and finished records are built on the job's thread, the others on the
        monitor's. Only paid when a record is built.
        """
        with self.lock:
            self._seq = seq = self._seq + 1
        return seq


def state_of(handle: Supervision) -> Run:
    """The runtime's state behind a user's handle (for the runtime's own tests and tools)."""
    return handle._run
