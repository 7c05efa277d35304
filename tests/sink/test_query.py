"""The query API: every scope, the seed's queries and job details, terminals, safety."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from click.testing import CliRunner

from chaperone_otel import semconv as sc
from chaperone_otel.cli import cli
from chaperone_otel.exceptions import ConfigurationError, SinkError
from chaperone_otel.sink import JobQuery, JobRecord, open_sink
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all

NOW = T0 + 1000.0
MiB = 1024 * 1024


class ProcessDataset:
    """Stands for a user's Supervised subclass (the seed's ``ProcessDataset``)."""


DATASET = f"{ProcessDataset.__module__}.ProcessDataset"


def running(run_id, *, hb_age=1.0, seen_age=1.0, **kw):
    """A running run's latest record: heartbeat ``hb_age`` s ago, seen ``seen_age`` s ago."""
    return record(run_id=run_id, seq=kw.pop("seq", 5), ts=NOW - seen_age,
                  last_heartbeat=NOW - hb_age, started_at=kw.pop("started_at", NOW - 300), **kw)


SCENARIO = [
    record(sc.EVENT_JOB_STARTED, run_id="pending", status="pending", ts=NOW - 5,
           started_at=NOW - 5),
    running("healthy", hb_age=5, **{sc.ATTR_MEMORY_USAGE: 100 * MiB, sc.ATTR_CPU_PERCENT: 10.0}),
    running("degraded", hb_age=20, seen_age=2),
    running("stuck", hb_age=100, seen_age=5, queue="high"),
    running("lost", hb_age=100, seen_age=100),
    running("overtime", **{sc.ATTR_JOB_TIMEOUT_AT: NOW - 10, sc.ATTR_JOB_TIMEOUT: 290.0}),
    running("stalled", **{sc.ATTR_JOB_STALL_TIMEOUT: 60.0,
                          sc.ATTR_PROGRESS_UPDATED_AT: NOW - 200}),
    running("hog", queue="high", **{sc.ATTR_MEMORY_USAGE: 600 * MiB,
                                    sc.ATTR_LIMIT_MEMORY: 700 * MiB, sc.ATTR_CPU_PERCENT: 95.0}),
    running("violator", **{sc.ATTR_VIOLATION_COUNT: 1}),
    *lifecycle("done", start=T0 + 100, name=DATASET),
    *lifecycle("yesterday", start=T0 - 86400),
    *lifecycle("failed", start=T0 + 200, status="failed"),
    *lifecycle("cancelled", start=T0 + 300, status="cancelled"),
    record(sc.EVENT_JOB_VIOLATION, run_id="violator", seq=4, ts=NOW - 30,
           started_at=NOW - 300, **{sc.ATTR_LIMIT_TYPE: "memory", sc.ATTR_LIMIT_VALUE: 1000.0,
                                    sc.ATTR_LIMIT_ACTUAL: 1500.0,
                                    sc.ATTR_LIMIT_POLICY: "record",
                                    sc.ATTR_VIOLATION_COUNT: 1}),
]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("query") / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, SCENARIO)
    return path


@pytest.fixture
def jobs(store_path):
    with open_sink(store_path) as sink:
        yield sink.jobs.at(NOW)


def ids(query: JobQuery) -> set[str]:
    return {r.id for r in query.all()}


RUNNING = {"healthy", "degraded", "stuck", "lost", "overtime", "stalled", "hog", "violator"}


@pytest.mark.parametrize(("scope", "expected"), [
    ("pending", {"pending"}),
    ("running", RUNNING),
    ("completed", {"done", "yesterday"}),
    ("failed", {"failed"}),
    ("cancelled", {"cancelled"}),
    ("healthy", {"healthy", "done", "yesterday", "cancelled"}),
    ("degraded", {"degraded", "stalled", "hog"}),
    ("unhealthy", {"stuck", "lost", "overtime", "violator", "failed"}),
    ("stuck", {"stuck", "overtime"}),
    ("lost", {"lost"}),
    ("stalled", {"stalled"}),
    ("overtime", {"overtime"}),
    ("violated", {"violator"}),
    ("near_limit", {"hog"}),
    ("heartbeat_missed", {"degraded", "stuck", "lost"}),
    ("today", RUNNING | {"pending", "done", "failed", "cancelled"}),
])
def test_each_scope_selects_exactly_its_runs(jobs, scope, expected):
    """Every flag scope returns the runs it names, and count() agrees with all()."""
    query = getattr(jobs, scope)()
    assert ids(query) == expected
    assert query.count() == len(expected)


