"""A real Celery worker for the tests: its app module, started and stopped by PID.

The app module (written to a temporary directory) configures the store at import, so the
worker's main process owns it and prefork children forward to it. Every worker gets its own
redis database, so messages one worker left (an unacked delivery) never reach another.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery, __version__

import chaperone_otel as chaperone
from tests.integrations import span_file
from tests.integrations.workers import close_celery_client, stop, worker_env
from tests.waiting import wait_until

CELERY_RELEASE = tuple(int(part) for part in __version__.split(".")[:2])
"""The installed Celery's (major, minor): a few outcomes are Celery's own and differ by
release (the extra supports 5.3 and later)."""

APP = textwrap.dedent(
    """
    import os
    import time

    from celery import Celery
    from celery.signals import worker_init
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.celery import instrument
    from tests.integrations import span_file

    chaperone.configure(
        sink=os.environ["TEST_JOBS_STORE"] or None,  # and/or OTLP to a sink serve
        otlp_endpoint=os.environ["TEST_OTLP"] or None,
        prometheus_port=int(os.environ["TEST_METRICS_PORT"]) or None,
    )
    span_file.install(os.environ["TEST_SPANS"])  # every span any process ends, as JSON lines
    app = Celery("celery_app", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BROKER"])
    app.conf.worker_max_tasks_per_child = int(os.environ["TEST_MAX_TASKS_PER_CHILD"])
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    instrument(app)


    @worker_init.connect
    def otel_celery(**_):  # connected after instrument(app), as OTel's docs have it
        CeleryInstrumentor().instrument()


    class Declined(Exception):
        pass


    @app.task(name="it.progress")
    def progress(n):
        for _ in chaperone.track(range(n)):
            pass
        return n


    @app.task(name="it.flaky", bind=True, max_retries=2)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError(f"try {self.request.retries}"), countdown=0)
        return "ok"


    @app.task(name="it.fail")
    def fail():
        raise Declined("card declined")


    @app.task(name="it.noop")
    def noop(i):
        return i


    @app.task(name="it.sleepy", chaperone_heartbeat_interval=1)
    def sleepy(seconds):  # never heartbeats: the default liveness lease keeps it alive
        time.sleep(seconds)
        return seconds


    @app.task(name="it.sleepy_promised", chaperone_heartbeat_interval=1,
              chaperone_lease="heartbeat")
    def sleepy_promised(seconds):  # promised heartbeats it never sends
        time.sleep(seconds)
        return seconds


    @app.task(name="it.hang")
    def hang(seconds):
        time.sleep(seconds)
        return seconds


    @app.task(name="it.until")
    def until(marker, limit=60):  # runs until the test creates ``marker`` (or ``limit`` s)
        deadline = time.monotonic() + limit
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.path.exists(marker)


    @app.task(name="it.overtime", time_limit=2)
    def overtime(seconds=30):
        time.sleep(seconds)
        return seconds


    @app.task(name="it.soft", soft_time_limit=1)
    def soft():
        time.sleep(10)


    @app.task(name="it.redelivered", acks_late=True, reject_on_worker_lost=True)
    def redelivered(marker):
        if not os.path.exists(marker):  # the first delivery waits to be killed
            open(marker, "w").close()
            time.sleep(120)
        return "second"
    """
)


class Worker:
    """A running worker: its process, its store, a client of its broker, and the ``/metrics``
    that count its runs (its own, or the fleet's of the ``sink serve`` it exports to)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        root: Path,
        store: str,
        client: Celery,
        metrics_url: str | None = None,
    ) -> None:
        self.metrics_url = metrics_url
        self.proc = proc
        self.root = root
        self.store = store
        self.client = client

    @property
    def spans_path(self) -> Path:
        """The file every process of the worker appends its ended spans to."""
        return self.root / "spans.jsonl"

    def jobs(self, name: str) -> list[Any]:
        with chaperone.open_sink(self.store) as sink:
            return sink.jobs.named(name).all()

    def log(self) -> str:
        return (self.root / "worker.log").read_text(errors="replace")

    def spans(self) -> list[dict[str, Any]]:
        """The spans every process of the worker ended so far."""
        return span_file.read(self.spans_path)


@contextmanager
def celery_worker(
    redis_url: str,
    root: Path,
    pool: str,
    *,
    db: int,
    max_tasks_per_child: int = 2,
    metrics_port: int = 0,
    sink_serve: tuple[str, str] | None = None,
    also_otlp: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Worker]:
    """``celery -A celery_app worker -P <pool> -c 2`` on redis database ``db``, ready to
    answer ping; stopped by PID (TERM, then KILL) on exit if still running. Its store is a
    file of its own, or with ``sink_serve=(store path, URL)`` it exports over OTLP there.
    ``also_otlp``: a ``sink serve`` URL the worker exports to as well as to its own store
    (its fleet ``/metrics`` are then the worker's ``metrics_url``)."""
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    (root / "celery_app.py").write_text(APP)
    store = sink_serve[0] if sink_serve else str(root / "jobs.duckdb")
    otlp = sink_serve[1] if sink_serve else also_otlp
    if otlp:
        metrics_url: str | None = f"{otlp}/metrics"
    else:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
    env = worker_env(
        root,
        TEST_JOBS_STORE="" if sink_serve else store,
        TEST_OTLP=otlp or "",
        TEST_BROKER=broker,
        TEST_MAX_TASKS_PER_CHILD=str(max_tasks_per_child),
        TEST_METRICS_PORT=str(metrics_port),
        TEST_SPANS=str(root / "spans.jsonl"),
    )
    with (root / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_app",
                "worker",
                "-P",
                pool,
                "-c",
                "2",
                "--loglevel=warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *extra_args,
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = Celery("client", broker=broker, backend=broker)
        try:
            worker = Worker(proc, root, store, client, metrics_url)

            def ready() -> bool:
                assert proc.poll() is None, worker.log()
                return bool(client.control.ping(timeout=0.5))

            wait_until(ready, 60, "the celery worker to answer ping")
            yield worker
        finally:
            try:
                close_celery_client(client)
            finally:
                stop(proc, grace=30)


def running_pid(worker: Worker, name: str, task_id: str) -> Any:
    """The pid of ``task_id``'s running run, once the store has it."""
    rows = [j for j in worker.jobs(name) if j.id == task_id and j.status == "running"]
    return rows[0].pid if rows and rows[0].pid else None


def closed(worker: Worker, name: str, task_id: str, status: str, timeout: float = 20) -> Any:
    """Wait for ``task_id``'s run to be stored with ``status``; return it."""

    def found() -> Any:
        rows = [j for j in worker.jobs(name) if j.id == task_id and j.status == status]
        return rows[0] if rows else None

    return wait_until(found, timeout, f"{name} {task_id} {status} in the store")


def run_span_tree(worker: Worker, job: Any, **expected: Any) -> dict[str, Any]:
    """The run span of ``job`` (a stored run), once ended, asserted a child of the OTel
    Celery instrumentation's ``run/<task>`` span in the same trace, with the outcome
    ``expected`` says (:func:`tests.integrations.span_file.run_span`)."""
    return span_file.run_span(worker.spans_path, job, parent=f"run/{job.name}", **expected)
