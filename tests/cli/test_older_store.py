"""A store written by an older chaperone-otel (review of the CLI): the read commands cannot
migrate it (they open it read-only), so they exit 3, and the message must name the shell
commands that do, which this test then follows."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import duckdb

from chaperone_otel.sink._schema import MIGRATIONS, SCHEMA_VERSION, current_version, migrate
from tests.cli._cli_helpers import cli_env, invoke
from tests.processes import stop
from tests.waiting import wait_until


def _older_store(path: Path) -> Path:
    """A store at the schema the first five migrations leave (current minus some)."""
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path), migrations=MIGRATIONS[:5])
        assert current_version(con) < SCHEMA_VERSION
    finally:
        con.close()
    return path


def _version(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return current_version(con)


def test_the_message_names_the_shell_commands_that_migrate(tmp_path: Path) -> None:
    path = _older_store(tmp_path / "old store.duckdb")
    result = invoke("jobs", "--db", str(path))
    assert result.exit_code == 3, result.output
    message = result.stderr
    assert "older chaperone-otel" in message
    assert f"chaperone-otel sink serve --db {shlex.quote(str(path))}" in message
    assert f"chaperone-otel prune --db {shlex.quote(str(path))}" in message
    assert "open_sink(path, read_only=False)" in message  # the Python way, still said


def test_prune_as_the_message_says_migrates_it(tmp_path: Path) -> None:
    path = _older_store(tmp_path / "old.duckdb")
    pruned = invoke("prune", "--db", str(path), "--older-than", "100000w")
    assert pruned.exit_code == 0, pruned.output
    assert _version(path) == SCHEMA_VERSION
    listed = invoke("jobs", "--db", str(path), "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []


def test_sink_serve_run_once_as_the_message_says_migrates_it(tmp_path: Path) -> None:
    path = _older_store(tmp_path / "old.duckdb")
    sidecar = Path(f"{path}.owner.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaperone_otel.cli", "sink", "serve", "--db", str(path),
         "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        wait_until(sidecar.exists, 30, "the sink server to advertise its URL")
        served = invoke("jobs", "--db", str(path), "--json")  # through its URL: it serves
        assert served.exit_code == 0, served.output
        proc.send_signal(signal.SIGINT)  # "Ctrl-C once it serves"
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        stop(proc)
        proc.stderr.close()
    assert _version(path) == SCHEMA_VERSION
    listed = invoke("jobs", "--db", str(path), "--json")  # the file itself, read-only
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []
