"""Schedules in the store, on a fake clock: slots fall due, runs fulfil them or not, and the
states (on time, late, missed, overran, failing, scheduler lost) come out the same in SQL
as in the Python rules (issue 15)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel._schedule import declaration_record
from chaperone_otel._schedules import (
    SCHEDULE_PROMQL_SIGNALS,
    SIGNALS,
    make_schedule,
    schedule_rules,
    spec_from_attributes,
)
from chaperone_otel.exceptions import ConfigurationError, SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._schedule_metrics import SCHEDULE_SERIES_SQL, SERIES
from chaperone_otel.sink._schedule_sql import SLOT_COLUMNS, slots_select
from chaperone_otel.sink._schedule_store import SLOTS_PER_PASS, evaluate
from chaperone_otel.sink._store import acquire
from chaperone_otel.sink._writer import Writer

from .store_factory import T0, lifecycle, store_writer, write_all

HOUR = 3600.0


def declare(writer: Writer, name: str, at: float, **options: Any) -> None:
    write_all(writer, [declaration_record(make_schedule(name, **options), at)])


def run(
    writer: Writer,
    run_id: str,
    start: float,
    *,
    schedule: str = "s",
    status: str = "completed",
    scheduled_for: float | None = None,
    running: bool = False,
) -> None:
    extra: dict[str, Any] = {sc.ATTR_SCHEDULE_NAME: schedule}
    if scheduled_for is not None:
        extra[sc.ATTR_SCHEDULE_SCHEDULED_FOR] = scheduled_for
    records = lifecycle(run_id, beats=1, status=status, start=start, step=5.0, **extra)
    write_all(writer, records[:1] if running else records)


def tick(writer: Writer, now: float) -> int:
    with writer.store.write_lock:
        return evaluate(writer.store.cursor(), now)


def states(sink: LocalSink, now: float, name: str = "s") -> list[tuple[float, str]]:
    """(due, state) of every slot of ``name``, oldest first."""
    slots = sink.schedules.named(name).at(now).all()
    return sorted((s.due_at.timestamp() - T0, s.state) for s in slots)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def store(tmp_path: Any) -> Any:
    with store_writer(tmp_path / "s.duckdb") as pair:
        yield pair


def test_a_run_in_its_slot_is_on_time_and_a_slot_without_one_is_late_then_missed(
    store: Any,
) -> None:
    """Hourly cron, grace 60 s: a run 5 s after the due time fulfils the slot; the next
    slot is late within its grace and missed after it."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60)
    run(writer, "r1", T0 + 5)
    tick(writer, T0 + HOUR + 30)
    assert states(sink, T0 + HOUR + 30) == [(0.0, "on_time"), (HOUR, "late")]
    assert sink.schedules.late().at(T0 + HOUR + 30).count() == 1
    tick(writer, T0 + HOUR + 61)
    assert states(sink, T0 + HOUR + 61) == [(0.0, "on_time"), (HOUR, "missed")]
    missed = sink.schedules.missed().at(T0 + HOUR + 61).all()
    assert [(m.schedule, m.due_at.timestamp(), m.run_id) for m in missed] == [
        ("s", T0 + HOUR, None)
    ]


def test_a_run_after_the_grace_does_not_fulfil_the_missed_slot(store: Any) -> None:
    """A slot past its deadline stays missed when a run starts late."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60)
    tick(writer, T0 + 100)
    run(writer, "late-run", T0 + 200)
    tick(writer, T0 + 300)
    assert states(sink, T0 + 300) == [(0.0, "missed")]


def test_a_run_record_arriving_after_the_pass_still_fulfils_its_slot(store: Any) -> None:
    """Detection waits for records: a run that started in the window but was stored after
    the slot was made is matched at the next pass."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60)
    tick(writer, T0 + 30)
    run(writer, "r1", T0 + 20)
    tick(writer, T0 + 90)
    assert states(sink, T0 + 90) == [(0.0, "on_time")]


