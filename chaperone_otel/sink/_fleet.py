"""Fleet-wide ``/metrics`` of the sink server, computed from the job store at scrape time.

A worker's own ``/metrics`` only knows that worker's live runs, and a worker that was
SIGKILLed says nothing at all. The sink sees every run of the fleet, so its gauges answer
the questions an on-call human asks: how many runs of each job are running, stuck or lost
right now, how late the worst heartbeat is. Every number comes from one SQL pass over
``jobs`` at scrape time (no state kept in the server), and the stuck/lost/health verdicts
are rendered from the single rule definition in :mod:`chaperone_otel._health` (through the
store's :func:`~chaperone_otel.sink._schema.predicate` / ``health_case``), so the fleet
gauges, the ``jobs.stuck()`` scope and the alert rules cannot disagree.

Names and labels come from :data:`chaperone_otel.semconv.SINK_METRICS`.

A SIGKILLed run never sends a terminal record, so it stays ``running`` (and ``lost``) in the
store for good. The problem gauges (stuck, lost, heartbeat age and silence ratios) therefore
count only runs heard from within ``problem_window`` (default one day): a lost run makes the
lost alert fire for that long and then resolve, instead of paging forever and hiding the
next loss. The run stays in the store, and ``jobs.lost()`` still finds it, until pruned.

Example::

    registry = CollectorRegistry()
    registry.register(FleetCollector(store.cursor, stats=lambda: server.stats()))
    generate_latest(registry)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import semconv as sc
from .._health import DEFAULT_POLICY, SINK_SIGNAL_GAUGES, HealthPolicy, LeaseRenewed
from ._schema import HEALTH_COLUMNS, health_case, predicate

__all__ = [
    "ACTIVE_ROWIDS",
    "PROBLEMS",
    "FleetCollector",
    "FleetSource",
    "IngestStats",
    "fleet_sql",
]


@dataclass
class IngestStats:
    """Counters and gauges of the ingest path, owned by the server (not the store).

    Attributes:
        ingested: records committed, by source (``otlp.logs``, ``otlp.traces``).
        rejected: requests refused, by HTTP status code.
        dropped: accepted records the writer could not store (answered 400/503 with
            ack=commit; acknowledged first only with ack=queue).
        queue_depth: records waiting for the writer. queue_capacity: its bound.
        last_ingest: Unix time of the latest commit (0 before the first).
    """

    ingested: dict[str, int] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    queue_depth: int = 0
    queue_capacity: int = 0
    last_ingest: float = 0.0


DEFAULT_PROBLEM_WINDOW: Final = 86_400.0
"""Seconds a silent running run keeps counting in the problem gauges (one day)."""

DEFAULT_LONG_RUN_THRESHOLD: Final = 120.0
"""Runs older than this get their run id as a label (the workers' default, DESIGN §7)."""

PROBLEMS: Final = (
    "overtime",
    "stalled",
    "heartbeat_missed",
    "near_limit",
    "violated",
    "stuck",
    "lost",
)
"""Health predicates counted per name and queue by ``chaperone_sink_runs_problem``."""

FleetSource = Callable[[Any, float], Iterable[Metric]]
"""A family of fleet series: given a DuckDB cursor on the store and the scrape time (Unix
seconds), the metric families to serve. :meth:`FleetCollector.add_source` adds one."""

# Sink run gauges that are no health signal, with their SQL (dashboards only).
_EXTRA_GAUGES: Final = (
    (sc.METRIC_SINK_RUN_PROGRESS, "progress / 100.0"),
    (sc.METRIC_SINK_RUN_PROGRESS_CURRENT, "current"),
    (sc.METRIC_SINK_RUN_PROGRESS_TOTAL, "total"),
    (sc.METRIC_SINK_RUN_ETA, "eta"),
)
# The store keeps CPU in percent of a core; the gauges say fractions of a core, as the
# workers' do (the rules compare a ratio, so the unit cancels either way).
_SCALE: Final = {"cpu": "/ 100.0", "cpu_limit": "/ 100.0"}


def _run_gauges() -> tuple[tuple[sc.MetricSpec, str], ...]:
    """Every per-run gauge with its SQL over ``jobs``: the health signals (spelt as the store's
    predicates spell them, :data:`~._schema.HEALTH_COLUMNS`) and the dashboards' extras."""
    # The last-heartbeat gauge is when the lease was last renewed, as the worker's is: a
    # liveness-lease run's is its last sign of life (_health.LeaseRenewed).
    columns = {**HEALTH_COLUMNS, "last_heartbeat": LeaseRenewed().sql(HEALTH_COLUMNS)}
    signals = tuple(
        (spec, f"({columns[signal]} {_SCALE.get(signal, '')})")
        for signal, spec in SINK_SIGNAL_GAUGES.items()
    )
    return signals + _EXTRA_GAUGES


_ACTIVE: Final = "('pending', 'running')"
ACTIVE_ROWIDS: Final = f"SELECT rowid FROM jobs WHERE status IN {_ACTIVE}"
"""The rowids of the active runs, the first step of :func:`fleet_sql`'s active query."""


def fleet_sql(policy: HealthPolicy = DEFAULT_POLICY) -> tuple[str, str]:
    """The two fleet queries: every *active* run (pending or running) with its health,
    problem flags and signals (``$ids`` the rowids :data:`ACTIVE_ROWIDS` found in the same
    transaction; ``$now``, ``$window`` and ``$long`` bound, epoch seconds); and the
    ``job_totals`` summary of ended runs. Neither reads the columns of ended runs: the scrape
    costs about the same with 1,000 or 1,000,000 runs in the store."""
    ratio = "(($now - epoch({col})) / NULLIF(heartbeat_interval, 0))"
    columns = [
        "coalesce(name, '')",
        "coalesce(queue, '')",
        "status",
        f"CASE WHEN status = 'running' THEN {health_case(policy)} ELSE '' END",
        "$now - epoch(coalesce(last_seen_at, started_at)) <= $window",
        "CASE WHEN $now - epoch(started_at) >= $long THEN run_id ELSE '' END",
        # the lease's age: a liveness-lease run's is its silence (_health.LeaseRenewed)
        f"(($now - {LeaseRenewed().sql(HEALTH_COLUMNS)}) / NULLIF(heartbeat_interval, 0))",
        ratio.format(col="last_seen_at"),
        *(predicate(p, policy) for p in PROBLEMS),
        *(sql for _spec, sql in _run_gauges()),
    ]
    # Two steps: the rowids of the active runs (a scan of the status column only), then their
    # rows by rowid. With running runs scattered over a long history, one step read every
    # column of each vector holding one: 69 ms against 30 ms at 1 M runs (performance.md).
    active = (
        f"SELECT {', '.join(columns)} FROM jobs WHERE rowid IN (SELECT unnest($ids)) "
        f"AND status IN {_ACTIVE}"
    )
    totals = "SELECT name, queue, status, finished, stored, epoch(last_finished_at) FROM job_totals"
    return active, totals


def _labels(*attributes: str) -> list[str]:
    return [sc.prometheus_label(a) for a in attributes]


def _gauge(spec: sc.MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.prometheus, spec.description, labels=_labels(*spec.labels))


def _counter_name(spec: sc.MetricSpec) -> str:
    # prometheus_client appends _total itself.
    name = spec.prometheus
    return name[: -len("_total")] if name.endswith("_total") else name


_GROUP: Final = (sc.ATTR_JOB_NAME, sc.ATTR_JOB_QUEUE)
_HB, _SEEN, _FLAGS = 6, 7, 8  # column positions in the active query
_VALUES: Final = _FLAGS + len(PROBLEMS)


class FleetCollector(Collector):
    """A prometheus_client collector over the store and the server's ingest stats.

    Each scrape opens one cursor and asks every *source* (:data:`FleetSource`) for its
    families; the built-in sources serve the runs by status, the problem gauges and counts,
    the per-run signal gauges and the totals of ended runs. Another family (schedules, say)
    is one :meth:`add_source` call.

    Args:
        cursor: returns a new DuckDB cursor on the store (called once per scrape).
        stats: returns the current :class:`IngestStats`.
        store_path: the store file, for the size gauge (``.wal`` included).
        policy: the health thresholds (must be the store's).
        clock: wall clock, Unix seconds.
        problem_window: running runs silent for longer than this leave the problem gauges.
        long_run_threshold: running runs older than this get their own series (run id
            label); younger runs of a name and queue share one, carried by the stalest.
    """

    def __init__(
        self,
        cursor: Callable[[], Any],
        *,
        stats: Callable[[], IngestStats],
        store_path: str | None = None,
        policy: HealthPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.time,
        problem_window: float = DEFAULT_PROBLEM_WINDOW,
        long_run_threshold: float = DEFAULT_LONG_RUN_THRESHOLD,
    ) -> None:
        self._cursor = cursor
        self._window = problem_window
        self._long = long_run_threshold
        self._stats = stats
        self._path = store_path
        self._clock = clock
        self._active, self._totals = fleet_sql(policy)
        self._sources: list[FleetSource] = [self._run_families, self._total_families]

    def add_source(self, source: FleetSource) -> None:
        """Serve another family of series, computed by ``source`` at every scrape."""
        self._sources.append(source)

    def describe(self) -> list[Metric]:
        """No eager describe: collecting runs SQL, which registration must not do."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One scrape: each source on one cursor, in one read transaction (one snapshot of
        the store for every family, and stable rowids), then the ingest counters."""
        now = self._clock()
        cur = self._cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                families = [family for source in self._sources for family in source(cur, now)]
            finally:
                cur.execute("ROLLBACK")  # read only: nothing to keep
        finally:
            cur.close()
        yield from families
        yield from self._ingest_metrics(self._stats())

    def _total_families(self, cur: Any, now: float) -> Iterator[Metric]:
        """Ended runs from the ``job_totals`` summary: the finished counter, the last
        success and the stored ended runs (the terminal part of ``chaperone_sink_runs``,
        which :meth:`_run_families` yields first)."""
        rows = cur.execute(self._totals).fetchall()
        spec = sc.METRIC_SINK_RUNS_FINISHED
        finished = CounterMetricFamily(
            _counter_name(spec), spec.description, labels=_labels(*spec.labels)
        )
        success = _gauge(sc.METRIC_SINK_LAST_SUCCESS)
        for name, queue, status, count, _stored, last in rows:
            if count:
                finished.add_metric([name, queue, status], count)
            if status == "completed" and last is not None:
                success.add_metric([name, queue], float(last))
        yield finished
        yield success

    def _run_families(self, cur: Any, now: float) -> Iterator[Metric]:
        """Active runs: runs by status and health, the per-name problem gauges and counts,
        and the per-run signal gauges (run groups as the workers form them)."""
        ids = [row[0] for row in cur.execute(ACTIVE_ROWIDS).fetchall()]
        params = {"now": now, "window": self._window, "long": self._long, "ids": ids}
        active = cur.execute(self._active, params).fetchall() if ids else []
        ended = cur.execute(
            "SELECT name, queue, status, stored FROM job_totals WHERE stored > 0"
        ).fetchall()
        runs = _gauge(sc.METRIC_SINK_RUNS)
        by_status: dict[tuple[str, str, str, str], int] = {}
        for row in active:
            key = (row[0], row[1], row[2], row[3])
            by_status[key] = by_status.get(key, 0) + 1
        for name, queue, status, stored in ended:
            by_status[(name, queue, status, "")] = int(stored)
        for (name, queue, status, health), count in sorted(by_status.items()):
            runs.add_metric([name, queue, status, health], count)
        yield runs
        live = [row for row in active if row[2] == "running" and row[4]]
        yield from _problem_families(live)
        yield from _signal_families(live)

    def _ingest_metrics(self, stats: IngestStats) -> Iterator[Metric]:
        spec = sc.METRIC_SINK_RECORDS_INGESTED
        ingested = CounterMetricFamily(
            _counter_name(spec), spec.description, labels=_labels(*spec.labels)
        )
        for source, value in sorted(stats.ingested.items()):
            ingested.add_metric([source], value)
        yield ingested
        spec = sc.METRIC_SINK_REQUESTS_REJECTED
        rejected = CounterMetricFamily(
            _counter_name(spec), spec.description, labels=_labels(*spec.labels)
        )
        for code, value in sorted(stats.rejected.items()):
            rejected.add_metric([str(code)], value)
        yield rejected
        spec = sc.METRIC_SINK_RECORDS_DROPPED
        yield CounterMetricFamily(_counter_name(spec), spec.description, value=stats.dropped)
        gauges: tuple[tuple[sc.MetricSpec, float], ...] = (
            (sc.METRIC_SINK_QUEUE_DEPTH, stats.queue_depth),
            (sc.METRIC_SINK_QUEUE_CAPACITY, stats.queue_capacity),
            (sc.METRIC_SINK_STORE_SIZE, self._store_size()),
            (sc.METRIC_SINK_LAST_INGEST, stats.last_ingest),
        )
        for spec, level in gauges:
            yield GaugeMetricFamily(spec.prometheus, spec.description, value=level)

    def _store_size(self) -> int:
        if not self._path:
            return 0
        total = 0
        for path in (self._path, self._path + ".wal"):
            try:
                total += os.path.getsize(path)
            except OSError:
                continue
        return total


def _problem_families(live: list[tuple[Any, ...]]) -> Iterator[Metric]:
    """Per name and queue: stuck and lost counts, the worst heartbeat and silence ratios,
    and a count per problem predicate (zero included, so a panel shows 0, not no data)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in live:
        g = groups.setdefault((row[0], row[1]), [None, None, [0] * len(PROBLEMS)])
        for i, col in ((0, _HB), (1, _SEEN)):
            if row[col] is not None and (g[i] is None or row[col] > g[i]):
                g[i] = row[col]
        for i, flag in enumerate(row[_FLAGS:_VALUES]):
            g[2][i] += bool(flag)
    stuck, lost = PROBLEMS.index("stuck"), PROBLEMS.index("lost")
    picks: tuple[tuple[sc.MetricSpec, Callable[[list[Any]], Any]], ...] = (
        (sc.METRIC_SINK_RUNS_STUCK, lambda g: g[2][stuck]),
        (sc.METRIC_SINK_RUNS_LOST, lambda g: g[2][lost]),
        (sc.METRIC_SINK_HEARTBEAT_AGE_RATIO, lambda g: g[0]),
        (sc.METRIC_SINK_SILENCE_RATIO, lambda g: g[1]),
    )
    for spec, pick in picks:
        family = _gauge(spec)
        for (name, queue), g in sorted(groups.items()):
            value = pick(g)
            if value is not None:
                family.add_metric([name, queue], float(value))
        yield family
    family = _gauge(sc.METRIC_SINK_RUNS_PROBLEM)
    for (name, queue), g in sorted(groups.items()):
        for problem, count in zip(PROBLEMS, g[2], strict=True):
            family.add_metric([name, queue, problem], count)
    yield family


def _signal_families(live: list[tuple[Any, ...]]) -> Iterator[Metric]:
    """The health rules' inputs per run group, as the workers' live-run gauges are formed:
    (name, queue) for young runs, plus the run id past the long-run threshold; a group's
    values are those of its stalest run (largest heartbeat age in intervals), so PromQL that
    joins the gauges judges one real run. Bounded by concurrency, never by history."""
    best: dict[tuple[str, str, str], tuple[float, int, tuple[Any, ...]]] = {}
    for row in live:
        key = (row[0], row[1], row[5])
        staleness = -math.inf if row[_HB] is None else float(row[_HB])
        found = best.get(key)
        if found is None or staleness > found[0]:
            best[key] = (staleness, (found[1] if found else 0) + 1, row)
        else:
            best[key] = (found[0], found[1] + 1, found[2])
    active = _gauge(sc.METRIC_SINK_RUN_ACTIVE)
    for (name, queue, run_id), (_s, count, _row) in sorted(best.items()):
        active.add_metric([name, queue, run_id], count)
    yield active
    for index, (spec, _sql) in enumerate(_run_gauges(), _VALUES):
        family = _gauge(spec)
        for (name, queue, run_id), (_s, _n, row) in sorted(best.items()):
            if row[index] is not None:
                family.add_metric([name, queue, run_id], float(row[index]))
        yield family
