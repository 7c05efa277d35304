"""``sink.close_run()`` and ``chaperone-otel close``: a run no process will finish (lost: its
process killed with no parent to close it) ended in the store by hand, as a parent's
``close_run()`` would end it; its lost verdict and alerts go, nothing else changes. Real
DuckDB files; a real ``SinkServer`` and an embedded owner for the remote paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._owner import StoreOwner
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import acquire, release
from tests.cli._cli_helpers import invoke
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all

RUN_CLOSED = "chaperone_otel.exceptions.RunClosed"


def _lost(run_id: str = "run-1", execution: str = "exec-1", attempt: int = 1) -> list[Any]:
    """A run's started record and four heartbeats in 2026-01: its process long silent."""
    ids = {sc.ATTR_JOB_EXECUTION_ID: execution, sc.ATTR_JOB_ATTEMPT: attempt}
    out = [record(sc.EVENT_JOB_STARTED, run_id=run_id, seq=1, ts=T0, **ids)]
    return out + [record(run_id=run_id, seq=i, ts=T0 + i, **ids) for i in range(2, 6)]


def _store(path: Path, *batches: list[Any]) -> Path:
    with store_writer(path) as (writer, _sink):
        write_all(writer, *batches)
    return path


def _writable(path: Path) -> LocalSink:
    return LocalSink(acquire(path, read_only=False), read_only=False)


def test_a_lost_run_is_closed_failed_and_is_no_longer_lost(tmp_path: Path) -> None:
    path = _store(tmp_path / "jobs.duckdb", _lost(), lifecycle("done-1"))
    sink = _writable(path)
    try:
        before = sink.job("run-1")
        assert before is not None
        assert (before.lost, before.status) == (True, "running")
        assert sink.jobs.lost().count() == 1
        closed = sink.close_run("run-1")
        assert (closed.id, closed.status, closed.health) == ("run-1", "failed", "unhealthy")
        assert (closed.lost, closed.stuck) == (False, False)
        assert closed.error_type == RUN_CLOSED
        assert closed.error_message == "closed by hand (lost: its process went silent)"
        assert [e.type for e in closed.errors] == [RUN_CLOSED]
        assert closed.finished_at is not None
        assert closed.heartbeat_count == before.heartbeat_count  # its own, kept
        assert closed.last_seen_at == before.last_seen_at  # its process's, not the close's
        assert sink.jobs.lost().count() == 0
        assert sink.jobs.running().count() == 0
        done = sink.job("done-1")
        assert done is not None
        assert done.status == "completed"  # untouched
        with pytest.raises(SinkError, match="is not running"):
            sink.close_run("run-1")
        with pytest.raises(SinkError, match="no run 'nope'"):
            sink.close_run("nope")
    finally:
        sink.close()


def test_cancelled_with_a_reason_and_its_process_records_only_fill_in(tmp_path: Path) -> None:
    """A reason is the error's message; the run's own records arriving later (its process
    was alive after all, its batch delayed) do not reopen it."""
    path = _store(tmp_path / "jobs.duckdb", _lost())
    sink = _writable(path)
    try:
        closed = sink.close_run("run-1", status="cancelled", reason="host rebooted, INC-42")
        assert (closed.status, closed.error_message) == ("cancelled", "host rebooted, INC-42")
        with pytest.raises(SinkError, match="failed or cancelled"):
            sink.close_run("run-1", status="completed")
    finally:
        sink.close()
    with store_writer(path) as (writer, reader):
        write_all(writer, [record(run_id="run-1", seq=9, ts=T0 + 9,
                                  **{sc.ATTR_JOB_EXECUTION_ID: "exec-1"})])
        job = reader.job("run-1")
        assert job is not None
        assert (job.status, job.error_type) == ("cancelled", RUN_CLOSED)


def test_of_two_running_executions_the_one_named_is_closed(tmp_path: Path) -> None:
    """A redelivered task runs a new execution beside its lost one: closing needs to say
    which, and closes only that one."""
    path = _store(tmp_path / "jobs.duckdb", _lost(execution="old"),
                  [record(sc.EVENT_JOB_STARTED, run_id="run-1", seq=1, ts=T0 + 60,
                          **{sc.ATTR_JOB_EXECUTION_ID: "new"})])
    sink = _writable(path)
    try:
        with pytest.raises(SinkError, match=r"2 active executions.*execution_id"):
            sink.close_run("run-1")
        closed = sink.close_run("run-1", execution_id="old")
        assert (closed.execution_id, closed.status) == ("old", "failed")
        states = {r.execution_id: r.status for r in sink.jobs.with_id("run-1").all()}
        assert states == {"old": "failed", "new": "running"}
    finally:
        sink.close()


