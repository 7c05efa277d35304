"""Schedule series on the sink's fleet ``/metrics``, computed from the store at scrape time.

One gauge per slot signal of :mod:`chaperone_otel._schedules` (their map to series is
:data:`~chaperone_otel._schedules.SCHEDULE_PROMQL_SIGNALS`), one series per schedule, so the
alert rules rendered from the same trees judge what the store's scopes judge, in
Prometheus's own clock (``time() - last_due > grace``): a sink that stops being scraped
cannot hide a missed run behind a stale "missed = 0".

* ``last_due`` / ``last_opens``: the schedule's latest *decided* slot, the newest whose
  grace has passed at scrape time. Not simply the newest slot: with slots every 2 s and a 2 s
  grace, the newest slot is always still within its grace, and "missed" would flap off at
  every new slot while nothing runs. A slot still within its grace (``late``) is therefore
  the store's to report (``sink.schedules.late()``), never an alert;
* ``last_start``: the schedule's latest run start (it fulfils the latest slot exactly when
  it is after ``last_opens``); ``last_success``: the latest completed run's end;
* ``running_since``: the start of the latest decided slot's run while it runs (no series
  otherwise), spelled as the slot states spell it (``SLOT_COLUMNS``). Not the oldest
  running run of the schedule: a SIGKILLed run stays ``running`` in the store for good,
  and kept "overran" firing while every later slot ran on time and the store said so;
* ``consecutive_failures``: the latest slot's failing streak;
* the definition: ``grace``, ``max_runtime``, ``failure_threshold``, ``declare_every``, and
  ``last_declared``.

A value the store does not have (no run yet, no limit) is no series, never 0: the rules
compare with ``>``, ``unless``, and need no ``absent()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import semconv as sc
from ._schedule_sql import SLOT_COLUMNS, SLOTS_BASE

SCHEDULE_SERIES_SQL: Final = (
    SLOTS_BASE
    + """, latest_runs AS (
  SELECT run_id, schedule, status, started_at, finished_at FROM jobs
  WHERE schedule IS NOT NULL
  QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY attempt DESC) = 1
)
, decided AS (
  SELECT *, """
    + SLOT_COLUMNS["running_since"]
    + """ AS running_since FROM counted WHERE epoch(due_at) + grace < $now
  QUALIFY row_number() OVER (PARTITION BY schedule ORDER BY due_at DESC) = 1
)
SELECT d.name,
  epoch(l.due_at), epoch(l.opens_at),
  (SELECT epoch(max(started_at)) FROM latest_runs r WHERE r.schedule = d.name),
  (SELECT epoch(max(finished_at)) FROM latest_runs r
     WHERE r.schedule = d.name AND r.status = 'completed'),
  l.running_since,
  coalesce(l.grace, d.grace), coalesce(l.max_runtime, d.max_runtime),
  l.consecutive_failures, coalesce(l.failure_threshold, d.failure_threshold),
  epoch(d.declared_at), d.declare_every
FROM schedules d LEFT JOIN decided l ON l.schedule = d.name
ORDER BY d.name"""
)
"""One row per schedule: name, then the values of :data:`SERIES`, in order."""

SERIES: Final[tuple[sc.MetricSpec, ...]] = (
    sc.METRIC_SCHEDULE_LAST_DUE,
    sc.METRIC_SCHEDULE_LAST_OPENS,
    sc.METRIC_SCHEDULE_LAST_START,
    sc.METRIC_SCHEDULE_LAST_SUCCESS,
    sc.METRIC_SCHEDULE_RUNNING_SINCE,
    sc.METRIC_SCHEDULE_GRACE,
    sc.METRIC_SCHEDULE_MAX_RUNTIME,
    sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES,
    sc.METRIC_SCHEDULE_FAILURE_THRESHOLD,
    sc.METRIC_SCHEDULE_LAST_DECLARED,
    sc.METRIC_SCHEDULE_DECLARE_EVERY,
)
"""The columns of :data:`SCHEDULE_SERIES_SQL` after the name (every schedule metric)."""

if set(SERIES) != set(sc.SCHEDULE_METRICS):  # pragma: no cover - a definition error
    raise ValueError("SERIES must list every semconv.SCHEDULE_METRICS entry")


class ScheduleCollector(Collector):
    """A prometheus_client collector of the schedule series (one SQL pass per scrape).

    Args:
        cursor: returns a new DuckDB cursor on the store. The values are timestamps and
            durations, not ages: Prometheus judges them against its own ``time()``.
        clock: Unix-seconds clock; it only decides which slot is the latest decided one.
    """

    def __init__(
        self, cursor: Callable[[], Any], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._cursor = cursor
        self._clock = clock

    def describe(self) -> list[Metric]:
        """No eager describe: collecting runs SQL, which registration must not do."""
        return []

    def collect(self) -> Iterator[Metric]:
        cur = self._cursor()
        try:
            rows = cur.execute(SCHEDULE_SERIES_SQL, {"now": self._clock()}).fetchall()
        finally:
            cur.close()
        label = [sc.prometheus_label(sc.ATTR_SCHEDULE_NAME)]
        for index, spec in enumerate(SERIES, start=1):
            family = GaugeMetricFamily(spec.prometheus, spec.description, labels=label)
            for row in rows:
                if row[index] is not None:
                    family.add_metric([row[0]], float(row[index]))
            yield family


__all__ = ["SCHEDULE_SERIES_SQL", "SERIES", "ScheduleCollector"]
