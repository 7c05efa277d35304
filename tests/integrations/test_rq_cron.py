"""RQ's cron scheduler (issue 15): its registered jobs become schedules (``rq-cron``), each
enqueue names its schedule and slot in the job's meta and is recorded as a dispatch; with a
real ``rq cron`` process, a real worker and Debian's redis-server, a job on a queue nobody
consumes is missed (dispatched, never started) and a consumed one is on time. Every process
is stopped by PID; every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Worker as RQWorker
from rq.cron import CronJob, CronScheduler

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._safety import internal_error_counts
from chaperone_otel.integrations._rq_cron import cron_job_spec, local_zone, run_options
from chaperone_otel.integrations.rq import (
    META_SCHEDULE,
    META_SCHEDULED_FOR,
    instrument_cron,
    uninstrument_cron,
)
from chaperone_otel.testing import capture
from tests.integrations.workers import dispatched_missed, schedule_slots, stop, worker_env
from tests.waiting import wait_until


def tick() -> int:
    return 1


def test_cron_jobs_become_schedules_in_the_given_zone() -> None:
    """A cron string → cron in the zone; an interval → an interval; named as RQ names it."""
    nightly = CronJob("default", func_name="app.report", cron="30 2 * * *", name="nightly")
    poll = CronJob("default", func_name="app.poll", interval=90)
    spec = cron_job_spec(nightly, timezone="Europe/Paris", grace=30, declare_every=60)
    assert (spec.name, spec.cron, spec.timezone) == ("nightly", "30 2 * * *", "Europe/Paris")
    assert (spec.source, spec.grace, spec.declare_every) == ("rq-cron", 30.0, 60.0)
    every = cron_job_spec(poll, timezone="UTC")
    assert (every.name, every.interval, every.cron) == ("app.poll", 90.0, None)


def test_a_cron_job_that_cannot_be_declared_leaves_the_others_declared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A six-field cron (refused: cronsim reads the first as seconds) stopped the loop that
    declares the scheduler's jobs, so every job registered after it went undeclared."""
    from types import SimpleNamespace

    from chaperone_otel.integrations._rq_cron import _Cron

    odd = CronJob("default", func_name="app.odd", cron="0 2 * * * *", name="six-fields")
    nightly = CronJob("default", func_name="app.report", cron="30 2 * * *", name="nightly")
    with capture() as cap:
        _Cron({}, "UTC").declare_jobs(SimpleNamespace(get_jobs=lambda: [odd, nightly]))
    declared = [r.attributes[sc.ATTR_SCHEDULE_NAME] for r in cap.records
                if r.event_name == sc.EVENT_SCHEDULE_DECLARED]
    assert declared == ["nightly"]
    assert "RQ cron job 'six-fields' cannot be declared" in caplog.text


def test_the_local_zone_is_tz_else_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """RQ reads cron fields in local time: ``TZ`` names it when set."""
    monkeypatch.setenv("TZ", "America/New_York")
    assert local_zone() == "America/New_York"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert local_zone() != "Not/AZone"


def test_run_options_read_the_jobs_meta() -> None:
    """A job's meta from the cron scheduler names its schedule and slot; other meta, nothing."""
    meta = {META_SCHEDULE: "nightly", META_SCHEDULED_FOR: 1e9, "other": 1}
    assert run_options(meta) == {"schedule": "nightly", "scheduled_for": 1e9}
    assert run_options({META_SCHEDULE: "poll"}) == {"schedule": "poll"}
    assert run_options({}) == {}
    assert run_options(None) == {}


def test_instrument_cron_fails_early_on_a_bad_option() -> None:
    with pytest.raises(chaperone.ConfigurationError):
        instrument_cron(tz="Not/AZone")
    with pytest.raises(chaperone.ConfigurationError):
        instrument_cron(grace=-1)


@pytest.fixture
def instrumented() -> Iterator[None]:
    instrument_cron(tz="UTC", grace=5, declare_every=30)
    try:
        yield
    finally:
        uninstrument_cron()


