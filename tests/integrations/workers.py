"""Helpers for the integration tests that run real worker processes (not fixtures)."""

from __future__ import annotations

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
    ``app_dir`` (the test's app module) and this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(app_dir), SOURCE_ROOT]), PYTHONUNBUFFERED="1")
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
