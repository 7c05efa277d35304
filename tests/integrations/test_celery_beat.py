"""Celery beat with a real beat, a real worker and Debian's redis-server: beat declares its
``beat_schedule`` entries as schedules and records each dispatch; an entry whose task goes to
a queue nobody consumes is missed (dispatched, never started), one the worker consumes is on
time (issue 15). Every process is stopped by PID; every wait is bounded."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

import chaperone_otel as chaperone
from chaperone_otel.integrations._celery_beat import beat_specs, run_options
from tests.integrations.workers import dispatched_missed, schedule_slots, stop, worker_env
from tests.waiting import wait_until

_APP = textwrap.dedent(
    """
    import os

    from celery import Celery

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.celery import instrument, instrument_beat

    chaperone.configure(sink=os.environ["TEST_JOBS_STORE"])
    app = Celery("beat_app", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BROKER"])
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    app.conf.beat_schedule = {
        "consumed": {"task": "bt.tick", "schedule": 2.0},
        "orphan": {"task": "bt.tick", "schedule": 2.0, "options": {"queue": "nobody"}},
    }
    instrument_beat(app, grace=2, declare_every=1)
    instrument(app)


    @app.task(name="bt.tick")
    def tick():
        return 1
    """
)


def test_beat_entries_become_schedules_in_the_apps_zone() -> None:
    """crontab → cron in the app's zone; a number, timedelta or schedule → an interval;
    a schedule it cannot read is skipped."""
    app = Celery("specs")
    app.conf.timezone = "Europe/Paris"
    app.conf.beat_schedule = {
        "nightly": {"task": "t", "schedule": crontab(minute=30, hour=2)},
        "seconds": {"task": "t", "schedule": 90.0},
        "delta": {"task": "t", "schedule": timedelta(minutes=5)},
        "wrapped": {"task": "t", "schedule": schedule(timedelta(hours=1))},
        "odd": {"task": "t", "schedule": "every other tuesday"},
    }
    specs = {s.name: s for s in beat_specs(app, grace=30, declare_every=60)}
    assert sorted(specs) == ["delta", "nightly", "seconds", "wrapped"]
    assert (specs["nightly"].cron, specs["nightly"].timezone) == ("30 2 * * *", "Europe/Paris")
    assert [specs[n].interval for n in ("seconds", "delta", "wrapped")] == [90.0, 300.0, 3600.0]
    assert {s.source for s in specs.values()} == {"celery-beat"}
    assert {s.declare_every for s in specs.values()} == {60.0}


def test_run_options_read_the_beat_headers() -> None:
    """A request with the beat headers names its schedule and slot; one without, nothing."""

    class Request:
        chaperone_schedule = "nightly"
        chaperone_scheduled_for = 1e9

    assert run_options(Request()) == {"schedule": "nightly", "scheduled_for": 1e9}
    assert run_options(object()) == {}


def _start(args: list[str], root: Path, env: dict[str, str], log: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "beat_app", *args],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def beat_and_worker(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A solo worker consuming only the default queue, then a beat; stopped by PID."""
    (tmp_path / "beat_app.py").write_text(_APP)
    store = str(tmp_path / "jobs.duckdb")
    env = worker_env(tmp_path, TEST_JOBS_STORE=store, TEST_BROKER=redis_url)
    procs: list[subprocess.Popen[Any]] = []
    client = Celery("client", broker=redis_url)
    logs = contextlib.ExitStack()
    worker_log = logs.enter_context((tmp_path / "worker.log").open("wb"))
    beat_log = logs.enter_context((tmp_path / "beat.log").open("wb"))
    try:
        procs.append(
            _start(
                [
                    "worker",
                    "-P",
                    "solo",
                    "-Q",
                    "celery",
                    "--loglevel=warning",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                tmp_path,
                env,
                worker_log,
            )
        )

        def ready() -> bool:
            assert procs[0].poll() is None, (tmp_path / "worker.log").read_text()
            return bool(client.control.ping(timeout=0.5))

        wait_until(ready, 60, "the celery worker to answer ping")
        procs.append(
            _start(
                [
                    "beat",
                    "-s",
                    str(tmp_path / "beat-schedule"),
                    "--max-interval",
                    "1",
                    "--loglevel=info",
                ],
                tmp_path,
                env,
                beat_log,
            )
        )
        yield store
    finally:
        client.close()
        for proc in reversed(procs):
            stop(proc, grace=20)
        logs.close()


@pytest.mark.slow
def test_an_unconsumed_entry_is_missed_and_a_consumed_one_on_time(
    beat_and_worker: str, tmp_path: Path
) -> None:
    """Beat sends both entries every 2 s; the worker consumes only the default queue. The
    orphan's slots are missed though dispatched; the consumed entry's runs fulfil its
    slots on time, carrying the schedule's name."""
    store = beat_and_worker

    def slots(name: str) -> list[Any]:
        return schedule_slots(store, name)

    def orphan_missed() -> list[Any]:
        return dispatched_missed(store, "orphan")

    log = tmp_path / "beat.log"
    wait_until(
        orphan_missed, 60, f"two dispatched, missed slots of the orphan entry (beat log: {log})"
    )

    def consumed_on_time() -> list[Any]:
        on_time = [s for s in slots("consumed") if s.state == "on_time"]
        return on_time if len(on_time) >= 3 else []

    on_time = wait_until(consumed_on_time, 60, "three on-time slots of the consumed entry")
    assert all(s.run_id for s in on_time)
    assert not [s for s in slots("consumed") if s.state == "missed"]
    with chaperone.open_sink(store) as sink:
        runs = sink.jobs.named("bt.tick").all()
        assert runs
        assert {r.schedule for r in runs} == {"consumed"}
        declared = dict(sink.sql("SELECT name, source FROM schedules")[1])
    assert declared == {"consumed": "celery-beat", "orphan": "celery-beat"}
