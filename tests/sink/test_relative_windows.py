"""A time window given as an age (``since("1h")``, ``until``, ``today()``, ``stuck_since``) is
measured back from the query's evaluation time, wherever ``at()`` is in the chain, in a local
sink, through a remote owner, and in the schedule queries. The bug: the age was resolved when
the scope was added, so ``jobs.since("1h").at(t)`` measured from the clock, not from ``t``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel._units import EPOCH_MIN
from chaperone_otel.exceptions import ConfigurationError
from chaperone_otel.sink import JobQuery, open_sink
from chaperone_otel.sink._query import Sink, naive_utc
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._schedule_query import ScheduleQuery
from chaperone_otel.sink._server import SinkServer
from tests.sink.store_factory import T0, lifecycle
from tests.stores import empty_store

E = T0 + 3 * 3600  # the evaluation time: 2026-01-01T03:00:00Z
FAR = T0 + 30 * 86400  # the queries' clock, far from E: only at(E) may decide
RUNS = {  # run id -> start
    "old": T0 - 2 * 86400,
    "early": T0 + 600,  # 00:10
    "mid": T0 + 5400,  # 01:30
    "late": T0 + 9000,  # 02:30, stuck since 02:30
    "tomorrow": T0 + 86400 + 3600,
}
Build = Callable[[JobQuery], JobQuery]
CASES: list[tuple[str, Build, set[str]]] = [
    ("since", lambda q: q.since("1h"), {"late", "tomorrow"}),
    ("until", lambda q: q.until("1h"), {"old", "early", "mid"}),
    ("today", lambda q: q.today(), {"early", "mid", "late", "tomorrow"}),
    # between() takes moments only (numbers are Unix seconds there): a relative window is
    # since(a).until(b), the documented spelling of between(a, b)
    ("since-until", lambda q: q.since("3h").until("1h"), {"early", "mid"}),
    ("between", lambda q: q.between(T0 + 3600, "2026-01-01T03:00:00Z"), {"mid", "late"}),
    ("stuck_since", lambda q: q.stuck_since("1h"), {"late"}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkServer]:
    path = empty_store(tmp_path_factory.mktemp("windows") / "jobs.duckdb")
    srv = SinkServer(str(path), port=0, advertise=False).start()
    try:
        for run_id, start in RUNS.items():
            extra = {sc.ATTR_JOB_STUCK_SINCE: start} if run_id == "late" else {}
            assert srv.writer.submit(lifecycle(run_id, start=start, **extra))
        assert srv.writer.flush(30)
        yield srv
    finally:
        srv.stop(15)


@pytest.fixture(params=["local", "remote"])
def sink(request: pytest.FixtureRequest, server: SinkServer) -> Iterator[Sink]:
    """The store in the owner's process (a local sink sharing its connection) or over its
    query API."""
    opened = open_sink(server.path) if request.param == "local" else RemoteSink(server.url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_window_is_measured_from_at_whichever_side_of_it_it_is(
    sink: Sink, build: Build, expected: set[str]
) -> None:
    """build(jobs.at(E)) and build(jobs).at(E) select the same runs, those of a window
    measured from E (the queries' clock, a month later, plays no part)."""
    jobs = JobQuery(sink, clock=lambda: FAR)
    before, after = build(jobs.at(E)), build(jobs).at(E)
    assert {r.id for r in before.all()} == {r.id for r in after.all()} == expected
    assert before.count() == after.count() == len(expected)
    assert before.to_arrow().num_rows == after.to_arrow().num_rows == len(expected)


def test_without_at_the_clock_when_the_query_runs_decides() -> None:
    """No at(): the age is measured from the clock when the terminal runs, not when the
    scope was added."""
    clock = [FAR]
    query = JobQuery(_NoSink(), clock=lambda: clock[0]).since("1h")
    clock[0] = E
    text, params = query.sql()
    assert text.count("started_at >=") == 1
    assert params == {"p0": naive_utc(E - 3600), "now": E}


def test_relative_steps_travel_as_ages_and_the_owner_measures_them_from_its_now(
    server: SinkServer,
) -> None:
    """A remote query sends the age, not a moment the client computed: without at() the
    owner measures it from the same now it judges health with, whatever the client's clock
    says; with at() anywhere in the chain, from that time."""
    remote = RemoteSink(server.url)
    try:
        jobs = JobQuery(remote, clock=lambda: FAR)
        query = jobs.since("1h").stuck()
        assert json.loads(json.dumps(query.steps))[0] == ["started_between", {"ago": 3600.0},
                                                          None]
        before = time.time()
        _text, params = remote.remote_sql(query)
        after = time.time()
        assert before <= params["now"] <= after
        bound = datetime.fromisoformat(params["p0"]).timestamp()
        assert bound == pytest.approx(params["now"] - 3600, abs=1e-5)  # one now, to the µs
        for chain in (jobs.at(E).today().stuck(), jobs.today().stuck().at(E)):
            _text, params = remote.remote_sql(chain)
            assert params["now"] == E
            assert datetime.fromisoformat(params["p0"]) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    finally:
        remote.close()


@pytest.mark.parametrize(("build", "start"), [(lambda q: q.since("1h"), E - 3600),
                                               (lambda q: q.today(), T0)],
                         ids=["since", "today"])
def test_schedule_windows_are_measured_from_at_too(
    build: Callable[[ScheduleQuery], ScheduleQuery], start: float
) -> None:
    """sink.schedules shares the scopes: the due-time window is the same either way."""
    slots = ScheduleQuery(_NoSink(), clock=lambda: FAR)
    first, last = build(slots.at(E)).sql(), build(slots).at(E).sql()
    assert first == last
    assert first[1] == {"now": E, "p1": start}


class _NoSink:
    """Queries that only render SQL need no store."""

    policy = Sink.policy

    def sql(self, *_args: object) -> tuple[list[str], list[tuple[object, ...]]]:
        raise AssertionError("no query runs here")


def test_an_age_is_checked_against_the_time_it_is_measured_from() -> None:
    """An age that reaches before the year 1 from the clock but not from a later at() is
    kept; the query measured from the clock refuses it, naming the year."""
    age = FAR - EPOCH_MIN + 86400
    jobs = JobQuery(_NoSink(), clock=lambda: FAR)
    later = FAR + 2 * 86400
    assert jobs.since(age).at(later).sql()[1] == {"p0": naive_utc(later - age), "now": later}
    with pytest.raises(ConfigurationError, match="year 1"):
        jobs.since(age).sql()
