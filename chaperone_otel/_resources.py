"""Resource sampling for live runs: process RSS, open fds, process and per-thread CPU.

Memory and fds belong to the process (several runs in one process share them; that is the
honest measurement — Python has no per-run heap). CPU is measured per *thread*, through the
thread's CPU-time clock (``pthread_getcpuclockid``) which the monitor thread may read: the
thread a sync run (a function or ``with`` block) runs in, or the event loop's thread for an
async run. Without such a clock (another OS, a thread that has ended) it is the process's.

A run is judged only on CPU it can be charged with (issue 12: an idle async run was
cancelled for a busy thread's CPU). :func:`cpu_scopes` says, per run, what its reading
measures: ``thread`` (a thread only it, or its own ancestors and descendants, run in),
``process`` (the whole process, where every other live run is its ancestor or descendant)
or ``shared`` (the thread or process also runs unrelated live runs: concurrent tasks of one
event loop, interleaved generators, runs in other threads). A ``shared`` reading is
recorded with its scope, but no CPU limit, health rule or ``cpu_above()`` scope judges it.

psutil is imported lazily on the monitor thread, so ``import chaperone_otel`` stays light. If
it is missing, memory falls back to ``resource.getrusage`` (peak only) and fds to
``/proc/self/fd``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

CPU_SCOPES: Final = ("thread", "process", "shared")
"""What a run's CPU reading measured (``semconv.ATTR_CPU_SCOPE``); see the module doc."""


class Measured(Protocol):
    """What :func:`cpu_scopes` reads of a run (``_run.Run``)."""

    @property
    def cpu_clock(self) -> int | None: ...

    @property
    def parent(self) -> Measured | None: ...


def cpu_scopes(runs: Sequence[Measured]) -> dict[int, str]:
    """``id(run)`` → the scope of its CPU reading, for the live runs of this process.

    A run's reading is its own when every other run measured by the same clock (the same
    thread; for a run without a clock, every live run) is its ancestor or descendant: a
    parent's CPU includes its nested children's, which is their work. Linear in the runs
    times their nesting depth, so a process with thousands of live runs pays little.
    """
    by_clock: dict[int | None, list[Measured]] = {}
    for run in runs:
        by_clock.setdefault(run.cpu_clock, []).append(run)
    scopes: dict[int, str] = {}
    for clock, members in by_clock.items():
        if clock is None:
            continue
        own = _exclusive(members)
        for run in members:
            scopes[id(run)] = "thread" if id(run) in own else "shared"
    unclocked = by_clock.get(None)
    if unclocked:
        own = _exclusive(runs) if len(runs) > 1 else {id(unclocked[0])}
        for run in unclocked:
            scopes[id(run)] = "process" if id(run) in own else "shared"
    return scopes


def _exclusive(members: Sequence[Measured]) -> set[int]:
    """Ids of the members every other member is an ancestor or a descendant of."""
    if len(members) == 1:
        return {id(members[0])}
    ids = {id(m) for m in members}
    related = dict.fromkeys(ids, 0)  # ancestors + descendants among the members
    for member in members:
        ancestor = member.parent
        while ancestor is not None:
            key = id(ancestor)
            if key in ids:
                related[id(member)] += 1
                related[key] += 1
            ancestor = ancestor.parent
    return {key for key, count in related.items() if count == len(members) - 1}


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One reading of the process."""

    at: float
    rss: int | None
    fds: int | None
    cpu_time: float  # process user+system seconds


def thread_cpu_clock() -> int | None:
    """The CPU-time clock id of the calling thread, or None where the OS has none."""
    getter = getattr(time, "pthread_getcpuclockid", None)
    if getter is None:
        return None
    try:
        clock: int = getter(threading.get_ident())
        time.clock_gettime(clock)
    except (OSError, OverflowError):
        return None
    return clock


def read_thread_cpu(clock: int | None) -> float | None:
    """CPU seconds used so far by the thread owning ``clock`` (None once it has exited)."""
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


class Probe(Protocol):
    """What the monitor samples with, in place of :class:`ProcessSampler`,
    ``time.monotonic`` and :func:`read_thread_cpu` (``Runtime.sample_with``): the testing
    capture's fake process, read on its ``FakeClock``."""

    def monotonic(self) -> float:
        """Seconds on the clock that says when a sample is due; never goes back."""
        ...

    def sample(self, now: float) -> ProcessSample:
        """The process's reading at ``now`` (this probe's :meth:`monotonic`)."""
        ...

    def thread_cpu(self, clock: int | None) -> float | None:
        """CPU seconds used so far by the thread owning ``clock``, as :func:`read_thread_cpu`."""
        ...


class ProcessSampler:
    """Reads the current process; created by the thread that starts the monitor (the
    import of psutil is slow on a thread competing with a CPU-bound job for the GIL), then
    used on the monitor thread only."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._proc: Any = None
        try:
            import psutil  # noqa: PLC0415 - lazy: keeps `import chaperone_otel` light

            self._proc = psutil.Process(self._pid)
        except ImportError:  # pragma: no cover - psutil is a declared dependency
            self._proc = None

    def sample(self, now: float) -> ProcessSample:
        """Read RSS, fds and process CPU time.

        The CPU time is ``time.process_time()`` (the process's user + system time, all
        threads, from one ``clock_gettime`` that keeps the GIL), not psutil's
        ``cpu_times()``: that reads ``/proc/self/stat``, and each of its open, read and close
        lets the GIL go. Next to a CPU-bound job each hand-over costs the monitor a switch
        interval of waiting and tens of microseconds of CPU (``docs/performance.md``, the
        monitor in a busy worker).
        """
        if self._proc is not None:
            rss = int(self._proc.memory_info().rss)
            try:
                fds: int | None = int(self._proc.num_fds())
            except (AttributeError, OSError):
                fds = None
            return ProcessSample(now, rss, fds, time.process_time())
        return self._fallback(now)  # pragma: no cover - psutil is a declared dependency

    @staticmethod
    def _fallback(now: float) -> ProcessSample:  # pragma: no cover
        import resource  # noqa: PLC0415

        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            fds: int | None = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = None
        return ProcessSample(now, usage.ru_maxrss * 1024, fds, usage.ru_utime + usage.ru_stime)
