"""Health judged live: liveness for silent runs, degraded then stuck at the DESIGN §5 lines."""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaperone_otel import HealthPolicy, JobState, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._health import DEFAULT_POLICY, rules
from chaperone_otel._run import state_of
from chaperone_otel.testing import Capture, FakeClock, capture


def test_silent_run_goes_degraded_then_stuck_fake_clock(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """Interval 10 s: healthy to 15 s, degraded past 15 s, unhealthy and stuck past 30 s."""
    stuck_calls: list[JobState] = []
    missed: list[int] = []
    changes: list[tuple[str, str]] = []
    with supervised(
        "silent",
        heartbeat_interval=10,
        on_stuck=stuck_calls.append,
        on_heartbeat_missed=lambda s: missed.append(s.missed_heartbeats),
        on_health_change=lambda s, old: changes.append((old, s.health)),
    ) as run:
        run.heartbeat()
        chaperone.tick()
        assert run.health == "healthy"
        chaperone.advance(15.0)
        assert run.health == "healthy"  # exactly 1.5 x interval is still healthy
        chaperone.advance(0.5)
        assert run.health == "degraded"
        assert not run.stuck
        chaperone.advance(14.5)  # age 30 s = 3 x interval: not yet stuck
        assert run.health == "degraded"
        chaperone.advance(0.5)
        assert run.health == "unhealthy"
        assert run.stuck
        chaperone.tick()
        assert len(stuck_calls) == 1  # a transition fires once, not on every pass
        assert stuck_calls[0].stuck
        records = chaperone.run(run.id)
        assert records.liveness, "the silent run is vouched for by liveness records"
        assert all(r.attributes[sc.ATTR_HEARTBEAT_CALLS] == 0 for r in records.liveness)
        run.heartbeat()  # it comes back
        chaperone.tick()
        assert run.health == "healthy"
        assert not run.stuck
    assert changes == [("healthy", "degraded"), ("degraded", "unhealthy"), ("unhealthy", "healthy")]
    assert missed == [1, 3]  # floor(age / interval) as it grew: 15.5 s -> 1, 30.5 s -> 3


def test_timeout_makes_run_overtime_and_stuck(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """Past timeout_at the run is unhealthy and stuck even while heartbeating; on_timeout fires."""
    timeouts: list[JobState] = []
    with supervised(
        "slowpoke", heartbeat_interval=60, timeout=30, on_timeout=timeouts.append
    ) as run:
        chaperone.advance(29)
        run.heartbeat()
        chaperone.tick()
        assert run.health == "healthy"
        chaperone.advance(2)
        run.heartbeat()
        chaperone.tick()
        assert run.health == "unhealthy"
        assert run.stuck
        assert [v.limit for v in run.violations] == ["timeout"]
    assert len(timeouts) == 1


def test_stalled_progress_is_degraded(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """Heartbeats keep coming but progress is flat past stall_timeout: degraded."""
    with supervised("flat", heartbeat_interval=60, stall_timeout=20) as run:
        run.report_progress(1, 10)
        chaperone.tick()  # progress times are stamped by the monitor
        for _ in range(5):
            chaperone.clock.advance(5)  # type: ignore[union-attr]
            run.heartbeat()
            chaperone.tick()
        assert run.health == "degraded"
        assert rules().stalled.holds(state_of(run).signals(chaperone_clock()), chaperone_clock())
        run.report_progress(2, 10)
        chaperone.tick()
        assert run.health == "healthy"


@pytest.mark.slow
def test_silent_run_stuck_in_real_time() -> None:
    """Once for real: a 1 s interval run that stops beating is reported stuck (> 3 s)."""
    stuck = threading.Event()
    release = threading.Event()
    with capture(flush_period=0.2) as cap:

        @supervised(name="hangs", heartbeat_interval=1, on_stuck=lambda s: stuck.set())
        def hangs() -> None:
            from chaperone_otel import heartbeat

            heartbeat()
            release.wait(15)  # hung: no more heartbeats

        t = threading.Thread(target=hangs)
        started = time.monotonic()
        t.start()
        try:
            assert stuck.wait(10), "on_stuck did not fire within 10 s"
            elapsed = time.monotonic() - started
            assert elapsed > 3.0, f"stuck after only {elapsed:.2f} s (< 3 x interval)"
        finally:
            release.set()
            t.join(10)
        run = cap.last_run("hangs")
        assert run.liveness
        kinds = [r.attributes.get(sc.ATTR_JOB_HEALTH) for r in run.events(sc.EVENT_JOB_HEALTH)]
        assert kinds[:2] == ["degraded", "unhealthy"]


SCENARIOS = [
    # (name, overrides, expected health, stuck, lost)
    ("fresh", {}, "healthy", False, False),
    ("late", {"last_heartbeat": -16}, "degraded", False, False),
    ("very late", {"last_heartbeat": -31}, "unhealthy", True, False),
    ("lost", {"last_heartbeat": -40, "last_seen": -31}, "unhealthy", False, True),
    ("overtime", {"timeout_at": -1}, "unhealthy", True, False),
    ("near memory", {"memory": 81, "memory_limit": 100}, "degraded", False, False),
    ("violated", {"violation_count": 1}, "unhealthy", False, False),
    ("failed", {"status": "failed"}, "unhealthy", False, False),
    ("completed", {"status": "completed", "last_heartbeat": -999}, "healthy", False, False),
    ("pending", {"status": "pending"}, "unknown", False, False),
    # lease="liveness": the process being alive renews it, whatever the code's heartbeats
    ("liveness, code silent", {"lease": "liveness", "last_heartbeat": -999}, "healthy", False,
     False),
    ("liveness, process silent", {"lease": "liveness", "last_heartbeat": -40, "last_seen": -31},
     "unhealthy", False, True),
    ("liveness, overtime", {"lease": "liveness", "last_heartbeat": -999, "timeout_at": -1},
     "unhealthy", True, False),
    ("heartbeat lease named", {"lease": "heartbeat", "last_heartbeat": -31}, "unhealthy", True,
     False),
]


@pytest.mark.parametrize(("name", "overrides", "health", "stuck", "lost"), SCENARIOS)
def test_rule_table_python(
    name: str, overrides: dict[str, float | str], health: str, stuck: bool, lost: bool
) -> None:
    """The Python rendering of the one definition gives the DESIGN §5 verdicts."""
    now = 1000.0
    signals: dict[str, float | str | None] = {
        "status": "running",
        "started_at": now - 100,
        "last_heartbeat": now,
        "last_seen": now,
        "heartbeat_interval": 10.0,
        "timeout_at": None,
        "stall_deadline": None,
        "memory": None,
        "memory_limit": None,
        "cpu": None,
        "cpu_limit": None,
        "fds": None,
        "fd_limit": None,
        "violation_count": 0,
    }
    for key, value in overrides.items():
        signals[key] = (
            now + value
            if isinstance(value, (int, float))
            and key in ("last_heartbeat", "last_seen", "timeout_at")
            else value
        )
    r = rules(DEFAULT_POLICY)
    assert r.health(signals, now) == health, name
    assert r.stuck.holds(signals, now) is stuck, name
    assert r.lost.holds(signals, now) is lost, name


_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_OPTIONAL = ("timeout_at", "stall_deadline", "memory_limit", "cpu_limit", "fd_limit")


@st.composite
def _signals(draw: st.DrawFn) -> dict[str, float | str | None]:
    now = 1000.0
    maybe = st.none() | st.floats(0, 2000)
    return {
        "status": draw(st.sampled_from(_STATUSES)),
        "started_at": draw(st.floats(0, now)),
        "last_heartbeat": draw(maybe),
        "last_seen": draw(maybe),
        "heartbeat_interval": draw(st.sampled_from([0.5, 10.0, 60.0])),
        "lease": draw(st.sampled_from([None, "heartbeat", "liveness"])),
        "timeout_at": draw(maybe),
        "stall_deadline": draw(maybe),
        "memory": draw(maybe),
        "memory_limit": draw(st.none() | st.floats(0, 2000)),
        "cpu": draw(maybe),
        "cpu_limit": draw(st.none() | st.floats(0, 200)),
        "fds": draw(maybe),
        "fd_limit": draw(st.none() | st.sampled_from([0.0, 10.0, 100.0])),
        "violation_count": draw(st.sampled_from([0, 0, 1, 3])),
    }


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(_signals(), st.sets(st.sampled_from(_OPTIONAL)))
def test_folding_agrees_with_evaluation(
    signals: dict[str, float | str | None], absent: set[str]
) -> None:
    """Partial evaluation never contradicts full evaluation: a predicate that folds to a
    constant holds exactly when it folds to True, whatever the unknown signals are; and a
    settled verdict is the verdict the compiled rules give."""
    now = 1000.0
    for name in absent:
        signals[name] = None
    r = rules(DEFAULT_POLICY)
    known: dict[str, float | str | None] = {"status": signals["status"]}
    known.update((name, None) for name in absent)
    if signals["lease"] == "liveness":  # known with its inputs: the lease's renewal folds
        known.update(lease="liveness", last_seen=signals["last_seen"])
    if signals["violation_count"] == 0:
        known["violation_count"] = 0.0
    for name in ("unhealthy", "degraded", "healthy", "stuck", "lost", "stalled", "near_limit"):
        expr = r.by_name(name)
        folded = expr.fold(known)
        if folded is True or folded is False:
            assert expr.holds(signals, now) is folded, (name, signals)
    status = str(signals["status"])
    verdict = r.verdict(status)(signals, now)
    assert verdict == r.health(signals, now)
    if signals["violation_count"] == 0:
        settled = r.settled(status, frozenset(absent))
        if settled is not None:
            assert settled == verdict, (settled, signals)


def test_settled_verdicts_of_ordinary_endings() -> None:
    """The verdicts a finishing run gets without building its signals (Rules.settled)."""
    r = rules(DEFAULT_POLICY)
    none = frozenset(_OPTIONAL)
    assert r.settled("completed", none) == "healthy"
    assert r.settled("cancelled", none) == "healthy"
    assert r.settled("failed", none) == "unhealthy"
    assert r.settled("pending", none) == "unknown"
    # A limit does not change a finished run's verdict (near-limit is a live-run rule)...
    assert r.settled("completed", frozenset()) == "healthy"
    # ...but a running run's verdict depends on its heartbeat age: never settled.
    assert r.settled("running", none) is None


def test_policy_validation_and_custom_thresholds() -> None:
    """Thresholds are validated; a custom policy moves the lines."""
    with pytest.raises(ValueError, match="degraded_after"):
        HealthPolicy(degraded_after=4, unhealthy_after=3)
    r = rules(HealthPolicy(degraded_after=1.0, unhealthy_after=2.0, stuck_after=2.0))
    signals = {
        "status": "running",
        "last_heartbeat": 0.0,
        "last_seen": 25.0,
        "heartbeat_interval": 10.0,
        "violation_count": 0,
    }
    assert r.health(signals, 15.0) == "degraded"
    assert r.health(signals, 25.0) == "unhealthy"
    assert r.stuck.holds(signals, 25.0)
    assert not math.isnan(r.policy.warn_ratio)


@pytest.mark.slow
def test_slow_hook_stalls_neither_monitor_nor_shutdown() -> None:
    """A hook blocked for a long time: other runs keep flushing heartbeats, and shutdown
    returns within its bound instead of waiting for the hook."""
    import chaperone_otel as chaperone

    release = threading.Event()
    entered = threading.Event()

    def slow_hook(state: JobState) -> None:
        entered.set()
        release.wait(30)

    try:
        with capture(flush_period=0.05, raise_internal_errors=False) as cap:

            @supervised(name="hooked", on_complete=slow_hook)
            def quick() -> None:
                return None

            quick()
            assert entered.wait(10), "the hook did not start"
            with supervised("beating", heartbeat_interval=1) as run:
                before = len(cap.run(run.id).events(sc.EVENT_JOB_HEARTBEAT))
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    run.heartbeat()
                    if len(cap.run(run.id).events(sc.EVENT_JOB_HEARTBEAT)) >= before + 3:
                        break
                    threading.Event().wait(0.02)
                assert len(cap.run(run.id).events(sc.EVENT_JOB_HEARTBEAT)) >= before + 3
            started = time.monotonic()
            chaperone.shutdown()
            assert time.monotonic() - started < 8.0  # bounded (5 s join), not the hook's 30 s
    finally:
        release.set()


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "retried", "pending"])
def test_near_limit_is_a_state_of_a_live_run(status: str) -> None:
    """A run that ended with its last sample at 90 % of its memory limit is no longer near it
    (as it is no longer stalled or overtime); the same values on a running run are."""
    r = rules(DEFAULT_POLICY)
    signals = {
        "status": status,
        "last_heartbeat": 100.0,
        "last_seen": 100.0,
        "heartbeat_interval": 10.0,
        "memory": 900.0,
        "memory_limit": 1000.0,
        "violation_count": 0,
    }
    assert not r.near_limit.holds(signals, 105.0)
    assert r.near_limit.holds({**signals, "status": "running"}, 105.0)
    # degraded reads the same ratios for a running run, unchanged
    assert r.health({**signals, "status": "running"}, 105.0) == "degraded"


@pytest.mark.parametrize("flush_period", [6.0, 1.0, None])
def test_a_flush_period_longer_than_the_lease_keeps_the_records_healthy(
    flush_period: float | None,
) -> None:
    """A run with a 1 s lease heartbeats every 0.1 s under a flush period of 6 s (a global
    ``CHAPERONE_OTEL_FLUSH_PERIOD`` longer than the run's lease): the records must say so.
    At most one heartbeat record per period reached them, so at every moment the latest
    record's last heartbeat was up to 6 s old, and the store showed a busy run degraded,
    unhealthy, stuck. The period is now at most half the run's interval: the latest record
    is never more than half a lease old, well within ``degraded_after``."""
    clock = FakeClock()
    interval = 1.0
    with capture(clock=clock, flush_period=flush_period) as cap:
        with supervised("busy", heartbeat_interval=interval) as run:
            for _ in range(50):
                run.heartbeat()
                cap.advance(0.1)
                now = clock()
                latest = cap.run(run.id).latest
                age = now - float(latest[sc.ATTR_HEARTBEAT_LAST])
                assert age < DEFAULT_POLICY.degraded_after * interval, (now, age)
                assert age <= interval / 2 + 0.1 + 1e-9, (now, age)
                assert latest[sc.ATTR_JOB_HEALTH] == "healthy"
        beats = cap.run(run.id).heartbeats
    assert len(beats) >= 9  # about one every half second over five seconds
