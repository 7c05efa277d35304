"""Control characters in stored text never reach the terminal raw (review of the CLI).

A job name, queue or error message is whatever the application gave. Printed as is, an ESC
sequence in it changed the terminal's colours, a line break split a run over two table
lines, and a bidi override (U+202E) reversed the rest of the line. The text output shows
them as escapes; ``--json`` keeps the exact values.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import chaperone_otel
from chaperone_otel import supervised
from chaperone_otel._safety import set_raise_internal_errors
from chaperone_otel.cli import _render as render
from chaperone_otel.cli._monitor import Frame, render_frame
from chaperone_otel.cli._terminal import terminal_safe
from tests.cli._cli_helpers import invoke

ESC_NAME = "esc.\x1b[31mRED\x1b[0m"
NL_NAME = "nl.a\nb"
BIDI_NAME = "bidi.\u202etxt.exe"
C1_QUEUE = "q\x9b2J\x7f"
MESSAGE = "bad row\x1b]0;owned\x07 here"

RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""What must not be printed: every control character but the line feeds between lines."""


def test_terminal_safe_escapes_controls_and_bidi_and_keeps_the_rest() -> None:
    assert terminal_safe("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert terminal_safe("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert terminal_safe("\x00\x7f\x80\x9b\x9f") == "\\x00\\x7f\\x80\\x9b\\x9f"
    assert terminal_safe("\u202e\u202a\u2066\u2069\u200e\u200f\u061c") == (
        "\\u202e\\u202a\\u2066\\u2069\\u200e\\u200f\\u061c"
    )
    for kept in ("导入.每日", "etl[/]import", "naïve ✓ 🚀", "back\\slash", "\u00a0nbsp", ""):
        assert terminal_safe(kept) == kept


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("weird") / "jobs.duckdb"
    ids: dict[str, str] = {}
    old = set_raise_internal_errors(True)
    chaperone_otel.configure(sink=str(path), heartbeat_interval=5.0)
    try:
        for name in (ESC_NAME, NL_NAME, BIDI_NAME, "导入.每日"):
            with supervised(name, queue=C1_QUEUE) as run:
                run.heartbeat(note="\x1b[2Jcleared")
            ids[name] = run.id
        try:
            with supervised("err.job", queue="weird") as run:
                ids["err"] = run.id
                raise ValueError(MESSAGE)
        except ValueError:
            pass
    finally:
        chaperone_otel.shutdown()
        chaperone_otel.reset()
        set_raise_internal_errors(old)
    return path, ids


def _assert_safe(text: str) -> None:
    assert not RAW.search(text), repr(RAW.search(text))


def test_jobs_prints_one_line_per_run_with_controls_escaped(
    store: tuple[Path, dict[str, str]],
) -> None:
    path, ids = store
    result = invoke("jobs", "--db", str(path))
    assert result.exit_code == 0, result.output
    _assert_safe(result.stdout)
    lines = result.stdout.splitlines()
    for name in (ESC_NAME, NL_NAME, BIDI_NAME):
        line = next(line for line in lines if line.startswith(ids[name]))
        assert terminal_safe(name) in line
        assert "q\\x9b2J\\x7f" in line
    assert len(lines) == 2 + 5 + 1  # header and rule, a line per run, the count
    assert any("导入.每日" in line for line in lines)  # unicode names are left alone
    exact = json.loads(invoke("jobs", "--db", str(path), "--json").stdout)
    assert {r["name"] for r in exact} == {ESC_NAME, NL_NAME, BIDI_NAME, "导入.每日", "err.job"}


def test_show_escapes_the_name_queue_metadata_and_error(
    store: tuple[Path, dict[str, str]],
) -> None:
    path, ids = store
    shown = invoke("show", ids[ESC_NAME], "--db", str(path))
    assert shown.exit_code == 0, shown.output
    _assert_safe(shown.stdout)
    assert "esc.\\x1b[31mRED\\x1b[0m" in shown.stdout
    assert "note=\\x1b[2Jcleared" in shown.stdout
    failed = invoke("show", ids["err"], "--db", str(path))
    assert failed.exit_code == 0, failed.output
    _assert_safe(failed.stdout)
    assert "ValueError: bad row\\x1b]0;owned\\x07 here" in failed.stdout
    assert "Traceback (most recent call last):" in failed.stdout  # still on its own lines


def test_sql_table_and_expanded_escape_values_and_column_names(
    store: tuple[Path, dict[str, str]],
) -> None:
    path, _ = store
    q = "SELECT name, queue AS \"q\x1b[1m\" FROM jobs WHERE name LIKE 'nl%' OR name LIKE 'bidi%'"
    table = invoke("sql", q, "--db", str(path), "--table")
    assert table.exit_code == 0, table.output
    _assert_safe(table.stdout)
    assert "q\\x1b[1m" in table.stdout
    assert re.search(r"^nl\.a\\nb +q\\x9b2J\\x7f", table.stdout, re.MULTILINE), table.stdout
    assert "bidi.\\u202etxt.exe" in table.stdout
    expanded = invoke("sql", q, "--db", str(path), "-x")
    assert expanded.exit_code == 0, expanded.output
    _assert_safe(expanded.stdout)
    assert "bidi.\\u202etxt.exe" in expanded.stdout
    assert re.search(r"^q\\x1b\[1m \| q\\x9b2J\\x7f$", expanded.stdout, re.MULTILINE)
    exact = json.loads(invoke("sql", q, "--db", str(path), "--json").stdout)
    assert {r["name"] for r in exact} == {NL_NAME, BIDI_NAME}


def test_monitor_escapes_running_and_recent_runs(store: tuple[Path, dict[str, str]]) -> None:
    path, _ = store
    once = invoke("monitor", "--once", "--recent", "10", "--db", str(path))
    assert once.exit_code == 0, once.output
    _assert_safe(once.stdout)
    assert "nl.a\\nb" in once.stdout
    assert "ValueError: bad row\\x1b]0;owned\\x07 here" in once.stdout
    now = datetime.now(timezone.utc)
    running = SimpleNamespace(id="r\x1b1", name=ESC_NAME, queue=C1_QUEUE, phase="load\u202e", status="running", health="healthy", stuck=False, lost=False, progress=42.0, eta=None, started_at=now, duration=3.0, last_heartbeat_at=now, heartbeat_interval=60.0, memory_bytes=None, cpu_percent=None)  # fmt: skip
    for renderable in (
        render_frame(Frame(running=[running], at=now), title="t", interval=1, width=200),
        render.jobs_table([running], width=200),
    ):
        console = Console(width=200, record=True, color_system=None)
        console.print(renderable)
        text = console.export_text()
        _assert_safe(text)
        assert "esc.\\x1b[31mRED\\x1b[0m" in text