def test_a_run_past_max_runtime_has_overrun(store: Any) -> None:
    """A run still running max_runtime after it started makes its slot overran."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60, max_runtime=120)
    run(writer, "r1", T0 + 5, running=True)
    tick(writer, T0 + 60)
    assert states(sink, T0 + 60) == [(0.0, "on_time")]
    assert states(sink, T0 + 126) == [(0.0, "overran")]
    assert sink.schedules.overran().at(T0 + 126).count() == 1


def test_failing_after_n_failed_runs_in_a_row_and_healthy_after_a_success(store: Any) -> None:
    """failure_threshold=3: the third failure in a row makes the schedule failing; a
    completed run ends the streak."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60, failure_threshold=3)
    for i in range(3):
        run(writer, f"f{i}", T0 + i * HOUR + 5, status="failed")
    run(writer, "ok", T0 + 3 * HOUR + 5)
    now = T0 + 3 * HOUR + 100
    tick(writer, now)
    assert states(sink, now) == [
        (0.0, "on_time"),
        (HOUR, "on_time"),
        (2 * HOUR, "failing"),
        (3 * HOUR, "on_time"),
    ]
    assert [s.consecutive_failures for s in reversed(sink.schedules.at(now).all())] == [
        1,
        2,
        3,
        0,
    ]
    assert sink.schedules.failing().at(now).count() == 1
    assert sink.schedules.current().healthy().at(now).count() == 1


def test_failing_lasts_until_a_run_completes(store: Any) -> None:
    """failure_threshold=1 and a failed run: the next slot stays failing while its run
    runs and, after that run completes, the slot after it is failing neither while late
    nor once fulfilled. docs/schedules.md defines failing so (a streak ends at a
    completed run only, as Sentry's monitors); the store and the series (what
    ChaperoneScheduleFailing judges) say the same, so the alert does not resolve each
    time a new run starts and fire again when it fails."""
    writer, sink = store
    declare(writer, "s", T0 - 10, cron="0 * * * *", grace=60, failure_threshold=1)
    run(writer, "f0", T0 + 2, status="failed")
    tick(writer, T0 + 30)
    run(writer, "r1", T0 + HOUR + 2, running=True)
    tick(writer, T0 + HOUR + 70)
    now = T0 + HOUR + 70
    assert states(sink, now) == [(0.0, "failing"), (HOUR, "failing")]
    assert schedule_rules().failing.holds(_series_signals(sink, now), now)
    run(writer, "r1", T0 + HOUR + 2)  # the same run, now completed
    tick(writer, T0 + 2 * HOUR + 10)
    now = T0 + 2 * HOUR + 20
    assert states(sink, now) == [(0.0, "failing"), (HOUR, "on_time"), (2 * HOUR, "late")]
    assert not schedule_rules().failing.holds(_series_signals(sink, now), now)


def test_a_rerun_that_completes_ends_the_failing_streak(store: Any) -> None:
    """Nightly, failure_threshold=1: the 02:00 run fails and the operator reruns it by hand
    at 09:00; the rerun fulfils no slot. docs/schedules.md: "a completed run ends the
    streak". The schedule stayed failing until the next night (the alert with it), because
    only runs in slots were counted. The next night's failure starts a new streak of one."""
    writer, sink = store
    declare(writer, "s", utc("2026-04-30T12:00:00"), cron="0 2 * * *", grace="15m",
            failure_threshold=2)
    night = utc("2026-05-02T02:00:00")
    for i, start in enumerate((night - 86_400 + 1, night + 1)):  # two nights fail
        tick(writer, start - 2)
        run(writer, f"night-{i}", start, status="failed")
        tick(writer, start + 3600)
    assert [s.consecutive_failures for s in sink.schedules.at(night + 3600).all()] == [2, 1]
    # (newest first)
    assert sink.schedules.failing().at(night + 3600).count() == 1
    assert schedule_rules().failing.holds(_series_signals(sink, night + 3600), night + 3600)
    run(writer, "by-hand", utc("2026-05-02T09:00:00"))  # completes at 09:00:10
    now = utc("2026-05-02T10:00:00")
    tick(writer, now)
    assert sink.schedules.failing().at(now).count() == 0
    latest = sink.schedules.at(now).all()[0]
    assert (latest.run_id, latest.consecutive_failures) == ("night-1", 0)
    assert not schedule_rules().failing.holds(_series_signals(sink, now), now)
    tick(writer, night + 86_400 - 1)
    run(writer, "night-2", night + 86_400 + 1, status="failed")  # the next night fails
    now = night + 86_400 + 3600
    tick(writer, now)
    # Newest first: a streak of one, the night the rerun repaired, the first night.
    assert [s.consecutive_failures for s in sink.schedules.at(now).all()] == [1, 0, 1]
    assert sink.schedules.failing().at(now).count() == 0  # one failure, threshold 2


