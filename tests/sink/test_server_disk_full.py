"""A full disk (issue 11, item 4): on a small tmpfs (mounted as root by the test), DuckDB
invalidates the database when a checkpoint meets the full disk. Then every write is a 503
that names the real cause (not "cannot rollback") and /healthz answers 503 with it; once
space returns the writer reopens the store and writes resume, and every acknowledged record
is there (also after a restart). Real `sink serve` processes on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import tmpfs
from tests.sink.serve_process import PROTOBUF, ServeProcess, lifecycle_logs, request
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

PER_POST = 300
NO_SPACE = "No space left on device"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs; skipped where mounting is not permitted, never under CI=true."""
    with tmpfs(tmp_path / "disk", "size=24m") as target:
        yield target


def _stored(port: int) -> dict[str, int]:
    query = "SELECT split_part(run_id, '-', 1) AS b, count(*) AS n FROM jobs GROUP BY b"
    status, body, _ = request(
        port,
        "POST",
        "/api/sql",
        json.dumps({"query": query}).encode(),
        {"Content-Type": "application/json"},
        timeout=30,
    )
    assert status == 200, body
    return dict(json.loads(body)["rows"])


def test_disk_full_is_unhealthy_with_its_cause_and_loses_no_acknowledged_record(
    small_disk: Path,
) -> None:
    path = small_disk / "jobs.duckdb"
    acked: list[str] = []
    refusal = b""
    with ServeProcess(path) as server:
        for i in range(200):  # ~100 posts fill 24 MiB
            batch = f"b{i}"
            status, body, _ = request(
                server.port,
                "POST",
                "/v1/logs",
                lifecycle_logs(PER_POST, prefix=batch + "-", pad=2000),
                PROTOBUF,
                timeout=60,
            )
            if status == 200:
                acked.append(batch)
            else:
                assert status == 503, body
                refusal = body
                health = request(server.port, "GET", "/healthz")
                if health[0] == 503:
                    break
        else:
            pytest.fail("the disk never filled")
        assert acked
        assert NO_SPACE.encode() in refusal, refusal
        assert b"cannot rollback" not in refusal
        status, body, _ = request(server.port, "GET", "/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "failed"
        assert NO_SPACE in json.loads(body)["error"]
        assert request(server.port, "GET", "/metrics")[0] == 503
        # Space returns (the file system grows): the next writes reopen the store.
        _grow(small_disk)

        def resumed() -> bool:
            batch = f"r{len(acked)}"
            body = lifecycle_logs(PER_POST, prefix=batch + "-")
            if request(server.port, "POST", "/v1/logs", body, PROTOBUF, timeout=30)[0] != 200:
                return False
            acked.append(batch)
            return True

        wait_until(resumed, 15, "writes to resume once space returns", every=0.2)
        status, body, _ = request(server.port, "GET", "/healthz")
        assert status == 200, body
        _assert_kept(server.port, acked)
        server.stop()
    with ServeProcess(path) as again:  # and a restart finds them all too
        _assert_kept(again.port, acked)
        status, body, _ = request(again.port, "POST", "/v1/logs", lifecycle_logs(5), PROTOBUF)
        assert status == 200, body


def _grow(disk: Path) -> None:
    grown = subprocess.run(
        ["mount", "-o", "remount,size=128m", str(disk)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert grown.returncode == 0, grown.stderr


def _assert_kept(port: int, acked: list[str]) -> None:
    stored = _stored(port)
    lost = [b for b in acked if stored.get(b) != PER_POST]
    assert not lost, f"acknowledged batches missing or partial: {lost}"
