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

To take the supervised worker's cost apart: ``--supervise configure-only`` (``configure()``
with OTLP export, no task supervised), ``--supervise no-export`` (every task a run, nothing
exported), and ``--sink null`` (export to a server that answers 200 and stores nothing: the
sink's own CPU off the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

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

    variant = os.environ.get("BENCH_VARIANT", "full")  # --supervise
    if variant == "no-export":
        chaperone_otel.configure(service_name="bench-celery")
    else:
        chaperone_otel.configure(
            otlp_endpoint=os.environ["BENCH_SINK"], service_name="bench-celery"
        )
    if variant != "configure-only":
        instrument(app)


if os.environ.get("BENCH_GC_DIR"):  # --breakdown: the collector's time in each pool child
    import gc, json, time as _time
    from celery import signals

    _gc = {"seconds": 0.0, "collections": [0, 0, 0], "tasks": 0, "at": 0.0}

    def _collecting(phase, info):
        if phase == "start":
            _gc["at"] = _time.perf_counter()
        else:
            _gc["seconds"] += _time.perf_counter() - _gc["at"]
            _gc["collections"][info["generation"]] += 1

    @signals.worker_process_init.connect
    def _watch(**_):
        gc.callbacks.append(_collecting)

    @signals.task_postrun.connect
    def _count(**_):
        _gc["tasks"] += 1

    @signals.worker_process_shutdown.connect
    def _report(**_):
        path = os.path.join(os.environ["BENCH_GC_DIR"], f"gc-{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump(_gc, out)


@app.task
def noop(i):
    import time
    return time.time()
"""


NULL_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
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


PY_SPY = Path(sys.executable).with_name("py-spy")


class _CpuSampler:
    """CPU time of every process of a round (and of each thread), sampled every 0.2 s, for
    the per-task breakdown (``--breakdown``): the worker's main process, its pool children
    (their job thread and each exporter thread apart), the sink, redis and this client.

    Process totals come from the process (threads that ended are in them); a thread's own
    time from ``/proc/PID/task/TID``, named by ``py-spy dump`` (Python 3.11 does not give
    its threads' names to the OS)."""

    def __init__(self, roles: dict[str, int], worker: int) -> None:
        self.roles = roles
        self.worker = worker
        self.samples: list[tuple[float, dict[str, tuple[float, dict[int, float]]]]] = []
        self.names: dict[int, str] = {}
        self.pids_seen: dict[str, int] = dict(roles)
        self.profile: Path | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _pids(self) -> dict[str, int]:
        pids = dict(self.roles)
        try:
            children = psutil.Process(self.worker).children()
        except psutil.Error:
            children = []
        for i, child in enumerate(sorted(children, key=lambda c: c.pid)):
            pids[f"child{i}"] = child.pid
        self.pids_seen.update(pids)
        return pids

    def _loop(self) -> None:
        named = False
        while not self.stop.wait(0.2):
            now = time.time()
            snap: dict[str, tuple[float, dict[int, float]]] = {}
            for role, pid in self._pids().items():
                try:
                    proc = psutil.Process(pid)
                    times = proc.cpu_times()
                    listed = proc.threads()
                    threads = {t.id: t.user_time + t.system_time for t in listed}
                    # the kernel's share (syscalls: sockets, pipes, futexes), as thread -id
                    threads.update({-t.id: t.system_time for t in listed})
                except psutil.Error:
                    continue
                snap[role] = (times.user + times.system, threads)
            self.samples.append((now, snap))
            if not named and len(self.samples) == 10 and PY_SPY.exists():
                named = True
                for role, pid in self._pids().items():
                    if role.startswith("child") or role == "sink":
                        self._name_threads(pid)
                    if self.profile is not None and role != "client":
                        subprocess.Popen(
                            [
                                str(PY_SPY),
                                "record",
                                "-r",
                                "250",
                                "-d",
                                "4",
                                "-f",
                                "raw",
                                "-t",
                                "-o",
                                str(self.profile / f"{role}.txt"),
                                "-p",
                                str(pid),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )

    def _name_threads(self, pid: int) -> None:
        dump = subprocess.run(
            [str(PY_SPY), "dump", "--nonblocking", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for tid, name in re.findall(r'^Thread (\d+) \([a-z]+\): "([^"]*)"', dump, re.M):
            self.names[int(tid)] = name

    def per_task(self, ran: list[float]) -> dict[str, float]:
        """Microseconds of CPU per task in the steady part of the round, by process and
        (for the pool children and the sink) by thread."""
        self.stop.set()
        self.thread.join()
        first, last = min(ran), max(ran)
        inside = [s for s in self.samples if first + 0.3 <= s[0] <= last - 0.3]
        if len(inside) < 2:
            return {}
        (t0, a), (t1, b) = inside[0], inside[-1]
        pids_of = self.pids_seen
        count = sum(1 for r in ran if t0 <= r <= t1)
        out: dict[str, float] = {}
        for role, (total, threads) in b.items():
            if role not in a:
                continue
            group = "children" if role.startswith("child") else role
            spent = (total - a[role][0]) * 1e6 / count
            out[group] = out.get(group, 0.0) + spent
            if group in ("children", "sink"):
                named = 0.0
                for tid, cpu in threads.items():
                    before = a[role][1].get(tid)
                    if before is None:
                        continue
                    if tid < 0:  # the kernel's part of a thread's time, listed apart
                        name = self.names.get(-tid, "?")
                        if -tid == pids_of[role] or name == "MainThread":
                            name = "job thread"
                        key = f"{group}: {name}, in the kernel"
                        out[key] = out.get(key, 0.0) + (cpu - before) * 1e6 / count
                        continue
                    name = self.names.get(tid, "?")
                    if tid == pids_of[role] or name == "MainThread":
                        name = "job thread"
                    key = f"{group}: {name}"
                    share = (cpu - before) * 1e6 / count
                    out[key] = out.get(key, 0.0) + share
                    named += share
                key = f"{group}: threads that ended"
                out[key] = out.get(key, 0.0) + max(0.0, spent - named)
        return out


def one_round(
    app_dir: Path,
    broker: str,
    sink: str,
    tasks: int,
    supervise: bool,
    pids: dict[str, int] | None = None,
    profile: Path | None = None,
    extra_env: dict[str, str] | None = None,
    root: Path = ROOT,
) -> tuple[float, dict[str, float]]:
    """Tasks per second of one worker run over ``tasks`` trivial tasks (and, given the pids
    of the sink and redis, the CPU per task of each process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(app_dir), str(root)]),
        BENCH_BROKER=broker,
        BENCH_SINK=sink,
        BENCH_SUPERVISE="1" if supervise else "0",
    )
    if supervise and extra_env:
        env.update(extra_env)
    gc_dir = None
    if pids is not None:
        gc_dir = Path(tempfile.mkdtemp())
        env["BENCH_GC_DIR"] = str(gc_dir)
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
    sampler = None
    if pids is not None:
        sampler = _CpuSampler({**pids, "client": os.getpid(), "master": worker.pid}, worker.pid)
        if profile is not None:
            sampler.profile = profile / ("supervised" if supervise else "bare")
            sampler.profile.mkdir(parents=True, exist_ok=True)
    try:
        ran = [result.get(timeout=600) for result in results]
        for result in results:
            result.forget()
    finally:
        _stop(worker)
        log.close()
    took = max(ran) - min(ran)
    spent = sampler.per_task(ran) if sampler is not None else {}
    if gc_dir is not None:
        reports = [json.loads(f.read_text()) for f in gc_dir.glob("gc-*.json")]
        done = sum(r["tasks"] for r in reports)
        if done:
            spent["children: garbage collection (wall, whole life)"] = (
                sum(r["seconds"] for r in reports) * 1e6 / done
            )
        shutil.rmtree(gc_dir, ignore_errors=True)
    return tasks / took, spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print the CPU per task of each process and thread (sampled from /proc)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the supervised worker (e.g. OTEL_BLRP_SCHEDULE_DELAY)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also a supervised worker importing chaperone_otel from DIR (e.g. a `git archive` "
        "of the commit before a change), interleaved: before and after in the same rounds",
    )
    parser.add_argument(
        "--only", choices=("bare", "supervised"), help="run one mode only (exploring)"
    )
    parser.add_argument(
        "--supervise",
        choices=("full", "configure-only", "no-export"),
        default="full",
        help="the supervised worker: configure() with OTLP export and instrument(app) (full), "
        "configure() only, or instrument(app) with nothing exported",
    )
    parser.add_argument(
        "--sink",
        choices=("serve", "null"),
        default="serve",
        help="export to `sink serve` (default) or to a server that stores nothing",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --breakdown: py-spy profiles (raw stacks) of each process, into this folder",
    )
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
    null_sink = None
    if args.sink == "null":
        null_sink = subprocess.Popen(
            [sys.executable, "-c", NULL_SINK], stdout=subprocess.PIPE, text=True
        )
        assert null_sink.stdout is not None
        export_to = f"http://127.0.0.1:{null_sink.stdout.readline().strip()}"
    else:
        export_to = sink_url
    extra_env = dict(item.split("=", 1) for item in args.env)
    extra_env["BENCH_VARIANT"] = args.supervise
    broker = f"redis://127.0.0.1:{port}/0"
    modes = ["bare", "supervised"] + (["baseline"] if args.baseline else [])
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    pids = {"sink": sink_proc.pid, "redis": redis.pid} if args.breakdown else None
    loads = [os.getloadavg()[0]]
    try:
        time.sleep(0.5)  # redis-server binds within milliseconds; the first ping retries
        for index in range(args.rounds):
            # Each round starts with another mode: the store grows and the machine's load
            # drifts during a round, which must not always favour the same mode.
            for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
                if args.only and mode != args.only:
                    continue
                rate, spent = one_round(
                    tmp,
                    broker,
                    export_to,
                    args.tasks,
                    mode != "bare",
                    pids,
                    args.profile,
                    extra_env,
                    args.baseline if mode == "baseline" else ROOT,
                )
                rates[mode].append(rate)
                cpu[mode].append(spent)
                loads.append(os.getloadavg()[0])
        ingested = ingested_logs(sink_url)
    finally:
        stop_server(sink_proc)
        if null_sink is not None:
            _stop(null_sink, 5)
            null_sink.stdout.close()  # type: ignore[union-attr]
        _stop(redis, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    bare = statistics.median(rates["bare"] or [float("nan")])
    supervised = statistics.median(rates["supervised"] or [float("nan")])
    expected = 2 * args.tasks * (len(rates["supervised"]) + len(rates.get("baseline", [])))
    print(
        f"prefork c=2, redis broker and backend, {args.rounds} interleaved rounds of "
        f"{args.tasks:,} trivial tasks"
    )
    print(
        f"bare        {bare:8.0f} tasks/s  (rounds: {', '.join(f'{r:.0f}' for r in rates['bare'])})"
    )
    print(
        f"supervised  {supervised:8.0f} tasks/s  (rounds: "
        f"{', '.join(f'{r:.0f}' for r in rates['supervised'])}), "
        + {
            "full": f"OTLP to {'sink serve' if args.sink == 'serve' else 'a null sink'}",
            "configure-only": "configure() only, no task supervised",
            "no-export": "every task a run, nothing exported",
        }[args.supervise]
    )
    print(f"ratio       {supervised / bare:8.2f}x bare (aim >= 0.9x)")
    if args.baseline:
        base = statistics.median(rates["baseline"])
        print(
            f"baseline    {base:8.0f} tasks/s  (rounds: "
            f"{', '.join(f'{r:.0f}' for r in rates['baseline'])}), {args.baseline}: "
            f"{base / bare:.2f}x bare"
        )
    if args.sink == "serve" and args.supervise == "full":
        print(f"lifecycle records at the sink: {ingested:,} of {expected:,}")
    print(
        f"load average (1 min) before and after each round: {', '.join(f'{x:.1f}' for x in loads)}"
    )
    if args.breakdown:
        _print_breakdown(cpu)


def _print_breakdown(cpu: dict[str, list[dict[str, float]]]) -> None:
    """Median CPU microseconds per task of each process/thread, bare and supervised."""
    keys = sorted({k for rounds in cpu.values() for spent in rounds for k in spent})
    print("\nCPU per task, us (median of the rounds; steady part of each round)")
    base = "baseline" in cpu
    print(
        f"{'process / thread':48} {'bare':>8} {'supervised':>11} {'added':>8}"
        + (f" {'baseline':>9}" if base else "")
    )

    def median(mode: str, key: str) -> float:
        return statistics.median([r.get(key, 0.0) for r in cpu[mode]] or [0.0])

    for key in keys:
        bare, sup = median("bare", key), median("supervised", key)
        if bare < 0.5 and sup < 0.5:
            continue
        line = f"{key:48} {bare:8.1f} {sup:11.1f} {sup - bare:8.1f}"
        print(line + (f" {median('baseline', key):9.1f}" if base else ""))


if __name__ == "__main__":
    main()
