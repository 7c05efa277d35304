"""A supervised workload that sends OTLP *only* to the sink (run as a subprocess).

``python sink_workload.py SINK_URL [victim]`` configures chaperone-otel with OTLP export to the
sink and nothing else (no ``/metrics`` of its own), prints ``{"ready": true}`` on one stdout
line and runs until it is killed. The default workload has one run or run stream per alert:

* ``e2e.hung``     — never beats (1 s lease): stuck after 3 s, its process alive;
* ``e2e.silent``   — beats once, then its code goes quiet (4 s lease): heartbeat missed
  after 4 s, not stuck before 12 s;
* ``e2e.overtime`` — beats, but runs past its 2 s timeout;
* ``e2e.stalled``  — beats, its progress flat past a 1 s stall budget;
* ``e2e.hog``      — over its 1 MiB memory limit (a violation);
* ``e2e.healthy``  — progresses, within its timeout and generous limits: no alert;
* ``e2e.short`` (always completes), ``e2e.flaky`` (fails 2 runs in 3) and ``e2e.doomed``
  (always fails): the failure-ratio and no-recent-success alerts. ``e2e.short``'s runs
  belong to the schedule ``e2e.every2s`` (every 2 s): the sink dashboard's schedule panels.

``victim`` runs one long, healthy run ``e2e.victim`` (1 s lease) for the test to SIGKILL.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import chaperone_otel
from chaperone_otel import supervised


def _forever(name: str, body: object, *, interval: float = 1, **options: object) -> None:
    def target() -> None:
        with supervised(name, queue="batch", heartbeat_interval=interval, **options) as run:  # type: ignore[arg-type]
            body(run)  # type: ignore[operator]

    threading.Thread(target=target, name=name, daemon=True).start()


def _hung(_run: object) -> None:
    threading.Event().wait()


def _beat(run: chaperone_otel.Supervision) -> None:
    while True:
        run.heartbeat()
        time.sleep(0.1)


def _progress(run: chaperone_otel.Supervision) -> None:
    i = 0
    while True:
        i += 1
        run.report_progress(i, 1_000_000)
        time.sleep(0.1)


def _stalled(run: chaperone_otel.Supervision) -> None:
    run.report_progress(1, 10)
    _beat(run)


def _silent(run: chaperone_otel.Supervision) -> None:
    run.heartbeat()
    threading.Event().wait()


def main() -> None:
    """Configure, announce readiness, run the workload until killed."""
    chaperone_otel.configure(
        service_name="chaperone-e2e-sink-only", otlp=True, otlp_endpoint=sys.argv[1],
        long_run_threshold=1, sample_interval=0.2,
    )
    if sys.argv[2:] == ["victim"]:
        _forever("e2e.victim", _beat)
        print(json.dumps({"ready": True}), flush=True)
        threading.Event().wait()
    print(json.dumps({"ready": True}), flush=True)
    _forever("e2e.hung", _hung)
    _forever("e2e.silent", _silent, interval=4)
    _forever("e2e.overtime", _beat, timeout=2)
    _forever("e2e.stalled", _stalled, stall_timeout=1)
    _forever("e2e.hog", _beat, memory_limit="1MiB")
    # A lease a few scrape intervals long, as a real one would be (see workload.py).
    _forever("e2e.healthy", _progress, interval=3, timeout=3600, memory_limit="64GiB",
             cpu_limit=800, fd_limit=1_000_000)
    chaperone_otel.schedule("e2e.every2s", interval="2s", grace="3s")
    n = 0
    while True:
        n += 1
        with supervised("e2e.short", queue="default", schedule="e2e.every2s"):
            time.sleep(0.01)
        for name, fails in (("e2e.flaky", n % 3 != 0), ("e2e.doomed", True)):
            try:
                with supervised(name, queue="default"):
                    if fails:
                        raise RuntimeError(name)
            except RuntimeError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    main()
