"""The embedded sink: configure(sink=path) records real supervised runs while they run."""

from __future__ import annotations

import json
import os
import threading
import urllib.request

import duckdb
import pytest

import chaperone_otel
from chaperone_otel import heartbeat, supervised
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._store import sidecar_path
from chaperone_otel.testing import FakeClock, capture
from tests.waiting import wait_until


def test_runs_show_up_while_running_then_completed_and_failed(tmp_path):
    """A live run is in running() before it ends; afterwards completed()/failed() with trace."""
    path = tmp_path / "jobs.duckdb"
    chaperone_otel.configure(sink=str(path))
    release = threading.Event()

    @supervised(name="seed.process_dataset", queue="high", heartbeat_interval=5)
    def process() -> None:
        heartbeat({"step": "load"})
        assert release.wait(20)

    @supervised(name="seed.broken", heartbeat_interval=5)
    def broken() -> None:
        raise ValueError("bad row 7")

    worker = threading.Thread(target=process)
    worker.start()
    try:
        with open_sink(path) as sink:
            live = wait_until(lambda: sink.jobs.running().named("seed.process_dataset").all(), 20, "the run to be running")
            assert live[0].queue == "high"
            assert live[0].finished_at is None
            assert live[0].health == "healthy"
            release.set()
            worker.join(20)
            with pytest.raises(ValueError, match="bad row 7"):
                broken()
            done = wait_until(lambda: sink.jobs.completed().named("seed.process_dataset").first(), 20, "the run to be completed")
            assert done.id == live[0].id
            assert done.duration is not None
            assert done.duration >= 0
            failed = wait_until(lambda: sink.jobs.failed().first(), 20, "the failed run")
            assert failed.name == "seed.broken"
            (error,) = failed.errors
            assert error.message == "bad row 7"
            assert "ValueError: bad row 7" in (error.trace or "")
            assert not failed.is_healthy()
    finally:
        release.set()
        worker.join(20)


def test_env_variable_enables_the_sink(tmp_path, monkeypatch):
    """CHAPERONE_OTEL_SINK alone makes configure() record runs."""
    path = tmp_path / "env.duckdb"
    monkeypatch.setenv("CHAPERONE_OTEL_SINK", str(path))
    chaperone_otel.configure()

    @supervised(name="env.job")
    def job() -> int:
        return 1

    job()
    with open_sink(path) as sink:
        assert wait_until(lambda: sink.jobs.completed().named("env.job").count(), 20, "the env-configured run") == 1


@pytest.mark.parametrize("how", ["argument", "OTEL_SERVICE_NAME"])
def test_the_service_name_is_stored(tmp_path, monkeypatch, how):
    """The embedded sink stores the run's service, as `sink serve` does from an OTLP
    sender's resource: from configure(service_name=) and from OTEL_SERVICE_NAME. (Before:
    NULL.)"""
    path = tmp_path / "svc.duckdb"
    if how == "argument":
        chaperone_otel.configure(sink=str(path), service_name="billing")
    else:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
        chaperone_otel.configure(sink=str(path))
    with supervised("svc.job"):
        heartbeat()
    with open_sink(path) as sink:
        found = wait_until(lambda: sink.jobs.named("svc.job").completed().all(), 20, "the run")
    assert [j.service_name for j in found] == ["billing"]


