"""Worker metric instruments: counters, duration histogram, live gauges and their labels."""

from __future__ import annotations

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel.testing import Capture, FakeClock, capture

NAME = sc.ATTR_JOB_NAME
RUN = sc.ATTR_JOB_RUN_ID


def _points(cap: Capture, spec: sc.MetricSpec) -> list[tuple[dict[str, object], object]]:
    return cap.metrics().get(spec.name, [])


def test_counters_and_duration(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """Started/finished by status and error type, heartbeats, and the duration histogram."""

    @supervised(name="m.job", queue="q")
    def job(fail: bool) -> None:
        from chaperone_otel import heartbeat

        heartbeat()
        heartbeat()
        chaperone_clock.advance(2.5)
        if fail:
            raise ValueError("no")

    job(fail=False)
    job(fail=False)
    with pytest.raises(ValueError):
        job(fail=True)
    started = _points(chaperone, sc.METRIC_JOB_RUNS_STARTED)
    assert started == [({NAME: "m.job", sc.ATTR_JOB_QUEUE: "q"}, 3)]
    finished = {
        (a[sc.ATTR_JOB_STATUS], a[sc.ATTR_ERROR_TYPE]): v
        for a, v in _points(chaperone, sc.METRIC_JOB_RUNS_FINISHED)
    }
    assert finished == {("completed", ""): 2, ("failed", "ValueError"): 1}
    assert _points(chaperone, sc.METRIC_JOB_HEARTBEATS)[0][1] == 6
    assert _points(chaperone, sc.METRIC_JOB_RUNS_ACTIVE)[0][1] == 0
    durations = {a[sc.ATTR_JOB_STATUS]: v for a, v in _points(chaperone, sc.METRIC_JOB_DURATION)}
    assert durations["completed"] == (5.0, 2)  # (sum, count)
    assert durations["failed"] == (2.5, 1)


def test_live_gauges_group_short_runs_and_name_long_ones() -> None:
    """Short runs share one series per (name, queue); past the threshold the run id appears."""
    clock = FakeClock()
    with capture(clock=clock, long_run_threshold=60) as cap:
        runs = [supervised("live", heartbeat_interval=10).start() for _ in range(5)]
        runs[0].report_progress(3, 4)
        cap.tick()
        hb = _points(cap, sc.METRIC_JOB_LAST_HEARTBEAT)
        assert len(hb) == 1
        assert RUN not in hb[0][0]
        clock.advance(61)
        runs[1].heartbeat()  # runs 0, 2, 3, 4 are stalest; every run is now "long"
        cap.tick()
        hb = _points(cap, sc.METRIC_JOB_LAST_HEARTBEAT)
        assert sorted(a[RUN] for a, _ in hb) == sorted(r.id for r in runs)
        progress = {a[RUN]: v for a, v in _points(cap, sc.METRIC_JOB_PROGRESS)}
        assert progress[runs[0].id] == 0.75
        for run in runs:
            run.finish()
        assert _points(cap, sc.METRIC_JOB_LAST_HEARTBEAT) == []  # finished runs leave no series


def test_group_reports_its_stalest_run() -> None:
    """With one series for several runs, the gauges describe the stalest (for alerts)."""
    clock = FakeClock()
    with capture(clock=clock) as cap:
        fresh = supervised("grp", heartbeat_interval=10).start()
        stale = supervised("grp", heartbeat_interval=10).start()
        cap.tick()
        clock.advance(20)
        fresh.heartbeat()
        cap.tick()
        [(_labels, value)] = _points(cap, sc.METRIC_JOB_LAST_HEARTBEAT)
        assert value == stale.last_heartbeat < fresh.last_heartbeat
        stale.finish()
        fresh.finish()
