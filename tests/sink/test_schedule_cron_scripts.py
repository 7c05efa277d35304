"""A cron script that owns its embedded store for a moment still makes its schedule's slots.

The slot evaluator's first pass came one interval (1 s) after the store opened, and none
came at its close: a script whose job takes half a second, run by cron with
``configure(sink=PATH)`` alone, made no slot at all, so a run that never came was never
``missed`` and ``chaperone-otel schedules`` said nothing was wrong (a user trial). The
owner now evaluates at once when it opens the store and once more before it releases it.
Real interpreters, a real DuckDB file, the wall clock.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chaperone_otel.sink import open_sink
from tests.processes import run_python

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
import chaperone_otel as chaperone
from chaperone_otel import supervised

chaperone.configure(sink=sys.argv[1])
sync = chaperone.schedule("sync", interval="2s", grace="1s")

@supervised(schedule=sync)
def sync_contacts():
    return "ok"

sync_contacts()
"""


def test_a_run_that_never_came_is_missed_between_two_short_scripts(tmp_path: Path) -> None:
    db = tmp_path / "cron.duckdb"
    run_python(SCRIPT, db)
    with open_sink(str(db)) as sink:
        (first,) = sink.jobs.named("sync_contacts").all()
    assert first.finished_at is not None
    # The next run is due 2 s after this one, its grace ends 1 s later: let that pass
    # with nobody owning the store, as between two cron runs.
    deadline = first.finished_at.timestamp() + 3.5
    time.sleep(max(0.0, deadline - time.time()))
    run_python(SCRIPT, db)
    with open_sink(str(db)) as sink:
        assert sink.jobs.named("sync_contacts").count() == 2
        missed = sorted(sink.schedules.named("sync").missed().all(), key=lambda s: s.due_at)
    # The slot due 2 s after the first run (and, as the second script's start falls, maybe
    # the one 2 s after that) came and went with nobody running the job.
    assert missed, "no missed slot"
    assert all(slot.run_id is None for slot in missed)
    assert missed[0].due_at.timestamp() == pytest.approx(first.started_at.timestamp() + 2, abs=0.5)


def test_an_owner_makes_the_slots_due_by_its_close(tmp_path: Path) -> None:
    """The last pass, before the owner lets the file go: what it was told since its
    previous pass (here a declaration from 100 s ago, every 10 s) has its slots before the
    next owner comes, however long that takes. (Without it this owner, closed well within
    the evaluator's 1 s period, made none.)"""
    from chaperone_otel._schedule import declaration_record
    from chaperone_otel._schedules import make_schedule
    from chaperone_otel.sink._owner import StoreOwner

    path = str(tmp_path / "jobs.duckdb")
    began = time.time()
    owner = StoreOwner(path)
    try:
        declared = declaration_record(make_schedule("every10", interval=10, grace=1), began - 100)
        ticket = owner.writer.submit([declared])
        assert ticket is not None
        assert owner.writer.wait(ticket, 10)
    finally:
        owner.close()
    with open_sink(path) as sink:
        assert sink.schedules.named("every10").missed().count() >= 5
