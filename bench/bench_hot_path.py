"""The hot path through the public API, against another commit's code side by side.

``bench_runtime.py`` times the hot path with this code's internals; this bench times what a
job's loop calls (``run.report_progress(i, n)``, ``run.heartbeat()``, ``chaperone.track()``)
and a tqdm ``update(1)`` as the reference, with nothing but the public API, so that the code
of another commit (``git archive <commit> chaperone_otel | tar -x -C DIR``) runs the same
loops. Each round runs one child process per code, alternately (``PYTHONPATH`` selects the
package); each child takes the median of 9 repetitions of 200,000 calls per operation. The
figures are ns per call and the ratio to tqdm's ``update(1)`` measured in the same child.

Run: ``.venv/bin/python bench/bench_hot_path.py [--baseline DIR] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import io, json, statistics, sys, time
import chaperone_otel as chaperone
from tqdm import tqdm

N = 200_000


def per_call(fn):
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        fn(N)
        times.append((time.perf_counter() - t0) / N)
    return statistics.median(times)


with chaperone.supervised("bench.hot") as run:
    bar = tqdm(total=10**9, file=io.StringIO(), mininterval=3600)

    def tqdm_update(k):
        update = bar.update
        for _ in range(k):
            update(1)

    def report_progress(k):
        report = run.report_progress
        for i in range(k):
            report(i, k)

    def heartbeat(k):
        beat = run.heartbeat
        for _ in range(k):
            beat()

    def track(k):
        for _ in chaperone.track(range(k)):
            pass

    ops = {"tqdm update(1)": tqdm_update, "report_progress()": report_progress,
           "heartbeat()": heartbeat, "track() per item": track}
    out = {name: per_call(fn) for name, fn in ops.items()}
    print(json.dumps({"file": chaperone.__file__, "ops": out}))
"""


def child(package_root: Path) -> dict[str, float]:
    """One child's medians, seconds per call, with ``chaperone_otel`` from ``package_root``."""
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run(  # run in package_root: `-c` puts the working directory first
        [sys.executable, "-c", CHILD], env=env, cwd=package_root, capture_output=True,
        text=True, check=True, timeout=600,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    imported = Path(got["file"]).resolve()
    assert imported.is_relative_to(package_root.resolve()), (imported, package_root)
    return dict(got["ops"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, metavar="DIR")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    codes = [("this code", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in codes}
    for r in range(args.rounds):
        for label, root in codes[r % len(codes):] + codes[: r % len(codes)]:
            results[label].append(child(root))
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds, ns per call (x tqdm update(1))")
    for label, rounds in results.items():
        ops = rounds[0].keys()
        cells = []
        for op in ops:
            ns = statistics.median(r[op] for r in rounds) * 1e9
            ratio = statistics.median(r[op] / r["tqdm update(1)"] for r in rounds)
            cells.append(f"{op} {ns:.0f} ({ratio:.2f})")
        print(f"{label:10} " + "  ".join(cells))


if __name__ == "__main__":
    main()
