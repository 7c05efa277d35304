"""The CLI's verdicts (``cli/_verdicts.py``) on typed records, without a terminal."""

from __future__ import annotations

from chaperone_otel.cli._verdicts import (
    health_report,
    is_failing,
    like_prefix,
    still_running,
)
from chaperone_otel.sink import JobRecord


def run(run_id: str, health: str = "healthy", *, stuck: bool = False, lost: bool = False):
    return JobRecord.from_dict(
        {
            "id": run_id,
            "attempt": 1,
            "status": "running",
            "health": health,
            "stuck": stuck,
            "lost": lost,
        }
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


def test_like_prefix_escapes_the_wildcards():
    """A prefix's ``%``, ``_`` and ``\\`` match only themselves (``ESCAPE '\\'``)."""
    assert like_prefix("abcd") == "abcd%"
    assert like_prefix("a%c_d\\") == "a\\%c\\_d\\\\%"


def test_health_counts_have_every_verdict_even_when_none_has_it():
    """A script reads ``counts.unhealthy``: it must be there (0) when no run is unhealthy."""
    assert health_report([], strict=False).counts == {
        "healthy": 0,
        "degraded": 0,
        "unhealthy": 0,
        "stuck": 0,
        "lost": 0,
    }
    assert health_report([run("bad", "unhealthy")], strict=False).counts == {
        "healthy": 0,
        "degraded": 0,
        "unhealthy": 1,
        "stuck": 0,
        "lost": 0,
    }
