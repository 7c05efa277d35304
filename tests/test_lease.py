"""``lease="liveness"``: a run that promises no heartbeats is alive while its process is.

The default lease is a deadline the job's code meets itself (``heartbeat()`` or progress
within ``heartbeat_interval``); code that cannot heartbeat (one long blocking call, a task
framework instrumenting every task) chooses the liveness lease: then only ``timeout`` makes
the run stuck, and its process going silent makes it lost. The rule itself is tested in
Python, SQL and PromQL by tests/test_health.py and tests/artifacts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import chaperone_otel
from chaperone_otel import JobState, Supervised, supervised
from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.testing import Capture, FakeClock
from tests.sink.store_factory import record, store_writer, write_all


def test_a_silent_liveness_run_stays_healthy_until_its_timeout(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """Interval 10 s, no heartbeat for 100 s: healthy, not stuck, no hook, no heartbeat
    counted missed (it promised none: the missed-heartbeat hook and counter fired ten
    times); past its timeout it is stuck (the heartbeat lease would be stuck after 30 s)."""
    stuck: list[JobState] = []
    missed: list[int] = []
    with supervised(
        "blocking.call",
        heartbeat_interval=10,
        timeout=120,
        lease="liveness",
        on_stuck=stuck.append,
        on_heartbeat_missed=lambda state: missed.append(state.missed_heartbeats),
    ) as run:
        chaperone.advance(100.0)
        assert run.health == "healthy"
        assert not run.stuck
        assert run.snapshot().missed_heartbeats == 0
        assert missed == []
        assert not chaperone.metrics().get(sc.METRIC_JOB_HEARTBEATS_MISSED)
        chaperone.advance(21.0)
        assert run.stuck
        assert run.health == "unhealthy"
    assert len(stuck) == 1
    records = chaperone.run(run.id)
    assert {r.attributes[sc.ATTR_JOB_LEASE] for r in records.records} == {"liveness"}


def test_the_default_lease_is_heartbeat(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    with supervised("silent.default", heartbeat_interval=10) as run:
        chaperone.advance(31.0)
        assert run.stuck
    assert chaperone.run(run.id).latest[sc.ATTR_JOB_LEASE] == "heartbeat"


def test_lease_is_an_option_of_every_entry_point(chaperone: Capture) -> None:
    class Blocking(Supervised):
        lease = "liveness"

        def run(self) -> None:
            pass

    Blocking().run()
    chaperone_otel.start_run("framework.task", lease="liveness").finish()
    leases = {r.name: r.latest[sc.ATTR_JOB_LEASE] for r in chaperone.runs()}
    assert leases[f"{__name__}.test_lease_is_an_option_of_every_entry_point.<locals>.Blocking"] == (
        "liveness"
    )
    assert leases["framework.task"] == "liveness"
    with pytest.raises(ConfigurationError, match="lease='beats'"):
        supervised("x", lease="beats")  # type: ignore[arg-type]


def test_the_store_judges_a_liveness_run_on_its_process(tmp_path: Path) -> None:
    """Stored with the same stale code heartbeat and a fresh liveness record: the
    heartbeat-lease run is stuck, the liveness-lease run healthy."""
    now = time.time()
    beats: dict[str, object] = {}
    for run_id, lease in (("beats", "heartbeat"), ("alive", "liveness")):
        beats[run_id] = record(
            run_id=run_id,
            seq=2,
            ts=now,
            started_at=now - 600,
            last_heartbeat=now - 600,
            interval=10.0,
            **{sc.ATTR_JOB_LEASE: lease, sc.ATTR_HEARTBEAT_KIND: "liveness"},
        )
    with store_writer(tmp_path / "jobs.duckdb") as (writer, sink):
        write_all(writer, list(beats.values()))
        assert [r.id for r in sink.jobs.stuck().all()] == ["beats"]
        alive = sink.job("alive")
        assert alive is not None
        assert alive.health == "healthy"
        assert not alive.stuck
