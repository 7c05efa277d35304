"""Slowloris: half-sent requests cannot take the server's descriptors (issue 11, item 7).
A real `sink serve` process on 127.0.0.1 under a 1024-descriptor limit, stopped by its PID."""

from __future__ import annotations

import http.client
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaperone_otel.sink._http import accept_backlog, connection_cap
from tests.sink.serve_process import PROTOBUF, ServeProcess, lifecycle_logs, request
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

HALF_SENT = 1100
SERVER_FDS = 1024


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """This process holds 1,100 sockets: raise its own soft limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HALF_SENT + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _half_sent(port: int) -> socket.socket | None:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
    except OSError:
        s.close()
        return None
    return s


def _healthz(port: int) -> bool:
    try:
        return request(port, "GET", "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


def test_half_sent_requests_leave_healthz_and_ingest_answering(
    tmp_path: Path, enough_fds: None
) -> None:
    """1,100 connections each sending half a request's headers, against a server limited
    to 1024 descriptors: /healthz answers within a few seconds and an OTLP post succeeds
    (before: accept failed with EMFILE and everything timed out)."""
    held: list[socket.socket] = []
    with ServeProcess(tmp_path / "jobs.duckdb", nofile=SERVER_FDS) as server:
        try:
            for _ in range(HALF_SENT):
                s = _half_sent(server.port)
                if s is not None:
                    held.append(s)
            assert len(held) >= SERVER_FDS  # the server accepted (or queued) them all
            start = time.monotonic()
            wait_until(lambda: _healthz(server.port), 5, "/healthz under slowloris")
            assert time.monotonic() - start < 5
            status, body, _ = request(
                server.port, "POST", "/v1/logs", lifecycle_logs(2), PROTOBUF, timeout=5
            )
            assert status == 200, body
            assert "EMFILE" not in server.stderr()
            assert "Too many open files" not in server.stderr()
        finally:
            for s in held:
                s.close()


def test_a_half_sent_request_is_closed_at_the_header_deadline(tmp_path: Path) -> None:
    """One connection that never finishes its headers is closed by the server (5 s)."""
    with ServeProcess(tmp_path / "jobs.duckdb") as server:
        s = _half_sent(server.port)
        assert s is not None
        with s:
            s.settimeout(15)
            start = time.monotonic()
            assert s.recv(1) == b""  # closed by the server, nothing answered
            assert 3 < time.monotonic() - start < 10


def test_the_connection_cap_stays_below_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) < soft
    assert connection_cap(5) == 5


def test_the_cap_leaves_a_low_descriptor_limit_usable() -> None:
    """Under a low limit (macOS's default soft limit is 256) the accept batches shrink with
    it, so the cap is not eaten by their reserve (it was 1 connection at 256 and 512)."""
    assert connection_cap(10**9, soft=1024) == 1024 - 64 - 3 * 128
    assert connection_cap(10**9, soft=256) >= 100
    for soft in range(100, 5000, 37):
        cap = connection_cap(10**9, soft=soft)
        assert cap >= 1
        assert cap + 3 * accept_backlog(soft) + 64 <= soft


def test_keep_alive_connections_survive_under_a_256_descriptor_limit(tmp_path: Path) -> None:
    """A `sink serve` limited to 256 descriptors keeps 40 idle keep-alive connections open
    (before, its cap was 1 there: each new connection evicted the one before)."""
    conns = [http.client.HTTPConnection("127.0.0.1", 0, timeout=5) for _ in range(40)]
    with ServeProcess(tmp_path / "jobs.duckdb", nofile=256) as server:
        try:
            for conn in conns:
                conn.port = server.port
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            for i, conn in enumerate(conns):  # each again, on the same socket
                sock = conn.sock
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                assert conn.sock is sock, f"connection {i} was closed by the server"
        finally:
            for conn in conns:
                conn.close()


def test_a_client_gone_mid_body_is_no_server_error(tmp_path: Path) -> None:
    """A sender that drops its connection halfway through a body: nothing is stored, the
    server goes on, and its log has no traceback (it had a 40-line "Exception in ASGI
    application" per aborted upload, which anyone could repeat to flood it)."""
    with ServeProcess(tmp_path / "jobs.duckdb") as server:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(
                    b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n"
                    + b"\x0a" * 10
                )
        status, body, _ = request(
            server.port, "POST", "/v1/logs", lifecycle_logs(2), PROTOBUF, timeout=5
        )
        assert status == 200, body
        wait_until(lambda: _healthz(server.port), 5, "/healthz after the aborted uploads")
        assert "Traceback" not in server.stderr()
        assert "Exception in ASGI application" not in server.stderr()
