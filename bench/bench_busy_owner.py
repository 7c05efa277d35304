"""Query latency of an application's embedded store while the application is CPU-bound.

The process that owns a store serves its query API from a thread of the application, so
the server shares the application's GIL (issue: "a CLI query takes 1.5-4.4 s with a
CPU-bound job, 0.5 s when idle"). This starts a real application (``configure(sink=)``,
a few hundred stored runs), then times ``open_sink(path).jobs.running().all()`` and
``.count()`` from this process, first while the application idles, then while a thread
of it runs a pure-Python loop (the common CPU-bound job: parsing, scoring), interleaved
round by round. It also times the ``chaperone-otel jobs`` CLI process end to end. Reported
as medians and the busy/idle ratio (target <= 1.5x).

Run: ``.venv/bin/python bench/bench_busy_owner.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chaperone_otel.sink import open_sink
from chaperone_otel.sink._store import read_sidecar

APP = r"""
import sys, threading, time
import chaperone_otel as c
c.configure(sink=sys.argv[1])
for i in range(300):
    with c.supervised("bench.job"):
        pass
busy = threading.Event()
def spin():
    while True:
        busy.wait()
        n = 0
        for i in range(200_000):
            n += i * i
threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("busy"):
        busy.set()
    elif line.startswith("idle"):
        busy.clear()
    else:
        break
    print("ok", flush=True)
c.shutdown()
"""


def _time(fn: object, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "jobs.duckdb")
        app = subprocess.Popen(
            [sys.executable, "-c", APP, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert app.stdin is not None
        assert app.stdout is not None
        try:
            assert app.stdout.readline().strip() == "ready"
            assert read_sidecar(path) is not None
            cli = [sys.executable, "-m", "chaperone_otel.cli", "jobs", "--db", path, "--json"]
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for mode in ("idle", "busy"):
                    app.stdin.write(mode + "\n")
                    app.stdin.flush()
                    assert app.stdout.readline().strip() == "ok"
                    with open_sink(path) as sink:
                        samples.setdefault(("all()", mode), []).extend(
                            _time(lambda s=sink: s.jobs.all(), args.repeats)
                        )
                        samples.setdefault(("count()", mode), []).extend(
                            _time(lambda s=sink: s.jobs.running().count(), args.repeats)
                        )
                    samples.setdefault(("CLI jobs", mode), []).extend(
                        _time(
                            lambda: subprocess.run(cli, env=env, capture_output=True, check=True),
                            2,
                        )
                    )
            print(f"{'query':10} {'idle ms':>9} {'busy ms':>9} {'busy/idle':>9}")
            for what in ("all()", "count()", "CLI jobs"):
                idle = statistics.median(samples[(what, "idle")]) * 1000
                busy = statistics.median(samples[(what, "busy")]) * 1000
                print(f"{what:10} {idle:9.1f} {busy:9.1f} {busy / idle:8.2f}x")
        finally:
            app.stdin.write("quit\n")
            app.stdin.flush()
            try:
                app.wait(30)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()


if __name__ == "__main__":
    main()