def test_a_streak_follows_the_order_runs_finished_in_not_the_slots(store: Any) -> None:
    """A rerun by hand from 01:58 that completes at 02:00:10, after night 2's slot fell due,
    ends night 1's streak; night 2's own run then fails at 02:00:30 and night 3's too: two
    failures in a row, failing. Counting the rerun for night 2's whole slot erased night
    2's own later failure (the schedule and its alert stayed quiet)."""
    writer, sink = store
    declare(writer, "s", utc("2026-04-30T12:00:00"), cron="0 2 * * *", grace="15m",
            failure_threshold=2)
    night = utc("2026-05-01T02:00:00")
    tick(writer, night - 1)
    run(writer, "night-1", night + 1, status="failed")
    tick(writer, night + 3600)
    by_hand = lifecycle("by-hand", beats=1, start=night + 86_400 - 120, step=65.0,
                        **{sc.ATTR_SCHEDULE_NAME: "s"})  # 01:58:00 to 02:00:10
    write_all(writer, by_hand)
    tick(writer, night + 86_400 - 1)
    run(writer, "night-2", night + 86_400 + 15, status="failed")  # ends 02:00:30
    tick(writer, night + 2 * 86_400 - 1)
    run(writer, "night-3", night + 2 * 86_400 + 1, status="failed")
    now = night + 2 * 86_400 + 3600
    tick(writer, now)
    slots = sink.schedules.at(now).all()  # newest first
    assert [s.run_id for s in slots] == ["night-3", "night-2", "night-1"]
    assert [s.consecutive_failures for s in slots] == [2, 1, 1]
    assert sink.schedules.failing().at(now).count() == 1
    assert schedule_rules().failing.holds(_series_signals(sink, now), now)


def test_cron_slots_follow_dst_in_a_named_zone(store: Any) -> None:
    """30 2 * * * in Europe/Paris: the spring-forward day's 02:30 does not exist and falls
    due at 03:00 CEST (cronsim, as cronie); the fall-back day's 02:30 falls due once."""
    writer, sink = store
    start = utc("2026-03-28T11:00:00")
    declare(writer, "paris", start, cron="30 2 * * *", tz="Europe/Paris", grace=60)
    tick(writer, utc("2026-03-31T12:00:00"))
    dues = [s.due_at for s in sink.schedules.named("paris").at(utc("2026-03-31T12:00:00")).all()]
    assert sorted(d.isoformat() for d in dues) == [
        "2026-03-29T01:00:00+00:00",  # 03:00 CEST: 02:30 was skipped
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST
        "2026-03-31T00:30:00+00:00",
    ]
    autumn = utc("2026-10-24T12:00:00")
    declare(writer, "autumn", autumn, cron="30 2 * * *", tz="Europe/Paris", grace=60)
    tick(writer, utc("2026-10-26T12:00:00"))
    dues = [
        s.due_at.isoformat()
        for s in sink.schedules.named("autumn").at(utc("2026-10-26T12:00:00")).all()
    ]
    assert sorted(dues) == [
        "2026-10-25T00:30:00+00:00",  # 02:30 CEST, the first of the two 02:30s only
        "2026-10-26T01:30:00+00:00",  # 02:30 CET
    ]