@pytest.mark.slow  # a real redis-server
def test_the_scheduler_declares_its_jobs_and_each_enqueue_carries_its_slot(
    redis_url: str, instrumented: None
) -> None:
    """register_birth declares every job; enqueue puts the schedule (and the cron slot's
    due time) in the job's meta, keeps the job's own meta, and publishes a dispatch."""
    connection = Redis.from_url(redis_url)
    try:
        with capture() as cap:
            scheduler = CronScheduler(connection=connection, name=f"t-{os.getpid()}")
            minutely = scheduler.register(
                tick, "rq-cron-unit", cron="* * * * *", name="minutely", meta={"mine": 1}
            )
            every = scheduler.register(tick, "rq-cron-unit", interval=5, name="every5")
            scheduler.register_birth()
            try:
                declared = [r for r in cap.records if r.event_name == sc.EVENT_SCHEDULE_DECLARED]
                by_name = {r.attributes[sc.ATTR_SCHEDULE_NAME]: r.attributes for r in declared}
                assert set(by_name) == {"minutely", "every5"}
                assert by_name["minutely"][sc.ATTR_SCHEDULE_CRON] == "* * * * *"
                assert by_name["every5"][sc.ATTR_SCHEDULE_INTERVAL] == 5.0
                assert by_name["every5"][sc.ATTR_SCHEDULE_SOURCE] == "rq-cron"
                cron_job = minutely.enqueue(connection)
                interval_job = every.enqueue(connection)
            finally:
                scheduler.register_death()
        due = cron_job.meta[META_SCHEDULED_FOR]
        assert cron_job.meta[META_SCHEDULE] == "minutely"
        assert due % 60 == 0
        assert cron_job.enqueued_at.timestamp() - 61 < due
        assert cron_job.meta["mine"] == 1
        assert minutely.job_options["meta"] == {"mine": 1}  # the cron job's own meta kept
        assert interval_job.meta == {META_SCHEDULE: "every5"}
        assert "meta" not in every.job_options
        dispatched = [r for r in cap.records if r.event_name == sc.EVENT_SCHEDULE_DISPATCHED]
        assert [
            (r.attributes[sc.ATTR_SCHEDULE_NAME], r.attributes[sc.ATTR_SCHEDULE_RUN_ID])
            for r in dispatched
        ] == [("minutely", cron_job.id), ("every5", interval_job.id)]
        assert dispatched[0].attributes[sc.ATTR_SCHEDULE_SCHEDULED_FOR] == due
    finally:
        connection.close()