def test_value_scopes(jobs):
    """named, by_class, on_queue, with_id, between, since, memory_above, cpu_above."""
    assert ids(jobs.named("etl.import").completed()) == {"yesterday"}
    assert ids(jobs.by_class(ProcessDataset)) == {"done"}
    assert ids(jobs.by_class(DATASET)) == {"done"}
    assert ids(jobs.on_queue("high")) == {"stuck", "hog"}
    assert ids(jobs.with_id("failed")) == {"failed"}
    assert ids(jobs.between(T0 + 50, T0 + 250)) == {"done", "failed"}
    start = datetime.fromtimestamp(T0 + 50, timezone.utc)
    assert ids(jobs.between(start, start + timedelta(seconds=200))) == {"done", "failed"}
    assert ids(jobs.between(start.replace(tzinfo=None).isoformat(), T0 + 250)) == {
        "done", "failed"}
    # "Z" and a short fraction: ISO text as users paste it, read the same on Python 3.10.
    zulu = start.isoformat(timespec="milliseconds").replace(".000+00:00", ".0Z")
    assert ids(jobs.between(zulu, T0 + 250)) == {"done", "failed"}
    assert ids(jobs.since("10m")) == RUNNING | {"pending"}
    assert ids(jobs.since(timedelta(days=2))) == ids(jobs)
    assert ids(jobs.since(datetime.fromtimestamp(NOW - 10, timezone.utc))) == {"pending"}
    assert ids(jobs.memory_above("512MiB")) == {"hog"}
    assert ids(jobs.memory_above(50 * MiB)) == {"hog", "healthy"}
    assert ids(jobs.cpu_above(80)) == {"hog"}


def test_scopes_compose_and_queries_are_immutable(jobs):
    """Each scope returns a new query; the original is unchanged and SQL runs at terminals."""
    base = jobs.running()
    narrowed = base.on_queue("high").stuck()
    assert ids(narrowed) == {"stuck"}
    assert base.count() == len(RUNNING)
    assert base.steps != narrowed.steps


def test_order_limit_first_and_terminals(jobs):
    """order_by/limit/first, to_arrow and sql() agree with all()."""
    top = jobs.running().order_by("memory_bytes", desc=True).limit(2).all()
    assert [r.id for r in top] == ["hog", "healthy"]
    assert jobs.failed().first().id == "failed"
    assert jobs.named("nobody").first() is None
    table = jobs.running().to_arrow()
    assert isinstance(table, pa.Table)
    assert table.num_rows == len(RUNNING)
    assert {"id", "health", "stuck", "lost", "progress"} <= set(table.column_names)
    text, params = jobs.stuck().sql()
    assert "$now" in text
    assert params["now"] == NOW
    assert "stuck" not in params.values()


def test_user_strings_are_parameters_never_sql(jobs):
    """A hostile name is a bound value: it matches nothing and breaks nothing."""
    assert jobs.named("x' OR 1=1 --").count() == 0
    text, params = jobs.named("x' OR 1=1 --").sql()
    assert "1=1" not in text
    assert "x' OR 1=1 --" in params.values()


def test_bad_scope_arguments_fail_early(jobs):
    """Misuse raises ConfigurationError naming the fix, before any SQL runs."""
    with pytest.raises(ConfigurationError, match="choose from"):
        jobs.order_by("memory; DROP TABLE jobs")
    with pytest.raises(ConfigurationError):
        jobs.limit(-1)
    with pytest.raises(ConfigurationError):
        jobs.memory_above("lots")
    with pytest.raises(ConfigurationError):
        jobs.between(T0 + 10, T0)
    with pytest.raises(ConfigurationError):
        jobs.named("")


