"""``python -m chaperone_otel.artifacts [--check] [--root DIR] [--runbook-base URL]
[--source worker|sink]``: write the Prometheus rule files (with their promtool tests) and
the Grafana dashboards under DIR (alerts/, alerts/tests/, dashboards/), or check them."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import render, stale, write
from ._rules import SOURCES, AlertSettings


def main(argv: list[str] | None = None) -> int:
    """Regenerate the artifacts (or check them); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m chaperone_otel.artifacts", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        default=None,
        help="directory to write under, created if missing: any directory, e.g. one of your "
        "own after a pip install; in a checkout, the repository root (default: the current "
        "directory)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 when a file under the root is missing or stale",
    )
    parser.add_argument(
        "--runbook-base",
        default=None,
        metavar="URL",
        help="URL (or path) of docs/operations.md for the alerts' runbook_url annotations, "
        "an anchor per alert appended (default: the relative docs/operations.md)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        action="append",
        default=None,
        help="render the rules and dashboards for this source only (repeatable; default: "
        "both): worker = worker-scraped series, sink = the sink's fleet /metrics only",
    )
    args = parser.parse_args(argv)
    root: Path = args.root if args.root is not None else Path.cwd()
    sources = tuple(args.source) if args.source else SOURCES
    settings = AlertSettings(runbook_base=args.runbook_base) if args.runbook_base else None
    if args.check:
        paths = stale(root, sources, settings)
        for rel in paths:
            print(f"stale: {rel} (run: {_rewrite_command(args)})", file=sys.stderr)
        return 1 if paths else 0
    for rel in write(root, render(settings=settings, sources=sources)):
        print(f"wrote {rel}")
    return 0


def _rewrite_command(args: argparse.Namespace) -> str:
    """The command that rewrites what ``--check`` found stale: the options it was given
    (the same root, sources and runbook base), without ``--check``."""
    words = ["python", "-m", "chaperone_otel.artifacts"]
    if args.root is not None:
        words += ["--root", str(args.root)]
    for source in args.source or ():
        words += ["--source", source]
    if args.runbook_base is not None:
        words += ["--runbook-base", args.runbook_base]
    return shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
