"""One store for every process of a host: any number of processes ``configure(sink=PATH)``
the same file; the first owns it, the others forward to it and take it over when it goes
(``export/_sink.py``, ``sink/_forward.py``). Real processes, bounded in time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaperone_otel.sink import open_sink
from chaperone_otel.sink._store import read_sidecar
from tests.processes import CLEAN_ENV as _CLEAN_ENV
from tests.waiting import wait_until

_APP = r"""
import json, os, sys, time
import chaperone_otel as c
from chaperone_otel import _setup

path, short, long_runs, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start_at - time.time()))  # every app starts in the same moment
c.configure(sink=path)  # must never fail because another process holds the file
print(json.dumps({"role": _setup._setup.sink.role}), flush=True)
ids = []
for i in range(short):
    with c.supervised("mp.short", heartbeat_interval=5) as run:
        run.heartbeat(i=i)
        time.sleep(0.005)
    ids.append(run.id)
for i in range(long_runs):
    with c.supervised("mp.long", heartbeat_interval=1) as run:
        for _ in range(4):
            run.heartbeat()
            time.sleep(0.1)
    ids.append(run.id)
c.shutdown()
print(json.dumps({"pid": os.getpid(), "ids": ids}), flush=True)
"""


def _start(script: Path, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_CLEAN_ENV,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _stored(path: Path) -> dict[str, tuple[str, int]]:
    with open_sink(path) as sink:
        return {j.id: (j.status, j.pid) for j in sink.jobs.all()}


@pytest.mark.slow
def test_eight_apps_share_one_store_and_survive_the_owner_being_killed(tmp_path: Path) -> None:
    """8 processes start in the same second, each ``configure(sink=PATH)`` and run 200
    short runs and 2 long ones; the owner is SIGKILLed midway. Every other process exits 0
    with no internal error, and every one of their runs is in the store, completed, with
    its pid. (Before: every process but the first failed in ``configure()``.)"""
    path = tmp_path / "jobs.duckdb"
    script = tmp_path / "app.py"
    script.write_text(_APP)
    start_at = time.time() + 3.0
    procs = [_start(script, path, 200, 2, start_at) for _ in range(8)]
    try:
        owner = wait_until(lambda: read_sidecar(path), 30, "an owner to advertise the store")
        victim = next(p for p in procs if p.pid == owner["pid"])
        wait_until(
            lambda: any(j for j in _reachable_count(path) if j >= 100),
            30,
            "100 runs stored before the owner is killed",
        )
        os.kill(victim.pid, signal.SIGKILL)
        results: dict[int, list[str]] = {}
        roles: list[str] = []
        for proc in procs:
            out, err = _finish(proc)
            if proc is victim:
                assert proc.returncode == -signal.SIGKILL
                continue
            assert proc.returncode == 0, err
            assert "internal error" not in err, err
            lines = [json.loads(line) for line in out.splitlines()]
            roles.append(lines[0]["role"])
            results[lines[-1]["pid"]] = lines[-1]["ids"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with proc:  # closes its pipes (also of those a failed assertion left) and waits
                pass
    assert roles.count("forwarder") == 7  # the owner was the eighth
    stored = _stored(path)
    expected = {run_id: ("completed", pid) for pid, ids in results.items() for run_id in ids}
    assert len(expected) == 7 * 202
    assert {k: stored.get(k) for k in expected} == expected


def _reachable_count(path: Path) -> list[int]:
    """The number of stored runs, through whoever owns the store now ([] if none can say)."""
    try:
        with open_sink(path, handover_timeout=0) as sink:
            return [sink.jobs.count()]
    except Exception:
        return []


_TAKEOVER = r"""
import json, os, sys, time
import chaperone_otel as c
from chaperone_otel import _setup

path, go = sys.argv[1], sys.argv[2]
c.configure(sink=path)
sink = _setup._setup.sink
print(json.dumps({"role": sink.role}), flush=True)
while not os.path.exists(go):  # the test says when: after the owner has exited
    time.sleep(0.01)
ids = []
for i in range(20):
    with c.supervised("after.owner") as run:
        pass
    ids.append(run.id)
