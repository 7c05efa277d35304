"""Issue 13: what ``integrations.celery`` costs a task's own thread, in process.

The worker bench (``bench_celery.py``) shares two cores between the worker's processes, redis,
the sink and its client, so a few microseconds of the job thread are lost in its noise. This
bench isolates them: two Celery apps in this process (memory broker, no result stored), one
instrumented, each running a trivial task eagerly (``task.apply()``: Celery's tracer with its
``task_prerun``/``task_postrun`` signals, as in a worker's pool child), interleaved rounds,
thread CPU per task. ``configure()`` installs no exporter, so the supervised figure is the
integration's receivers plus the run's start and finish (span, records built and emitted to
SDK providers with no processor): the part ``integrations.celery`` controls, not the export.

It also times the resolution of a run's options alone (heartbeat interval, lease, time limits,
validated spec): once per task, as the integration does, against resolving them at every run
(reading the app's configuration and validating the spec, what it did before), in process.

``--baseline DIR`` also times the instrumented app with ``chaperone_otel`` imported from
``DIR`` (a ``git archive`` of another commit), in a subprocess per round, interleaved.

Run: ``.venv/bin/python bench/bench_celery_signals.py [--tasks 3000] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from celery import Celery
import chaperone_otel
from chaperone_otel.integrations.celery import instrument

chaperone_otel.configure(service_name="bench")
apps = {}
for mode in ("bare", "supervised"):
    app = Celery(mode, broker="memory://", backend="cache+memory://")
    app.conf.update(task_store_eager_result=False)
    if mode == "supervised":
        instrument(app)

    def noop(i):
        return i

    apps[mode] = app.task(name=f"bench.{mode}", time_limit=60)(noop)
tasks, rounds, modes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")

def one(task):
    t0 = time.thread_time()
    for i in range(tasks):
        task.apply((i,))
    return (time.thread_time() - t0) / tasks * 1e6

for task in apps.values():
    one(task)  # warm-up
out = {mode: [] for mode in modes}
for _ in range(rounds):  # alternated, so both see the same moments of the machine
    for mode in modes:
        out[mode].append(one(apps[mode]))
print(json.dumps(out))
"""


def _run(root: Path, tasks: int, rounds: int, modes: str) -> dict[str, list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_"))}
    env["PYTHONPATH"] = str(root)  # -P below: not the working directory first
    done = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, str(tasks), str(rounds), modes],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def options_per_run_and_once(rounds: int, n: int = 20_000) -> tuple[float, float]:
    """Microseconds to resolve a run's options: at every run, and from the per-task cache."""
    import timeit

    from celery import Celery

    from chaperone_otel._spec import make_spec
    from chaperone_otel.integrations import celery as integration

    app = Celery("options", broker="memory://")
    integration.instrument(app)
    inst = integration._instrumented[id(app)]

    @app.task(name="bench.options", time_limit=60)
    def noop(i: int) -> int:
        return i

    task = app.tasks["bench.options"]

    def per_run() -> object:
        interval = getattr(task, "chaperone_heartbeat_interval", None) or inst.heartbeat_interval
        lease = getattr(task, "chaperone_lease", None) or inst.lease
        conf = app.conf
        limits = [
            next((float(v) for v in candidates if v), None)
            for candidates in (
                (None, task.time_limit, conf.task_time_limit),
                (None, task.soft_time_limit, conf.task_soft_time_limit),
            )
        ]
        found = [limit for limit in limits if limit is not None]
        return make_spec(
            task.name,
            queue="celery",
            attempt=1,
            heartbeat_interval=interval,
            timeout=min(found) if found else None,
            lease=lease,
        )

    class Request:
        timelimit = None

    request = Request()

    def once() -> object:
        interval, lease = inst.lease_of(task)
        timeout = inst.timeout(task, request)
        return inst.spec(task, "celery", 1, timeout, interval, lease)

    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(timeit.timeit(per_run, number=n) / n * 1e6)
        b.append(timeit.timeit(once, number=n) / n * 1e6)
    integration.uninstrument(app)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", type=Path, metavar="DIR")
    args = parser.parse_args()
    # Per round, each process times its own bare task beside its instrumented one, and the
    # figure is the difference (processes differ by a few microseconds per task).
    bare: list[float] = []
    added: dict[str, list[float]] = {"supervised": [], "baseline": []}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        runs = [("supervised", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
        for mode, root in runs:
            got = _run(root, args.tasks, 3, "bare,supervised")
            bare.extend(got["bare"])
            added[mode].extend(s - b for s, b in zip(got["supervised"], got["bare"], strict=True))
        load.append(os.getloadavg()[0])
    reference = statistics.median(bare)
    print(f"{args.rounds} rounds of {args.tasks:,} eager trivial tasks, thread CPU per task")
    print(f"bare Celery task            {reference:7.1f} us")
    for mode, label in (("supervised", "instrumented (this code)"), ("baseline", "baseline")):
        if added[mode]:
            value = statistics.median(added[mode])
            print(f"{label:27} added {value:6.1f} us  ({(reference + value) / reference:.2f}x)")
    per_run, once = options_per_run_and_once(args.rounds)
    print(
        f"a run's options: resolved per run {per_run:.1f} us, once per task {once:.1f} us "
        f"({once / per_run:.2f}x)"
    )
    print(f"load average (1 min): {', '.join(f'{x:.1f}' for x in load)}")


if __name__ == "__main__":
    main()