def test_replay_rebuilds_a_query_from_its_steps(store_path):
    """Steps survive a JSON round trip and replay to the same results; bad steps are refused."""
    import json

    with open_sink(store_path) as sink:
        query = sink.jobs.at(NOW).running().on_queue("high").order_by("started_at").limit(5)
        steps = json.loads(json.dumps(query.steps))
        again = JobQuery.replay(sink, steps)
        assert ids(again) == ids(query) == {"stuck", "hog"}
        with pytest.raises(SinkError, match="unknown query step"):
            JobQuery.replay(sink, [["drop_table"]])
        with pytest.raises(SinkError, match="malformed"):
            JobQuery.replay(sink, [["health", "no-such-rule"]])


def test_raw_sql_is_read_only_and_parameterised(store_path):
    """sink.sql() runs one SELECT with ? or named parameters and refuses everything else."""
    with open_sink(store_path) as sink:
        cols, rows = sink.sql("SELECT run_id FROM jobs WHERE queue = ? ORDER BY run_id",
                              ["high"])
        assert (cols, rows) == (["run_id"], [("hog",), ("stuck",)])
        assert sink.sql("SELECT count(*) FROM jobs WHERE status = $s", {"s": "failed"})[1] == [
            (1,)]
        for statement in ("DELETE FROM jobs", "INSERT INTO jobs (run_id, attempt) VALUES "
                          "('x', 1)", "DROP TABLE jobs", "SELECT 1; DELETE FROM jobs",
                          "COPY jobs TO 'x.csv'", "ATTACH 'other.db'"):
            with pytest.raises(SinkError):
                sink.sql(statement)
        with pytest.raises(SinkError, match=r"reads only the job store.*no_such_table"):
            sink.sql("SELECT * FROM no_such_table")
        assert sink.jobs.count() == len(SCENARIO_IDS)


SCENARIO_IDS = {r.attributes[sc.ATTR_JOB_RUN_ID] for r in SCENARIO}


def test_derived_health_view_matches_the_api(store_path):
    """The jobs_health view (for raw SQL users) uses the same rules as the scopes."""
    with open_sink(store_path) as sink:
        view = dict(sink.sql("SELECT run_id, health FROM jobs_health")[1])
        api = {r.id: r.health for r in sink.jobs.all()}
    # Both judge at "now" (the wall clock): the scenario is long past, so both see the same.
    assert view == api


# --- the seed's "Querying Supervised Jobs", one test per query (see docs/querying.md) ----


def test_seed_querying_supervised_jobs(jobs):
    """Each PHP query of the seed has a Python counterpart with the seed's meaning."""
    assert ids(jobs.running()) == RUNNING                      # SupervisedJob::running()
    assert ids(jobs.completed()) == {"done", "yesterday"}      # ::completed()
    assert ids(jobs.failed()) == {"failed"}                    # ::failed()
    assert ids(jobs.by_class(ProcessDataset)) == {"done"}      # where('job_class', ...)
    assert ids(jobs.on_queue("high")) == {"stuck", "hog"}      # where('queue', 'high')
    assert ids(jobs.running().overtime()) == {"overtime"}      # where('timeout_at','<',now())
    assert ids(jobs.running().memory_above(500 * MiB)) == {"hog"}  # memory_usage > 500MB
    # Available Query Scopes
    assert ids(jobs.pending()) == {"pending"}
    assert "yesterday" not in ids(jobs.today())
    assert ids(jobs.between(T0, T0 + 250)) == {"done", "failed"}  # whereBetween started_at
    assert "healthy" in ids(jobs.healthy())
    assert "stuck" in ids(jobs.unhealthy())
    assert "degraded" in ids(jobs.degraded())
    assert ids(jobs.cpu_above(80)) == {"hog"}                  # where('cpu_usage', '>', 80)
    assert ids(jobs.memory_above(512 * MiB)) == {"hog"}        # where('memory_usage','>',$limit)


