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

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import semconv as sc
from .._health import DEFAULT_POLICY, HealthPolicy, LeaseRenewed
from ._schema import HEALTH_COLUMNS, health_case, predicate

__all__ = ["FleetCollector", "IngestStats", "fleet_sql"]


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


def fleet_sql(policy: HealthPolicy = DEFAULT_POLICY) -> tuple[str, str]:
    """The two fleet queries (``$now`` and ``$window`` bound, epoch seconds): runs by group
    and status (with health for running runs), and the problem gauges of running runs heard
    from within the window, by group."""
    by_status = (
        "SELECT coalesce(name, ''), coalesce(queue, ''), coalesce(status, ''), "
        f"CASE WHEN status = 'running' THEN {health_case(policy)} ELSE '' END AS health, "
        "count(*) FROM jobs GROUP BY ALL"
    )
    ratio = "(($now - epoch({col})) / NULLIF(heartbeat_interval, 0))"
    running = (
        "SELECT coalesce(name, ''), coalesce(queue, ''), "
        f"count(*) FILTER (WHERE {predicate('stuck', policy)}), "
        f"count(*) FILTER (WHERE {predicate('lost', policy)}), "
        # the lease's age: a liveness-lease run's is its silence (_health.LeaseRenewed)
        f"max((($now - {LeaseRenewed().sql(HEALTH_COLUMNS)}) / NULLIF(heartbeat_interval, 0))), "
        f"max({ratio.format(col='last_seen_at')}) "
        "FROM jobs WHERE status = 'running' "
        "AND $now - epoch(coalesce(last_seen_at, started_at)) <= $window GROUP BY ALL"
    )
    return by_status, running


def _labels(*attributes: str) -> list[str]:
    return [sc.prometheus_label(a) for a in attributes]


def _counter_name(spec: sc.MetricSpec) -> str:
    # prometheus_client appends _total itself.
    name = spec.prometheus
    return name[: -len("_total")] if name.endswith("_total") else name


_GROUP: Final = (sc.ATTR_JOB_NAME, sc.ATTR_JOB_QUEUE)


class FleetCollector(Collector):
    """A prometheus_client collector over the store and the server's ingest stats.

    Args:
        cursor: returns a new DuckDB cursor on the store (called once per scrape).
        stats: returns the current :class:`IngestStats`.
        store_path: the store file, for the size gauge (``.wal`` included).
        policy: the health thresholds (must be the store's).
        clock: wall clock, Unix seconds.
        problem_window: running runs silent for longer than this leave the problem gauges.
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
    ) -> None:
        self._cursor = cursor
        self._window = problem_window
        self._stats = stats
        self._path = store_path
        self._clock = clock
        self._by_status, self._running = fleet_sql(policy)

    def describe(self) -> list[Metric]:
        """No eager describe: collecting runs SQL, which registration must not do."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One scrape: two SQL passes, then the ingest counters."""
        now = self._clock()
        cur = self._cursor()
        try:
            by_status = cur.execute(self._by_status, {"now": now}).fetchall()
            running = cur.execute(self._running, {"now": now, "window": self._window}).fetchall()
        finally:
            cur.close()
        spec = sc.METRIC_SINK_RUNS
        runs = GaugeMetricFamily(spec.prometheus, spec.description, labels=_labels(*spec.labels))
        for name, queue, status, health, count in by_status:
            runs.add_metric([name, queue, status, health], count)
        yield runs
        gauges = [
            (sc.METRIC_SINK_RUNS_STUCK, 2),
            (sc.METRIC_SINK_RUNS_LOST, 3),
            (sc.METRIC_SINK_HEARTBEAT_AGE_RATIO, 4),
            (sc.METRIC_SINK_SILENCE_RATIO, 5),
        ]
        for spec, index in gauges:
            family = GaugeMetricFamily(
                spec.prometheus, spec.description, labels=_labels(*spec.labels)
            )
            for row in running:
                if row[index] is not None:
                    family.add_metric([row[0], row[1]], float(row[index]))
            yield family
        yield from self._ingest_metrics(self._stats())

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
