"""docs/integrations.md's copy-paste setups work as the page has them.

For Celery, RQ and Dramatiq: the page's app modules, written to a ``proj`` package under
``tmp_path`` with only what must differ here changed (the store path, the Redis URL, which
names a database of its own on the session's redis-server, and ``load()``/``save()``, which
are the reader's), the worker started with the page's command (the framework's defaults:
Celery's prefork pool and Dramatiq's processes, one per core), a task sent as the page sends
it, and its run read back from the store the worker's processes share: completed, progress
100 %; nothing raised in the worker's log by the time it has shut down. The blocks are
found by their first line, as ``tests/test_docs_snippets.py`` finds them (it lists them as
not runnable on their own), so a changed block fails here rather than drifting. Workers are
stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import chaperone_otel as chaperone
from tests.conftest import REPO
from tests.integrations.workers import close_celery_client, stop, worker_env
from tests.processes import run_python
from tests.test_docs_snippets import find
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

PAGE = "docs/integrations.md"

_DOC_STORE = "/var/lib/proj/jobs.duckdb"
_DOC_REDIS = "redis://localhost:6379/0"

ROWS = 40
"""What the reader's ``load()`` returns here: ``ROWS`` rows, so progress has a total."""

_READER = f"""

def load(path):  # the reader's own: {ROWS} rows from the file at ``path``
    return [{{"path": path, "line": i}} for i in range({ROWS})]


def save(row):  # the reader's own
    pass
"""


def _block(marker: str, **replace: str) -> str:
    """The page's block that starts with ``marker``, each ``old`` replaced (and required)."""
    code = find(PAGE, marker).code
    for old, new in replace.items():
        assert old in code, f"{PAGE}: {old!r} is no longer in the block {marker!r}"
        code = code.replace(old, new)
    return code


def _command(prefix: str) -> list[str]:
    """The page's shell command line that starts with ``prefix``, split as a shell would."""
    lines = [ln.strip() for ln in (REPO / PAGE).read_text().splitlines()]
    found = [ln for ln in lines if ln.startswith(prefix)]
    assert len(found) == 1, f"{PAGE}: {len(found)} lines start with {prefix!r} (expected 1)"
    return shlex.split(found[0])


def _project(root: Path, modules: dict[str, str]) -> None:
    (root / "proj").mkdir()
    (root / "proj" / "__init__.py").write_text("")
    for name, code in modules.items():
        (root / "proj" / f"{name}.py").write_text(code)