def test_seed_accessing_job_details(store_path):
    """The seed's job-details walk: basic info, timing, resources, progress, health,
    heartbeats (latest and all), errors with traces, resource violations."""
    with open_sink(store_path) as sink:
        job = sink.jobs.at(NOW).with_id("done").first()
        assert isinstance(job, JobRecord)
        assert (job.name, job.queue, job.status) == (DATASET, "default", "completed")
        assert job.started_at == datetime.fromtimestamp(T0 + 100, timezone.utc)
        assert job.finished_at == datetime.fromtimestamp(T0 + 120, timezone.utc)
        assert job.completed  # the guide's $job->completed() and completed_at
        assert not job.failed
        assert job.completed_at == job.finished_at
        assert job.duration == 20.0
        assert job.progress == 100.0
        assert job.is_healthy()
        beats = job.heartbeats()
        assert [round(b.progress) for b in beats] == [25, 50, 75]
        assert job.latest_heartbeat() == beats[-1]
        assert job.to_dict()["started_at"].endswith("+00:00")

        failed = sink.job("failed")
        assert failed is not None
        assert failed.status == "failed"
        assert failed.failed  # the guide's if ($job->failed())
        assert not failed.completed
        assert failed.completed_at is None
        assert failed.finished_at is not None
        (error,) = failed.errors
        assert (error.type, error.message) == ("builtins.ValueError", "bad row 7")
        assert "Traceback" in (error.trace or "")
        assert failed.error_trace == error.trace

        hog = sink.job("hog")
        assert hog is not None
        assert (hog.memory_bytes, hog.cpu_percent) == (600 * MiB, 95.0)

        violator = sink.job("violator")
        assert violator is not None
        (violation,) = violator.resource_violations
        assert (violation.type, violation.limit, violation.actual) == ("memory", 1000.0, 1500.0)


def test_job_returns_the_latest_attempt(tmp_path):
    """A reused run id (Celery retry) keeps one row per attempt; job() gives the latest."""
    with store_writer(tmp_path / "j.duckdb") as (writer, sink):
        write_all(writer, lifecycle("celery-1", status="failed"),
                  lifecycle("celery-1", attempt=2, start=T0 + 100))
        assert sink.jobs.with_id("celery-1").count() == 2
        latest = sink.job("celery-1")
        assert latest is not None
        assert (latest.attempt, latest.status) == (2, "completed")
        assert latest.errors == []
        assert sink.job("nope") is None


def test_record_round_trips_through_dict(store_path):
    """JobRecord.to_dict() is JSON-ready and from_dict() rebuilds an equal record."""
    import json

    with open_sink(store_path) as sink:
        for run in sink.jobs.at(NOW).all():
            again = JobRecord.from_dict(json.loads(json.dumps(run.to_dict())), sink)
            assert again == run


def test_a_lost_runs_duration_stops_at_its_last_sign_of_life(store_path):
    """A live run's duration is its age now; a lost one's is frozen at its last record (it
    started 300 s before NOW and was last seen 100 s before): 200 s, asked at NOW or a day
    later. (Before: it grew for ever, 300 s then 86,700 s.) The healthy run is 300 s old at
    NOW; a day later it is lost too, its duration frozen at its last record (299 s)."""
    with open_sink(store_path) as sink:
        now = {r.id: r.duration for r in sink.jobs.at(NOW).running().all()}
        later = {r.id: r.duration for r in sink.jobs.at(NOW + 86_400).running().all()}
    assert now["lost"] == later["lost"] == pytest.approx(200.0)
    assert now["healthy"] == pytest.approx(300.0)
    assert later["healthy"] == pytest.approx(299.0)


def test_until_bounds_the_start_from_above(jobs):
    """``until`` (``--until``, ``until=``): started before a moment or an age ago, the
    guide's ``whereBetween`` upper bound alone; with ``since`` it is ``between``."""
    at = datetime.fromtimestamp
    assert ids(jobs.until(at(T0, timezone.utc))) == {"yesterday"}
    assert ids(jobs.until("1000s")) == {"yesterday"}  # an age: NOW - 1000 s is T0
    assert ids(jobs.until(1000)) == {"yesterday"}  # a number is an age too, as for since()
    assert ids(jobs.until(datetime.fromtimestamp(T0 + 150, timezone.utc))) == {"yesterday", "done"}
    start, end = at(T0, timezone.utc), at(NOW, timezone.utc)
    assert ids(jobs.since(start).until(end)) == ids(jobs.between(start, end))
    with pytest.raises(ConfigurationError):
        jobs.until("soon")


