"""The run handle shows what a user needs, read-only; the runtime's internals are not on it."""

from __future__ import annotations

import pytest

from chaperone_otel import Supervision, heartbeat, supervised
from chaperone_otel._run import state_of
from chaperone_otel.testing import Capture, FakeClock

USER_API = {
    # what the job does
    "heartbeat",
    "report_progress",
    "track",
    "phases",
    "phase_scope",
    "snapshot",
    "finish",
    "metadata",
    # what it reads (read-only)
    "id",
    "name",
    "queue",
    "attempt",
    "status",
    "health",
    "stuck",
    "started_at",
    "finished_at",
    "timeout_at",
    "heartbeat_interval",
    "heartbeat_count",
    "last_heartbeat",
    "progress_ratio",
    "progress_current",
    "progress_total",
    "phase",
    "memory",
    "cpu_percent",
    "violations",
    "error_type",
    "error_message",
}


def test_handle_public_names_are_the_user_api() -> None:
    """No monitor or writer internal (emit, observe, signals, record_attributes, span,
    hooks, …) is a public name of the handle."""
    assert {n for n in dir(Supervision) if not n.startswith("_")} == USER_API


@pytest.mark.parametrize("name", ["status", "health", "stuck", "id", "violations", "memory"])
def test_handle_state_is_read_only(chaperone: Capture, name: str) -> None:
    """A user cannot overwrite the run's state through the handle."""
    with supervised("handle.read_only") as run:
        with pytest.raises(AttributeError):
            setattr(run, name, getattr(run, name))
        run.violations.append("not a violation")  # type: ignore[arg-type]
        assert run.violations == []  # a copy: the run's own list is untouched


def test_handle_shows_the_runtime_state(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """What the handle reads is the state the monitor and lifecycle keep (same values)."""
    with supervised("handle.view", heartbeat_interval=10, timeout=100) as run:
        run.heartbeat(step=1)
        run.report_progress(3, 4)
        chaperone.tick()  # the monitor sees the beat now
        chaperone.advance(20)  # two leases without a beat: degraded
        state = state_of(run)
        assert (run.status, run.health, run.stuck) == ("running", "degraded", False)
        assert (run.health, run.last_heartbeat) == (state.health, state.last_heartbeat)
        assert run.timeout_at == state.started_at + 100
        assert run.heartbeat_count == 1
        assert run.metadata == {"step": 1}
    assert (run.status, run.finished_at) == ("completed", state.finished_at)
    assert run.snapshot().status == "completed"


def test_finished_run_is_freed_without_the_cycle_collector(chaperone: Capture) -> None:
    """A finished run nobody holds is freed by reference counting alone: the handle and
    the run's state do not keep each other (and the span) alive until a GC pass."""
    import gc

    from chaperone_otel._run import Run
    from chaperone_otel._runtime import runtime

    @supervised(name="freed")
    def job() -> None:
        heartbeat()

    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, Run) for o in gc.get_objects())
        for _ in range(20):
            job()
        with supervised("freed.block") as run:
            run.heartbeat()
        del run
        # Stop the monitor thread first: a pass that copied the live runs just before the
        # last one finished would still hold it (a race, not a leak).
        assert runtime().stop()
        assert sum(isinstance(o, Run) for o in gc.get_objects()) == before
    finally:
        gc.enable()
