"""The per-process runtime: live runs, the monitor thread and its per-run state, hooks.

The monitor thread (``chaperone-monitor``, a daemon) wakes at the earliest flush due across
live runs (at least once a second) and, for each run:

1. samples resources (process RSS and fds; thread or process CPU) every ``sample_interval``;
2. checks limits and the deadline, recording each violation once per limit type and applying
   the run's policy (``warn`` logs, in the run's span context; ``cancel`` arms
   ``JobLimitExceeded`` for the run's next heartbeat and cancels an async run's task);
3. flushes at most one heartbeat record per flush period, carrying the calls coalesced since
   the last one — or, if the job's code said nothing, a *liveness* record (the process
   vouches for the run; the sink tells hung from lost this way);
4. judges health with the rules of :mod:`._health` and fires hooks on transitions.

What the monitor remembers of a run between passes (next flush due, what it flushed,
limits already recorded, the CPU reading it compares with) is its own :class:`Watch`, not
the run's state. The monitor produces records (``Run.emit``); what becomes of them in OTel is
the OTel writer's business (``_otel``), which the runtime holds and registers as a listener.

Hooks run on their own thread, after the run's lock is released, each under the
internal-error guard. After ``fork`` the child starts with no live runs and a fresh thread
(Celery prefork).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import semconv as sc
from ._cancel import arm as arm_cancel
from ._config import Config, configured_before, get_config
from ._events import AttributeValue, add_listener, remove_listener
from ._health import Rules, rules
from ._model import Violation
from ._otel import OTelWriter
from ._otel._providers import unconfigured_hint
from ._record import emit, to_json
from ._resources import Probe, ProcessSample, ProcessSampler, cpu_scopes, read_thread_cpu
from ._run import Run
from ._safety import guarded_call as _bind
from ._safety import handle_internal_errors, internal_error, kept_in_background
from ._values import StuckTime
from .exceptions import JobLimitExceeded

_logger = logging.getLogger("chaperone_otel")

_MAX_WAIT = 1.0
_MAX_PENDING_HOOKS = 10_000
_MIN_WAIT = 0.01


class Watch:
    """The monitor's memory of one live run between its passes.

    Written by the monitor's pass, or by the finishing thread in :meth:`Runtime.judge`,
    both under the run's lock.
    """

    __slots__ = (
        "cpu_prev",
        "decile",
        "flushed",
        "flushed_phase",
        "flushed_progress_at",
        "next_flush",
        "run",
        "shared_at",
        "since",
        "timed_out",
        "violated",
    )

    def __init__(self, run: Run, since: float) -> None:
        self.run = run
        # Process samples taken before this (the runtime's monotonic clock) describe the
        # previous run, not this one: they never judge it (a sequential job was cancelled on
        # its predecessor's RSS).
        self.since = since
        self.next_flush = run.started_at + run.static.flush_period
        self.flushed = 0  # heartbeat() calls carried by heartbeat records so far
        self.flushed_progress_at = run.started_at
        self.decile = 0
        self.flushed_phase: str | None = None
        self.violated: set[str] | None = None  # limit types already recorded
        self.cpu_prev: tuple[float, float] | None = None  # (monotonic, thread cpu seconds)
        self.shared_at = -math.inf  # the latest pass that found its CPU shared (monotonic)
        self.timed_out = False


class Runtime:
    """Live runs of this process and the machinery that watches them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rules: Rules = rules(config.health)
        self._runs: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._calls: deque[tuple[Callable[..., object], tuple[Any, ...], str]] = deque()
        # Hooks run on their own thread: a slow hook (a webhook POST) must not stall the
        # monitor pass that flushes every run's heartbeats, nor hold up shutdown.
        self._hooks: deque[Callable[[], object]] = deque()
        self._hooks_event = threading.Event()
        self._hooks_thread: threading.Thread | None = None
        self._sampler: ProcessSampler | Probe | None = None
        # When a sample is due and a CPU reading's window (monotonic), and what a thread's
        # CPU reads: the real ones, unless sample_with() gave a probe (a testing fake).
        self.monotonic: Callable[[], float] = time.monotonic
        self.thread_cpu: Callable[[int | None], float | None] = read_thread_cpu
        self._prev_sample: tuple[float, ProcessSample] | None = None  # (monotonic, sample)
        self._next_sample = 0.0
        self._sample: ProcessSample | None = None
        self._proc_cpu: float | None = None
        self._proc_cpu_since = 0.0  # monotonic start of the window _proc_cpu measures
        self._cpu_scopes: dict[int, str] = {}  # id(run) -> its CPU reading's scope, per tick
        self.background = True
        self._bound_wake = self.wake  # one bound method for every run, not one per run
        self.writer = OTelWriter(config, self.live_runs)
        add_listener(self.writer)

    # ---- registry ------------------------------------------------------------------------

    def live_runs(self) -> Sequence[Run]:
        """The runs currently alive in this process."""
        # list(dict.values()) runs in C without releasing the GIL: a consistent copy even
        # while runs start and finish (they store and pop without this lock, see started).
        with self._lock:
            watches = list(self._runs.values())
        return [watch.run for watch in watches]

    def started(self, run: Run) -> None:
        """Register a run that just started (job thread).

        Its :class:`Watch` starts in the state ``observe(started_at)`` would leave it in.
        """
        run.set_wake(self._bound_wake)
        # No lock: one dict store is atomic (the GIL; per-dict locks in free-threaded
        # builds), and every reader copies the dict in one C-level call (live_runs).
        self._runs[id(run)] = Watch(run, self.monotonic())
        if self._thread is None:
            self._ensure_thread()
            current = _runtime
            if current is not None and current is not self:
                # configure() replaced this runtime while the run was starting: the registry
                # is shared (replace_runtime), so it is the new monitor that must run.
                run.set_wake(current._bound_wake)
                current._ensure_thread()

    def discard(self, run: Run) -> None:
        """Unregister a run whose start failed under the test switch (no finish hooks)."""
        self._runs.pop(id(run), None)

    def finished(self, run: Run) -> None:
        """Unregister a finished run (job thread); finish hooks go to the hooks thread."""
        self._runs.pop(id(run), None)  # atomic, like the store in started()
        status = run.status
        if status == "retried":
            return  # neither a success nor a failure: the framework runs the task again
        hooks = run.hooks.on_complete if status == "completed" else run.hooks.on_failure
        if hooks:
            with handle_internal_errors("run.finish_hooks"):
                state = run.snapshot()
                for hook in hooks:
                    self.call_soon(
                        hook,
                        (state,),
                        "hook:on_complete" if run.status == "completed" else "hook:on_failure",
                    )

    def call_soon(self, fn: Callable[..., object], args: tuple[Any, ...], where: str) -> None:
        """Run ``fn(*args)`` on the hooks thread (or at the next ``tick()`` without threads)."""
        self._calls.append((fn, args, where))
        self.wake()

    def _dispatch(self, action: Callable[[], object]) -> None:
        """Run a hook call: inline without background threads (tests), else on the hooks
        thread, with a bounded backlog (a hook slower than the events it gets drops them,
        counted, rather than growing memory without bound)."""
        if not self.background:
            action()
            return
        if len(self._hooks) >= _MAX_PENDING_HOOKS:
            internal_error("hooks.dropped", RuntimeError("hook backlog full; hook call dropped"))
            return
        self._hooks.append(action)
        self._hooks_event.set()
        if self._hooks_thread is None or not self._hooks_thread.is_alive():
            with self._lock:
                if self._hooks_thread is None or not self._hooks_thread.is_alive():
                    thread = threading.Thread(
                        target=self._hooks_loop, name="chaperone-hooks", daemon=True
                    )
                    try:
                        thread.start()
                    except RuntimeError as error:  # out of threads: the next hook tries again
                        internal_error("hooks.thread", error)
                        return
                    self._hooks_thread = thread

    def _hooks_loop(self) -> None:
        while True:
            self._hooks_event.wait(_MAX_WAIT)
            self._hooks_event.clear()
            while self._hooks:
                action = self._hooks.popleft()
                with kept_in_background():  # what _bind's guard re-raises under the test switch
                    action()
            if self._stop.is_set():
                return

    def wake(self) -> None:
        """Ask the monitor for a tick now (first heartbeat, phase change, hooks)."""
        self._wake_event.set()

    # ---- thread --------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if not self.background or self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            if self._sampler is None:
                # Here, on the thread starting the first run, not on the monitor's first
                # pass: importing psutil reads hundreds of files, each read a GIL hand-over,
                # and next to a CPU-bound job each hand-over waits a switch interval (5 ms).
                # The monitor's first pass took over 1.5 s so, and no heartbeat was flushed.
                with handle_internal_errors("resources.sample"):
                    self._sampler = ProcessSampler()
            self._stop.clear()
            thread = threading.Thread(target=self._loop, name="chaperone-monitor", daemon=True)
            try:
                thread.start()
            except RuntimeError as error:  # "can't start new thread": out of threads/memory
                # The run goes on unwatched (no heartbeat flush, no judging) rather than
                # failing the job; the next run to start tries again.
                internal_error("monitor.thread", error)
                return
            self._thread = thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake_event.wait(self._next_wait())
            self._wake_event.clear()
            if self._stop.is_set():
                break
            with kept_in_background(), handle_internal_errors("monitor.tick"):
                self.tick()

    def _next_wait(self) -> float:
        now = self.config.clock()
        wait = _MAX_WAIT
        with self._lock:
            watches = list(self._runs.values())
        for watch in watches:
            wait = min(wait, watch.next_flush - now)
        if watches:  # a sample is due every sample_interval while runs are live
            wait = min(wait, self._next_sample - self.monotonic())
        return max(_MIN_WAIT, wait)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the monitor and hooks threads (prompt: they wait on Events). Returns False if
        a thread did not end within ``timeout`` (a hook that never returns): it is a daemon
        and is left behind rather than hanging the process's exit."""
        self._stop.set()
        self._wake_event.set()
        self._hooks_event.set()
        deadline = time.monotonic() + timeout
        stopped = True
        for thread in (self._thread, self._hooks_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                stopped = stopped and not thread.is_alive()
        self._thread = None
        self._hooks_thread = None
        return stopped

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads, run what is still queued inline, detach from registries.

        Bounded: if a hook never returns, its thread is left behind (a daemon) and what is
        still queued is not run, rather than hanging shutdown or the process's exit.
        """
        if self.stop(timeout):
            self.background = False  # nothing else ticks now: run the leftovers here
            with handle_internal_errors("runtime.close"):
                self.tick()
        remove_listener(self.writer)
        self.writer.close()

    def after_fork(self) -> None:
        """In a forked child: no live runs, new locks, a thread started on demand."""
        self._runs = {}
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._calls = deque()
        self._hooks = deque()
        self._hooks_event = threading.Event()
        self._hooks_thread = None
        self.writer.after_fork()
        if isinstance(self._sampler, ProcessSampler):  # reads the parent (a probe is kept)
            self._sampler = None
        self._prev_sample = None
        self._next_sample = 0.0
        self._sample = None  # the parent's reading
        self._proc_cpu = None
        self._cpu_scopes = {}

    # ---- one tick ------------------------------------------------------------------------

    def tick(self) -> None:
        """One monitor pass over all live runs (the thread calls it; tests may too)."""
        with self._tick_lock:
            while self._calls:
                fn, args, where = self._calls.popleft()
                self._dispatch(_bind(fn, *args, where=where))
            self.writer.flush_metrics()
            with self._lock:
                watches = list(self._runs.values())
            if watches:
                # A sample taken while no run is live judges no run (a run uses only
                # samples taken after its start, Watch.since), so an idle pass takes none:
                # a worker between short tasks skips its /proc reads.
                self._sample_process()
            with handle_internal_errors("resources.cpu_scopes"):
                self._cpu_scopes = cpu_scopes([watch.run for watch in watches])
            for watch in watches:
                with handle_internal_errors("monitor.run"):
                    self._tick_run(watch, watch.run.clock())

    def flush_pending(self, timeout: float) -> bool:
        """Publish now what the monitor would publish at its next passes: each live run's
        heartbeats and progress not yet on record (one heartbeat record each), and the
        queued run counts (``chaperone.flush()``).

        Returns False if a monitor pass held the tick lock for longer than ``timeout``
        (e.g. ``flush()`` called by a hook run inline by that pass).
        """
        if not self._tick_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            self.writer.flush_metrics()
            with self._lock:
                watches = list(self._runs.values())
            for watch in watches:
                run = watch.run
                with handle_internal_errors("flush.run"), run.lock:
                    if run.finished_at is None and not run.inherited:
                        now = run.clock()
                        run.observe(now)
                        self._flush(watch, now, final=True)
        finally:
            self._tick_lock.release()
        return True

    def flush_metrics(self) -> None:
        """Count queued run starts and ends and record their durations now.

        The monitor does it each pass and the counters' callbacks before each collection;
        this is for a reader of the duration histogram that must not wait for either.
        """
        self.writer.flush_metrics()

    def sample_with(self, probe: Probe) -> None:
        """Sample with ``probe`` instead of the process and ``time.monotonic``: its clock
        says when a sample is due, its readings are the samples (``testing`` fakes them
        under a ``FakeClock``). Before any run starts: a run's window is on one clock."""
        self._sampler = probe
        self.monotonic = probe.monotonic
        self.thread_cpu = probe.thread_cpu

    def _sample_process(self) -> None:
        mono = self.monotonic()
        if mono < self._next_sample:
            return
        self._next_sample = mono + self.config.sample_interval
        with handle_internal_errors("resources.sample"):
            if self._sampler is None:
                self._sampler = ProcessSampler()
            sample = self._sampler.sample(mono)
            prev = self._prev_sample
            if prev is not None and mono > prev[0]:
                self._proc_cpu = max(
                    0.0, 100.0 * (sample.cpu_time - prev[1].cpu_time) / (mono - prev[0])
                )
                self._proc_cpu_since = prev[0]
            self._prev_sample = (mono, sample)
            self._sample = sample

    def _event(
        self,
        run: Run,
        event_name: str,
        now: float,
        event: dict[str, AttributeValue],
        *,
        severity: str = "INFO",
        body: str = "",
    ) -> None:
        """One monitor event of ``run``, with its one attribute set: a lifecycle record for
        the listeners that want one, and the event for the OTel writer's span and counters
        (which need no full-state record)."""
        emit(run, event_name, now, severity=severity, event=event, body=body)
        self.writer.on_event(run, event_name, event, now)

    def _tick_run(self, watch: Watch, now: float) -> None:
        run = watch.run
        actions: list[Callable[[], object]] = []
        with run.lock:
            if run.finished_at is not None:
                # Unregistered by the finishing thread; a run is never kept "live" once
                # finished, whatever happened between its finish and this pass.
                self._runs.pop(id(run), None)
                return
            run.observe(now)
            self._apply_sample(watch)
            self._check_limits(watch, now, actions)
            self._flush(watch, now)
            self._judge(run, now, actions)
        for action in actions:
            self._dispatch(action)

    def _apply_sample(self, watch: Watch) -> None:
        sample = self._sample
        if sample is None or sample.at <= watch.since:
            return  # none yet, or one taken before this run started (or as it did)
        run = watch.run
        if sample.rss is not None:
            run.memory = sample.rss
            run.memory_peak = max(run.memory_peak or 0, sample.rss)
        run.fds = sample.fds
        mono = self.monotonic()
        # Not in this pass's scopes: started since; judged on nothing until it is.
        scope = self._cpu_scopes.get(id(run), "shared")
        if scope == "shared":
            watch.shared_at = mono
        cpu: float | None = None
        window = mono  # the reading's window starts here (monotonic)
        if run.cpu_clock is not None:
            used = self.thread_cpu(run.cpu_clock)
            if used is None:
                run.cpu_clock = None  # the thread is gone: fall back to the process
            else:
                prev = watch.cpu_prev
                if prev is not None and mono - prev[0] >= 0.05:
                    cpu = max(0.0, 100.0 * (used - prev[1]) / (mono - prev[0]))
                    window = prev[0]
                    watch.cpu_prev = (mono, used)
                elif prev is None:
                    watch.cpu_prev = (mono, used)
        if cpu is None and run.cpu_clock is None and self._proc_cpu_since >= watch.since:
            cpu = self._proc_cpu  # a process rate measured wholly within this run
            window = self._proc_cpu_since
        if cpu is not None:
            run.cpu_percent = cpu
            # The reading is the run's own only if no pass in its window found an unrelated
            # run on the same thread (or process): a run that just ended may have used it.
            run.cpu_scope = "shared" if watch.shared_at >= window else scope

    def _check_limits(self, watch: Watch, now: float, actions: list[Callable[[], object]]) -> None:
        run = watch.run
        checks: tuple[tuple[str, float | None, float | None], ...] = (
            ("memory", run.memory_limit, run.memory),
            # CPU shared with unrelated runs is not this run's: no limit is enforced on it.
            ("cpu", run.cpu_limit, run.cpu_percent if run.cpu_scope != "shared" else None),
            ("fds", run.fd_limit, run.fds),
        )
        for kind, limit, actual in checks:
            if (
                limit is not None
                and actual is not None
                and actual > limit
                and (watch.violated is None or kind not in watch.violated)
            ):
                self._violation(watch, kind, float(limit), float(actual), now, actions)
        if run.timeout_at is not None and now > run.timeout_at and not watch.timed_out:
            self._timeout(watch, now, actions)

    def _timeout(self, watch: Watch, now: float, actions: list[Callable[[], object]]) -> None:
        run = watch.run
        watch.timed_out = True
        self._violation(
            watch, "timeout", float(run.timeout or 0.0), now - run.started_at, now, actions
        )
        snapshot = run.snapshot(now)
        for hook in run.hooks.on_timeout:
            actions.append(_bind(hook, snapshot))

    def _violation(
        self,
        watch: Watch,
        kind: str,
        limit: float,
        actual: float,
        now: float,
        actions: list[Callable[[], object]],
    ) -> None:
        run = watch.run
        if watch.violated is None:
            watch.violated = set()
        watch.violated.add(kind)
        violation = Violation(kind, limit, actual, now, run.on_limit)
        run.violations.append(violation)
        event: dict[str, AttributeValue] = {
            sc.ATTR_LIMIT_TYPE: kind,
            sc.ATTR_LIMIT_VALUE: limit,
            sc.ATTR_LIMIT_ACTUAL: actual,
        }
        exceeded = JobLimitExceeded(kind, limit, actual)  # its text has the units: MiB, %, s
        self._event(
            run, sc.EVENT_JOB_VIOLATION, now, event, severity="WARN", body=f"{run.name}: {exceeded}"
        )
        if run.on_limit == "warn":
            self.writer.warning(run, "job %s (run %s): %s", run.name, run.id, exceeded)
        elif run.on_limit == "cancel" and run.cancel is None:
            arm_cancel(run, exceeded, self.live_runs())  # and the runs started inside it
            task, loop = run.task, run.loop
            if task is not None and loop is not None and not task.done():
                message = f"chaperone-otel: {kind} limit exceeded"

                def cancel_if_running() -> None:
                    # On the loop's thread, now: the run may have ended since the violation
                    # was seen, and a late cancel would hit whatever the task does next.
                    if run.finished_at is None and run.task is task and not task.done():
                        task.cancel(message)  # (an async generator's body may be suspended)

                with handle_internal_errors("monitor.cancel"):
                    loop.call_soon_threadsafe(cancel_if_running)
        snapshot = run.snapshot(now)
        for hook in run.hooks.on_violation:
            actions.append(_bind(hook, snapshot, violation))

    def _flush(self, watch: Watch, now: float, *, final: bool = False) -> None:
        run = watch.run
        calls = run.calls - watch.flushed
        asked = run.take_flush_now()  # a phase change asks for a prompt flush
        if final:
            if (
                calls == 0
                and run.progress_updated_at <= watch.flushed_progress_at
                and not run.superseded_pending
            ):
                return
        elif not (now >= watch.next_flush or asked or (watch.flushed == 0 and calls > 0)):
            return
        superseded = run.take_superseded()
        if superseded is not None:
            # A metadata state replaced before a record carried it: on record first, with
            # the calls made up to then (see Supervision._set_meta).
            count, meta_then = superseded
            before: dict[str, AttributeValue] = {
                sc.ATTR_HEARTBEAT_CALLS: max(0, count - watch.flushed),
                sc.ATTR_HEARTBEAT_KIND: "heartbeat",
                sc.ATTR_HEARTBEAT_COUNT: count,
                sc.ATTR_METADATA: to_json(meta_then),
            }
            watch.flushed = max(watch.flushed, count)
            self._event(run, sc.EVENT_JOB_HEARTBEAT, now, before)
            calls = run.calls - watch.flushed
        progressed = run.progress_updated_at > watch.flushed_progress_at
        kind = "heartbeat" if calls > 0 or progressed else "liveness"
        watch.flushed += calls
        watch.flushed_progress_at = run.progress_updated_at
        watch.next_flush = now + self.config.flush_period_for(run.heartbeat_interval)
        ratio = run.progress_ratio
        # The event's one attribute set: the log record carries it (inside the run's full
        # state, where count, ratio and metadata already are) and so does the span event.
        event: dict[str, AttributeValue] = {
            sc.ATTR_HEARTBEAT_CALLS: calls,
            sc.ATTR_HEARTBEAT_KIND: kind,
            sc.ATTR_HEARTBEAT_COUNT: run.calls,
            sc.ATTR_PROGRESS_RATIO: ratio,
        }
        meta = run.meta
        run.meta_recorded()
        if meta:
            event[sc.ATTR_METADATA] = to_json(meta)
        self._event(run, sc.EVENT_JOB_HEARTBEAT, now, event)
        decile = math.floor(ratio * 10 + 1e-9)
        phase = run.phase
        if decile > watch.decile or phase != watch.flushed_phase:
            watch.decile, watch.flushed_phase = max(decile, watch.decile), phase
            progress: dict[str, AttributeValue] = {sc.ATTR_PROGRESS_RATIO: ratio}
            if phase is not None:
                progress[sc.ATTR_PROGRESS_PHASE] = phase
            self._event(run, sc.EVENT_JOB_PROGRESS, now, progress)

    def _judge(self, run: Run, now: float, actions: list[Callable[[], object]]) -> None:
        signals = run.signals(now)
        health = self.rules.health(signals, now)
        stuck = self.rules.stuck.holds(signals, now)
        # A liveness lease is renewed by the process being alive (the rules' LeaseRenewed):
        # such a run promises no heartbeats, so it misses none.
        missed = (
            0
            if run.static.lease == "liveness"
            else max(0, math.floor((now - run.last_heartbeat) / run.heartbeat_interval))
        )
        old_health, old_stuck, old_missed = run.health, run.stuck, run.missed
        run.health, run.stuck, run.missed = health, stuck, missed
        if stuck != old_stuck:  # before the health record below, which carries the history
            stuck_time(run, now, stuck=stuck)
        if missed > old_missed:
            self.writer.heartbeats_missed(run, missed - old_missed)
            snapshot = run.snapshot(now)
            for hook in run.hooks.on_heartbeat_missed:
                actions.append(_bind(hook, snapshot))
        if health != old_health or stuck != old_stuck:
            event: dict[str, AttributeValue] = {
                sc.ATTR_JOB_HEALTH: health,
                sc.ATTR_JOB_STUCK: stuck,
                sc.ATTR_HEALTH_PREVIOUS: old_health,
            }
            self._event(
                run,
                sc.EVENT_JOB_HEALTH,
                now,
                event,
                severity="INFO" if health == "healthy" else "WARN",
                body=f"{run.name}: {old_health} -> {health}" + (" (stuck)" if stuck else ""),
            )
            snapshot = run.snapshot(now)
            if health != old_health:
                for hook in run.hooks.on_health_change:
                    actions.append(_bind(hook, snapshot, old_health))
            if stuck and not old_stuck:
                for hook in run.hooks.on_stuck:
                    actions.append(_bind(hook, snapshot))

    def judge(self, run: Run, now: float) -> list[Callable[[], object]]:
        """Final checks, flush and verdict for a finishing run; returns the hook calls it
        owes (for :meth:`dispatch` once the caller has released the run's lock).

        The caller holds ``run.lock`` (``finish_run`` judges in the same locked section
        that sets the final status). A run that ends past its deadline gets its timeout
        violation here if no monitor pass saw it first, so the same run always ends with the
        same violations and health, whatever the monitor's timing. Heartbeats not yet
        flushed become one last heartbeat record, so a short run that beat has its
        heartbeats on record before its finished record.
        """
        actions: list[Callable[[], object]] = []
        watch = self._runs.get(id(run))
        if watch is None:  # not registered here (started before a fork, in the parent)
            watch = Watch(run, self.monotonic())
        run.observe(now)
        if run.timeout_at is not None and now > run.timeout_at and not watch.timed_out:
            self._timeout(watch, now, actions)
        # _flush(final=True) returns at once in this case: skip the call (most runs).
        if (
            run.calls != watch.flushed
            or run.progress_updated_at > watch.flushed_progress_at
            or run.superseded_pending
        ):
            try:
                self._flush(watch, now, final=True)
            except Exception as exc:
                internal_error("monitor.final_flush", exc)
        # Most endings are settled by the rules alone (a completed run without violations
        # is healthy whatever its samples were): a dict lookup. Otherwise the verdict
        # compiled for the run's final status, without the live-only terms.
        health = None if run.violations else self.rules.settled(run.status, run.absent)
        if health is None:
            health = self.rules.verdict(run.status)(run.signals(now), now)
        run.health = health
        if run.stuck:
            stuck_time(run, now, stuck=False)  # the finished record has the whole history
        run.stuck = False
        return actions

    def dispatch(self, actions: list[Callable[[], object]]) -> None:
        """Run hook calls built under a run's lock, after it was released (on the job's
        thread: never raises)."""
        for action in actions:
            try:
                self._dispatch(action)
            except Exception as exc:  # e.g. no thread can be started for the hooks
                internal_error("hooks.dispatch", exc)


def stuck_time(run: Run, now: float, *, stuck: bool) -> None:
    """Record a stuck spell's start or end in the run's :class:`StuckTime` (under its lock)."""
    history = run.stuck_time
    if not stuck:
        if history is not None:
            history.leave(now)
    elif history is None:
        run.stuck_time = StuckTime(now)
    else:
        history.enter(now)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's runtime, created on first use from the current configuration."""
    global _runtime
    rt = _runtime
    if rt is not None:
        return rt
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_config())
            _hint_unconfigured()
        return _runtime