def test_an_age_of_0_is_now_for_until_and_more_than_0_for_since(jobs):
    """``until(0)`` is "started before now" (it was refused: ``until('0s')`` as "not a
    time", ``until(0)`` as not positive); a lower bound of now selects nothing, so
    ``since(0)`` and ``stuck_since(0)`` say the age must be more than 0."""
    before_now = ids(jobs.until(datetime.fromtimestamp(NOW, timezone.utc)))
    assert before_now  # the scenario's runs all started before NOW
    for zero in (0, 0.0, "0s", "0", "0m", timedelta(0)):
        assert ids(jobs.until(zero)) == before_now, zero
    assert ids(jobs.since("1h").until("0s")) == ids(jobs.since("1h"))
    for scope in (jobs.since, jobs.stuck_since):
        for zero in (0, "0s", timedelta(0)):
            with pytest.raises(ConfigurationError, match=r"must be more than 0"):
                scope(zero)
    with pytest.raises(ConfigurationError, match="0 or more"):
        jobs.until(-1)


def _silent_run(path):
    """3 heartbeats of the job's code, then 20 liveness records (the job went quiet)."""
    beats = [record(run_id="quiet", seq=i + 2, ts=T0 + 10 * i) for i in range(3)]
    alive = [
        record(run_id="quiet", seq=i + 5, ts=T0 + 100 + 10 * i,
               **{sc.ATTR_HEARTBEAT_KIND: "liveness", sc.ATTR_HEARTBEAT_CALLS: 0})
        for i in range(20)
    ]
    with store_writer(path) as (writer, _sink):
        write_all(writer, [record(sc.EVENT_JOB_STARTED, run_id="quiet", seq=1), *beats, *alive])


def test_liveness_records_do_not_crowd_out_the_jobs_heartbeats(tmp_path):
    """latest_heartbeat() is the job's own latest beat (the guide's heartbeats()->latest()),
    not the monitor's latest liveness record; heartbeats(kind=) filters. (Before: the
    latest "heartbeat" of a silent job was a liveness record, and the code's beats were
    not to be found among them.)"""
    path = tmp_path / "quiet.duckdb"
    _silent_run(path)
    with open_sink(path) as sink:
        job = sink.job("quiet")
        assert job is not None
        latest = job.latest_heartbeat()
        assert latest is not None
        assert (latest.kind, latest.at.timestamp()) == ("heartbeat", T0 + 20)
        newest = job.latest_heartbeat(kind=None)
        assert newest is not None
        assert newest.kind == "liveness"
        assert len(job.heartbeats()) == 23
        assert [h.kind for h in job.heartbeats(kind="heartbeat")] == ["heartbeat"] * 3
        assert len(job.heartbeats(kind="liveness")) == 20
        with pytest.raises(ValueError, match="kind must be one of"):
            job.heartbeats(kind="beat")


def test_show_lists_the_jobs_heartbeats_and_counts_the_liveness_records(tmp_path):
    """``show``'s heartbeat table lists the job's own beats and says how many liveness
    records it left out (before: "latest heartbeats (277 shown)" over 10 rows, all liveness)."""
    from click.testing import CliRunner

    from chaperone_otel.cli import cli

    path = tmp_path / "quiet.duckdb"
    _silent_run(path)
    shown = CliRunner().invoke(cli, ["show", "quiet", "--db", str(path)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    words = " ".join(shown.output.split())  # the title may wrap
    assert "heartbeats: the latest 3 of 3 (and 20 liveness records, not listed)" in words
    rows = words.split("not listed)")[1]
    assert rows.count(" heartbeat ") == 3
    assert "liveness" not in rows


def test_near_limit_lists_only_live_runs(tmp_path):
    """A run that ended with its last sample near its limit is not ``near_limit()`` (in the
    API, its count and the CLI's ``--near-limit``): the scope is a live state."""
    near = {sc.ATTR_MEMORY_USAGE: 900 * MiB, sc.ATTR_LIMIT_MEMORY: 1000 * MiB}
    path = tmp_path / "near.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, [running("near-live", **near),
                           *lifecycle("near-done", start=NOW - 100, **near),
                           *lifecycle("near-failed", start=NOW - 100, status="failed", **near)])
    with open_sink(path) as sink:
        query = sink.jobs.at(NOW).near_limit()
        assert ids(query) == {"near-live"}
        assert query.count() == 1
        assert {r.id for r in sink.jobs.at(NOW).completed().all()} == {"near-done"}
    out = CliRunner().invoke(cli, ["jobs", "--db", str(path), "--near-limit", "--json"],
                             env={"CHAPERONE_OTEL_SINK": None})
    assert out.exit_code == 0, out.output
    assert {r["id"] for r in json.loads(out.stdout)} == {"near-live"}


