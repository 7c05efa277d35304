"""Resource sampling for live runs: process RSS, open fds, process and per-thread CPU.

Memory and fds belong to the process (several runs in one process share them; that is the
honest measurement — Python has no per-run heap). CPU is measured per *thread* for a run
bound to one thread (a sync function or ``with`` block), through the thread's CPU-time clock
(``pthread_getcpuclockid``) which the monitor thread may read; otherwise per process.

psutil is imported lazily on the monitor thread, so ``import chaperone_otel`` stays light. If
it is missing, memory falls back to ``resource.getrusage`` (peak only) and fds to
``/proc/self/fd``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any


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


class ProcessSampler:
    """Reads the current process; created and used on the monitor thread only."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._proc: Any = None
        try:
            import psutil  # noqa: PLC0415 - lazy: keeps `import chaperone_otel` light

            self._proc = psutil.Process(self._pid)
        except ImportError:  # pragma: no cover - psutil is a declared dependency
            self._proc = None

    def sample(self, now: float) -> ProcessSample:
        """Read RSS, fds and process CPU time."""
        if self._proc is not None:
            rss = int(self._proc.memory_info().rss)
            try:
                fds: int | None = int(self._proc.num_fds())
            except (AttributeError, OSError):
                fds = None
            times = self._proc.cpu_times()
            return ProcessSample(now, rss, fds, float(times.user + times.system))
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
