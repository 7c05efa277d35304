"""The metrics writer: OTel instruments of the runtime, created from :mod:`~chaperone_otel.semconv`.

Counters and the duration histogram are never updated per ``heartbeat()`` call. A run's start
and end only queue a small tuple on the job's thread (:class:`RunCounters`); they are added
to the counters and the duration recorded at the monitor's next pass or, whichever comes
first, when a collection calls the counters' callbacks (``before_collect``), so every
collection sees every run that ended before it. Flushed heartbeats and violations are
counted from their lifecycle records, missed heartbeats when the monitor sees them.

Live-run gauges are *observable*: their callbacks read the live runs at collection time, so
they cost nothing on the hot path and a finished run's series simply stops being reported.
A worker's Prometheus ``/metrics`` does not go through them: ``export/_prometheus`` builds
those series from the same table (:data:`LIVE_RUN_GAUGES`) and groups
(:meth:`Instruments.live_groups`), and the callbacks observe nothing while the Prometheus
reader collects (:func:`prometheus_scrape`).

Cardinality (DESIGN §7): a live run's gauges are labelled by job name and queue only; runs
older than ``Config.long_run_threshold`` also get their run id, so a hung long job can be
named in an alert while 10,000 short runs leave one series per (name, queue). When several
label-less runs share a group, the group reports its *stalest* run (largest heartbeat age
relative to its interval) for every gauge, so PromQL that joins the gauges (the health rules)
judges a real run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import semconv as sc
from .._safety import add_error_listener, handle_internal_errors, remove_error_listener
from .._version import __version__

if TYPE_CHECKING:
    from .._run import Run

LiveRuns = Callable[[], Sequence["Run"]]


def _lease_renewed(run: Run, now: float) -> float:
    """The last-heartbeat gauge's value: the job code's latest sign of life, or now for a run
    whose lease is its process's liveness (observed alive: ``_health.LeaseRenewed``)."""
    return now if run.static.lease == "liveness" else run.last_heartbeat


Read = Callable[["Run", float], "float | None"]
"""A live-run gauge's value for one run at ``now`` (None: no sample for that run)."""


def _live_run_gauges() -> tuple[tuple[sc.MetricSpec, Read], ...]:
    # A function, not a module-level literal: mypy checks the lambdas' use of ``Run`` (a
    # TYPE_CHECKING import, a cycle) only inside a body.
    return (
        (sc.METRIC_JOB_LAST_HEARTBEAT, _lease_renewed),
        (sc.METRIC_JOB_HEARTBEAT_INTERVAL, lambda r, now: r.heartbeat_interval),
        (sc.METRIC_JOB_DEADLINE, lambda r, now: r.timeout_at),
        (sc.METRIC_JOB_STALL_DEADLINE, lambda r, now: r.stall_deadline),
        (sc.METRIC_JOB_STARTED_TIMESTAMP, lambda r, now: r.started_at),
        (sc.METRIC_JOB_PROGRESS, lambda r, now: r.progress_ratio),
        (sc.METRIC_JOB_PROGRESS_CURRENT, lambda r, now: r.current),
        (sc.METRIC_JOB_PROGRESS_TOTAL, lambda r, now: r.total),
        (sc.METRIC_JOB_ETA, lambda r, now: r.eta(now)),
        (sc.METRIC_JOB_MEMORY, lambda r, now: r.memory),
        (sc.METRIC_JOB_MEMORY_LIMIT, lambda r, now: r.memory_limit),
        (  # only CPU the run can be charged with: no series for a shared reading
            sc.METRIC_JOB_CPU,
            lambda r, now: (
                None if r.cpu_percent is None or r.cpu_scope == "shared" else r.cpu_percent / 100
            ),
        ),
        (
            sc.METRIC_JOB_CPU_LIMIT,
            lambda r, now: None if r.cpu_limit is None else r.cpu_limit / 100,
        ),
        (sc.METRIC_JOB_OPEN_FDS, lambda r, now: r.fds),
        (sc.METRIC_JOB_FD_LIMIT, lambda r, now: r.fd_limit),
        (sc.METRIC_JOB_RUN_VIOLATIONS, lambda r, now: float(len(r.violations))),
    )