c.flush(30)
print(json.dumps({"role": sink.role, "ids": ids, "pid": os.getpid()}), flush=True)
c.shutdown()
"""

_OWNER = r"""
import sys
import chaperone_otel as c
c.configure(sink=sys.argv[1])
with c.supervised("owner.run"):
    pass
print("owning", flush=True)
sys.stdin.readline()  # the test says when to exit
c.shutdown()
"""


@pytest.mark.slow
def test_a_forwarder_takes_the_store_over_when_its_owner_exits(tmp_path: Path) -> None:
    """An app that started while another owned the store forwards; after the owner exits
    (a cron script ending) it takes the file over and its later runs are stored."""
    path = tmp_path / "jobs.duckdb"
    go = tmp_path / "go"
    (tmp_path / "owner.py").write_text(_OWNER)
    (tmp_path / "app.py").write_text(_TAKEOVER)
    owner = subprocess.Popen(
        [sys.executable, str(tmp_path / "owner.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_CLEAN_ENV,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdin is not None
        assert owner.stdout.readline().strip() == "owning"
        app = _start(tmp_path / "app.py", path, go)
        assert app.stdout is not None
        assert json.loads(app.stdout.readline()) == {"role": "forwarder"}
        owner.stdin.write("exit\n")
        owner.stdin.flush()
        assert owner.wait(30) == 0
        go.touch()
        out, err = _finish(app)
        assert app.returncode == 0, err
        last = json.loads(out.splitlines()[-1])
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()  # waits, closes its pipes
    assert last["role"] == "owner"
    stored = _stored(path)
    assert {k: stored.get(k) for k in last["ids"]} == dict.fromkeys(
        last["ids"], ("completed", last["pid"])
    )
    assert [s for s, _pid in stored.values()].count("completed") == 21


_POOL = r"""
import json, multiprocessing as mp, os, sys
import chaperone_otel as c

path, method = sys.argv[1], sys.argv[2]

def init(path):
    c.configure(sink=path)

@c.supervised(name="pool.task")
def task(i):
    c.heartbeat(i=i)
    return c.current_job().id, os.getpid()

if __name__ == "__main__":
    if method == "fork":  # only the parent configures: a prefork server
        c.configure(sink=path)
        pool = mp.get_context("fork").Pool(3, maxtasksperchild=25)
    else:  # spawn: nothing is inherited, the initializer configures each worker
        pool = mp.get_context("spawn").Pool(3, initializer=init, initargs=(path,),
                                            maxtasksperchild=25)
    results = pool.map(task, range(100), chunksize=1)
    pool.close()
    pool.join()  # workers end with os._exit
    print(json.dumps(results), flush=True)
    c.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_record_into_the_parents_store(tmp_path: Path, method: str) -> None:
    """A ``multiprocessing`` pool: with fork, only the parent calls ``configure(sink=)``;
    with spawn, each worker does in the initializer (the parent not at all). 100 tasks
    give 100 completed runs, each with its worker's pid, though workers end with
    ``os._exit``. (Before: 0 runs from forked children; spawn workers failed in
    ``configure()`` on the file another worker held.)"""
    path = tmp_path / "jobs.duckdb"
    script = tmp_path / "pool.py"
    script.write_text(_POOL)
    proc = _start(script, path, method)
    out, err = _finish(proc, 240)
    assert proc.returncode == 0, err
    assert "internal error" not in err, err
    ran = dict(json.loads(out.strip().splitlines()[-1]))
    assert len(ran) == 100
    assert proc.pid not in ran.values()
    stored = _stored(path)
    assert {k: stored.get(k) for k in ran} == {k: ("completed", pid) for k, pid in ran.items()}


_READER = r"""
import json, sys, time
from chaperone_otel.sink import open_sink
path, stop = sys.argv[1], sys.argv[2]
import os
reads = errors = 0
first_error = None
while not os.path.exists(stop):
    try:
        with open_sink(path) as sink:  # what `chaperone-otel monitor` does per refresh
            sink.jobs.running().count()
        reads += 1
    except Exception as e:
        errors += 1
        first_error = first_error or repr(e)
    time.sleep(0.1)
print(json.dumps({"reads": reads, "errors": errors, "first": first_error}), flush=True)
"""

