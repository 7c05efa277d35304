"""The CLI's verdicts (``cli/_verdicts.py``) on typed records, without a terminal."""

from __future__ import annotations

import pytest

from chaperone_otel.cli._verdicts import (
    AmbiguousPrefixError,
    find_run,
    health_report,
    is_failing,
    still_running,
)
from chaperone_otel.sink import JobRecord


def run(run_id: str, health: str = "healthy", *, stuck: bool = False, lost: bool = False):
    return JobRecord.from_dict(
        {"id": run_id, "attempt": 1, "status": "running", "health": health, "stuck": stuck,
         "lost": lost}
    )


RUNS = [
    run("ok"),
    run("slow", "degraded"),
    run("bad", "unhealthy"),
    run("hung", "degraded", stuck=True),
    run("gone", "unhealthy", lost=True),
]


def test_health_fails_on_unhealthy_stuck_or_lost_and_strict_adds_degraded():
    """`health` fails on unhealthy, stuck and lost runs; --strict also on degraded ones."""
    assert [r.id for r in RUNS if is_failing(r, strict=False)] == ["bad", "hung", "gone"]
    assert [r.id for r in RUNS if is_failing(r, strict=True)] == ["slow", "bad", "hung", "gone"]


def test_health_report_counts_and_lists_what_is_not_healthy():
    """Counts by health plus stuck and lost; every run not plainly healthy is listed."""
    report = health_report(RUNS, strict=False)
    assert report.counts == {"healthy": 1, "degraded": 2, "unhealthy": 2, "stuck": 1, "lost": 1}
    assert [r.id for r in report.not_ok] == ["slow", "bad", "hung", "gone"]
    assert not report.ok
    assert health_report(RUNS[:2], strict=False).ok
    assert not health_report(RUNS[:2], strict=True).ok


def test_wait_can_leave_stuck_and_lost_runs_out():
    """`wait --ignore-stuck` stops waiting for runs that may never finish."""
    assert still_running(RUNS, ignore_stuck=False) == RUNS
    assert [r.id for r in still_running(RUNS, ignore_stuck=True)] == ["ok", "slow", "bad"]


class _Jobs:
    """A stand-in for a sink: ``job(id)`` and the newest runs, nothing else."""

    def __init__(self, ids):
        self.runs = {i: run(i) for i in ids}

    def job(self, run_id):
        return self.runs.get(run_id)

    @property
    def jobs(self):
        sink = self

        class _Query:
            def order_by(self, *_a, **_k):
                return self

            def limit(self, _n):
                return self

            def all(self):
                return list(sink.runs.values())

        return _Query()


def test_show_takes_a_unique_prefix_and_refuses_an_ambiguous_one():
    """A run id prefix of 4+ characters names its run; one naming two runs is an error."""
    sink = _Jobs(["abcd-1111", "abcd-2222", "ffff-0000"])
    assert find_run(sink, "ffff-0000").id == "ffff-0000"
    assert find_run(sink, "ffff").id == "ffff-0000"
    assert find_run(sink, "fff") is None  # too short to be a prefix
    assert find_run(sink, "9999") is None
    with pytest.raises(AmbiguousPrefixError, match="abcd-1111, abcd-2222"):
        find_run(sink, "abcd")
