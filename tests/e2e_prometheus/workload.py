"""A live supervised workload for the end-to-end tests (run as a subprocess).

``python workload.py SINK_URL`` configures chaperone-otel with its own /metrics on a free
loopback port and OTLP export to the sink, prints ``{"metrics": URL}`` on one stdout line,
and then runs, until it is killed:

* ``e2e.hung``     — a run that never beats (1 s lease): stuck after 3 s while alive;
* ``e2e.progress`` — a run that reports progress (ETA), with a timeout and generous limits;
* ``e2e.stalled``  — beats but its progress is flat past a 1 s stall budget (degraded);
* ``e2e.hog``      — a run over its 1 MiB memory limit (a violation);
* ``e2e.short`` / ``e2e.flaky`` — short runs, a third of the flaky ones failing;
* schedules ``e2e.every2s`` (a run every 2 s, declared every second: its scheduler is this
  process) and ``e2e.never`` (every 2 s, nothing ever runs): declared over OTLP, judged by
  the sink.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import chaperone_otel
from chaperone_otel import supervised


def _forever(name: str, body: object, *, interval: float = 1, **options: object) -> threading.Thread:
    def target() -> None:
        with supervised(name, queue="batch", heartbeat_interval=interval, **options) as run:  # type: ignore[arg-type]
            body(run)  # type: ignore[operator]

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _hung(_run: object) -> None:
    threading.Event().wait()


def _progress(run: chaperone_otel.Supervision) -> None:
    i = 0
    while True:
        i += 1
        run.report_progress(i, 100_000)
        time.sleep(0.1)


def _stalled(run: chaperone_otel.Supervision) -> None:
    run.report_progress(1, 10)
    while True:
        run.heartbeat()
        time.sleep(0.1)


def _beat(run: chaperone_otel.Supervision) -> None:
    while True:
        run.heartbeat()
        time.sleep(0.1)


def _every_two_seconds() -> None:
    chaperone_otel.schedule("e2e.never", interval=2, grace=2)
    # grace 3 s: a loaded CI machine may start a run a little late; it is still on time.
    every = chaperone_otel.schedule("e2e.every2s", interval=2, grace=3, declare_every=1)
    next_start = time.monotonic()
    while True:
        with supervised("e2e.scheduled", queue="default", schedule=every):
            time.sleep(0.05)
        next_start += 2
        time.sleep(max(0.0, next_start - time.monotonic()))


def main() -> None:
    """Configure, announce the metrics URL, run the workload until killed."""
    setup = chaperone_otel.configure(
        service_name="chaperone-e2e", prometheus_port=0, otlp=True,
        otlp_endpoint=sys.argv[1], long_run_threshold=1, sample_interval=0.2,
    )
    print(json.dumps({"metrics": setup.prometheus_url}), flush=True)
    _forever("e2e.hung", _hung)
    # The healthy run's lease is a few scrape intervals long, as a real one would be: with a
    # 1 s lease and a 1 s scrape, "heartbeat age > 1 interval" is crossed by scrape timing
    # alone (the gauge is up to one scrape plus one monitor pass old when evaluated).
    _forever("e2e.progress", _progress, interval=3, timeout=3600, memory_limit="64GiB",
             cpu_limit=800, fd_limit=1_000_000)
    _forever("e2e.stalled", _stalled, stall_timeout=1)
    _forever("e2e.hog", _beat, memory_limit="1MiB")
    threading.Thread(target=_every_two_seconds, name="e2e.schedules", daemon=True).start()
    n = 0
    while True:
        n += 1
        with supervised("e2e.short", queue="default"):
            time.sleep(0.01)
        try:
            with supervised("e2e.flaky", queue="default"):
                if n % 3 == 0:
                    raise RuntimeError("flaky")
        except RuntimeError:
            pass
        time.sleep(0.2)


if __name__ == "__main__":
    main()
