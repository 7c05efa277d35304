"""Retiring schedules: a beat entry renamed or removed in a deploy must not be missed for
ever. ``sink.forget_schedule(name)`` removes a schedule with its slots and dispatches (so
its alerts resolve and its series go), ``prune`` retires a schedule with no sign of life
since its cutoff, and a schedule declared again afterwards starts afresh, while a
declaration made before the forget and delivered after it (a delayed OTLP batch) does not
bring it back. Real DuckDB files; the owner's query API is a real server."""

from __future__ import annotations

import json
import time
from datetime import timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chaperone_otel._schedule import declaration_record, dispatch_record
from chaperone_otel._schedules import make_schedule
from chaperone_otel.exceptions import ConfigurationError, SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._owner import StoreOwner
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._schedule_metrics import SCHEDULE_SERIES_SQL
from chaperone_otel.sink._schedule_store import evaluate
from chaperone_otel.sink._schema import MIGRATIONS, SCHEMA_VERSION, current_version, migrate
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import acquire
from chaperone_otel.sink._writer import Writer
from tests.cli._cli_helpers import invoke
from tests.stores import empty_store

from .serve_process import ServeProcess, request
from .store_factory import store_writer, write_all
from .test_fleet import post_json
from .test_schedule_metrics import declaration
from .test_schedules import run

HOUR = 3600.0
DAY = 86400.0


def declare(writer: Writer, name: str, at: float, **options: Any) -> None:
    write_all(writer, [declaration_record(make_schedule(name, **options), at)])


def tick(writer_or_sink: Any, now: float) -> int:
    store = writer_or_sink.store if isinstance(writer_or_sink, Writer) else writer_or_sink._store
    with store.write_lock:
        return evaluate(store.cursor(), now)


def rows(sink: Any, sql: str) -> dict[str, int]:
    return dict(sink.sql(sql)[1])


SLOTS = "SELECT schedule, count(*) FROM schedule_slots GROUP BY ALL"
DISPATCHES = "SELECT schedule, count(*) FROM schedule_dispatches GROUP BY ALL"
NAMES = "SELECT name, 1 FROM schedules"


def series(sink: LocalSink, now: float) -> list[str]:
    """The schedules the fleet /metrics has series for."""
    cur = sink.cursor()
    try:
        return [r[0] for r in cur.execute(SCHEDULE_SERIES_SQL, {"now": now}).fetchall()]
    finally:
        cur.close()


def _renamed(path: Path, now: float) -> None:
    """'report-old' (renamed in a deploy 30 days ago: missed every hour since, with beat's
    dispatches) and 'report-new' (declared now, with a run)."""
    with store_writer(path) as (writer, _sink):
        declare(writer, "report-old", now - 30 * DAY, cron="0 * * * *", grace=60)
        write_all(writer, [dispatch_record("report-old", "t-1", None, now - 29 * DAY)])
        declare(writer, "report-new", now - 120, cron="0 * * * *", grace=60)
        write_all(writer, [dispatch_record("report-new", "t-2", None, now - 60)])
        tick(writer, now)


def writable(path: Path) -> LocalSink:
    return LocalSink(acquire(path, read_only=False), read_only=False)


def test_forget_removes_the_schedule_its_slots_and_dispatches(tmp_path: Path) -> None:
    """The renamed schedule's row, slots and dispatches go (its /metrics series with them,
    so ChaperoneScheduleMissed resolves); the evaluator makes no slot for it again; the
    other schedule is untouched. Forgetting it again says there was nothing."""
    now = time.time()
    path = tmp_path / "f.duckdb"
    _renamed(path, now)
    sink = writable(path)
    try:
        assert sink.schedules.named("report-old").missed().at(now).count() > 24
        assert "report-old" in series(sink, now)
        kept_slots = rows(sink, SLOTS).get("report-new")
        assert sink.forget_schedule("report-old") is True
        assert rows(sink, NAMES) == {"report-new": 1}
        assert "report-old" not in rows(sink, SLOTS)
        assert rows(sink, DISPATCHES) == {"report-new": 1}
        assert rows(sink, SLOTS).get("report-new") == kept_slots
        assert series(sink, now + 3 * HOUR) == ["report-new"]
        tick(sink, now + 3 * HOUR)
        assert sink.schedules.named("report-old").at(now + 3 * HOUR).count() == 0
        assert sink.forget_schedule("report-old") is False
        with pytest.raises(ConfigurationError):
            sink.forget_schedule("")
    finally:
        sink.close()
    with open_sink(path) as read_only, pytest.raises(SinkError, match="writable"):
        read_only.forget_schedule("report-new")


