"""The CLI says when it shows LOST runs of a store that nothing writes.

A fleet that sends only to ``sink serve`` looks, once the sink is down, exactly like a fleet
whose processes all died: the CLI reads the file itself and every live run is LOST. The
commands that show runs now add a note on stderr (stdout stays the data) saying that no
process writes the store, so the runs may be alive; and say nothing of the kind while an
owner holds the store (another process's ``sink serve``, or this process's own sink).
Real DuckDB files, a real ``SinkServer`` and the CLI in a subprocess for the fleet case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chaperone_otel.sink._local import LocalSink
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import acquire
from tests.cli._cli_helpers import cli_env, invoke
from tests.sink.store_factory import T0, lifecycle, record, store_writer, write_all

NOTE = "note: no process is writing"


def _store_with_a_lost_run(path: Path) -> Path:
    """A finished run, and a run whose process was last heard from in 2026-01 (lost)."""
    from chaperone_otel import semconv as sc

    ids = {sc.ATTR_JOB_EXECUTION_ID: "exec-1", sc.ATTR_JOB_ATTEMPT: 1}
    lost = [record(sc.EVENT_JOB_STARTED, run_id="lost-run-1", seq=1, ts=T0, **ids)]
    lost += [record(run_id="lost-run-1", seq=i, ts=T0 + i, **ids) for i in range(2, 5)]
    with store_writer(path) as (writer, _sink):
        write_all(writer, lost, lifecycle("done-1"))
    return path


def test_each_command_that_shows_a_lost_run_of_an_unwritten_store_says_so(tmp_path: Path) -> None:
    path = _store_with_a_lost_run(tmp_path / "fleet.duckdb")
    db = ("--db", str(path))
    for args in (("jobs", *db), ("jobs", *db, "--json"), ("stuck", *db), ("health", *db),
                 ("show", "lost-run-1", *db), ("show", "lost-run-1", *db, "--json"),
                 ("wait", *db, "--timeout", "0.3", "--interval", "0.1")):
        result = invoke(*args)
        assert result.stderr.count(NOTE) == 1, (args, result.stderr)
        assert str(path) in result.stderr
        assert "it is not running and these LOST runs may be alive" in result.stderr
        assert "the last of them was heard from" in result.stderr
        assert "chaperone-otel close RUN_ID" in result.stderr
        assert NOTE not in result.stdout, args
        if "--json" in args:
            json.loads(result.stdout)  # the data is untouched
    # monitor says it in its header, every frame.
    frame = invoke("monitor", "--once", *db)
    assert frame.exit_code == 0, frame.output
    assert NOTE in " ".join(frame.stdout.split()), frame.stdout
    # A finished run, or a scope without the lost run: nothing to explain.
    for args in (("show", "done-1", *db), ("jobs", *db, "--completed"),
                 ("stuck", *db, "--no-lost"), ("monitor", "--once", *db, "--name", "x")):
        result = invoke(*args)
        assert NOTE not in result.stderr + result.stdout, (args, result.output)


def test_no_note_while_this_process_owns_the_store(tmp_path: Path) -> None:
    """An app that owns its store and runs the CLI in-process (or a test) shares its writable
    connection: the store is being written, its LOST run is lost."""
    path = _store_with_a_lost_run(tmp_path / "owned.duckdb")
    owner = LocalSink(acquire(path, read_only=False), read_only=False)
    try:
        assert owner.written_here
        result = invoke("stuck", "--db", str(path))
        assert result.exit_code == 1
        assert "lost-run-1" in result.stdout
        assert NOTE not in result.stderr
    finally:
        owner.close()


def test_the_note_follows_the_fleets_sink_going_down(tmp_path: Path) -> None:
    """While ``sink serve`` holds the store the CLI reads through it and the lost run is
    really lost (the sink hears nothing from it): no note. Once the sink is stopped, the same
    command reads the file itself and says why every run may look LOST."""
    path = _store_with_a_lost_run(tmp_path / "fleet.duckdb")
    command = [sys.executable, "-m", "chaperone_otel.cli", "stuck", "--db", str(path)]

    def stuck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env=cli_env(), check=False)

    with SinkServer(str(path), port=0):
        served = stuck()
    assert served.returncode == 1, served.stderr
    assert "lost-run-1" in served.stdout
    assert NOTE not in served.stderr
    down = stuck()
    assert down.returncode == 1, down.stderr
    assert "lost-run-1" in down.stdout
    assert down.stderr.count(NOTE) == 1, down.stderr
