"""``Capture.set_resources()``: resource limits, gauges and peaks tested on a FakeClock.

Under a capture with a ``FakeClock`` a resource sample is due by the fake clock and reads
what the test set, so "my job is cancelled when it exceeds its memory limit" is a test
of a few ``advance()`` calls: no sleeps, no allocating, the same result on any machine.
(Before: whether a sample was due followed the real monotonic clock, and it read the real
process, whatever the test advanced or meant.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from chaperone_otel import JobLimitExceeded, supervised
from chaperone_otel import semconv as sc
from chaperone_otel.testing import Capture, FakeClock, capture

MiB = 2**20


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture(clock=FakeClock()) as c:  # sample_interval: 1 s, the default
        yield c


def _memory_gauge(cap: Capture, name: str) -> list[float]:
    points = cap.metrics().get(sc.METRIC_JOB_MEMORY.name, [])
    return [value for attrs, value in points if attrs.get(sc.ATTR_JOB_NAME) == name]


def test_memory_over_its_limit_cancels_the_run_at_the_first_sample_after_its_start(
    cap: Capture,
) -> None:
    """The process reads 900 MiB against a 512 MiB limit with ``on_limit="cancel"``: the
    pass at the run's start instant (its sample was taken as the run started, so it does
    not judge it) and the one half a second later (no sample due) leave it alone; the pass
    one ``sample_interval`` later samples, records the violation and arms the cancel; the
    next heartbeat raises ``JobLimitExceeded``, and the run ends ``cancelled``."""
    cap.set_resources(memory="900MiB")
    assert cap.clock is not None
    start = cap.clock()

    def etl() -> None:
        with supervised("etl", memory_limit="512MiB", on_limit="cancel") as job:
            cap.tick()
            cap.advance(0.5)
            job.heartbeat()  # nothing armed yet
            assert job.memory is None
            assert job.violations == []
            cap.advance(0.5)
            assert job.memory == 900 * MiB
            assert [v.limit for v in job.violations] == ["memory"]
            job.heartbeat()
            pytest.fail("the heartbeat after the violation did not raise")

    with pytest.raises(JobLimitExceeded) as info:
        etl()
    assert info.value.limit == "memory"
    assert info.value.value == 512 * MiB
    assert info.value.actual == 900 * MiB
    run = cap.last_run("etl")
    assert run.status == "cancelled"
    assert run.error_type == "chaperone_otel.exceptions.JobLimitExceeded"
    [violation] = run.violations
    assert violation[sc.ATTR_LIMIT_TYPE] == "memory"
    assert violation[sc.ATTR_LIMIT_VALUE] == 512 * MiB
    assert violation[sc.ATTR_LIMIT_ACTUAL] == 900 * MiB
    [record] = run.events(sc.EVENT_JOB_VIOLATION)
    assert record.timestamp == start + 1.0
    assert record.body == "etl: memory limit exceeded: 900.0 MiB > 512.0 MiB"


def test_no_sample_is_taken_before_sample_interval_of_fake_time() -> None:
    """With ``sample_interval=2``, a reading set after a sample shows only at the pass
    2 fake seconds after that sample: passes 1.5 s after it, however many, keep the old
    reading (and no violation), and the first pass at 2 s takes the new one."""
    with capture(clock=FakeClock(), sample_interval=2.0) as cap:
        cap.set_resources(memory="100MiB")
        with supervised("paced", memory_limit="200MiB") as job:
            cap.advance(2)  # the first pass after the start: a sample
            assert job.memory == 100 * MiB
            cap.set_resources(memory="300MiB")
            cap.advance(1.5)
            cap.tick(3)
            assert job.memory == 100 * MiB
            assert job.violations == []
            cap.advance(0.5)
            assert job.memory == 300 * MiB
            assert [v.limit for v in job.violations] == ["memory"]


def test_warn_policy_logs_and_lets_the_run_finish(
    cap: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    """Open files over ``fd_limit`` with ``on_limit="warn"``: one violation record and one
    warning naming the job, and the run goes on to complete."""
    caplog.set_level(logging.WARNING, logger="chaperone_otel")
    cap.set_resources(fds=100)
    with supervised("fd.warn", fd_limit=64, on_limit="warn") as job:
        cap.advance(1)
        cap.advance(1)  # recorded once per limit type
        job.heartbeat()
    run = cap.last_run("fd.warn")
    assert run.status == "completed"
    assert [(v[sc.ATTR_LIMIT_TYPE], v[sc.ATTR_LIMIT_ACTUAL]) for v in run.violations] == [
        ("fds", 100.0)
    ]
    warned = [r.getMessage() for r in caplog.records if "fd.warn" in r.getMessage()]
    assert len(warned) == 1
    assert "fds limit exceeded" in warned[0]


def test_record_policy_only_records(cap: Capture, caplog: pytest.LogCaptureFixture) -> None:
    """The default policy (``record``): the violation is on record and the run unhealthy,
    with no warning logged and nothing raised in the job."""
    caplog.set_level(logging.WARNING, logger="chaperone_otel")
    cap.set_resources(memory="2GiB")
    with supervised("mem.record", memory_limit="1GiB") as job:
        cap.advance(1)
        job.heartbeat()
        cap.advance(1)
    run = cap.last_run("mem.record")
    assert run.status == "completed"
    assert [v[sc.ATTR_LIMIT_TYPE] for v in run.violations] == ["memory"]
    assert run.health == "unhealthy"
    assert not [r for r in caplog.records if "mem.record" in r.getMessage()]


def test_cpu_over_its_limit_cancels_the_run(cap: Capture) -> None:
    """80 % of a core against ``cpu_limit=50``: the first pass after the start gives the
    run's CPU its starting point, the next (one second later) reads 80 % of its thread, on
    record as the run's own, and the cancel follows at the heartbeat."""
    cap.set_resources(cpu_percent=80)

    def spin() -> None:
        with supervised("spin", cpu_limit=50, on_limit="cancel") as job:
            cap.advance(1)
            assert job.cpu_percent is None
            job.heartbeat()
            cap.advance(1)
            assert job.cpu_percent == pytest.approx(80.0)
            job.heartbeat()
            pytest.fail("the heartbeat after the violation did not raise")

    with pytest.raises(JobLimitExceeded) as info:
        spin()
    assert info.value.limit == "cpu"
    assert info.value.actual == pytest.approx(80.0)
    run = cap.last_run("spin")
    assert run.status == "cancelled"
    [violation] = run.violations
    assert violation[sc.ATTR_LIMIT_TYPE] == "cpu"
    assert violation[sc.ATTR_CPU_SCOPE] == "thread"


