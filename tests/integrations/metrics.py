"""Reading a real ``/metrics`` endpoint in the integration tests: a worker's own (the
runtime's counters and live-run gauges) or the fleet's of ``sink serve`` (from its store).

A scenario asserts what it moved: :class:`Outcomes` takes the finished-runs counter before
it and waits for exactly the expected change after it (a retried attempt counted as
``retried``, none as ``failed``); :func:`stuck` says whether the stuck rule holds for a job's
live runs as that endpoint shows them.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaperone_otel import semconv as sc
from tests.waiting import wait_until

_NAME = sc.prometheus_label(sc.ATTR_JOB_NAME)
_STATUS = sc.prometheus_label(sc.ATTR_JOB_STATUS)


def samples(url: str) -> list[Any]:
    """Every sample ``url`` serves now."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def finished_counts(url: str, metric: sc.MetricSpec, names: set[str]) -> Counter[tuple[str, str]]:
    """The finished-runs counter ``metric`` scraped from ``url``, by (job name, status),
    for the job ``names`` only."""
    series = sc.prometheus_name(metric)
    counts: Counter[tuple[str, str]] = Counter()
    for sample in samples(url):
        if sample.name == series and sample.labels.get(_NAME) in names:
            counts[(sample.labels[_NAME], sample.labels[_STATUS])] += int(sample.value)
    return counts


def _by_name(found: Iterable[Any], series: str, name: str) -> list[Any]:
    return [s for s in found if s.name == series and s.labels.get(_NAME) == name]


def stuck(url: str, name: str, *, fleet: bool) -> bool:
    """Whether ``url`` shows a live run of ``name`` stuck.

    The fleet's ``/metrics`` say it (``chaperone_sink_runs_stuck``). A worker's own say it
    through the gauges its stuck alert reads (``ChaperoneJobStuck``): past the deadline, or
    its last heartbeat more than three intervals old."""
    found = samples(url)
    if fleet:
        series = sc.prometheus_name(sc.METRIC_SINK_RUNS_STUCK)
        return any(s.value > 0 for s in _by_name(found, series, name))
    now = time.time()
    deadline = _by_name(found, sc.prometheus_name(sc.METRIC_JOB_DEADLINE), name)
    if any(now > s.value for s in deadline):
        return True
    beats = _by_name(found, sc.prometheus_name(sc.METRIC_JOB_LAST_HEARTBEAT), name)
    intervals = _by_name(found, sc.prometheus_name(sc.METRIC_JOB_HEARTBEAT_INTERVAL), name)
    interval = {tuple(sorted(s.labels.items())): s.value for s in intervals}
    return any(
        now - s.value > 3 * interval.get(tuple(sorted(s.labels.items())), float("inf"))
        for s in beats
    )


def lost(url: str, name: str) -> float:
    """The fleet's count of lost runs of ``name`` (``chaperone_sink_runs_lost``)."""
    series = sc.prometheus_name(sc.METRIC_SINK_RUNS_LOST)
    return sum(s.value for s in _by_name(samples(url), series, name))


class Outcomes:
    """The finished-runs counter of ``names`` on ``url``, taken now; :meth:`moved` waits for
    a scenario's change. ``fleet``: ``url`` is a ``sink serve``'s (its counter is
    ``chaperone_sink_runs_finished``), else a worker's (``chaperone_job_runs_finished``)."""

    def __init__(self, url: str | None, names: Iterable[str], *, fleet: bool) -> None:
        assert url is not None, "this worker serves no /metrics"
        self.url = url
        self.names = set(names)
        self.fleet = fleet
        self.metric = sc.METRIC_SINK_RUNS_FINISHED if fleet else sc.METRIC_JOB_RUNS_FINISHED
        self.before = self.counts()

    def counts(self) -> Counter[tuple[str, str]]:
        return finished_counts(self.url, self.metric, self.names)

    def moved(self, expected: Mapping[tuple[str, str], int], timeout: float = 30) -> None:
        """Wait until the counter moved by exactly ``expected`` ((name, status) -> runs)
        since it was taken, nothing else (e.g. no ``failed`` for a retried attempt)."""
        want = {k: v for k, v in expected.items() if v}
        seen: dict[str, Any] = {}

        def changed() -> bool:
            now = self.counts()
            delta = {k: now[k] - self.before[k] for k in set(now) | set(self.before)}
            seen["delta"] = delta = {k: v for k, v in delta.items() if v}
            return delta == want

        try:
            wait_until(changed, timeout, f"{self.url} to count {want}")
        except pytest.fail.Exception:
            raise AssertionError(f"{self.url} counted {seen.get('delta')}, not {want}") from None


def runs(url: str, name: str, status: str) -> float:
    """The fleet's count of stored active runs of ``name`` in ``status`` (``pending`` or
    ``running``: ``chaperone_sink_runs``)."""
    series = sc.prometheus_name(sc.METRIC_SINK_RUNS)
    found = _by_name(samples(url), series, name)
    return sum(s.value for s in found if s.labels.get(_STATUS) == status)