LIVE_RUN_GAUGES: Final = _live_run_gauges()
"""The live-run gauges and how each reads a run: one table for the OTel instruments'
callbacks and the Prometheus collector (``export/_prometheus.py``), so the two cannot
serve different values."""

Group = tuple[str, str, str, "Run"]
"""A live-run gauge's label set and the run it reports: (job name, queue, run id or "",
run)."""


class _Scrape(threading.local):
    active = False


_scrape = _Scrape()


@contextlib.contextmanager
def prometheus_scrape() -> Iterator[None]:
    """While this thread collects for the Prometheus reader, the live-run gauges' callbacks
    observe nothing: the Prometheus collector serves those series itself, straight from the
    live runs, so the SDK's collection (a measurement, aggregation and data point per run
    and gauge) and the exporter's translation are not paid a second time, and no series is
    served twice. Other readers (OTLP, in-memory) collect on their own threads as before."""
    _scrape.active = True
    try:
        yield
    finally:
        _scrape.active = False


class Cumulative:
    """Running totals by label set, reported by an *observable* counter.

    A synchronous OTel ``Counter.add`` validates its attributes on every call (~8 us with
    the SDK); a run touches five counters, so the runtime keeps its own totals (a dict
    update under a lock) and the SDK reads them at collection time. The exported series
    are ordinary cumulative counters (``_total`` in Prometheus).
    """

    __slots__ = ("_lock", "_totals")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[tuple[str, str], ...], float] = {}

    def add(self, amount: float, attributes: dict[str, str]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + amount

    def add_many(self, amounts: Mapping[tuple[tuple[str, str], ...], float]) -> None:
        """Add several totals at once, keyed as :meth:`add` keys them (one lock taken)."""
        with self._lock:
            totals = self._totals
            for key, amount in amounts.items():
                totals[key] = totals.get(key, 0) + amount

    def after_fork(self) -> None:
        """A forked child: a new lock (the parent's may have been held at ``fork``) and no
        totals (they are the parent's runs: a child exporting through the parent's meter
        provider would count them twice, and keep the parent's live runs active)."""
        self._lock = threading.Lock()
        self._totals = {}

    def clear(self) -> None:
        """Forget every total (``reset()``: a counter reset, as after a restart)."""
        with self._lock:
            self._totals.clear()

    def value(self, attributes: dict[str, str]) -> float:
        """The total for one label set (0 if never added)."""
        return self._totals.get(tuple(attributes.items()), 0)

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._totals.items())
        return [Observation(total, dict(key)) for key, total in items]