def test_a_read_only_sink_refuses(tmp_path: Path) -> None:
    path = _store(tmp_path / "jobs.duckdb", _lost())
    sink = LocalSink(acquire(path, read_only=True), read_only=True)
    try:
        with pytest.raises(SinkError, match="close_run needs a writable sink"):
            sink.close_run("run-1")
    finally:
        sink.close()


def test_over_the_sink_servers_api_with_its_token_and_an_embedded_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAPERONE_OTEL_SINK_TOKEN", raising=False)
    path = _store(tmp_path / "served.duckdb", _lost(), _lost("run-2"))
    with SinkServer(str(path), port=0, token="t0k") as server:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(SinkError, match="bearer token"):
            RemoteSink(url).close_run("run-1")
        remote = RemoteSink(url, token="t0k")
        closed = remote.close_run("run-1", reason="worker host gone")
        assert (closed.status, closed.error_type, closed.error_message) == (
            "failed", RUN_CLOSED, "worker host gone")
        assert remote.jobs.lost().count() == 1  # run-2
        with pytest.raises(SinkError, match="is not running"):
            remote.close_run("run-1")
    owner = StoreOwner(str(path))
    owner.serve()
    try:
        assert owner.url is not None
        embedded = RemoteSink(owner.url, token=owner.token)
        with pytest.raises(SinkError, match="403"):
            embedded.prune(0)  # deleting stays the owning process's
        # A close is one record, as the host's forwarders send: an application that owns
        # the store (a gunicorn master, a Celery main process) closes its lost runs too.
        closed = embedded.close_run("run-2", status="cancelled", reason="host rebooted")
        assert (closed.status, closed.error_message) == ("cancelled", "host rebooted")
        assert embedded.jobs.lost().count() == 0
    finally:
        owner.close()


def test_the_cli_closes_a_lost_run_through_an_applications_embedded_owner(
    tmp_path: Path,
) -> None:
    """The CLI in another process finds the owner through its sidecar and closes the run
    there (it used to exit 3: "this owner does not allow closing a run over HTTP")."""
    import subprocess
    import sys

    from tests.cli._cli_helpers import cli_env

    path = _store(tmp_path / "app.duckdb", _lost("8f3a2c-lost"))
    owner = StoreOwner(str(path))
    owner.serve()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chaperone_otel.cli", "close", "8f3a", "--db", str(path)],
            capture_output=True, text=True, timeout=60, env=cli_env(), check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "closed run 8f3a2c-lost (attempt 1)" in done.stdout
        job = owner.view.job("8f3a2c-lost")
        assert job is not None
        assert (job.status, job.error_type) == ("failed", RUN_CLOSED)
    finally:
        owner.close()


def test_the_cli_closes_a_lost_run_by_its_prefix(tmp_path: Path) -> None:
    path = _store(tmp_path / "jobs.duckdb", _lost("8f3a2c-lost"), lifecycle("done-1"))
    stuck = invoke("stuck", "--db", str(path))
    assert stuck.exit_code == 1
    result = invoke("close", "8f3a", "--db", str(path), "--reason", "killed by the OOM killer")
    assert result.exit_code == 0, result.output
    assert "closed run 8f3a2c-lost (attempt 1)" in result.stdout
    assert "failed, killed by the OOM killer" in result.stdout
    assert invoke("stuck", "--db", str(path)).exit_code == 0
    again = invoke("close", "8f3a2c-lost", "--db", str(path))
    assert again.exit_code == 1
    assert "is not running" in again.output
    done = invoke("close", "done-1", "--db", str(path), "--json")
    assert done.exit_code == 1
    assert invoke("close", "nope-nope", "--db", str(path)).exit_code == 1
    bad = invoke("close", "8f3a2c-lost", "--db", str(path), "--status", "completed")
    assert bad.exit_code == 2


def test_the_cli_asks_which_of_two_executions_and_prints_json(tmp_path: Path) -> None:
    path = _store(tmp_path / "jobs.duckdb", _lost(execution="old"),
                  [record(sc.EVENT_JOB_STARTED, run_id="run-1", seq=1, ts=T0 + 60,
                          **{sc.ATTR_JOB_EXECUTION_ID: "new"})])
    which = invoke("close", "run-1", "--db", str(path))
    assert which.exit_code == 2
    assert all(word in which.output for word in ("--execution", "old", "new"))
    result = invoke("close", "run-1", "--db", str(path), "--execution", "old", "--json",
                    "--status", "cancelled")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["execution_id"], data["status"], data["error_type"]) == (
        "old", "cancelled", RUN_CLOSED)