def test_a_schedule_declared_again_after_forget_starts_afresh(tmp_path: Path) -> None:
    """Declared again after forget (a process still declaring it), the schedule's slots
    start at that declaration: none of the old missed ones, and none made again from its
    first declaration. (On the wall clock: the declaration must be made after the forget.)"""
    now = time.time()
    with store_writer(tmp_path / "a.duckdb") as (writer, _sink):
        declare(writer, "s", now - 2 * DAY, cron="0 * * * *", grace=60)
        tick(writer, now)
        sink = LocalSink(acquire(writer.store.path, read_only=False), read_only=False)
        try:
            assert sink.schedules.named("s").missed().at(now).count() >= 47
            assert sink.forget_schedule("s")
            again = time.time() + 10
            first = (again // HOUR + 1) * HOUR  # the first top of the hour after it
            declare(writer, "s", again, cron="0 * * * *", grace=60)
            run(writer, "r1", first + 5)
            tick(writer, first + HOUR + 61)
            slots = sink.schedules.named("s").at(first + HOUR + 61).all()
            assert sorted((s.due_at.timestamp() - first, s.state) for s in slots) == [
                (0.0, "on_time"),
                (HOUR, "missed"),
            ]
            declared = sink.sql("SELECT epoch(first_declared_at) FROM schedules")[1]
            assert declared == [(pytest.approx(again, abs=1e-5),)]
        finally:
            sink.close()


def test_prune_retires_a_schedule_with_no_sign_of_life_since_the_cutoff(tmp_path: Path) -> None:
    """prune('7d') deletes 'report-old' (declared 30 days ago, dispatched 29 days ago,
    never run) with its slots and dispatches, and its series. It keeps a schedule declared
    since, and one declared long ago whose job still runs (a long-lived process declares
    only at configure()) or was dispatched since; the evaluator makes nothing for the
    retired one."""
    now = time.time()
    path = tmp_path / "p.duckdb"
    _renamed(path, now)
    with store_writer(path) as (writer, _sink):
        declare(writer, "still-runs", now - 30 * DAY, interval=HOUR, grace=60)
        run(writer, "r1", now - HOUR / 2, schedule="still-runs")
        declare(writer, "still-sent", now - 30 * DAY, interval=HOUR, grace=60)
        write_all(writer, [dispatch_record("still-sent", "t-3", None, now - HOUR)])
        tick(writer, now)
    sink = writable(path)
    try:
        assert "report-old" in series(sink, now)
        sink.prune("7d")
        assert rows(sink, NAMES) == {"report-new": 1, "still-runs": 1, "still-sent": 1}
        assert "report-old" not in rows(sink, SLOTS)
        assert "report-old" not in rows(sink, DISPATCHES)
        assert "report-old" not in series(sink, now)
        tick(sink, now + 3 * HOUR)
        assert sink.schedules.named("report-old").at(now + 3 * HOUR).count() == 0
    finally:
        sink.close()


def test_forget_over_the_sink_servers_api_needs_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RemoteSink.forget_schedule goes through `sink serve`'s query API, which requires its
    bearer token as for prune; an application's embedded owner refuses it (403)."""
    now = time.time()
    path = tmp_path / "served.duckdb"
    _renamed(path, now)
    monkeypatch.delenv("CHAPERONE_OTEL_SINK_TOKEN", raising=False)
    with SinkServer(str(path), port=0, token="t0k") as server:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(SinkError, match="bearer token"):
            RemoteSink(url).forget_schedule("report-old")
        remote = RemoteSink(url, token="t0k")
        assert remote.schedules.named("report-old").count() > 0
        assert remote.forget_schedule("report-old") is True
        assert remote.schedules.named("report-old").count() == 0
        assert remote.forget_schedule("report-old") is False
        assert remote.sql("SELECT name FROM schedules")[1] == [("report-new",)]
    owner = StoreOwner(str(path))
    owner.serve()
    try:
        assert owner.url is not None
        embedded = RemoteSink(owner.url, token=owner.token)
        with pytest.raises(SinkError, match="403"):
            embedded.forget_schedule("report-new")
        assert embedded.sql("SELECT name FROM schedules")[1] == [("report-new",)]
    finally:
        owner.close()


def test_prune_says_how_many_runs_it_deleted_and_schedules_it_retired(tmp_path: Path) -> None:
    """prune returns the runs it deleted as before (an int: compared and printed as one)
    and, as schedules_retired, the schedules it retired: 'report-old', whose last run went
    with the old runs; 'report-new' stays. A second prune deletes and retires nothing."""
    now = time.time()
    path = tmp_path / "n.duckdb"
    _renamed(path, now)
    with store_writer(path) as (writer, _sink):
        run(writer, "old-1", now - 20 * DAY, schedule="report-old")
        run(writer, "old-2", now - 10 * DAY)
        run(writer, "recent", now - HOUR, schedule="report-new")
    sink = writable(path)
    try:
        pruned = sink.prune("7d")
        assert isinstance(pruned, int)
        assert pruned == pruned.runs == 2
        assert pruned.schedules_retired == 1
        assert str(pruned) == f"{pruned}" == "2"
        assert repr(pruned) == "PruneResult(runs=2, schedules_retired=1)"
        assert rows(sink, NAMES) == {"report-new": 1}
        again = sink.prune("7d")
        assert (again, again.schedules_retired) == (0, 0)
    finally:
        sink.close()


def test_prune_over_sink_serve_says_how_many_schedules_it_retired(tmp_path: Path) -> None:
    """Against a real `sink serve` owning the store: its POST /api/prune answers the runs
    deleted and the schedules retired; RemoteSink.prune returns both as a local sink does;
    `chaperone-otel prune --db PATH` (through the server's API) prints both, in text and
    JSON. Each call retires the one schedule (and deletes the one run) its age reaches."""
    now = time.time()
    path = tmp_path / "served.duckdb"
    with store_writer(path) as (writer, _sink):
        for days in (40, 20, 10):
            declare(writer, f"gone-{days}d", now - days * DAY, interval=HOUR, grace=60)
            run(writer, f"r{days}", now - days * DAY + 60, schedule=f"gone-{days}d")
        declare(writer, "live", now - 60, interval=HOUR, grace=60)
    with ServeProcess(path) as server:
        status, body, _ = request(
            server.port,
            "POST",
            "/api/prune",
            body=b'{"older_than": "30d"}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 200, body
        assert json.loads(body) == {"deleted": 1, "schedules_retired": 1}
        pruned = RemoteSink(server.url).prune("15d")
        assert (pruned, pruned.runs, pruned.schedules_retired) == (1, 1, 1)
        result = invoke("prune", "--db", str(path), "--older-than", "5d", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "deleted": 1,
            "schedules_retired": 1,
            "older_than_seconds": 5 * DAY,
        }
        result = invoke("prune", "--db", str(path), "--older-than", "5d")
        assert result.exit_code == 0, result.output
        assert result.stdout == "pruned 0 run(s) older than 5d00h; retired 0 schedule(s)\n"
        assert RemoteSink(server.url).sql("SELECT name FROM schedules")[1] == [("live",)]


def forgotten(sink: Any) -> dict[str, float]:
    """The tombstones: schedule name → Unix seconds, read as the store reads them."""
    found = sink.sql("SELECT name, forgotten_at FROM forgotten_schedules")[1]
    return {name: at.replace(tzinfo=timezone.utc).timestamp() for name, at in found}


def test_a_declaration_made_before_the_forget_and_delivered_after_it_is_ignored(
    tmp_path: Path,
) -> None:
    """Forget, then a delayed batch from before the forget arrives: declarations made
    before it or at its very time, and a dispatch made before it, are ignored. The
    schedule stays gone (no row, no slots at later passes, nothing to forget again). A
    declaring process whose clock runs ahead of the store's is covered too: its own older
    declarations, though stamped after the store's forget time, do not bring it back."""
    now = time.time()
    with store_writer(tmp_path / "t.duckdb") as (writer, _sink):
        declare(writer, "nightly", now - DAY, cron="0 * * * *", grace=60)
        write_all(writer, [dispatch_record("nightly", "t-1", None, now - HOUR)])
        declare(writer, "ahead", now + 600, interval=HOUR, grace=60)  # a clock 10 min fast
        tick(writer, now)
        sink = LocalSink(acquire(writer.store.path, read_only=False), read_only=False)
        try:
            assert sink.forget_schedule("nightly") is True
            assert sink.forget_schedule("ahead") is True
            write_all(writer, [  # the delayed batch, made before the forget
                declaration_record(make_schedule("nightly", cron="0 * * * *"), now - 60),
                dispatch_record("nightly", "t-2", None, now - 30),
                declaration_record(make_schedule("ahead", interval=HOUR), now + 300),
            ])
            assert rows(sink, NAMES) == {}
            assert rows(sink, DISPATCHES) == {}
            tombs = forgotten(sink)
            assert now <= tombs["nightly"] <= time.time()
            assert tombs["ahead"] == pytest.approx(now + 600, abs=1e-5)
            at_the_forget = make_schedule("nightly", cron="0 * * * *")
            declare_at = declaration_record(at_the_forget, tombs["nightly"])
            write_all(writer, [declare_at])  # made at the forget's very time: before it
            assert rows(sink, NAMES) == {}
            tick(sink, now + 3 * HOUR)
            assert rows(sink, SLOTS) == {}
            assert sink.schedules.named("nightly").at(now + 3 * HOUR).count() == 0
            assert sink.forget_schedule("nightly") is False  # nothing came back
        finally:
            sink.close()


def test_a_declaration_made_after_the_forget_brings_the_schedule_back(tmp_path: Path) -> None:
    """The other order: a declaration made after the forget recreates the schedule, from
    that declaration, and clears its tombstone; a declaration from before the forget
    delivered after that changes nothing (the newer one decides, as always)."""
    now = time.time()
    with store_writer(tmp_path / "b.duckdb") as (writer, _sink):
        declare(writer, "nightly", now - DAY, interval=HOUR, grace=60)
        tick(writer, now)
        sink = LocalSink(acquire(writer.store.path, read_only=False), read_only=False)
        try:
            assert sink.forget_schedule("nightly") is True
            tomb = forgotten(sink)["nightly"]
            declare(writer, "nightly", tomb + 1, interval=HOUR, grace=60)
            assert forgotten(sink) == {}
            declare(writer, "nightly", tomb - 1, interval=HOUR, grace=999)  # delayed
            found = sink.sql("SELECT epoch(first_declared_at), epoch(declared_at), grace "
                             "FROM schedules WHERE name = 'nightly'")[1]
            assert found == [(pytest.approx(tomb + 1, abs=1e-5),) * 2 + (60.0,)]
            later = tomb + 1 + HOUR + 61
            tick(sink, later)
            states = [s.state for s in sink.schedules.named("nightly").at(later).all()]
            assert states == ["missed"]  # one slot, an hour after the new declaration
        finally:
            sink.close()


def test_prune_keeps_recent_tombstones_and_drops_old_ones(tmp_path: Path) -> None:
    """prune keeps a tombstone younger than its cutoff (a delayed declaration is still
    ignored after it) and drops one older than the cutoff."""
    now = time.time()
    with store_writer(tmp_path / "p.duckdb") as (writer, _sink):
        declare(writer, "a", now - HOUR, interval=HOUR, grace=60)
        declare(writer, "b", now - HOUR, interval=HOUR, grace=60)
        sink = LocalSink(acquire(writer.store.path, read_only=False), read_only=False)
        try:
            assert sink.forget_schedule("a")
            assert sink.forget_schedule("b")
            with writer.store.write_lock:  # 'b' was forgotten a month ago
                cur = writer.store.cursor()
                cur.execute(
                    "UPDATE forgotten_schedules SET forgotten_at = forgotten_at - "
                    "INTERVAL 30 DAY WHERE name = 'b'"
                )
                cur.close()
            sink.prune("7d")
            assert set(forgotten(sink)) == {"a"}
            declare(writer, "a", now - 60, interval=HOUR, grace=60)
            assert rows(sink, NAMES) == {}
        finally:
            sink.close()


def test_a_declaration_older_than_the_cutoff_does_not_bring_a_retired_schedule_back(
    tmp_path: Path,
) -> None:
    """prune('7d') retires 'report-old' and leaves a tombstone at its cutoff: a delayed
    declaration from before the cutoff (made 10 days ago, delivered now) is ignored, as
    after a forget, while one made since the cutoff declares it afresh. The next prune
    with a later cutoff drops the tombstone."""
    now = time.time()
    path = tmp_path / "r.duckdb"
    _renamed(path, now)
    with store_writer(path) as (writer, _sink):
        sink = LocalSink(acquire(writer.store.path, read_only=False), read_only=False)
        try:
            assert sink.prune("7d").schedules_retired == 1
            tomb = forgotten(sink)["report-old"]
            assert now - 7 * DAY <= tomb <= time.time() - 7 * DAY
            declare(writer, "report-old", now - 10 * DAY, cron="0 * * * *", grace=60)
            assert "report-old" not in rows(sink, NAMES)
            tick(sink, now + 3 * HOUR)
            assert sink.schedules.named("report-old").at(now + 3 * HOUR).count() == 0
            declare(writer, "report-old", now - DAY, cron="0 * * * *", grace=60)
            assert "report-old" in rows(sink, NAMES)
            assert "report-old" not in forgotten(sink)
            assert sink.forget_schedule("report-old")
            with writer.store.write_lock:  # its tombstone is now a month old
                cur = writer.store.cursor()
                cur.execute("UPDATE forgotten_schedules SET forgotten_at = "
                            "forgotten_at - INTERVAL 30 DAY")
                cur.close()
            sink.prune("7d")
            assert forgotten(sink) == {}
        finally:
            sink.close()


def test_the_migration_adds_the_tombstones_to_an_older_store(tmp_path: Path) -> None:
    """A store from before the tombstones (schema 8, with a schedule) is migrated by a
    writable open: it gets an empty forgotten_schedules, and forgetting there leaves one."""
    path = tmp_path / "old.duckdb"
    before = next(i for i, m in enumerate(MIGRATIONS) if "forgotten_schedules" in m.description)
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path), migrations=MIGRATIONS[:before])
        assert current_version(con) == SCHEMA_VERSION - 1
        con.execute(
            "INSERT INTO schedules (name, \"interval\", timezone, grace, failure_threshold, "
            "first_declared_at, changed_at, declared_at) VALUES ('old', 3600, 'UTC', 60, 1, "
            "TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01')"
        )
    finally:
        con.close()
    sink = writable(path)
    try:
        assert sink.sql("SELECT max(version) FROM schema_version")[1] == [(SCHEMA_VERSION,)]
        assert forgotten(sink) == {}
        assert sink.forget_schedule("old") is True
        assert set(forgotten(sink)) == {"old"}
    finally:
        sink.close()


