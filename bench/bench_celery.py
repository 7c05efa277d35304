"""Issue 13: trivial-task throughput of a Celery worker, bare and supervised, side by side.

One redis-server (broker and result backend) on a free loopback port, one ``sink serve``.
Each round starts a prefork worker (concurrency 2) twice, with the same configuration:

* **bare**: the app as is;
* **supervised**: ``chaperone.configure(otlp_endpoint=<the sink>)`` and
  ``integrations.celery.instrument(app)`` in the app module (each task a run, its lifecycle
  records and span exported over OTLP/HTTP to the sink, as the docs recommend for prefork).

A client queues ``--tasks`` trivial tasks, then the worker starts and drains the queue; each
task returns the time it ran, and tasks/s is counted from the first task's time to the last
one's (the worker's start-up and the client's result fetching are outside the window).
Rounds interleave the two modes (these machines are noisy), and the medians are compared.
The sink's ``records_ingested`` counter says whether every lifecycle record of the
supervised rounds arrived (two per task).

Run: ``.venv/bin/python bench/bench_celery.py [--tasks 3000] [--rounds 3]`` (needs Debian's
``redis-server``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sink_otlp import ingested_logs, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]

APP = """
import os
from celery import Celery

app = Celery("bench_app", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BROKER"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
if os.environ.get("BENCH_SUPERVISE") == "1":
    import chaperone_otel
    from chaperone_otel.integrations.celery import instrument

    chaperone_otel.configure(otlp_endpoint=os.environ["BENCH_SINK"], service_name="bench-celery")
    instrument(app)


@app.task
def noop(i):
    import time
    return time.time()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def one_round(app_dir: Path, broker: str, sink: str, tasks: int, supervise: bool) -> float:
    """Tasks per second of one worker run over ``tasks`` trivial tasks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(app_dir), str(ROOT)]),
        BENCH_BROKER=broker,
        BENCH_SINK=sink,
        BENCH_SUPERVISE="1" if supervise else "0",
    )
    sys.path.insert(0, str(app_dir))
    os.environ["BENCH_BROKER"] = broker
    os.environ["BENCH_SUPERVISE"] = "0"  # the client only sends
    import bench_app

    results = [bench_app.noop.delay(i) for i in range(tasks)]  # queued before the worker
    log = (app_dir / f"worker-{int(supervise)}.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "--loglevel=warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=app_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ran = [result.get(timeout=600) for result in results]
        for result in results:
            result.forget()
    finally:
        _stop(worker)
        log.close()
    took = max(ran) - min(ran)
    return tasks / took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "needs redis-server (apt-get install --no-install-recommends redis-server)"
        )
    tmp = Path(tempfile.mkdtemp())
    (tmp / "bench_app.py").write_text(APP)
    port = _free_port()
    redis = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sink_proc, sink_url = start_server(str(tmp / "sink.duckdb"), "commit")
    broker = f"redis://127.0.0.1:{port}/0"
    rates: dict[str, list[float]] = {"bare": [], "supervised": []}
    try:
        time.sleep(0.5)  # redis-server binds within milliseconds; the first ping retries
        for _ in range(args.rounds):
            for mode in ("bare", "supervised"):
                rates[mode].append(
                    one_round(tmp, broker, sink_url, args.tasks, mode == "supervised")
                )
        ingested = ingested_logs(sink_url)
    finally:
        stop_server(sink_proc)
        _stop(redis, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    bare = statistics.median(rates["bare"])
    supervised = statistics.median(rates["supervised"])
    expected = 2 * args.tasks * args.rounds
    print(
        f"prefork c=2, redis broker and backend, {args.rounds} interleaved rounds of "
        f"{args.tasks:,} trivial tasks"
    )
    print(
        f"bare        {bare:8.0f} tasks/s  (rounds: {', '.join(f'{r:.0f}' for r in rates['bare'])})"
    )
    print(
        f"supervised  {supervised:8.0f} tasks/s  (rounds: "
        f"{', '.join(f'{r:.0f}' for r in rates['supervised'])}), OTLP to sink serve"
    )
    print(f"ratio       {supervised / bare:8.2f}x bare (aim >= 0.9x)")
    print(f"lifecycle records at the sink: {ingested:,} of {expected:,}")


if __name__ == "__main__":
    main()
