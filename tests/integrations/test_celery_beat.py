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
from chaperone_otel import semconv as sc
from chaperone_otel.integrations._celery_beat import beat_specs, run_options
from chaperone_otel.testing import capture
from tests.integrations.celery_workers import CELERY_RELEASE
from tests.integrations.workers import (
    close_celery_client,
    dispatched_missed,
    schedule_slots,
    stop,
    worker_env,
)
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


_CELERY_CRONTABS: dict[str, tuple[dict[str, Any], str]] = {
    # Each accepted by Celery; the cron the schedule gets.
    "hour list": ({"minute": 0, "hour": [1, 13]}, "0 1,13 * * *"),
    "hour set": ({"minute": 0, "hour": {1, 13}}, "0 1,13 * * *"),
    "minute range": ({"minute": range(0, 60, 15)}, "0,15,30,45 * * * *"),
    "minute step text": ({"minute": "*/15"}, "*/15 * * * *"),
    "full day name": ({"minute": 0, "hour": 9, "day_of_week": "monday"}, "0 9 * * 1"),
    "day names": ({"minute": 0, "hour": 9, "day_of_week": "mon,wed"}, "0 9 * * mon,wed"),
    "every day of week": ({"minute": 0, "hour": 9, "day_of_week": "0-6"}, "0 9 * * *"),
    "month name": ({"minute": 0, "hour": 0, "month_of_year": "jan"}, "0 0 * jan *"),
    "day of month step": ({"minute": 0, "hour": 0, "day_of_month": "*/2"}, "0 0 */2 * *"),
    # Both day fields: Celery needs both to match (cron: either); the first Monday only.
    "first monday": (
        {"minute": 0, "hour": 9, "day_of_month": "1-7", "day_of_week": "mon"},
        "0 9 1-7 * mon",
    ),
    "weekday the 13th": (
        {"minute": 0, "hour": 9, "day_of_month": 13, "day_of_week": "mon-fri"},
        "0 9 13 * mon-fri",
    ),
}


@pytest.mark.parametrize("case", sorted(_CELERY_CRONTABS))
def test_a_crontab_celery_accepts_is_the_cron_it_fires_on(case: str) -> None:
    """Every crontab Celery accepts becomes a cron expression (str() of ``hour=[1, 13]``
    is "[1, 13]", of "monday" a name cron refuses), and that cron falls due at exactly the
    minutes where Celery's expanded sets all match (both day fields included), over four
    months."""
    from datetime import datetime, timezone

    from chaperone_otel._schedules import cron_dues
    from chaperone_otel.integrations._celery_beat import entry_spec

    if case == "month name" and CELERY_RELEASE < (5, 6):
        pytest.skip("Celery's crontab takes month names from 5.6")
    options, expected = _CELERY_CRONTABS[case]
    every = crontab(app=Celery("fields"), **options)
    spec = entry_spec(case, {"schedule": every}, timezone="UTC")
    assert spec is not None
    assert spec.cron == expected
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    end = start + 120 * 86400
    celery = [
        t
        for t in range(int(start) + 60, int(end) + 1, 60)
        if (d := datetime.fromtimestamp(t, timezone.utc)).minute in every.minute
        and d.hour in every.hour
        and d.day in every.day_of_month
        and d.month in every.month_of_year
        and d.isoweekday() % 7 in every.day_of_week
    ]
    assert cron_dues(spec, after=start, until=end, limit=10**6) == celery


def test_one_entry_that_cannot_be_declared_leaves_the_others_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry Celery accepts and a schedule cannot take (every 0.5 s: below a schedule's
    1 s) is skipped with one warning naming it; the other entries are declared, and beat's ``apply_entry`` is still wrapped, so their
    dispatches are named and recorded."""
    from celery import signals

    from chaperone_otel._schedule import declared
    from chaperone_otel.integrations._celery_beat import instrument_beat, uninstrument_beat

    app = Celery("odd-entry")
    app.conf.beat_schedule = {
        "nightly": {"task": "t.nightly", "schedule": crontab(minute=0, hour=2)},
        "hot-loop": {"task": "t.loop", "schedule": 0.5},
        "twice-a-day": {"task": "t.report", "schedule": crontab(minute=0, hour=[1, 13])},
        "poll": {"task": "t.poll", "schedule": 300.0},
    }
    sent: list[dict[str, Any]] = []

    def original(entry: Any, producer: Any = None) -> str:
        headers: dict[str, Any] = {"id": f"task-{entry.name}"}
        signals.before_task_publish.send(sender=entry.task, headers=headers)
        sent.append(headers)
        return "sent"

    class Beat:
        pass

    beat = Beat()
    beat.app = app  # type: ignore[attr-defined]
    beat.scheduler = type("Scheduler", (), {})()  # type: ignore[attr-defined]
    beat.scheduler.apply_entry = original  # type: ignore[attr-defined]
    instrument_beat(app)
    try:
        with capture() as cap, caplog.at_level("WARNING", logger="chaperone_otel"):
            signals.beat_init.send(sender=beat)
            entry = type("Entry", (), {"name": "twice-a-day", "task": "t.report"})()
            assert beat.scheduler.apply_entry(entry) == "sent"  # type: ignore[attr-defined]
            names = [s.name for s in declared()]
    finally:
        uninstrument_beat(app)
    assert names == ["nightly", "twice-a-day", "poll"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "'hot-loop'" in warnings[0]
    assert sent[0]["chaperone_schedule"] == "twice-a-day"
    dispatches = [r for r in cap.records if r.event_name == sc.EVENT_SCHEDULE_DISPATCHED]
    assert [r.attributes[sc.ATTR_SCHEDULE_NAME] for r in dispatches] == ["twice-a-day"]


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
        close_celery_client(client)
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