def test_sink_serve_ignores_an_otlp_declaration_from_before_the_forget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over OTLP to the sink server: a declaration log record, the forget through its query
    API, then a delayed record made before the forget (accepted, 200, and ignored: the
    schedule stays gone) and one made after it (the schedule is back, its tombstone gone)."""
    monkeypatch.delenv("CHAPERONE_OTEL_SINK_TOKEN", raising=False)
    now = time.time()

    def logs(*records: dict[str, Any]) -> bytes:
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": list(records)}]}]}
        return json.dumps(body).encode()

    names = "SELECT name FROM schedules"
    with SinkServer(str(empty_store(tmp_path / "otlp.duckdb")), port=0) as srv:
        first = logs(declaration("beat", now - 60, interval=60))
        assert post_json(srv.url, "/v1/logs", first) == 200
        remote = RemoteSink(srv.url)
        assert remote.sql(names)[1] == [("beat",)]
        assert remote.forget_schedule("beat") is True
        delayed = logs(declaration("beat", now - 30, interval=60))
        assert post_json(srv.url, "/v1/logs", delayed) == 200
        assert remote.sql(names)[1] == []
        assert [r[0] for r in remote.sql("SELECT name FROM forgotten_schedules")[1]] == ["beat"]
        newer = logs(declaration("beat", time.time() + 1, interval=60))
        assert post_json(srv.url, "/v1/logs", newer) == 200
        assert remote.sql(names)[1] == [("beat",)]
        assert remote.sql("SELECT count(*) FROM forgotten_schedules")[1] == [(0,)]
