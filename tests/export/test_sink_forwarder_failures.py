"""What a process sharing one store file does when forwarding cannot work, and says so:
a child forked from the owner (DuckDB keeps the parent's handle in it), an owner that
refuses the process's token, a sink closed while its forwarder is blocked on a hung owner.
Real processes on loopback, bounded in time, stopped by their own PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chaperone_otel.sink._store import read_sidecar
from tests.processes import CLEAN_ENV as _CLEAN_ENV
from tests.processes import run_python, stop
from tests.waiting import wait_until

pytestmark = pytest.mark.slow



def _run(script: str, *args: object, timeout: float = 90) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter; its last stdout line is a JSON report."""
    proc = run_python(script, *args, timeout=timeout)
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["stderr"] = proc.stderr
    return report


_FORKED_CHILD = r"""
import json, os, sys, time
import chaperone_otel as c
from chaperone_otel._safety import internal_error_counts
from chaperone_otel.sink import open_sink

path, out = sys.argv[1], sys.argv[2]
c.configure(sink=path)
with c.supervised("parent.job"):
    pass
c.flush(10)
r, w = os.pipe()
parent = os.getpid()
pid = os.fork()
if pid == 0:
    os.close(r)
    report = {}
    with c.supervised("child.job"):
        pass
    report["flushed_while_parent_serves"] = c.flush(10)
    sink = open_sink(path)  # reads through the parent's query URL
    report["reader"] = type(sink).__name__
    report["names"] = sorted(j.name for j in sink.jobs.all())
    sink.close()
    os.write(w, b"x")  # the parent may go now
    while os.getppid() == parent:
        time.sleep(0.02)
    deadline = time.monotonic() + 30
    with c.supervised("child.after"):
        pass
    while time.monotonic() < deadline and not internal_error_counts().get("sink.takeover.inherited"):
        c.flush(0.5)
    report["errors"] = internal_error_counts()
    report["flushed_after"] = c.flush(0.5)
    with open(out, "w") as f:
        f.write(json.dumps(report))
    os._exit(0)
os.close(w)
os.read(r, 1)
c.shutdown()
print(json.dumps({"child": pid}), flush=True)
"""


