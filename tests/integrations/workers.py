"""Helpers for the integration tests that run real worker processes (not fixtures)."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import chaperone_otel

SOURCE_ROOT = str(Path(chaperone_otel.__file__).resolve().parent.parent)
"""The checkout under test: a worker imports this package, not an installed copy."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[Any], grace: float) -> None:
    """Stop ``proc`` by its PID: TERM, then KILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def worker_env(app_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker process: no OTel/chaperone settings of the caller's,
    ``app_dir`` (the test's app module) and this checkout first on the path.

    Dramatiq's default middleware includes its ``Prometheus`` exporter, which binds
    0.0.0.0:9191 and keeps its files in one folder under ``/tmp`` unless told otherwise:
    two workers (a test's and the last one's, still shutting down) then fought over the
    port, and the loser's traceback failed the test. Each worker gets a free loopback port
    and a folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(app_dir), SOURCE_ROOT]), PYTHONUNBUFFERED="1")
    env.update(
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(free_port()),
        dramatiq_prom_db=str(app_dir / "dramatiq-prometheus"),
    )
    env.update(extra)
    return env


def schedule_slots(store: str, name: str) -> list[Any]:
    """The stored slots of schedule ``name``."""
    with chaperone_otel.open_sink(store) as sink:
        return sink.schedules.named(name).all()


def dispatched_missed(store: str, name: str, at_least: int = 2) -> list[Any]:
    """The slots of ``name`` that were dispatched yet missed (a queue nobody consumes), once
    there are ``at_least`` of them; else empty (for ``wait_until``)."""
    missed = [s for s in schedule_slots(store, name) if s.state == "missed" and s.dispatched_at]
    return missed if len(missed) >= at_least else []


def close_celery_client(app: Any) -> None:
    """Close the redis result backend a test's Celery client used, then the app.

    ``Celery.close()`` only drops the app's reference to its connection pool; the result
    backend's pubsub (``result.get()``) stayed open until the garbage collector found it,
    and its ``ResourceWarning`` then failed whichever test it happened to be collected in
    (``filterwarnings = error``; seen on 3.13). The broker's pool is not closed here: kombu
    shares it between every app with the same broker URL (other fixtures' clients), and
    closes its connections itself. Drop the client's ``AsyncResult`` objects first: one
    that dies after this unsubscribes, which reopens the pubsub unless the consumer has
    none: a stopped consumer keeps its closed pubsub, and before Celery 5.7 its
    ``cancel_for()`` unsubscribes every key (5.7 only keys still subscribed), so a result
    the test still held reopened it once the test returned.
    """
    # The unreachable results (in reference cycles) go first, while the pubsub is open.
    gc.collect()
    try:
        backend = app.backend  # this thread's (made now if never used: it opens nothing)
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
            consumer._pubsub = None  # what cancel_for() checks before it unsubscribes
        redis_client = getattr(backend, "client", None)
        if redis_client is not None:
            redis_client.connection_pool.disconnect()
    finally:
        app.close()