def test_wait_says_a_run_is_lost_once_and_returns_after_its_close(tmp_path: Path) -> None:
    """``wait`` on a lost run said only ``etl.import run-1 0%`` until it timed out: it now
    marks it LOST and says once how to end it; after ``close`` it has nothing to wait for."""
    path = _store(tmp_path / "jobs.duckdb", _lost())
    waited = invoke("wait", "--db", str(path), "--timeout", "0.5", "--interval", "0.1")
    assert waited.exit_code == 1
    assert "waiting for 1 run(s): etl.import run-1 0% LOST" in waited.stderr
    assert waited.stderr.count("it will not finish on its own") == 1
    assert "`chaperone-otel close run-1`" in waited.stderr
    assert invoke("close", "run-1", "--db", str(path)).exit_code == 0
    done = invoke("wait", "--db", str(path), "--timeout", "5", "--interval", "0.1")
    assert done.exit_code == 0, done.output


def test_a_lost_run_ends_at_its_last_sign_of_life(tmp_path: Path) -> None:
    """Closing a run lost for months kept its duration where the store froze it (up to its
    last record), not the months until the close; its end is its last sign of life."""
    path = _store(tmp_path / "jobs.duckdb", _lost())
    sink = _writable(path)
    try:
        before = sink.job("run-1")
        assert before is not None
        assert before.last_seen_at is not None
        closed = sink.close_run("run-1")
        assert closed.finished_at == before.last_seen_at
        assert closed.duration == pytest.approx(before.duration)
        assert closed.duration == pytest.approx(5.0)  # T0 to its last heartbeat at T0 + 5
    finally:
        sink.close()


def test_a_run_stored_without_an_execution_id_can_be_closed(tmp_path: Path) -> None:
    """Rows written before execution ids existed (or by an older sender) are execution
    ``''``: the close carries none, as their records did, and ends that row."""
    old = [record(sc.EVENT_JOB_STARTED, run_id="legacy", seq=1, ts=T0),
           record(run_id="legacy", seq=2, ts=T0 + 1)]
    assert sc.ATTR_JOB_EXECUTION_ID not in old[0].attributes
    path = _store(tmp_path / "jobs.duckdb", old)
    sink = _writable(path)
    try:
        closed = sink.close_run("legacy", status="cancelled")
        assert (closed.execution_id, closed.status) == ("", "cancelled")
        assert len(sink.jobs.with_id("legacy").all()) == 1
    finally:
        sink.close()


def test_two_running_attempts_of_one_execution_id_are_told_apart_by_attempt(
    tmp_path: Path,
) -> None:
    path = _store(tmp_path / "jobs.duckdb", _lost(attempt=1, execution="same"),
                  _lost(attempt=2, execution="same"))
    sink = _writable(path)
    try:
        with pytest.raises(SinkError, match="2 active executions"):
            sink.close_run("run-1", execution_id="same")
        closed = sink.close_run("run-1", execution_id="same", attempt=1)
        assert (closed.attempt, closed.status) == (1, "failed")
        assert {r.attempt: r.status for r in sink.jobs.with_id("run-1").all()} == {
            1: "failed", 2: "running"}
    finally:
        sink.close()
    result = invoke("close", "run-1", "--db", str(path), "--attempt", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["attempt"] == 2


def test_a_run_that_ends_while_it_is_being_closed_keeps_its_own_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own finish committed between the close's read and its write (an owner's
    writer thread) is not replaced: the close is checked again under the write lock."""
    from chaperone_otel.sink import _local
    from chaperone_otel.sink._writer import Writer

    path = _store(tmp_path / "jobs.duckdb", _lost())
    sink = _writable(path)
    store = acquire(path, read_only=False)
    writer = Writer(store)
    real = _local.close_record

    def finishing_first(*args: Any, **kwargs: Any) -> Any:
        done = record(sc.EVENT_JOB_FINISHED, seq=9, ts=T0 + 9, status="completed",
                      **{sc.ATTR_JOB_EXECUTION_ID: "exec-1", sc.ATTR_JOB_FINISHED_AT: T0 + 9})
        write_all(writer, [done])
        return real(*args, **kwargs)

    monkeypatch.setattr(_local, "close_record", finishing_first)
    try:
        with pytest.raises(SinkError, match=r"ended \(completed\) as it was being closed"):
            sink.close_run("run-1")
        job = sink.job("run-1")
        assert job is not None
        assert (job.status, job.error_type) == ("completed", None)
    finally:
        writer.close(30)
        release(store)
        sink.close()