def test_a_child_forked_from_the_owner_reads_through_it_and_says_it_cannot_own_the_file(
    tmp_path: Path,
) -> None:
    """A process forked from the store's owner: while the owner serves, its runs are
    stored and ``open_sink(path)`` reads through the owner's URL (it failed: DuckDB hands
    the forked process the parent's database for that file, "different configuration").
    When the owner exits, the child cannot take the file over; it says so once, naming the
    fix, instead of retrying in silence ("locked configuration" read as a held file)."""
    path = tmp_path / "jobs.duckdb"
    out = tmp_path / "child.json"
    parent = subprocess.Popen(
        [sys.executable, "-c", _FORKED_CHILD, str(path), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_CLEAN_ENV,
    )
    try:
        stdout, stderr = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
    assert parent.returncode == 0, stdout + stderr
    child = json.loads(stdout.strip().splitlines()[-1])["child"]
    try:
        wait_until(out.exists, 60, "the forked child's report")
        report = json.loads(out.read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    assert report["flushed_while_parent_serves"] is True
    assert report["reader"] == "RemoteSink"
    assert report["names"] == ["child.job", "parent.job"]
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert errors.get("sink.takeover.inherited", 0) >= 1
    assert report["flushed_after"] is False  # nobody owns the file: the records wait


_IDLE_CHILD = r"""
import json, os, select, socket, sys, time
import chaperone_otel as c
from chaperone_otel import _setup
from chaperone_otel._safety import internal_error_counts

path, out = sys.argv[1], sys.argv[2]
c.configure(sink=path)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    report = {}
    with c.supervised("child.first"):
        pass
    report["first"] = c.flush(10)
    conn = _setup._setup.sink._conn
    report["kept_alive"] = conn is not None and conn.sock is not None
    if report["kept_alive"]:  # until the owner closes the idle keep-alive connection (5 s)
        readable, _, _ = select.select([conn.sock], [], [], 30)
        report["closed_by_owner"] = bool(readable) and conn.sock.recv(1, socket.MSG_PEEK) == b""
    sink = _setup._setup.sink
    tried = []
    take_over = sink._take_over
    def counted():
        tried.append(1)
        return take_over()
    sink._take_over = counted  # a failed post that is taken for a dead owner tries this
    with c.supervised("child.second"):
        pass
    report["second"] = c.flush(10)
    report["take_overs"] = len(tried)
    report["errors"] = internal_error_counts()
    with open(out, "w") as f:
        f.write(json.dumps(report))
    os.write(w, b"x")
    os._exit(0)
os.close(w)
os.read(r, 1)
os.waitpid(pid, 0)
from chaperone_otel.sink import open_sink
c.flush(10)
with open_sink(path) as sink:
    names = sorted(j.name for j in sink.jobs.all())
c.shutdown()
print(json.dumps({"names": names}), flush=True)
"""


def test_a_connection_the_owner_closed_while_idle_is_reopened_not_taken_for_a_dead_owner(
    tmp_path: Path,
) -> None:
    """A forked child (an RQ work-horse, a Celery pool child) that reports less often than the
    owner keeps an idle connection (5 s): its next post fails on the closed connection. It
    posts again on a new one, at once, instead of trying to take the file over (which a
    forked child cannot: it logged an internal error with a traceback for nearly every job
    longer than 5 s)."""
    path = tmp_path / "jobs.duckdb"
    out = tmp_path / "child.json"
    report = _run(_IDLE_CHILD, path, out, timeout=90)
    child = json.loads(out.read_text())
    assert child["first"] is True
    assert child["kept_alive"] is True
    assert child["closed_by_owner"] is True
    assert child["second"] is True
    assert child["take_overs"] == 0  # posted again at once, not after a take-over attempt
    assert child["errors"] == {}, child["errors"]
    assert report["names"] == ["child.first", "child.second"]


_OWNER = r"""
import sys, time
import chaperone_otel as c
c.configure(sink=sys.argv[1])
print("owner", flush=True)
time.sleep(120)
"""

_CLOSER = r"""
import json, sys, time
import psutil
import chaperone_otel as c
from chaperone_otel import _setup

path, port = sys.argv[1], int(sys.argv[2])
c.configure(sink=path)
sink = _setup._setup.sink
assert sink.role == "forwarder", sink.role
print("ready", flush=True)
sys.stdin.readline()  # the owner is stopped now
with c.supervised("closer.job"):
    pass

def posting():
    return any(
        conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
        for conn in psutil.Process().net_connections("tcp")
    )

deadline = time.monotonic() + 20
while not posting():  # the forwarder's post waits for the stopped owner's answer
    assert time.monotonic() < deadline, "the forwarder never connected"
    time.sleep(0.02)
started = time.monotonic()
sink.close(timeout=1.0)
closed_in = time.monotonic() - started
thread = sink._thread
if thread is not None:
    thread.join(5.0)
print(json.dumps({
    "closed_in": closed_in,
    "forwarder_alive": thread is not None and thread.is_alive(),
    "role": sink.role,
}), flush=True)
import os
os._exit(0)
"""


def test_a_sink_closed_while_its_forwarder_waits_on_a_hung_owner_stops_it(
    tmp_path: Path,
) -> None:
    """The owner is hung (SIGSTOP) while a forwarder's post waits for its answer, and the
    forwarding process closes its sink: the blocked post ends with the close, and the
    forwarder is over. Before, it stayed blocked up to 15 s after ``close()`` returned,
    then took the file over (a closed sink became the owner, its writer and server
    running), or ran DuckDB code in interpreter shutdown and aborted the process."""
    path = tmp_path / "jobs.duckdb"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(path)], stdout=subprocess.PIPE, text=True,
        env=_CLEAN_ENV,
    )
    closer: subprocess.Popen[str] | None = None
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "owner"
        advertised = wait_until(lambda: read_sidecar(path), 30, "the owner's sidecar")
        port = int(str(advertised["url"]).rsplit(":", 1)[1].rstrip("/"))
        closer = subprocess.Popen(
            [sys.executable, "-c", _CLOSER, str(path), str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_CLEAN_ENV,
        )
        assert closer.stdout is not None
        assert closer.stdin is not None
        assert closer.stdout.readline().strip() == "ready"
        os.kill(owner.pid, signal.SIGSTOP)
        closer.stdin.write("go\n")
        closer.stdin.flush()
        stdout, stderr = closer.communicate(timeout=60)
        assert closer.returncode == 0, stdout + stderr
        report = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in (closer, owner):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)  # reaped, its pipes closed
    assert report["forwarder_alive"] is False
    assert report["role"] == "forwarder"
    assert report["closed_in"] < 5.0


