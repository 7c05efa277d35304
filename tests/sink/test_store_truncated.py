"""A truncated store file is refused when it is opened, with the cause, not by a later IO
error from the first query that reaches a missing block (issue 11, item 9)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import check_not_truncated
from tests.sink.serve_process import PROTOBUF, lifecycle_logs, request

CLI = (sys.executable, "-m", "chaperone_otel.cli")
BLOCKS = 3 * 4096  # DuckDB's header; 256 KiB blocks follow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of a few 256 KiB blocks, closed."""
    path = tmp_path_factory.mktemp("store") / "jobs.duckdb"
    with SinkServer(str(path), port=0, advertise=False) as server:
        for _ in range(4):
            body = lifecycle_logs(500, pad=500)
            assert request(server.port, "POST", "/v1/logs", body, PROTOBUF)[0] == 200
    assert path.stat().st_size >= BLOCKS + 3 * 262144
    return path


def _cut(store: Path, tmp_path: Path, size: int) -> Path:
    cut = tmp_path / f"cut{size}.duckdb"
    shutil.copy(store, cut)
    os.truncate(cut, size)
    return cut


def test_a_whole_store_opens(store: Path) -> None:
    check_not_truncated(str(store))
    with open_sink(str(store)) as sink:
        assert sink.jobs.count() == 2000


@pytest.mark.parametrize("lost", [1, 1000, 262144 + 1])
def test_a_store_cut_inside_a_block_is_refused_when_opened(
    store: Path, tmp_path: Path, lost: int
) -> None:
    """A file that ends inside a block was cut short (DuckDB writes whole blocks): refused
    at the open, with its sizes."""
    cut = _cut(store, tmp_path, store.stat().st_size - lost)
    with pytest.raises(SinkError, match=r"the store file is truncated \(\d+ bytes; its header"):
        open_sink(str(cut))


def test_a_store_cut_by_whole_blocks_is_named_truncated_when_duckdb_fails_to_read_it(
    store: Path, tmp_path: Path
) -> None:
    """Cut by whole blocks, the file may be DuckDB's own (it cuts trailing free blocks; a
    store whose owner ended with ``os._exit`` looked 2 blocks short and read fine), so it
    is opened; the read that meets a missing block ("Could not read enough bytes") says
    the file is truncated, with its sizes, instead of DuckDB's bare IO error."""
    cut = _cut(store, tmp_path, store.stat().st_size - 2 * 262144)
    # the summary tables live after the runs' blocks: the cut reaches one of them first.
    sink = open_sink(str(cut))
    try:
        sink.jobs.all()
        errors = []
        for table in ("job_totals", "verdict_totals"):
            try:
                sink.sql(f"SELECT * FROM {table}")
            except SinkError as e:
                errors.append(str(e))
        assert errors
        assert all(re.search(r"the store file is truncated \(\d+ bytes; its header", e)
                   for e in errors), errors
    finally:
        sink.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", [("jobs",), ("sink", "serve", "--port", "0")])
def test_the_cli_exits_3_naming_the_truncated_file(
    store: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    cut = _cut(store, tmp_path, BLOCKS + 262144 + 100)
    result = subprocess.run(
        [*CLI, *command, "--db", str(cut)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "truncated" in result.stderr
    assert str(cut) in result.stderr
    assert "IO Error" not in result.stderr
