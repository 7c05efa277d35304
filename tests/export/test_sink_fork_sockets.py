"""A forked child of the store's owner lets go of the owner's server sockets.

Found in the Celery prefork suite: a pool child idle for ~5 s forwarded its next run's
records only 15 s later. The master (the owner) had closed the idle keep-alive connection,
but a sibling forked after that connection opened still held the server side of it, so no
FIN reached the client, and its next request waited out its timeout while the run looked
silent in the store.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

import chaperone_otel
from chaperone_otel.sink._store import sidecar_path


def _served_fds(port: int) -> int:
    """Descriptors of this process bound to 127.0.0.1:port (listening or accepted)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if sock.getsockname()[:2] == ("127.0.0.1", port):
                count += 1
        except OSError:
            pass
        finally:
            sock.detach()
    return count


@pytest.mark.slow
def test_a_forked_child_holds_none_of_the_owners_server_sockets(tmp_path):
    """A keep-alive client of the owner's server, then a fork: the child holds neither the
    listening socket nor the connection's server side, so when the owner closes the
    connection (here: its server stops), the client sees the end at once instead of a
    connection nobody reads."""
    path = tmp_path / "jobs.duckdb"
    embedded = chaperone_otel.configure(sink=str(path)).sink
    token = json.loads(sidecar_path(path).read_text())["token"]
    url = urlsplit(embedded.url)
    client = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=3)
    client.request("GET", "/api/jobs?count=1", headers={"Authorization": f"Bearer {token}"})
    assert client.getresponse().read()  # the connection stays open (keep-alive)
    assert _served_fds(url.port or 0) >= 2  # the listening socket and the accepted one

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write_end, str(_served_fds(url.port or 0)).encode())
            time.sleep(30)  # alive (holding whatever it inherited) until killed
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        held_by_child = int(os.read(read_end, 64))
        chaperone_otel.reset()  # the owner stops serving and closes its connections
        client.sock.settimeout(3)
        started = time.monotonic()
        try:
            ended = client.sock.recv(1) == b""
        except ConnectionResetError:
            ended = True
        waited = time.monotonic() - started
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_end)
        client.close()
    assert held_by_child == 0
    assert ended
    assert waited < 2