_hinted = False


def _hint_unconfigured() -> None:
    """Created by a run, not by ``configure()`` (which replaces the runtime): once per
    process, if ``configure()`` never ran, say that the destination the environment names
    is not used (:func:`~._otel._providers.unconfigured_hint`). After ``shutdown()`` or a
    ``testing`` capture the runtime is created again, and says nothing."""
    global _hinted
    if _hinted or configured_before():
        return
    _hinted = True
    with handle_internal_errors("runtime.unconfigured"):
        hint = unconfigured_hint()
        if hint is not None:
            _logger.warning(hint)


def current_runtime() -> Runtime | None:
    """The runtime if one was created, without creating it."""
    return _runtime


def replace_runtime(config: Config) -> Runtime:
    """Close the current runtime and start a new one for ``config``, keeping live runs.

    The run registry and the counter queue outlive the runtime: the new one takes the old
    one's dict and (through its writer) deque. A run starting or finishing on another thread
    meanwhile holds the old runtime (looked up at its start or finish) and registers,
    unregisters and queues its
    counters in those same objects, which the new monitor reads; so no run is left
    unmonitored, nor "live" after it finished, and the per-run path needs no check.
    """
    global _runtime
    with _runtime_lock:
        old = _runtime
        if old is not None:
            old.close()
        new = Runtime(config)
        if old is not None:
            new._runs = old._runs
            new.writer.adopt(old.writer)
        _runtime = new
        for run in new.live_runs():
            run.set_wake(new._bound_wake)
        if new._runs:
            new._ensure_thread()
        return new


def close_runtime() -> None:
    """Close and forget the runtime (``reset()`` / ``shutdown()``)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None


def _after_fork_in_child() -> None:
    global _runtime_lock
    _runtime_lock = threading.Lock()  # configure() on another thread may have held it
    rt = _runtime
    if rt is not None:
        rt.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "Runtime",
    "Watch",
    "close_runtime",
    "current_runtime",
    "replace_runtime",
    "runtime",
]