def test_a_cron_with_day_and_falls_due_where_both_day_fields_match(store: Any) -> None:
    """Celery's crontab(hour=9, day_of_month="1-7", day_of_week="mon") runs on the first
    Monday only; cron reads "0 9 1-7 * mon" as "days 1-7 or Mondays" (21 slots in March
    and April 2026, 19 of them falsely missed). Declared with day_and, the flag travels
    on the record and the store makes the two slots Celery fires."""
    writer, sink = store
    spec = make_schedule("first-monday", cron="0 9 1-7 * mon", grace=60, day_and=True)
    assert spec_from_attributes(spec.attributes()) == spec
    start, end = utc("2026-03-01T00:00:00"), utc("2026-05-01T00:00:00")
    write_all(writer, [declaration_record(spec, start)])
    for day in range(int((end - start) // 86400) + 1):  # a pass a day: 7 days catch up
        tick(writer, start + day * 86400)
    slots = sink.schedules.named("first-monday").at(end).all()
    assert sorted(s.due_at.isoformat() for s in slots) == [
        "2026-03-02T09:00:00+00:00",
        "2026-04-06T09:00:00+00:00",
    ]
    assert sink.sql("SELECT day_and FROM schedules")[1] == [(True,)]


def test_an_interval_schedule_is_due_an_interval_after_the_previous_run(store: Any) -> None:
    """interval=600 s: an early run fulfils the slot, the next slot is due 600 s after it,
    a late run within grace still counts, and silence is missed."""
    writer, sink = store
    declare(writer, "s", T0, interval=600, grace=60)
    run(writer, "early", T0 + 590)
    run(writer, "late", T0 + 1250)
    tick(writer, T0 + 2000)
    assert states(sink, T0 + 2000) == [
        (600.0, "on_time"),
        (1190.0, "on_time"),
        (1850.0, "missed"),
    ]


def test_the_runs_that_come_with_an_interval_declaration_anchor_its_first_slot(
    store: Any,
) -> None:
    """The docs' pattern declares the schedule and runs the job in the same script: that
    run fulfilled the slot due an interval after the declaration, and a second slot was
    then due an interval after the run, a millisecond later (and one more for each run of
    several started with the declaration). The runs that come with the declaration are
    the previous run of the first slot."""
    writer, sink = store
    declare(writer, "s", T0, interval=600, grace=60)
    for i, start in enumerate((T0 + 0.01, T0 + 0.3, T0 + 0.5, T0 + 0.7)):  # together
        run(writer, f"r{i}", start)
    run(writer, "next", T0 + 0.7 + 600 + 5)
    tick(writer, T0 + 2000)
    found = [(round(due, 1), state) for due, state in states(sink, T0 + 2000)]
    assert found == [(600.7, "on_time"), (1205.7, "missed"), (1805.7, "missed")]
    (slot,) = [s for s in sink.schedules.named("s").at(T0 + 2000).all() if s.run_id]
    assert slot.run_id == "next"


def test_an_interval_below_a_second_is_refused_and_a_remote_one_is_invalid() -> None:
    """A schedule due more often than once a second is refused where it is declared, and a
    record declaring one (from anywhere the sink listens) is not a declaration: it made
    the store insert 10,000 slots a pass for ever, and ingest waited seconds a request."""
    with pytest.raises(ConfigurationError, match="below 1 s"):
        make_schedule("tiny", interval=0.5)
    attrs = {sc.ATTR_SCHEDULE_NAME: "tiny", sc.ATTR_SCHEDULE_INTERVAL: 1e-6}
    assert spec_from_attributes(attrs) is None
    assert spec_from_attributes({**attrs, sc.ATTR_SCHEDULE_INTERVAL: 1.0}) is not None


def test_a_declaration_from_long_ago_catches_up_one_pass_of_slots(store: Any) -> None:
    """Declared a year ago with a 1 s interval: the first pass makes the newest slots, at
    most one pass's worth, and the next pass only what came due since (before: 10,000 a
    pass for a year's worth of passes, each holding the store's writer)."""
    writer, sink = store
    declare(writer, "s", T0 - 365 * 86400, interval=1, grace=60)
    assert tick(writer, T0) == SLOTS_PER_PASS
    assert tick(writer, T0 + 5) == 5
    ((oldest, newest),) = sink.sql(
        "SELECT epoch(min(due_at)), epoch(max(due_at)) FROM schedule_slots"
    )[1]
    assert newest == pytest.approx(T0 + 5)
    assert oldest >= T0 - SLOTS_PER_PASS


def test_a_run_naming_its_slot_fulfils_it(store: Any) -> None:
    """scheduled_for (beat knows it) matches the slot exactly, within the grace."""
    writer, sink = store
    declare(writer, "s", T0 - 1800, cron="0 * * * *", grace=60)
    run(writer, "r1", T0 + 50, scheduled_for=T0)
    tick(writer, T0 + 100)
    assert sink.schedules.at(T0 + 100).first().run_id == "r1"  # type: ignore[union-attr]


def test_redeclaring_is_idempotent_and_a_changed_definition_applies_from_the_change(
    store: Any,
) -> None:
    """The same declaration twice changes nothing; a new definition applies to slots due
    after it, and earlier slots keep the grace they were judged by."""
    writer, sink = store
    declare(writer, "s", T0, interval=600, grace=60)
    declare(writer, "s", T0 + 10, interval=600, grace=60)
    tick(writer, T0 + 1230)
    assert states(sink, T0 + 1230) == [(600.0, "missed"), (1200.0, "late")]
    declare(writer, "s", T0 + 1230, cron="0 * * * *", grace=300)
    tick(writer, T0 + HOUR + 100)
    slots = sorted(sink.schedules.at(T0 + HOUR + 100).all(), key=lambda s: s.due_at)
    assert [(s.due_at.timestamp() - T0, s.grace, s.state) for s in slots] == [
        (600.0, 60.0, "missed"),
        (1200.0, 60.0, "missed"),
        (HOUR, 300.0, "late"),
    ]
    assert sink.sql("SELECT count(*) FROM schedules")[1] == [(1,)]


def test_a_changed_definition_keeps_the_slots_due_before_it(store: Any) -> None:
    """Hourly, grace 60 s; no evaluator pass from T0 + 100 to after the redeploy, which
    changes the grace to 120 s at T0 + 4h + 10. The slots due meanwhile (1h to 4h) are
    still made, judged by the old grace (2h fulfilled by the run stored meanwhile, the
    others missed); the slot after the change has the new grace. Before, the new
    definition's slots started at the change and those four slots never existed."""
    writer, sink = store
    declare(writer, "s", T0 - 10, cron="0 * * * *", grace=60)
    run(writer, "r0", T0 + 3)
    tick(writer, T0 + 100)
    run(writer, "r2", T0 + 2 * HOUR + 5)
    declare(writer, "s", T0 + 4 * HOUR + 10, cron="0 * * * *", grace=120)
    tick(writer, T0 + 5 * HOUR + 10)
    now = T0 + 5 * HOUR + 10
    slots = sorted(sink.schedules.named("s").at(now).all(), key=lambda s: s.due_at)
    assert [(s.due_at.timestamp() - T0, s.grace, s.state, s.run_id) for s in slots] == [
        (0.0, 60.0, "on_time", "r0"),
        (HOUR, 60.0, "missed", None),
        (2 * HOUR, 60.0, "on_time", "r2"),
        (3 * HOUR, 60.0, "missed", None),
        (4 * HOUR, 60.0, "missed", None),
        (5 * HOUR, 120.0, "late", None),
    ]


def test_a_scheduler_that_stops_declaring_is_lost(store: Any) -> None:
    """declare_every=10 s: lost once the declaration is older than 3 periods."""
    writer, sink = store
    declare(writer, "s", T0 - 5, interval=5, grace=60, declare_every=10)
    run(writer, "r1", T0 + 1)
    tick(writer, T0 + 20)
    assert sink.schedules.current().lost().at(T0 + 20).count() == 0
    assert sink.schedules.current().lost().at(T0 + 26).count() == 1
    assert sink.schedules.lost().at(T0 + 26).count() == 1  # the latest slot only


def test_today_and_since_select_by_due_time(store: Any) -> None:
    """today() keeps slots due since midnight UTC of the evaluation time."""
    writer, sink = store
    declare(writer, "s", T0 - 3 * HOUR, cron="0 22,23,1 * * *", grace=60)
    now = T0 + 2 * HOUR
    tick(writer, now)
    assert sink.schedules.missed().at(now).count() == 3
    assert sink.schedules.at(now).missed().today().count() == 1
    assert sink.schedules.at(now).missed().since("90m").count() == 1


def test_sql_states_equal_the_python_rules_on_every_slot(store: Any) -> None:
    """Parity: the state the SQL CASE gives each slot is the Python rules' state for the
    same signals, across all the scenarios above in one store."""
    writer, sink = store
    declare(writer, "a", T0 - 1800, cron="0 * * * *", grace=60, max_runtime=100)
    declare(writer, "b", T0, interval=600, grace=60, failure_threshold=2)
    declare(writer, "c", T0 - 5, interval=300, grace=30, declare_every=10)
    declare(writer, "d", T0 - 1800, cron="0 * * * *", grace=60)
    run(writer, "a1", T0 + 5, schedule="a", running=True)
    run(writer, "a2", T0 + HOUR + 2, schedule="a", status="failed")
    for i, start in enumerate((T0 + 590, T0 + 1200, T0 + 1800)):
        run(writer, f"b{i}", start, schedule="b", status="failed")
    run(writer, "c1", T0 + 200, schedule="c")
    rules = schedule_rules()
    seen: set[str] = set()
    for now in (T0 + 20, T0 + 90, T0 + 700, T0 + HOUR + 30, T0 + 2 * HOUR + 200):
        tick(writer, now)
        names = [f"sig_{n}" if n not in _PLAIN else n for n in SIGNALS]
        _columns, rows = sink.sql(
            f"SELECT state, {', '.join(names)} FROM ({slots_select()}) AS s", {"now": now}
        )
        assert rows
        for row in rows:
            signals = dict(zip(SIGNALS, row[1:], strict=True))
            assert rules.state(signals, now) == row[0], (now, signals)
            seen.add(row[0])
    assert {"on_time", "late", "missed", "overran", "failing", "scheduler_lost"} <= seen


_PLAIN = {"grace", "max_runtime", "consecutive_failures", "failure_threshold"}


def test_slot_columns_spell_every_signal() -> None:
    """Every slot signal has its SQL spelling."""
    assert set(SLOT_COLUMNS) == set(SIGNALS)


def test_prune_drops_old_slots_but_each_schedules_newest(tmp_path: Any) -> None:
    """prune() deletes slots and dispatches older than its cutoff, except each schedule's
    newest slot, so the evaluator does not make the pruned slots again. ('old' is declared
    again now, as a live process does: a schedule nobody declared since the cutoff is
    retired, tests/sink/test_schedule_retire.py.)"""
    now = time.time()
    path = tmp_path / "p.duckdb"
    with store_writer(path) as (writer, _sink):
        declare(writer, "old", now - 10 * HOUR - 1, interval=HOUR, grace=60)
        declare(writer, "old", now + 5, interval=HOUR, grace=60)  # after prune's cutoffs
        declare(writer, "new", now - HOUR / 2, interval=HOUR, grace=60)
        run(writer, "n1", now - HOUR / 4, schedule="new")
        tick(writer, now)  # old: 10 missed slots, 9h..0h ago; new: none due yet
    writable = LocalSink(acquire(path, read_only=False), read_only=False)
    try:
        before = dict(writable.sql(
            "SELECT schedule, count(*) FROM schedule_slots GROUP BY ALL")[1])
        assert before == {"old": 10}
        writable.prune("150m")
        after = dict(writable.sql(
            "SELECT schedule, count(*) FROM schedule_slots GROUP BY ALL")[1])
        assert after == {"old": 3}  # due 2h, 1h and 0h ago
        writable.prune("1s")
        after = dict(writable.sql(
            "SELECT schedule, count(*) FROM schedule_slots GROUP BY ALL")[1])
        assert after == {"old": 1}  # its newest slot stays
        cur = writable.cursor()
        with writable._store.write_lock:
            assert evaluate(cur, now + 1) == 0  # nothing made again
        assert dict(writable.sql(
            "SELECT schedule, count(*) FROM schedule_slots GROUP BY ALL")[1]) == after
    finally:
        writable.close()


def test_the_sink_series_say_missed_when_the_store_does(store: Any) -> None:
    """The series /metrics exports for a schedule, judged by the missed rule (what the alert
    evaluates), agree with the store's slot: an interval slot after a fulfilled one, with no
    run of its own, is missed although the previous run started when its window opened."""
    writer, sink = store
    declare(writer, "s", T0, interval=600, grace=60)
    run(writer, "r1", T0 + 590)
    now = T0 + 590 + 600 + 61
    tick(writer, now)
    assert states(sink, now) == [(600.0, "on_time"), (1190.0, "missed")]
    signal_of = {spec: name for name, spec in SCHEDULE_PROMQL_SIGNALS.items()}
    _columns, rows = sink.sql(SCHEDULE_SERIES_SQL, {"now": now})
    (row,) = rows
    signals = {signal_of[spec]: value for spec, value in zip(SERIES, row[1:], strict=True)
               if spec in signal_of}
    assert signals["started_at"] == signals["opens_at"] == T0 + 590
    assert schedule_rules().missed.holds(signals, now)


def test_all_slots_refuses_a_truncated_answer(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More slots than a query may return: ``all()`` raises, saying how to narrow it,
    rather than return a part that looks like all of them; ``count()`` counts them all."""
    writer, _ = store
    declare(writer, "s", T0, interval=600, grace=60)
    tick(writer, T0 + 3 * 600 + 1)
    monkeypatch.setenv("CHAPERONE_OTEL_SQL_MAX_ROWS", "2")
    with open_sink(str(writer.store.path)) as sink:
        assert sink.schedules.count() == 3
        with pytest.raises(SinkError, match="narrow the query"):
            sink.schedules.all()
        later = datetime.fromtimestamp(T0 + 1000, timezone.utc)
        assert len(sink.schedules.at(T0 + 1801).since(later).all()) == 2


def _series_signals(sink: LocalSink, now: float) -> dict[str, Any]:
    """The slot signals the fleet /metrics export for schedule ``s`` at ``now``."""
    signal_of = {spec: name for name, spec in SCHEDULE_PROMQL_SIGNALS.items()}
    (row,) = sink.sql(SCHEDULE_SERIES_SQL, {"now": now})[1]
    return {signal_of[spec]: value for spec, value in zip(SERIES, row[1:], strict=True)
            if spec in signal_of and value is not None}


def test_a_dead_run_does_not_keep_the_schedule_overran_on_the_series(store: Any) -> None:
    """Hourly, max_runtime 600 s: the first run is SIGKILLed (its row stays 'running' for
    good), every later slot runs and completes. The series say what the store says of
    the schedule: nothing running, not overran (the oldest running run made the
    Overran alert fire for ever). While the latest decided slot's own run overruns, the
    series and the store both say overran."""
    writer, sink = store
    declare(writer, "s", T0 - 10, cron="0 * * * *", grace=60, max_runtime=600)
    run(writer, "died", T0 + 2, running=True)
    for h in range(1, 4):
        tick(writer, T0 + h * HOUR - 1)
        run(writer, f"ok{h}", T0 + h * HOUR + 2)
        tick(writer, T0 + h * HOUR + 30)
    now = T0 + 3 * HOUR + 120
    signals = _series_signals(sink, now)
    assert "running_since" not in signals
    assert not schedule_rules().overran.holds(signals, now)
    assert [s.state for s in sink.schedules.current().at(now).all()] == ["on_time"]

    run(writer, "slow", T0 + 4 * HOUR + 2, running=True)
    tick(writer, T0 + 4 * HOUR + 30)
    now = T0 + 4 * HOUR + 700
    signals = _series_signals(sink, now)
    assert signals["running_since"] == T0 + 4 * HOUR + 2
    assert schedule_rules().overran.holds(signals, now)
    assert [s.state for s in sink.schedules.current().at(now).all()] == ["overran"]
