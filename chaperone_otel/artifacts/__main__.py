"""``python -m chaperone_otel.artifacts [--check] [--root DIR] [--runbook-base URL]
[--source worker|sink]``."""

from __future__ import annotations

import argparse
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
        default=Path.cwd(),
        help="repository root (default: the current directory)",
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 when a committed file is stale"
    )
    parser.add_argument(
        "--runbook-base", default=None, help="URL of docs/operations.md for runbook_url annotations"
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
    sources = tuple(args.source) if args.source else SOURCES
    if args.check:
        paths = stale(args.root, sources)
        for rel in paths:
            print(f"stale: {rel} (run: python -m chaperone_otel.artifacts)", file=sys.stderr)
        return 1 if paths else 0
    settings = AlertSettings(runbook_base=args.runbook_base) if args.runbook_base else None
    for rel in write(args.root, render(settings=settings, sources=sources)):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