def test_a_cpu_reading_is_the_average_over_its_window(cap: Capture) -> None:
    """CPU changed from 20 % to 60 % half-way through a one-second window reads 40 %
    (the CPU seconds used, over the window), below a 50 % limit: not a violation."""
    assert cap.clock is not None
    cap.set_resources(cpu_percent=20)
    with supervised("avg", cpu_limit=50) as job:
        cap.advance(1)
        cap.clock.advance(0.5)
        cap.set_resources(cpu_percent=60)
        cap.advance(0.5)
        assert job.cpu_percent == pytest.approx(40.0)
        assert job.violations == []


def test_memory_gauges_and_the_peak_in_the_finished_record(cap: Capture) -> None:
    """Samples of 100, 300 and 200 MiB: the memory gauge follows each sample, and the
    finished record carries the last reading and the peak (300 MiB)."""
    with supervised("peaky") as job:
        for mib in (100, 300, 200):
            cap.set_resources(memory=mib * MiB, fds=10)
            cap.advance(1)
            assert _memory_gauge(cap, "peaky") == [mib * MiB]
        job.heartbeat()
    [finished] = cap.last_run("peaky").events(sc.EVENT_JOB_FINISHED)
    assert finished.attributes[sc.ATTR_MEMORY_USAGE] == 200 * MiB
    assert finished.attributes[sc.ATTR_MEMORY_PEAK] == 300 * MiB
    assert finished.attributes[sc.ATTR_OPEN_FDS] == 10


def test_a_run_is_not_judged_on_the_sample_taken_as_it_started(cap: Capture) -> None:
    """Sequential jobs in one fake instant: the first is sampled at 900 MiB; the process
    then reads 100 MiB and the next job (512 MiB limit, cancel) starts at once. The sample
    still held was taken as it started, so it is not the next job's (as in production, a
    run is judged only on samples taken after its start): it completes."""
    cap.set_resources(memory="900MiB")
    with supervised("big.first"):
        cap.advance(1)
    cap.set_resources(memory="100MiB")
    with supervised("small.next", memory_limit="512MiB", on_limit="cancel") as job:
        cap.tick()
        job.heartbeat()
        assert job.memory is None
        cap.advance(1)
        assert job.memory == 100 * MiB
        job.heartbeat()
    assert cap.last_run("small.next").status == "completed"
    assert cap.last_run("small.next").violations == []


def test_until_set_the_samples_read_the_real_process(cap: Capture) -> None:
    """A FakeClock capture that never called ``set_resources()`` samples the real process
    (on the fake clock): real sampling stays the default."""
    with supervised("real.read") as job:
        cap.advance(1)
        assert job.memory is not None
        assert job.memory > MiB


def test_set_resources_needs_a_fake_clock_and_sane_values() -> None:
    """Without a FakeClock (samples due by real time) there is nothing to set; negative,
    non-finite or non-number readings are refused."""
    with capture() as real, pytest.raises(RuntimeError, match="FakeClock"):
        real.set_resources(memory="1GiB")
    with capture(clock=FakeClock()) as cap:
        for bad in (
            {"memory": -1},
            {"memory": "lots"},
            {"cpu_percent": -5},
            {"cpu_percent": float("nan")},
            {"cpu_percent": True},
            {"fds": 1.5},
            {"fds": -1},
        ):
            with pytest.raises(ValueError, match=r"memory|cpu_percent|fds"):
                cap.set_resources(**bad)
