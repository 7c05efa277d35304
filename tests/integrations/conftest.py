"""Fixtures shared by the integration tests: one redis-server per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from chaperone_otel.testing import Capture, capture
from tests.integrations.workers import free_port, stop
from tests.waiting import wait_until


@pytest.fixture
def cap() -> Iterator[Capture]:
    """What the runs of the test recorded, in process (``chaperone_otel.testing``)."""
    with capture() as c:
        yield c


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of this session on a free 127.0.0.1 port, stopped by PID after."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI=true (Debian package redis-server)")
        pytest.skip(
            "redis-server not installed (apt-get install --no-install-recommends redis-server)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 15, "redis-server to answer PING")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc, grace=5)
