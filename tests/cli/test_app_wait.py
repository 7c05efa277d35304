"""``chaperone-otel wait`` against an app that owns the store and exits when its job ends."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

_CRON_APP = r"""
import os, sys, time
import chaperone_otel as c

path, started, go, tail = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
setup = c.configure(sink=path)
with c.supervised("cron.job", heartbeat_interval=5):
    assert setup.sink.flush(10)
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(tail)
# The end of a cron script: the interpreter exits, shutdown() runs at exit and the owner
# gives up the file while `wait` polls it.
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)  # reaps it and closes its pipes


def _wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_wait_returns_0_when_a_cron_style_app_exits_at_the_end_of_its_job(tmp_path: Path) -> None:
    """20 of 20 tries exit 0: the app's job ends at a random moment while ``wait`` polls every
    50 ms, so polls land in every phase of the app's exit (server stopping, writer closing,
    lock released). (Before: the app removed its ``.owner.json`` before releasing the DuckDB
    lock, and a poll in between exited 3, about half the tries.)"""
    rng = random.Random(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))}
    cli = [sys.executable, "-m", "chaperone_otel.cli"]
    failures = []
    for attempt in range(20):
        path = tmp_path / f"cron{attempt}.duckdb"
        started, go = tmp_path / f"started{attempt}", tmp_path / f"go{attempt}"
        log = tmp_path / f"app{attempt}.log"
        with log.open("wb") as app_err:
            app = subprocess.Popen(
                [sys.executable, "-c", _CRON_APP, str(path), str(started), str(go),
                 str(rng.uniform(0.0, 0.3))],
                env=env,
                stderr=app_err,
            )
        waiter: subprocess.Popen[bytes] | None = None
        try:
            _wait_until(started.exists, 60, "the app's run to start")
            waiter = subprocess.Popen(
                [*cli, "wait", "--db", str(path), "--interval", "0.05", "--timeout", "60", "-q"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.0, 1.5))  # the job ends before, while, or after wait starts
            go.touch()
            _, err = waiter.communicate(timeout=90)
            assert app.wait(60) == 0, log.read_text()
            if waiter.returncode != 0:
                failures.append((attempt, waiter.returncode, err.decode()[-400:]))
        finally:
            if waiter is not None:
                _stop(waiter)
            _stop(app)
    assert failures == [], failures