@pytest.mark.slow  # a real redis-server
def test_a_failing_hook_never_stops_the_enqueue(
    redis_url: str, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telemetry never breaks the job: if naming the slot fails, RQ still enqueues the job
    (without the schedule), and the failure is counted."""
    import chaperone_otel.integrations._rq_cron as rq_cron

    def broken(*_: Any) -> float:
        raise RuntimeError("boom")

    monkeypatch.setattr(rq_cron, "previous_cron_due", broken)
    connection = Redis.from_url(redis_url)
    try:
        with capture(raise_internal_errors=False) as cap:
            scheduler = CronScheduler(connection=connection, name=f"t-{os.getpid()}-broken")
            minutely = scheduler.register(tick, "rq-cron-unit", cron="* * * * *", name="m2")
            scheduler.register_birth()
            try:
                job = minutely.enqueue(connection)
            finally:
                scheduler.register_death()
            errors = internal_error_counts().get("rq_cron.enqueue", 0)
        assert job.id
        assert META_SCHEDULE not in job.meta
        assert not [r for r in cap.records if r.event_name == sc.EVENT_SCHEDULE_DISPATCHED]
        assert errors == 1
    finally:
        connection.close()


def test_uninstrument_restores_rq() -> None:
    before = (CronScheduler.register_birth, CronJob.enqueue)
    instrument_cron()
    assert (CronScheduler.register_birth, CronJob.enqueue) != before
    uninstrument_cron()
    assert (CronScheduler.register_birth, CronJob.enqueue) == before


# ---- a real `rq cron` process, a real worker -------------------------------------------------

_APP = textwrap.dedent(
    """
    import os

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.rq import SupervisedWorker

    chaperone.configure(sink=os.environ["TEST_JOBS_STORE"])


    class Worker(SupervisedWorker):
        pass


    def tick():
        return 1
    """
)

_CRON = textwrap.dedent(
    """
    import os

    from rq import cron

    from chaperone_otel.integrations.rq import instrument_cron
    from rq_cron_app import tick

    instrument_cron(grace=2, declare_every=1)
    queue = os.environ["TEST_QUEUE"]
    cron.register(tick, queue, interval=2, name="consumed")
    cron.register(tick, "rq-cron-nobody", interval=2, name="orphan")
    cron.register(tick, queue, cron="* * * * *", name="minutely")
    """
)


@pytest.fixture
def cron_and_worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """A worker on one queue, then ``rq cron``; both stopped by PID (TERM, then KILL)."""
    (tmp_path / "rq_cron_app.py").write_text(_APP)
    (tmp_path / "rq_cron_config.py").write_text(_CRON)
    store = str(tmp_path / "jobs.duckdb")
    queue = f"rq-cron-{os.getpid()}"
    env = worker_env(tmp_path, TEST_JOBS_STORE=store, TEST_QUEUE=queue)
    connection = Redis.from_url(redis_url)
    name = f"rq-cron-it-{os.getpid()}"
    procs: list[subprocess.Popen[Any]] = []
    logs = contextlib.ExitStack()
    worker_log = logs.enter_context((tmp_path / "worker.log").open("wb"))
    cron_log = logs.enter_context((tmp_path / "cron.log").open("wb"))
    rq = [sys.executable, "-m", "rq.cli"]
    try:
        procs.append(
            subprocess.Popen(
                [
                    *rq,
                    "worker",
                    "-w",
                    "rq_cron_app.Worker",
                    "--url",
                    redis_url,
                    "--name",
                    name,
                    "--logging_level",
                    "WARNING",
                    queue,
                ],
                cwd=tmp_path,
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
        )

        def ready() -> bool:
            assert procs[0].poll() is None, (tmp_path / "worker.log").read_text()
            return any(w.name == name for w in RQWorker.all(connection=connection))

        wait_until(ready, 60, "the rq worker to register")
        procs.append(
            subprocess.Popen(
                [*rq, "cron", "--url", redis_url, "rq_cron_config.py"],
                cwd=tmp_path,
                env=env,
                stdout=cron_log,
                stderr=subprocess.STDOUT,
            )
        )
        yield store, procs[1]
    finally:
        try:
            for proc in reversed(procs):
                stop(proc, grace=5)  # see test_rq_worker: RQ 3.0's warm shutdown may hang
        finally:
            logs.close()
            connection.delete("rq:queue:rq-cron-nobody")
            connection.close()


@pytest.mark.slow
def test_an_unconsumed_cron_job_is_missed_and_a_consumed_one_on_time(
    cron_and_worker: tuple[str, subprocess.Popen[Any]], tmp_path: Path
) -> None:
    """``rq cron`` enqueues two jobs every 2 s and one every minute; the worker consumes one
    queue. The orphan's slots are missed though dispatched; the consumed jobs' runs fulfil
    their slots on time (the minutely one by its slot's due time), carrying the schedule's
    name; once ``rq cron`` is stopped, its schedules show the scheduler lost."""
    store, cron_proc = cron_and_worker

    def slots(name: str) -> list[Any]:
        return schedule_slots(store, name)

    def orphan_missed() -> list[Any]:
        return dispatched_missed(store, "orphan")

    wait_until(
        orphan_missed,
        60,
        f"two dispatched, missed slots of the orphan cron job (logs in {tmp_path})",
    )

    def consumed_on_time() -> list[Any]:
        on_time = [s for s in slots("consumed") if s.state == "on_time"]
        return on_time if len(on_time) >= 3 else []

    on_time = wait_until(consumed_on_time, 60, "three on-time slots of the consumed cron job")
    assert all(s.run_id for s in on_time)
    assert not [s for s in slots("consumed") if s.state == "missed"]

    def minutely_on_time() -> list[Any]:
        return [s for s in slots("minutely") if s.state == "on_time" and s.dispatched_at]

    # The first minute boundary after rq cron declared it: at most 60 s away.
    minute = wait_until(minutely_on_time, 100, "an on-time slot of the minutely cron job")
    assert minute[0].due_at.second == 0
    assert minute[0].run_id
    with chaperone.open_sink(store) as sink:
        runs = sink.jobs.named("rq_cron_app.tick").all()
        assert runs
        assert {r.schedule for r in runs} == {"consumed", "minutely"}
        (minute_run,) = sink.jobs.with_id(minute[0].run_id).all()
        assert minute_run.scheduled_for == minute[0].due_at  # the slot RQ served, by due time
        declared = dict(sink.sql("SELECT name, source FROM schedules")[1])
    assert declared == {"consumed": "rq-cron", "orphan": "rq-cron", "minutely": "rq-cron"}

    stop(cron_proc, grace=5)  # by its PID; it re-declared every second until now

    def lost() -> bool:
        with chaperone.open_sink(store) as sink:
            return bool(sink.schedules.named("consumed").current().lost().count())

    wait_until(lost, 30, "the consumed schedule's scheduler to be lost once rq cron stopped")