@contextmanager
def _worker(argv: list[str], root: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The worker command ``argv`` (its program run by this interpreter's ``-m``), in
    ``root``, its output in ``root/worker.log``; stopped by PID (TERM, then KILL)."""
    log_path = root / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=root,
            env=worker_env(root),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc, log_path
        finally:
            stop(proc, grace=30)


def _stored(store: Path, proc: subprocess.Popen[bytes], log: Path, **where: Any) -> Any:
    """The one run of ``where`` (``run_id=`` or ``name=``) once it is terminal in the store."""

    def terminal() -> Any:
        assert proc.poll() is None, f"the worker exited: {log.read_text()}"
        if not store.exists():
            return None
        with chaperone.open_sink(store) as sink:
            jobs = sink.jobs
            jobs = jobs.with_id(where["run_id"]) if "run_id" in where else jobs.named(where["name"])
            rows = jobs.all()
        return rows[0] if len(rows) == 1 and rows[0].status not in ("pending", "running") else None

    return wait_until(terminal, 60, f"the run of {where} to end in the store")


def _assert_imported(run: Any, name: str, queue: str) -> None:
    """Completed, its progress from ``track()`` (100 % of ``ROWS``), attempt 1 on ``queue``,
    its timeout the page's 600 s limit."""
    assert (run.name, run.status, run.attempt, run.queue) == (name, "completed", 1, queue), run
    assert (run.progress, run.total) == (100.0, ROWS)
    assert run.error_type is None
    assert run.timeout_at is not None
    assert abs((run.timeout_at - run.started_at).total_seconds() - 600) < 1


def _assert_quiet(*logs: Path) -> None:
    """Nothing raised, and no internal error of ours, in the worker's logs, read once it has
    shut down (its exit, with the store's hand-over, included)."""
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text, text
        assert "internal error" not in text, text


def test_celerys_setup_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    """``proj/tasks.py`` as the page has it, ``celery -A proj.tasks worker`` (prefork, one
    child per core, the store owned by the worker's main process), a task sent by name."""
    from celery import Celery

    broker = redis_url.rsplit("/", 1)[0] + "/10"
    store = tmp_path / "jobs.duckdb"
    tasks = _block(
        "# proj/tasks.py  (the module named by `celery -A proj.tasks worker`)",
        **{_DOC_STORE: str(store), _DOC_REDIS: broker},
    )
    _project(tmp_path, {"tasks": tasks + _READER})
    argv = ["celery", "-A", "proj.tasks", "worker"]  # the block's first line names it
    # No result backend here: the run is read from the store, and a redis backend's pubsub
    # outlives the client (close_celery_client's docstring).
    client = Celery("client", broker=broker)
    try:
        with _worker([*argv, "--loglevel=warning", "--without-gossip", "--without-mingle"],
                     tmp_path) as (proc, log):

            def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                return bool(client.control.ping(timeout=0.5))

            wait_until(ready, 60, "the celery worker to answer ping")
            task_id = client.send_task("proj.tasks.import_file", args=["/data/a.csv"]).id
            run = _stored(store, proc, log, run_id=task_id)
            _assert_imported(run, "proj.tasks.import_file", "celery")
        _assert_quiet(log)
    finally:
        close_celery_client(client)


def test_rqs_setup_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    """``proj/worker.py`` and ``proj/jobs.py`` as the page has them, the page's ``rq
    worker`` command (a forking worker: the main process owns the store, each horse
    forwards), and the page's enqueue run as a script of its own."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    store = tmp_path / "jobs.duckdb"
    worker = _block(
        "# proj/worker.py  (the worker class: `rq worker -w proj.worker.Worker`)",
        **{_DOC_STORE: str(store)},
    )
    jobs = _block("# proj/jobs.py")
    _project(tmp_path, {"worker": worker, "jobs": jobs + _READER})
    argv = _command("rq worker -w proj.worker.Worker")
    assert argv[:2] == ["rq", "worker"]
    assert _DOC_REDIS in argv
    argv = ["rq.cli", *argv[1:]]  # `rq` is run as `python -m rq.cli`
    argv[argv.index(_DOC_REDIS)] = url
    with _worker(argv, tmp_path) as (proc, log):
        from redis import Redis
        from rq import Worker

        connection = Redis.from_url(url)
        try:

            def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                return bool(Worker.all(connection=connection))

            wait_until(ready, 60, "the rq worker to register")
        finally:
            connection.close()
        enqueue = _block("from redis import Redis", **{"Redis()": f"Redis.from_url({url!r})"})
        run_python(enqueue, timeout=60, cwd=tmp_path)
        run = _stored(store, proc, log, name="proj.jobs.import_file")
        _assert_imported(run, "proj.jobs.import_file", "default")
    _assert_quiet(log)


def test_dramatiqs_setup_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    """``proj/tasks.py`` as the page has it, ``dramatiq proj.tasks`` (its default: one
    worker process per core, each configuring the same store, so one owns it and the other
    forwards), a message sent to the actor by name from a broker of the test's own."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    url = redis_url.rsplit("/", 1)[0] + "/12"
    store = tmp_path / "jobs.duckdb"
    tasks = _block(
        "# proj/tasks.py  (`dramatiq proj.tasks`)", **{_DOC_STORE: str(store), _DOC_REDIS: url}
    )
    _project(tmp_path, {"tasks": tasks + _READER})
    argv = ["dramatiq", "proj.tasks"]  # the block's first line names it
    log_file = tmp_path / "dramatiq.log"
    with _worker([*argv, "--log-file", str(log_file)], tmp_path) as (proc, log):

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return log_file.exists() and "ready for action" in log_file.read_text()

        wait_until(ready, 60, "the dramatiq worker to boot")
        broker = RedisBroker(url=url, middleware=[])
        try:
            broker.declare_queue("default")
            message = broker.enqueue(dramatiq.Message(
                queue_name="default", actor_name="import_file", args=("/data/a.csv",),
                kwargs={}, options={},
            ))
        finally:
            broker.close()
        run = _stored(store, proc, log, run_id=message.message_id)
        _assert_imported(run, "import_file", "default")
    _assert_quiet(log, log_file)