_SHORT_APP = r"""
import json, os, sys
import chaperone_otel as c
c.configure(sink=sys.argv[1])
ids = []
for i in range(5):
    with c.supervised("churn.job") as run:
        pass
    ids.append(run.id)
c.shutdown()
print(json.dumps(ids), flush=True)
"""


@pytest.mark.slow
def test_readers_at_10_hz_while_30_apps_start_and_stop(tmp_path: Path) -> None:
    """A reader opening the store 10 times a second (as ``monitor`` does) while 30 apps
    start, record and exit, three at a time: no ``configure()`` fails, no read fails, and
    all 150 runs are stored. (Before: 2 of 30 starts failed on the reader's lock.)"""
    path = tmp_path / "jobs.duckdb"
    stop = tmp_path / "stop"
    (tmp_path / "reader.py").write_text(_READER)
    (tmp_path / "app.py").write_text(_SHORT_APP)
    with open_sink(path, read_only=False):
        pass  # the store exists before the reader starts
    reader = _start(tmp_path / "reader.py", path, stop)
    ids: list[str] = []
    started: list[subprocess.Popen[str]] = []
    try:
        for wave in range(10):
            apps = [_start(tmp_path / "app.py", path) for _ in range(3)]
            started += apps
            for app in apps:
                out, err = _finish(app)
                assert app.returncode == 0, f"wave {wave}: {err}"
                assert "internal error" not in err, err
                ids += json.loads(out.strip().splitlines()[-1])
    finally:
        for app in started:
            if app.returncode is None:
                _finish(app, 30)
        stop.touch()
        out, err = _finish(reader, 30)
    assert reader.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["errors"] == 0, seen
    assert seen["reads"] > 10
    stored = _stored(path)
    assert len(ids) == 150
    assert all(stored.get(k, ("?", 0))[0] == "completed" for k in ids)


@pytest.mark.slow
def test_a_script_with_an_embedded_sink_exits_quietly(tmp_path: Path) -> None:
    """A cron-style script that only calls ``configure(sink=PATH)`` and runs a job, leaving
    the rest to the exit: it prints nothing, exits 0, and its run is stored. (Before: every
    such exit printed "Exception in thread chaperone-sink-http ... cannot schedule new
    futures after interpreter shutdown": the server's stop asked a thread pool for a thread
    after the interpreter had begun to exit.)"""
    path = tmp_path / "cron.duckdb"
    script = (
        "import sys, chaperone_otel as c\n"
        "c.configure(sink=sys.argv[1])\n"
        "with c.supervised('cron.nightly'):\n"
        "    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        env=_CLEAN_ENV,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    with open_sink(path) as sink:
        assert sink.jobs.named("cron.nightly").completed().count() == 1


_ORPHAN = r"""
import os, sys, time
import chaperone_otel as c

c.configure(sink=sys.argv[1])
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.close(write_end)
    os.read(read_end, 1)  # end of file: the parent, the store's owner, was killed
    with c.supervised("orphan.job"):
        pass
    began = time.monotonic()
    c.shutdown()
    print(f"shutdown {time.monotonic() - began:.1f}", flush=True)
    os._exit(0)
print(child, flush=True)
time.sleep(120)  # until the test kills this process
"""


@pytest.mark.slow
def test_a_forked_worker_whose_owner_was_killed_does_not_hold_its_exit(tmp_path: Path) -> None:
    """A prefork master owns the store and is SIGKILLed; its worker, forked from it, cannot
    open the file (its parent's DuckDB handle is inherited) and no other process owns it.
    Its shutdown waited its whole close timeout, 30 s (gunicorn's graceful timeout), for
    an owner that never came; it now gives up after a few seconds and says why."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    parent = _start(script, tmp_path / "jobs.duckdb")
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        line = parent.stdout.readline()  # the child's, on the same pipe
        assert line.startswith("shutdown "), line + (parent.stderr.read() if parent.stderr else "")
        assert float(line.split()[1]) < 12.0, line
        stderr = parent.stderr.read() if parent.stderr else ""
        assert "not stored" in stderr
        assert "was open in the process this one was forked from" in stderr
    finally:
        if parent.poll() is None:
            parent.kill()
        _finish(parent, 10)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
