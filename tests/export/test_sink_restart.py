"""A `sink serve` restarted while workers run loses nothing they sent meanwhile.

The SDK's OTLP exporters retry a batch only within ``OTEL_EXPORTER_OTLP_TIMEOUT`` (10 s),
~7 s of refused connections, then drop it: a user trial lost 6 of 25 runs over a 34 s
restart. The exporters ``configure()`` installs keep the batch for up to five minutes
(``export/_otlp_http.PATIENCE``). A real worker process exporting to a real `sink serve`
process, which is stopped by its PID until the worker's SDK has given up on a batch at
least once, then started again on the same port and store.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import chaperone_otel as chaperone
from tests.integrations.workers import free_port, stop
from tests.processes import CLEAN_ENV
from tests.sink.serve_process import ServeProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

WORKER = """
import sys, time
from pathlib import Path
import chaperone_otel as c
c.configure(service_name="restart")  # OTLP logs only, from the environment
done = Path(sys.argv[2])
ids = []
while not done.exists():
    with c.supervised("restart.job", queue="r") as run:
        ids.append(run.id)
        run.heartbeat(n=len(ids))
    time.sleep(0.05)
started = time.monotonic()
c.shutdown()
print(",".join(ids), flush=True)
print(f"shutdown {time.monotonic() - started:.1f}", flush=True)
"""

GAVE_UP = "Failed to export logs batch due to timeout, max retries or shutdown"


def test_runs_finished_while_the_sink_restarts_all_reach_the_store(tmp_path: Path) -> None:
    store, port = tmp_path / "jobs.duckdb", free_port()
    done, err = tmp_path / "done", tmp_path / "worker.stderr"
    sink = ServeProcess(store, "--port", str(port))
    with err.open("wb") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, "-", str(done)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            # Lifecycle records only: a run's span alone would also make its row
            # (completed), hiding the loss of its records.
            env={
                **CLEAN_ENV,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
            },
            text=True,
        )
    try:
        with chaperone.open_sink(str(store)) as remote:  # follows the owner's URL
            wait_until(lambda: remote.jobs.named("restart.job").count() >= 5, 60,
                       "runs before the restart")
        sink.stop()
        # Down until the worker's SDK has given up on a batch: without the exporter's
        # patience that batch, and every one after it until the restart, was lost.
        wait_until(lambda: GAVE_UP in err.read_text(), 90, "the SDK to give up on a batch")
        assert worker.poll() is None
        sink = ServeProcess(store, "--port", str(port))
        with chaperone.open_sink(str(store)) as remote:
            seen = remote.jobs.named("restart.job").count()
            wait_until(lambda: remote.jobs.named("restart.job").count() > seen + 5, 120,
                       "runs after the restart")
        done.touch()
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.read_text()
        ids = set(out.splitlines()[0].split(","))
        shutdown_seconds = float(out.splitlines()[1].split()[1])
        assert shutdown_seconds < 15  # the sink is up: nothing to wait for
        with chaperone.open_sink(str(store)) as remote:
            def stored() -> set[str]:
                # Its lifecycle records, not only its span: the heartbeat travels in them.
                rows = remote.jobs.named("restart.job").all()
                return {r.id for r in rows if r.status == "completed" and r.heartbeat_count}

            wait_until(lambda: ids <= stored(), 60, "every run completed in the store")
        assert len(ids) > 20
    finally:
        done.touch()
        stop(worker, grace=30)
        sink.stop()


EXITS = """
import sys, time
import chaperone_otel as c
c.configure(otlp_endpoint=sys.argv[1])
with c.supervised("cron.x") as run:
    run.heartbeat()
started = time.monotonic()
c.shutdown()
print(f"{time.monotonic() - started:.1f}", flush=True)
"""


def test_a_process_whose_sink_is_down_exits_without_waiting_for_it(tmp_path: Path) -> None:
    """The patience ends at shutdown: a cron script whose sink is down exits after the
    SDK's own retries (as before, ~10 s), not after minutes."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXITS, f"http://127.0.0.1:{free_port()}"],
        check=False, capture_output=True, text=True, timeout=120, env=CLEAN_ENV,
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) < 40, done.stderr
    assert time.monotonic() - started < 60
