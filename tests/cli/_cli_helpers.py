"""Helpers shared by the CLI tests (imported as a plain module: tests/ has no packages).

Only ``conftest.py`` defines fixtures; the test modules import these names directly.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner, Result

import chaperone_otel
from chaperone_otel import supervised
from chaperone_otel.cli import cli


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run ``chaperone-otel ARGS`` in-process; never lets an exception escape silently."""
    runner = CliRunner()
    full_env = {"COLUMNS": "200", "NO_COLOR": "1", "CHAPERONE_OTEL_SINK": None}
    full_env.update(env or {})
    result = runner.invoke(cli, list(args), env=full_env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


class ImportRowsError(ValueError):
    """The failing run's error (a user exception with a traceback)."""


def _parse(row: str) -> int:
    raise ImportRowsError(f"row {row!r}: amount is not a number")


def _import(rows: list[str]) -> None:
    for row in rows:
        _parse(row)


@dataclass
class Recorded:
    path: Path
    ids: dict[str, str] = field(default_factory=dict)


def _record_runs(path: Path) -> Recorded:
    out = Recorded(path)
    chaperone_otel.configure(sink=str(path), heartbeat_interval=0.5, sample_interval=0.05)
    for i in range(2):
        with supervised("etl.import", queue="imports") as run:
            for j in range(1, 11):
                run.report_progress(j, 10)
            run.heartbeat(batch=i)
        out.ids[f"import{i}"] = run.id
    with supervised("reports.build", queue="reports") as run:
        run.heartbeat(status="ok")
    out.ids["report"] = run.id
    try:
        with supervised("emails.send", queue="emails") as run:
            out.ids["failed"] = run.id
            run.report_progress(3, 10)
            _import(["12.5", "twelve"])
    except ImportRowsError:
        pass
    with supervised(
        "analytics.embed", queue="analytics", memory_limit="1MiB", on_limit="record"
    ) as run:
        out.ids["hog"] = run.id
        deadline = time.monotonic() + 10
        while not run.violations and time.monotonic() < deadline:
            run.heartbeat()
            time.sleep(0.02)
        assert run.violations, "the memory limit was never checked"
    chaperone_otel.shutdown()
    chaperone_otel.reset()
    return out


@dataclass
class Live:
    path: Path
    hung_id: str
    healthy_id: str
    stop: threading.Event


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: wide plain output, no colour."""
    env = dict(os.environ)
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("CHAPERONE_OTEL_SINK", None)
    return env
