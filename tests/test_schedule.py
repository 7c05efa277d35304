"""Declaring schedules from code: validation at declaration, the record it travels as, and
the embedded store that detects the missed slot on its own (issue 15)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import chaperone_otel
from chaperone_otel import ConfigurationError, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._schedule import declared
from chaperone_otel._schedules import make_schedule, spec_from_attributes
from chaperone_otel.testing import capture
from tests.waiting import wait_until


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of cron"),
        ({"cron": "0 2 * * *", "interval": 60}, "exactly one of cron"),
        ({"cron": "0 25 * * *"}, "not a cron expression"),
        ({"cron": "0 2 * *"}, "has 4 field"),
        # cronsim reads a sixth field as seconds: this ran hourly at :02, silently.
        ({"cron": "0 2 * * * *"}, r"has 6 field\(s\) \(a sixth field would be read as seconds"),
        ({"interval": "15m", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"interval": 0}, "interval must be a positive duration"),
        ({"interval": "1h", "grace": -1}, "grace must be a positive duration"),
        ({"interval": "1h", "failure_threshold": 0}, "failure_threshold"),
    ],
)
def test_misuse_fails_at_declaration(options: dict[str, Any], message: str) -> None:
    """A bad schedule raises ConfigurationError when declared, saying what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        chaperone_otel.schedule("bad", **options)


def test_a_declaration_travels_as_its_own_record() -> None:
    """schedule() publishes one chaperone.schedule.declared record that carries the whole
    definition (and reads back as the same spec); re-declaring replaces it in the process."""
    with capture() as cap:
        nightly = chaperone_otel.schedule(
            "nightly", cron="0  2 * * *", tz="Europe/Paris", grace="15m", max_runtime="2h"
        )
        chaperone_otel.schedule("nightly", cron="0 3 * * *", tz="Europe/Paris")
        assert [s.cron for s in declared()] == ["0 3 * * *"]
    records = [r for r in cap.records if r.event_name == sc.EVENT_SCHEDULE_DECLARED]
    assert len(records) == 2
    assert cap.runs() == []  # a declaration is not a run
    first = spec_from_attributes(records[0].attributes)
    assert first == make_schedule(
        "nightly", cron="0 2 * * *", tz="Europe/Paris", grace=900, max_runtime=timedelta(hours=2)
    )
    assert nightly.name == "nightly"


def test_runs_of_a_supervised_job_name_their_schedule() -> None:
    """@supervised(schedule=...) puts the schedule's name on every record of the run;
    start_run(scheduled_for=...) adds the slot it serves."""
    every = chaperone_otel.schedule("every-minute", cron="* * * * *")
    with capture() as cap:

        @supervised(schedule=every)
        def job() -> None:
            pass

        job()
        started = chaperone_otel.start_run("beat.task", schedule="beat", scheduled_for=1e9)
        started.finish()
    runs = [r for r in cap.records if r.event_name == sc.EVENT_JOB_FINISHED]
    assert [r.attributes.get(sc.ATTR_SCHEDULE_NAME) for r in runs] == ["every-minute", "beat"]
    assert runs[1].attributes[sc.ATTR_SCHEDULE_SCHEDULED_FOR] == 1e9
    with pytest.raises(ConfigurationError, match="schedule="):
        supervised(schedule=42)


def test_a_schedule_declared_before_configure_reaches_the_store(tmp_path: Any) -> None:
    """A schedule declared at import time, before configure(sink=...), is declared again
    to the new store."""
    chaperone_otel.schedule("early-bird", interval="1h")
    chaperone_otel.configure(sink=str(tmp_path / "jobs.duckdb"))
    assert chaperone_otel.flush(10)
    with chaperone_otel.open_sink(str(tmp_path / "jobs.duckdb")) as sink:
        assert sink.sql('SELECT name, "interval" FROM schedules')[1] == [("early-bird", 3600.0)]


@pytest.mark.slow
def test_the_embedded_owner_finds_the_missed_slot_itself(tmp_path: Any) -> None:
    """Detection runs where the store is: with a 1 s interval and no run, the embedded
    owner's evaluator makes the slots and they are missed after the grace; a job that runs
    fulfils its slot."""
    path = str(tmp_path / "jobs.duckdb")
    chaperone_otel.configure(sink=path)
    chaperone_otel.schedule("idle", interval=1, grace=1)
    chaperone_otel.schedule("busy", interval=1, grace=1)

    @supervised(schedule="busy")
    def tick() -> None:
        pass

    with chaperone_otel.open_sink(path) as sink:

        def missed() -> bool:
            tick()
            return sink.schedules.named("idle").missed().count() >= 2

        wait_until(missed, 20, "two missed slots of the idle schedule")
        busy = sink.schedules.named("busy").all()
        assert any(s.run_id is not None for s in busy)


def test_a_supervised_class_names_its_schedule() -> None:
    """``Supervised.schedule`` (a name or a Schedule) is on every run of the class, as
    ``@supervised(schedule=...)`` is; a bad one fails when the class is defined."""
    nightly = chaperone_otel.schedule("class-nightly", cron="0 2 * * *")

    class Nightly(chaperone_otel.Supervised):
        schedule = nightly

        def run(self) -> None:
            pass

    class Named(chaperone_otel.Supervised):
        schedule = "class-named"

        def run(self) -> None:
            pass

    with capture() as cap:
        Nightly().run()
        Named().run()
    runs = [r for r in cap.records if r.event_name == sc.EVENT_JOB_FINISHED]
    assert [r.attributes.get(sc.ATTR_SCHEDULE_NAME) for r in runs] == [
        "class-nightly",
        "class-named",
    ]
    with pytest.raises(ConfigurationError, match="schedule="):

        class Bad(chaperone_otel.Supervised):
            schedule = 42

            def run(self) -> None:
                pass