def test_shutdown_flushes_releases_and_removes_sidecar(tmp_path):
    """After reset(), every record is in the file, another open works and no sidecar is left."""
    path = tmp_path / "jobs.duckdb"
    embedded = chaperone_otel.configure(sink=str(path)).sink

    @supervised(name="quick")
    def quick(i: int) -> int:
        return i

    for i in range(20):
        quick(i)
    assert embedded.flush(10)
    owner = json.loads(sidecar_path(path).read_text())
    assert owner["url"] == embedded.url
    assert owner["pid"] == os.getpid()
    request = urllib.request.Request(
        embedded.url + "/api/jobs?count=1",
        headers={"Authorization": f"Bearer {owner['token']}"},  # the sidecar's token
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["count"] == 20
    chaperone_otel.reset()
    assert not sidecar_path(path).exists()
    with open_sink(path) as sink:
        assert sink.jobs.completed().named("quick").count() == 20


def test_hung_but_alive_run_is_stuck_not_lost(tmp_path):
    """The job's code stops heartbeating while its process keeps sending liveness records:
    the store judges it stuck, not lost."""
    clock = FakeClock()
    path = tmp_path / "jobs.duckdb"
    started = threading.Event()
    release = threading.Event()

    @supervised(name="hangs", heartbeat_interval=10)
    def hangs() -> None:
        heartbeat()
        started.set()
        assert release.wait(20)

    with capture(clock=clock, sink=str(path)) as cap:
        worker = threading.Thread(target=hangs)
        worker.start()
        try:
            assert started.wait(20)
            cap.tick()
            for _ in range(8):  # 40 s of silence from the job's code, the monitor still runs
                cap.advance(5)
            with open_sink(path) as sink:
                query = sink.jobs.at(clock())
                run = wait_until(lambda: query.running().named("hangs").first(), 20, "the hung run")
                wait_until(lambda: query.stuck().count(), 20, "the hung run to be stuck")
                assert [r.id for r in query.stuck().all()] == [run.id]
                assert query.lost().count() == 0
                run = query.with_id(run.id).first()
                assert run.stuck
                assert not run.lost
                assert run.health == "unhealthy"
                # the same run, judged later with no record at all: lost, no longer stuck
                later = sink.jobs.at(clock() + 100)
                assert later.lost().count() == 1
                assert later.stuck().count() == 0
        finally:
            release.set()
            worker.join(20)


@pytest.mark.slow
def test_another_process_reaches_the_live_store_through_the_sidecar(tmp_path):
    """While an application owns the store, open_sink(path) elsewhere follows its query URL;
    after the owner exits the sidecar is gone and the file opens directly."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "jobs.duckdb"
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            import chaperone_otel
            from chaperone_otel import supervised
            setup = chaperone_otel.configure(sink={str(path)!r})

            @supervised(name="owned.job")
            def job():
                return 1

            job()
            assert setup.sink.flush(20)
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        advertised = json.loads(sidecar_path(path).read_text())
        assert advertised["pid"] == owner.pid
        with open_sink(path) as sink:
            assert sink.url == advertised["url"]
            assert sink.jobs.completed().named("owned.job").count() == 1
    finally:
        assert owner.stdin is not None
        assert owner.stdout is not None
        owner.stdin.close()
        assert owner.wait(30) == 0
        owner.stdout.close()
    assert not sidecar_path(path).exists()
    with open_sink(path) as sink:
        assert sink.url is None
        assert sink.jobs.named("owned.job").count() == 1


def test_read_your_writes_in_the_owning_process(tmp_path) -> None:
    """A query right after a run ends finds it: the owner's readers flush the writer first
    (no waiting for the writer's linger)."""
    import chaperone_otel as chaperone
    from chaperone_otel import supervised

    db = tmp_path / "ryw.duckdb"
    chaperone.configure(sink=str(db))
    try:
        with chaperone.open_sink(str(db)) as sink:
            for i in range(20):

                @supervised(name="ryw.job")
                def job() -> int:
                    return 1

                job()
                assert sink.jobs.named("ryw.job").completed().count() == i + 1
    finally:
        chaperone.shutdown()


def test_configure_refuses_a_foreign_duckdb_file_and_leaves_it_unchanged(tmp_path):
    """``configure(sink=PATH)`` on an application's own DuckDB file (its own ``jobs``
    table, no chaperone schema) raises ``SinkError`` at once, as for any wrong sink path
    (misuse fails loudly and early, DESIGN §8), and writes nothing to that file."""
    path = tmp_path / "app.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE jobs (id INTEGER, title VARCHAR)")
    con.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(chaperone_otel.SinkError, match="not a job store"):
        chaperone_otel.configure(sink=str(path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