def test_a_filtered_fetch_reads_its_rows_by_rowid(jobs):
    """A filtered select finds the row ids first (under the sort and limit) and then reads
    every field of those rows only; a live-only health scope narrows before sorting too;
    an unfiltered select and an unlimited to_arrow() stay one scan (issue 16)."""
    by_id = " WHERE rowid IN (SELECT rowid FROM jobs WHERE "
    nested = " WHERE rowid IN (SELECT rowid FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE "
    policy = jobs._sink.policy
    assert by_id in jobs.running().named("x").sql()[0]
    limited = jobs.running().limit(5).sql()[0]
    assert by_id in limited
    assert nested not in limited
    assert nested in jobs.running().stuck().limit(100).sql()[0]
    assert nested in jobs.degraded().order_by("health").limit(3).sql()[0]
    assert nested not in jobs.healthy().limit(20).sql()[0]  # most of the store: no hash of it
    assert "rowid" not in jobs.limit(5).sql()[0]
    assert "rowid" not in jobs.running().render(policy, bulk=True)[0]
    assert by_id in jobs.running().limit(5).render(policy, bulk=True)[0]


def test_a_limit_among_equal_start_times_cuts_where_the_order_says(tmp_path):
    """The row-id step sorts and cuts as the final select does, ties included: runs started
    in the same second are cut by run id, a computed sort (health) by its value."""
    path = tmp_path / "ties.duckdb"
    same = NOW - 300
    runs = [running(f"r{i}", hb_age=100 if i % 2 else 1, started_at=same) for i in range(8)]
    with store_writer(path) as (writer, _sink):
        write_all(writer, runs)
    with open_sink(path) as sink:
        q = sink.jobs.at(NOW)
        assert [r.id for r in q.running().limit(3).all()] == ["r0", "r1", "r2"]
        assert [r.id for r in q.stuck().limit(2).all()] == ["r1", "r3"]
        assert [r.id for r in q.running().stuck().limit(3).all()] == ["r1", "r3", "r5"]
        by_health = q.running().order_by("health", desc=True).limit(5)
        assert [(r.health, r.id) for r in by_health.all()] == [
            ("unhealthy", "r1"), ("unhealthy", "r3"), ("unhealthy", "r5"), ("unhealthy", "r7"),
            ("healthy", "r0")]
        for query in (q.running().limit(3), q.stuck().limit(2), by_health):
            assert [r.id for r in query.all()] == query.to_arrow().column("id").to_pylist()


@pytest.mark.parametrize(
    "build",
    [
        lambda q: q.since(1e30),
        lambda q: q.until(1e30),
        lambda q: q.between(-1e300, 1e300),
        lambda q: q.stuck_since(1e30),
        lambda q: q.since(timedelta.max),
        lambda q: q.at(1e300),
    ],
)
def test_a_time_no_datetime_holds_is_misuse_when_the_scope_is_built(jobs, build):
    """A time or an age outside the years 1 to 9999 is a ConfigurationError from the scope
    (it was an OverflowError or a ValueError when the query ran, or a judgement as of the
    year 10**292)."""
    with pytest.raises(ConfigurationError, match="year"):
        build(jobs).count()