_SERVE = (
    "from chaperone_otel.sink._server import serve; import sys; "
    "serve(sys.argv[1], port=0, token=sys.argv[2])"
)

_UNTIL_REPORTED = r"""
import json, sys, time
import chaperone_otel as c
from chaperone_otel import _setup
from chaperone_otel._safety import internal_error_counts

path, reported = sys.argv[1], sys.argv[2]
c.configure(sink=path)
with c.supervised("forwarded.job"):
    pass
deadline = time.monotonic() + 20
while not internal_error_counts().get(reported) and time.monotonic() < deadline:
    c.flush(0.2)
_setup._setup.sink.close(timeout=0.5)
print(json.dumps(internal_error_counts()), flush=True)
import os
os._exit(0)
"""
"""An application forwarding one run, until the internal error ``argv[2]`` is reported (or
20 s); its last stdout line is the internal-error counts, its stderr what it logged."""


def test_forwarding_to_a_sink_server_that_wants_a_token_says_which_variable_to_set(
    tmp_path: Path,
) -> None:
    """``sink serve --token`` owns the file, and an application forwards without the
    token: the 401 is reported (once, then counted) naming ``CHAPERONE_OTEL_SINK_TOKEN``,
    and the records given up at close say why. Before, it retried in silence and the
    close said "no owner in time", though the owner was there and refused it."""
    path = tmp_path / "jobs.duckdb"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(path), "s3cret"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=_CLEAN_ENV,
    )
    try:
        wait_until(lambda: read_sidecar(path), 30, "sink serve's sidecar")
        report = _run(_UNTIL_REPORTED, path, "sink.forward.token")
    finally:
        stop(server)
    assert report.get("sink.forward.token", 0) >= 1
    stderr = str(report["stderr"])
    assert "CHAPERONE_OTEL_SINK_TOKEN" in stderr
    assert "refused this process's token" in stderr
    assert "no owner in time" not in stderr


_READER = r"""
import sys, time
from chaperone_otel.sink import open_sink
sink = open_sink(sys.argv[1], read_only=False)  # creates the store and keeps it open
print("reading", flush=True)
time.sleep(120)
"""



def test_a_file_held_by_a_reader_is_reported_naming_the_reader(tmp_path: Path) -> None:
    """A notebook keeps the store open with ``open_sink()`` (it serves no URL), and an
    application configures the same file: its records cannot go anywhere, and it says so
    after a hand-over's while, naming the reader's PID (once), and again at close. Before,
    nothing was reported until the close, which said "no owner in time"."""
    path = tmp_path / "jobs.duckdb"
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path)], stdout=subprocess.PIPE, text=True,
        env=_CLEAN_ENV,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading"
        report = _run(_UNTIL_REPORTED, path, "sink.held")
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.communicate(timeout=10)
    assert report.get("sink.held") == 1
    stderr = str(report["stderr"])
    assert f"held by process {reader.pid}, which serves no query URL" in stderr
    assert "no owner in time" not in stderr