class Instruments:
    """The runtime's instruments on one meter provider.

    Created once per provider (:func:`instruments_for`): an SDK provider hands back an
    already-registered instrument and ignores the callbacks of a second registration, so a
    second ``configure()`` that built new instruments would leave the exporter reading the
    first runtime's state. A new runtime re-binds the same instruments instead, and counter
    totals (including active runs that lived across the change) stay continuous.
    """

    def __init__(
        self,
        meter_provider: Any,
        live_runs: LiveRuns,
        long_run_threshold: float,
        clock: Callable[[], float],
        before_collect: Callable[[], None] | None = None,
    ) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter(sc.INSTRUMENTATION_SCOPE, __version__)
        self._live_runs = live_runs
        self._long_run_threshold = long_run_threshold
        self._clock = clock

        self._before_collect = before_collect
        self._counters: list[Cumulative] = []

        def counter(spec: sc.MetricSpec, *, up_down: bool = False) -> Cumulative:
            totals = Cumulative()
            create = (
                meter.create_observable_up_down_counter
                if up_down
                else (meter.create_observable_counter)
            )
            create(
                spec.name,
                callbacks=[self._counter_callback(totals, spec.name)],
                unit=spec.unit,
                description=spec.description,
            )
            self._counters.append(totals)
            return totals

        self.runs_started = counter(sc.METRIC_JOB_RUNS_STARTED)
        self.runs_finished = counter(sc.METRIC_JOB_RUNS_FINISHED)
        self.heartbeats = counter(sc.METRIC_JOB_HEARTBEATS)
        self.heartbeats_missed = counter(sc.METRIC_JOB_HEARTBEATS_MISSED)
        self.violations = counter(sc.METRIC_JOB_VIOLATIONS)
        self.internal_errors = counter(sc.METRIC_INTERNAL_ERRORS)
        self.runs_active = counter(sc.METRIC_JOB_RUNS_ACTIVE, up_down=True)
        spec = sc.METRIC_JOB_DURATION
        self.duration = meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=[
                0.1,
                0.5,
                1,
                5,
                15,
                30,
                60,
                120,
                300,
                600,
                1800,
                3600,
                7200,
                21600,
                86400,
            ],
        )
        for gspec, read in LIVE_RUN_GAUGES:
            meter.create_observable_gauge(
                gspec.name,
                callbacks=[self._callback(read, gspec.name)],
                unit=gspec.unit,
                description=gspec.description,
            )
        self._listening = False

    def bind(
        self,
        live_runs: LiveRuns,
        long_run_threshold: float,
        clock: Callable[[], float],
        before_collect: Callable[[], None] | None,
    ) -> None:
        """Point the callbacks at a (new) runtime; the running totals carry over."""
        self._live_runs = live_runs
        self._long_run_threshold = long_run_threshold
        self._clock = clock
        self._before_collect = before_collect
        if not self._listening:
            add_error_listener(self.count_internal_error)
            self._listening = True

    def unbind(self) -> None:
        """The runtime closed: stop counting its internal errors until the next bind."""
        if self._listening:
            remove_error_listener(self.count_internal_error)
            self._listening = False

    def _counter_callback(
        self, totals: Cumulative, name: str
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            # Run starts and ends are queued by the job's thread and added here first, so
            # a collection sees every run that ended before it (see Runtime.started).
            before = self._before_collect
            if before is not None:
                with handle_internal_errors(f"counter:{name}"):
                    before()
            return totals.observe(options)

        return observe

    def after_fork(self) -> None:
        """Fresh locks and no totals in a forked child (see :meth:`Cumulative.after_fork`)."""
        for totals in self._counters:
            totals.after_fork()

    def clear(self) -> None:
        """Forget every running total (see :func:`reset_instruments`)."""
        for totals in self._counters:
            totals.clear()

    def count_internal_error(self, where: str) -> None:
        """Error listener: count a swallowed internal error by place."""
        # Places are a small fixed set of code locations: a bounded label.
        self.internal_errors.add(1, {sc.ATTR_INTERNAL_WHERE: where.split(":", 1)[0]})

    def live_groups(self, now: float) -> list[Group]:
        """Live runs grouped by label set, each group represented by its stalest run.

        Recomputed by every gauge callback (O(live runs)): a cache between callbacks of one
        collection would need to know where collections begin, and a time-based one served
        stale groups. The Prometheus collector calls it once per scrape.
        """
        best: dict[tuple[str, str, str], tuple[float, Run]] = {}
        threshold = self._long_run_threshold
        for run in self._live_runs():
            run_id = run.id if now - run.started_at >= threshold else ""
            key = (run.name, run.queue, run_id)
            staleness = (now - _lease_renewed(run, now)) / run.heartbeat_interval
            found = best.get(key)
            if found is None or staleness > found[0]:
                best[key] = (staleness, run)
        return [(name, queue, run_id, run) for (name, queue, run_id), (_, run) in best.items()]

    def now(self) -> float:
        """The bound runtime's clock (Unix seconds)."""
        return self._clock()

    @property
    def bound(self) -> bool:
        """True while a runtime is bound (between :meth:`bind` and :meth:`unbind`)."""
        return self._listening

    def _callback(
        self, read: Callable[[Run, float], float | None], name: str
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            out: list[Observation] = []
            if _scrape.active:
                return out  # served to Prometheus by its collector (prometheus_scrape)
            with handle_internal_errors(f"gauge:{name}"):
                now = self._clock()
                for job, queue, run_id, run in self.live_groups(now):
                    value = read(run, now)
                    if value is not None:
                        labels = {sc.ATTR_JOB_NAME: job, sc.ATTR_JOB_QUEUE: queue}
                        if run_id:
                            labels[sc.ATTR_JOB_RUN_ID] = run_id
                        out.append(Observation(value, labels))
            return out

        return observe


_by_provider: weakref.WeakKeyDictionary[Any, Instruments] = weakref.WeakKeyDictionary()
_by_provider_lock = threading.Lock()
_global_instruments: Instruments | None = None


def _new_lock_after_fork() -> None:
    global _by_provider_lock
    _by_provider_lock = threading.Lock()  # configure() on another thread may have held it


os.register_at_fork(after_in_child=_new_lock_after_fork)


def instruments_for(
    meter_provider: Any,
    live_runs: LiveRuns,
    long_run_threshold: float,
    clock: Callable[[], float],
    before_collect: Callable[[], None] | None = None,
) -> Instruments:
    """The instruments on ``meter_provider`` (the global one when None), bound to a runtime.

    "The global one" is one key for the life of the process: instruments made through the
    API's proxy before the SDK was installed forward to it once it is, so making a second set
    directly on the SDK provider would register every instrument twice.
    """
    global _global_instruments
    with _by_provider_lock:
        if meter_provider is None:
            found = _global_instruments
            if found is None:
                found = _global_instruments = Instruments(
                    metrics.get_meter_provider(),
                    live_runs,
                    long_run_threshold,
                    clock,
                    before_collect,
                )
        else:
            found = _by_provider.get(meter_provider)
            if found is None:
                found = Instruments(
                    meter_provider, live_runs, long_run_threshold, clock, before_collect
                )
                _by_provider[meter_provider] = found
    found.bind(live_runs, long_run_threshold, clock, before_collect)
    return found


def instruments_on(meter_provider: Any) -> Instruments | None:
    """The runtime's instruments on ``meter_provider`` (an SDK provider), if any: those
    made for it by name, or the global ones when it is the global provider. A bound set
    (a live runtime's) wins over one a closed runtime left behind."""
    with _by_provider_lock:
        found = [_by_provider.get(meter_provider)]
        if _global_instruments is not None and meter_provider is metrics.get_meter_provider():
            found.append(_global_instruments)
    present = [instruments for instruments in found if instruments is not None]
    return next((i for i in present if i.bound), present[0] if present else None)


def reset_instruments() -> None:
    """Zero every running total (``chaperone_otel.reset()``, between tests). The
    instruments themselves stay registered: a provider cannot forget them."""
    with _by_provider_lock:
        every = [*_by_provider.values(), *([_global_instruments] if _global_instruments else [])]
    for instruments in every:
        instruments.clear()


# What a run queues for the counters (see RunCounters), tagged by its first item.
_STARTED, _ENDED, _BEATS = 0, 1, 2
_Entry = tuple[int, str, str, str, str, float]
# (_STARTED, name, queue, "", "", 0) | (_ENDED, name, queue, status, error type or "",
# duration) | (_BEATS, name, queue, "", "", heartbeat() calls): one shape, so one type
_LabelKey = tuple[tuple[str, str], ...]


class RunCounters:
    """Run starts, ends and flushed heartbeats, queued and counted in batches.

    A run pays one ``deque.append`` at its start, one at its end and one per heartbeat
    record instead of building label dicts and taking counter locks (~5 us a run on the
    job's thread, where a run's last heartbeats are flushed); :meth:`drain` (the monitor's
    pass, a collection, ``flush_metrics()``) adds them up.
    """

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments
        self.ledger: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, ...], _LabelKey] = {}
        self._duration_labels: dict[tuple[str, str, str], dict[str, str]] = {}

    def started(self, name: str, queue: str) -> None:
        """Queue a run's start (job thread)."""
        self.ledger.append((_STARTED, name, queue, "", "", 0.0))

    def finished(
        self, name: str, queue: str, status: str, error_type: str, duration: float
    ) -> None:
        """Queue a run's end (job thread)."""
        self.ledger.append((_ENDED, name, queue, status, error_type, duration))

    def heartbeats(self, name: str, queue: str, calls: int) -> None:
        """Queue ``calls`` flushed ``heartbeat()`` calls (monitor, or job thread at the end)."""
        self.ledger.append((_BEATS, name, queue, "", "", calls))

    def after_fork(self) -> None:
        """In a forked child: starts and ends the parent had not counted are the parent's."""
        self.ledger = deque()
        self._lock = threading.Lock()

    def drain(self) -> None:
        """Add queued run starts and ends to the counters, record durations (any thread).

        Entries are applied in queue order under one lock, so ``runs_active`` never shows
        a run's end before its start, whichever thread (monitor, collection) drains.
        """
        ledger = self.ledger
        if not ledger:
            return
        with self._lock, handle_internal_errors("metrics.drain"):
            started: dict[_LabelKey, float] = {}
            active: dict[_LabelKey, float] = {}
            finished: dict[_LabelKey, float] = {}
            heartbeats: dict[_LabelKey, float] = {}
            durations: list[tuple[float, dict[str, str]]] = []
            keys = self._keys
            popleft = ledger.popleft
            while ledger:
                entry = popleft()
                name, queue = entry[1], entry[2]
                key = keys.get((name, queue))
                if key is None:
                    key = self._key(
                        (name, queue), ((sc.ATTR_JOB_NAME, name), (sc.ATTR_JOB_QUEUE, queue))
                    )
                if entry[0] == _STARTED:
                    started[key] = started.get(key, 0) + 1
                    active[key] = active.get(key, 0) + 1
                    continue
                if entry[0] == _BEATS:
                    heartbeats[key] = heartbeats.get(key, 0) + entry[5]
                    continue
                _, _, _, status, error_type, duration = entry
                active[key] = active.get(key, 0) - 1
                fkey = keys.get((name, queue, status, error_type))
                if fkey is None:
                    fkey = self._key(
                        (name, queue, status, error_type),
                        (*key, (sc.ATTR_JOB_STATUS, status), (sc.ATTR_ERROR_TYPE, error_type)),
                    )
                finished[fkey] = finished.get(fkey, 0) + 1
                durations.append((duration, self._status_labels(name, queue, status)))
            instruments = self.instruments
            instruments.runs_started.add_many(started)
            instruments.runs_active.add_many(active)
            instruments.runs_finished.add_many(finished)
            if heartbeats:
                instruments.heartbeats.add_many(heartbeats)
            # Recorded here, not by the job's thread: a synchronous histogram record
            # validates its attributes (~7 us).
            record = instruments.duration.record
            for duration, labels in durations:
                record(duration, labels)

    def _key(self, cache_key: tuple[str, ...], key: _LabelKey) -> _LabelKey:
        if len(self._keys) > 10_000:  # names and queues are bounded; a runaway is not
            self._keys.clear()
        self._keys[cache_key] = key
        return key

    def _status_labels(self, name: str, queue: str, status: str) -> dict[str, str]:
        labels = self._duration_labels.get((name, queue, status))
        if labels is None:
            if len(self._duration_labels) > 10_000:
                self._duration_labels.clear()
            labels = self._duration_labels[(name, queue, status)] = {
                sc.ATTR_JOB_NAME: name,
                sc.ATTR_JOB_QUEUE: queue,
                sc.ATTR_JOB_STATUS: status,
            }
        return labels
