"""`sink serve` says what failed: a store that cannot be opened (a file in the way, a
read-only file system) is exit 3 naming the store, never "cannot bind"; a port in use is
still the bind error (exit 2). Real subprocesses, bounded in time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mounts import tmpfs

CLI = (sys.executable, "-m", "chaperone_otel.cli", "sink", "serve")


pytestmark = pytest.mark.slow  # each test runs `sink serve` as a process

def _serve(*args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "CHAPERONE_OTEL_SINK_TOKEN"}
    return subprocess.run(
        [*CLI, *args], check=False, env=env, capture_output=True, text=True, timeout=30
    )


def test_a_store_path_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    """--db under a regular file: exit 3 "cannot open the store", not "cannot bind"."""
    (tmp_path / "afile").write_text("x")
    result = _serve("--db", str(tmp_path / "afile" / "jobs.duckdb"), "--port", "0")
    assert result.returncode == 3, result.stderr
    assert "cannot open the store" in result.stderr
    assert "bind" not in result.stderr


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs; skipped where mounting is not permitted, never under CI=true."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as target:
        yield target


@pytest.mark.parametrize("relative", ["jobs.duckdb", "sub/jobs.duckdb"])
def test_a_read_only_file_system_is_a_store_error(read_only_dir: Path, relative: str) -> None:
    """--db on a read-only file system: exit 3 naming the cause, not "cannot bind"."""
    result = _serve("--db", str(read_only_dir / relative), "--port", "0")
    assert result.returncode == 3, result.stderr
    assert "Read-only file system" in result.stderr
    assert "bind" not in result.stderr


def test_a_port_in_use_is_still_a_bind_error(tmp_path: Path) -> None:
    """The bind error keeps its message and exit 2, and leaves no store file behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve("--db", str(tmp_path / "jobs.duckdb"), "--port", str(port))
    assert result.returncode == 2, result.stderr
    assert "cannot bind" in result.stderr
    assert not (tmp_path / "jobs.duckdb").exists()
