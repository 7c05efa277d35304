"""A run's start and finish across ``fork``: a child never writes for its parent's run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_FORK_OUT_OF_THE_BLOCK = r"""
import glob, hashlib, json, os, sys, time
import chaperone_otel as c
from chaperone_otel._events import add_listener
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

path, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
PARENT = os.getpid()

def note(kind, **what):
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "kind": kind, **what}) + "\n")

class ChildRecords:
    # Anything the runtime publishes in the child is noted (the parent's run must get none).
    def on_record(self, record):
        if os.getpid() != PARENT:
            note("record", event=record.event_name,
                 run=record.attributes.get("chaperone.job.run.id"))

class ChildSpanEnds(SpanProcessor):
    def on_end(self, span):
        if os.getpid() != PARENT:
            note("span_end", name=span.name)

add_listener(ChildRecords())
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())  # the application's: configure(sink=) sets none
setup = c.configure(sink=path)  # flush period 15 s: the parent's store is idle while the child lives
trace.get_tracer_provider().add_span_processor(ChildSpanEnds())

def files():
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(path + "*"))
            if not p.endswith(".json") and os.path.isfile(p)}  # not the spill directory

def row(run_id):
    for j in setup.sink.sink.jobs.all():
        if j.id == run_id:
            return j.status, j.pid
    return None

def block():
    with c.supervised("parent.job", heartbeat_interval=60) as run:
        run_id = run.id
        assert setup.sink.flush(10)
        before = files()
        pid = os.fork()
        if pid == 0:
            note("child", current=c.current_job() is None, beat=c.heartbeat(),
                 progress=c.report_progress(1, 2), tracked=list(c.track([1, 2])))
            for _ in range(1000):
                run.heartbeat(n=1)
            run.report_progress(1, 2)
            time.sleep(0.3)  # long enough for a monitor in the child to flush
            if mode == "exit":
                sys.exit(3)   # SystemExit out of the parent's block
            return None       # leaves the parent's block by returning
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise SystemExit("child hung")
            time.sleep(0.02)
        note("parent", child_exit=os.waitstatus_to_exitcode(status),
             files_unchanged=files() == before, during=row(run_id), run=run_id)
    assert setup.sink.flush(10)
    note("parent", after=row(run_id))
    return "parent"

if block() is None:
    sys.exit(0)  # the child, after returning: a normal exit, atexit and all
c.shutdown()
"""

_DUCKDB_1 = int(__import__("duckdb").__version__.split(".")[0]) < 2
_ON_DUCKDB_1 = pytest.mark.skipif(
    _DUCKDB_1,
    reason="duckdb 1.x (the newest on Python 3.10) crashes (SIGSEGV) in a forked child at"
    " exit while the parent holds a store connection; duckdb 2 does not",
)


@pytest.mark.slow
@_ON_DUCKDB_1
@pytest.mark.parametrize("mode", ["return", "exit"])
def test_forked_child_leaving_the_parents_block_does_not_finish_its_run(
    tmp_path: Path, mode: str
) -> None:
    """A child forked inside ``with supervised()`` that returns or ``sys.exit()``s out of it
    publishes nothing for the parent's run, ends no span, sees no current run, and leaves
    the parent's store untouched: the parent's run stays ``running`` with the parent's pid
    until the parent ends it, ``completed`` after. (Without the fix the child published
    ``finished`` and ``heartbeat`` records and ended the span, and its exit closed its copy
    of the parent's DuckDB connection, checkpointing the parent's file and crashing.)"""
    log = tmp_path / "log.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FORK_OUT_OF_THE_BLOCK,
            str(tmp_path / "jobs.duckdb"),
            str(log),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    parent = [x for x in lines if x["kind"] == "parent"]
    child = [x for x in lines if x["kind"] == "child"]
    written = [x for x in lines if x["kind"] in ("record", "span_end")]
    assert written == [], written
    assert len(child) == 1
    assert child[0]["current"]  # current_job() is None in the child
    assert child[0]["beat"] is False
    assert child[0]["progress"] is False
    assert child[0]["tracked"] == [1, 2]
    during, after = parent[0], parent[1]
    parent_pid = during["pid"]
    assert during["child_exit"] == (3 if mode == "exit" else 0), proc.stderr
    assert during["files_unchanged"]
    assert during["during"] == ["running", parent_pid]
    assert after["after"] == ["completed", parent_pid]


_EXIT_WITH_LIVE_RUNS = r"""
import sys, threading
import chaperone_otel as c
from chaperone_otel import supervised

c.configure(sink=sys.argv[1])

@supervised(name="exit.generator")
def rows():
    yield 1
    yield 2

it = rows()
next(it)  # left unfinished at module level

started = threading.Event()

@supervised(name="exit.daemon")
def forever():
    started.set()
    threading.Event().wait()

threading.Thread(target=forever, daemon=True).start()
started.wait(10)
with supervised("exit.completed"):
    pass
"""


def test_runs_still_live_at_interpreter_exit_end_cancelled(tmp_path: Path) -> None:
    """A process that exits normally while a run is live (a daemon thread, a generator
    never finished): the run's finish, if it came at all, came after atexit had closed the
    store, so the run stayed ``running`` for ever and was later judged lost (a false
    alert). They end ``cancelled`` at exit, saying why; a finished run is untouched."""
    from chaperone_otel import open_sink
    from chaperone_otel._setup import EXIT_MESSAGE
    from tests.processes import run_python

    store = tmp_path / "exit.duckdb"
    run_python(_EXIT_WITH_LIVE_RUNS, store)
    with open_sink(str(store)) as sink:
        rows = sink.sql("SELECT name, status, error_type, error_message FROM jobs ORDER BY name")
    assert [tuple(r) for r in rows.rows] == [
        ("exit.completed", "completed", None, None),
        ("exit.daemon", "cancelled", "SystemExit", EXIT_MESSAGE),
        ("exit.generator", "cancelled", "SystemExit", EXIT_MESSAGE),
    ]


_SIGTERM_RECIPE = r"""
import signal, sys, threading
import chaperone_otel as c
c.configure(sink=sys.argv[1])
signal.signal(signal.SIGTERM, signal.default_int_handler)  # docs/concepts.md's recipe
with c.supervised("cron.stopped"):
    print("ready", flush=True)
    threading.Event().wait(60)
"""


def test_the_documented_sigterm_recipe_records_the_run_cancelled(tmp_path: Path) -> None:
    """docs/concepts.md ("Flushing before a process ends"): with SIGTERM raising
    KeyboardInterrupt, a job stopped by ``timeout``/systemd/Kubernetes is in the store as
    ``cancelled``, not left ``running`` to be judged lost."""
    import signal

    from chaperone_otel import open_sink
    from tests.processes import CLEAN_ENV, stop

    store = tmp_path / "stopped.duckdb"
    with subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_RECIPE, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=CLEAN_ENV,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            proc.wait(90)  # its atexit closes the store: slow on a loaded machine
        finally:
            stop(proc)
    with open_sink(str(store)) as sink:
        rows = sink.sql("SELECT name, status, error_type FROM jobs").rows
    assert [tuple(r) for r in rows] == [("cron.stopped", "cancelled", "KeyboardInterrupt")]
