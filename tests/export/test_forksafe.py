"""A forked child of a process exporting over OTLP/HTTP never hangs (``export/_forksafe``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaperone_otel.sink import open_sink
from chaperone_otel.sink._store import read_sidecar
from tests.processes import CLEAN_ENV as _CLEAN_ENV
from tests.processes import run_python, stop

_RECORDING_SERVER = r"""
import http.server, json, os, threading

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's session pools the connection
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        SEEN.append(self.client_address[1])
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

SEEN = []
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
URL = f"http://127.0.0.1:{server.server_port}"
"""


def _run(script: str, *args: str, timeout: float = 120) -> str:
    return run_python(script, *args, timeout=timeout).stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_first_otlp_export_imports_nothing() -> None:
    """Every module the OTLP/HTTP export path needs is imported by ``configure()``, none on
    the exporter's thread at its first export: an import there holds that module's import
    lock, and a fork at that moment hangs the child's own first export for ever. (Before:
    ``requests`` imported ``netrc`` and ``shlex`` on the first export; a fork storm at the
    first export hung 8 of 180 children.)"""
    script = _RECORDING_SERVER + r"""
import sys
import chaperone_otel as c
from opentelemetry import _logs, metrics, trace
c.configure(otlp_endpoint=URL)
before = set(sys.modules)
with c.supervised("first.export"):
    pass
for provider in (trace.get_tracer_provider(), _logs.get_logger_provider(),
                 metrics.get_meter_provider()):
    assert provider.force_flush(10_000)
assert SEEN, "nothing was exported"
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    assert json.loads(_run(script)) == []


_FORK_MID_EXPORT = _RECORDING_SERVER + r"""
import sys, threading, time
import chaperone_otel as c
from chaperone_otel.export import _forksafe
from opentelemetry import trace

hold = sys.argv[1]
c.configure(otlp_endpoint=URL, service_name="fork-mid-export")
with c.supervised("parent.job"):
    pass
assert trace.get_tracer_provider().force_flush(10_000)
parent_ports = set(SEEN)  # the parent's keep-alive connections, idle in its pools now
release, holding = threading.Event(), threading.Event()
managers = [adapter.poolmanager for session in list(_forksafe._sessions)
            for adapter in session.adapters.values()]
def hold_pool_locks():  # what an exporter thread holds while its request looks up a pool
    if hold == "hold":
        locks = [manager.pools.lock for manager in managers]
    else:  # "queue": or while it takes a connection from a pool, or puts one back
        locks = [pool.pool.mutex for manager in managers
                 for pool in manager.pools._container.values() if pool.pool is not None]
        assert locks, "no pool to hold"
    for lock in locks:
        lock.acquire()
    holding.set()
    release.wait()
    for lock in locks:
        lock.release()
if hold != "idle":  # another thread: an RLock held by the forking thread is the child's
    threading.Thread(target=hold_pool_locks, daemon=True).start()
    assert holding.wait(10)
before = len(SEEN)
pid = os.fork()
if pid == 0:
    with c.supervised("child.job"):
        pass
    c.shutdown()  # exports the child's span and records over its own connections
    sys.exit(0)  # and the exit's finalizers (urllib3 closes its pools in them) run too
deadline = time.monotonic() + 20
status = None
while time.monotonic() < deadline:
    done, raw = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(raw)
        break
    time.sleep(0.02)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
release.set()
child_ports = set(SEEN[before:])
c.shutdown()
print(json.dumps({"status": status, "child_ports": sorted(child_ports),
                  "shared": sorted(child_ports & parent_ports)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("hold", ["hold", "queue", "idle"])
def test_a_forked_child_exports_over_its_own_connections(hold: str) -> None:
    """A child forked while the parent's exporter holds its pool manager's lock ("hold": a
    request looking up its pool) or a pool's queue lock ("queue": a request taking or
    returning a connection) ends, and exports; one forked between exports ("idle") does not
    send on the parent's pooled keep-alive socket, where the two would interleave requests.
    (Before: the held manager lock hung the child's ``shutdown()`` for ever, 4 of 1,800
    children in a loaded fork storm; the held queue lock hung its exit, where urllib3's
    finalizer closes the inherited pool, about 1 child in 3,000 on Python 3.10; an idle fork
    reused the parent's socket.)"""
    out = json.loads(_run(_FORK_MID_EXPORT, hold, timeout=60))
    assert out["status"] == 0, "the child hung (killed at its deadline) or failed"
    assert out["child_ports"], "the child exported nothing"
    assert out["shared"] == []


@pytest.fixture
def sink_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real ``sink serve`` process on a free loopback port: (store path, URL)."""
    path = str(tmp_path / "sink.duckdb")
    errors = tmp_path / "sink.stderr"
    serve = "from chaperone_otel.sink._server import serve; import sys; serve(sys.argv[1], port=0)"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", serve, path], stdout=subprocess.DEVNULL, stderr=err,
            env=_CLEAN_ENV,
        )
    try:
        deadline = time.monotonic() + 30
        while (owner := read_sidecar(path)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sink serve did not start: {errors.read_text()}")
            time.sleep(0.05)
        yield path, owner["url"]
    finally:
        stop(proc)


_FORK_STORM = r"""
import json, os, sys, threading, time
import chaperone_otel as c
from opentelemetry import trace

url, forks = sys.argv[1], int(sys.argv[2])
c.configure(otlp_endpoint=url, service_name="fork-storm")
with c.supervised("parent.job"):
    c.heartbeat()
# The first export starts now, on the batch processor's thread, and the forks land in it.
threading.Thread(target=lambda: trace.get_tracer_provider().force_flush(10_000),
                 daemon=True).start()
children = []
for _ in range(forks):
    pid = os.fork()
    if pid == 0:
        with c.supervised("child.job"):
            pass
        sys.exit(0)  # atexit: shutdown() exports the child's run
    children.append(pid)
    time.sleep(0.0005)
hung, failed = [], []
# A hang is for ever; a child whose exports wait out a busy sink's 503s (the exporter backs
# off, up to 10 s per signal) is slow, not hung: 90 s tells them apart.
deadline = time.monotonic() + 90
for pid in children:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                failed.append(pid)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung.append(pid)
            break
        time.sleep(0.01)
c.shutdown()
print(json.dumps({"children": children, "hung": hung, "failed": failed}))
"""


@pytest.mark.slow
def test_300_forks_during_otlp_export_never_hang(sink_server: tuple[str, str]) -> None:
    """20 parents export to a real ``sink serve`` and each forks 15 children into its first
    export (the moment the exporter's thread does its lazy work); each child does a
    trivial supervised run and exits (``shutdown()`` exports it). Every one of the 300
    children ends within its deadline, and its run is in the store, completed, with its
    own pid. (Before: 8 of 180 such children hung for ever on a held import lock; later,
    on Python 3.10 and 3.11 alike, about 1 in 300 under load on the parent's held
    connection-pool lock; then about 1 in 400 on 3.10 at exit, in urllib3's finalizer of
    an inherited pool, on its queue's held lock: 0 in 8,100 since, on 3.10 under load.)"""
    path, url = sink_server
    children: list[int] = []
    hung: list[int] = []
    failed: list[int] = []
    for _ in range(20):
        out = json.loads(_run(_FORK_STORM, url, "15", timeout=200))
        children += out["children"]
        hung += out["hung"]
        failed += out["failed"]
    assert len(children) == 300
    assert hung == []
    assert failed == []
    with open_sink(path) as sink:
        stored = {j.pid: j.status for j in sink.jobs.named("child.job").all()}
    assert stored == dict.fromkeys(children, "completed")
