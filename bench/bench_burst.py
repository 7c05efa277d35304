"""Issue 16 goal 3: no lifecycle record dropped at 2,000 runs/s in one process, OTLP export.

One worker process (``configure(otlp_endpoint=...)``, the SDK's batch processors, the real
OTLP/HTTP exporters) runs trivial supervised runs paced at ``--rate`` runs/s for
``--seconds``, then shuts down (which flushes). A ``sink serve`` in its own process stores
what arrives. Counted:

* at the sink: lifecycle log records ingested (its ``/metrics`` counter; a trivial run sends
  two, ``started`` and ``finished``) and runs stored (a run whose ``started`` record was
  dropped still gets a whole row from its ``finished`` record or its span, so rows alone
  cannot show a drop);
* in the worker: the SDK's "Queue full, dropping ..." warnings (one per dropped item) and
  the rate actually reached (a worker that cannot keep the pace says so).

Run: ``.venv/bin/python bench/bench_burst.py [--rate 2000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sink_otlp import ingested_logs, start_server, stop_server

from chaperone_otel.sink import open_sink

_WORKER = r"""
import json, logging, sys, time
import chaperone_otel as c

url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
drops = {"n": 0}

class _Count(logging.Handler):
    def emit(self, record):
        if "Queue full" in record.getMessage():
            drops["n"] += 1

logging.getLogger("opentelemetry").addHandler(_Count())
c.configure(otlp_endpoint=url, service_name="burst", heartbeat_interval=60)

@c.supervised(name="burst.job")
def job():
    return None

n = int(rate * seconds)
start = time.perf_counter()
for i in range(n):
    due = start + i / rate
    lag = due - time.perf_counter()
    if lag > 0:
        time.sleep(lag)
    job()
took = time.perf_counter() - start
t = time.perf_counter()
c.shutdown()
print(json.dumps({"runs": n, "rate": n / took, "drops": drops["n"],
                  "shutdown_s": time.perf_counter() - t}))
"""


_PASS = ("OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "OTEL_BLRP_SCHEDULE_DELAY")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "burst.duckdb")
        proc, url = start_server(path, "commit")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") or k in _PASS}
            out = subprocess.run(
                [sys.executable, "-c", _WORKER, url, str(args.rate), str(args.seconds)],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=True,
            )
            worker = json.loads(out.stdout.strip().splitlines()[-1])
            ingested = ingested_logs(url)
        finally:
            stop_server(proc)
        with open_sink(path) as sink:
            (stored, whole) = sink.sql(
                "SELECT count(*), count(*) FILTER (WHERE started_at IS NOT NULL "
                "AND finished_at IS NOT NULL AND status = 'completed') FROM jobs"
            ).rows[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"target {args.rate:,.0f} runs/s for {args.seconds:g} s: reached "
        f"{worker['rate']:,.0f} runs/s; {worker['runs']:,} runs, {stored:,} stored, "
        f"{whole:,} complete; lifecycle records {ingested:,} of {2 * worker['runs']:,}; "
        f"SDK drop warnings: {worker['drops']:,}; "
        f"shutdown flush {worker['shutdown_s']:.2f} s"
    )
    met = ingested == 2 * worker["runs"] and stored == worker["runs"] == whole
    print("goal met: no record dropped" if met else "GOAL NOT MET")


if __name__ == "__main__":
    main()
