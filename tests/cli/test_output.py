"""What the CLI prints where (issue 12, items 13, 14, 15 and 17).

Wide SQL results on a terminal become one block per record; piped output keeps whole values;
a run id prefix is found in the whole store; a closed stdout (``… | head``) ends a command
quietly with exit 0. The pipe cases run the CLI as a real process with stdout a real pipe.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

import chaperone_otel
from chaperone_otel import supervised
from chaperone_otel._safety import set_raise_internal_errors
from chaperone_otel.cli import _render as render
from tests.cli._cli_helpers import invoke

TERMINAL_80 = {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "TERM": "dumb"}
"""A terminal 80 columns wide (rich, and so the CLI, takes TTY_COMPATIBLE=1 as a tty),
without styles (a dumb one)."""

LONG_NAME = "crm.stalled_pagination_of_the_contacts_export_endpoint_v2"
LONG_QUEUE = "crm-contacts-export-backfill"
LONG_ERROR = "page 17 of the contacts export returned the same cursor as page 16 " * 2


@dataclass
class Store:
    path: Path
    ids: dict[str, str] = field(default_factory=dict)


def _record(path: Path) -> Store:
    """Runs with long names and chosen ids: two of ``LONG_NAME`` (one failing with a long
    message), ids that share a prefix, ids holding LIKE wildcards, a 2-character id."""
    store = Store(path)
    chaperone_otel.configure(sink=str(path), heartbeat_interval=5.0)
    for i in range(2):
        try:
            with supervised(LONG_NAME, queue=LONG_QUEUE) as run:
                store.ids[f"long{i}"] = run.id
                run.report_progress(i + 1, 2)
                if i == 1:
                    raise RuntimeError(LONG_ERROR.strip())
        except RuntimeError:
            pass
    for run_id in ("abcd-1111", "abcd-2222", "ffff-0000", "a%cd-3333", "ab_d-4444", "ab"):
        with supervised("prefix.demo", supervision_id=run_id) as run:
            run.report_progress(1, 1)
        store.ids[run_id] = run.id
    chaperone_otel.shutdown()
    chaperone_otel.reset()
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    old = set_raise_internal_errors(True)
    try:
        return _record(tmp_path_factory.mktemp("output") / "jobs.duckdb")
    finally:
        set_raise_internal_errors(old)


def _cli_process_env(**extra: str) -> dict[str, str]:
    """A CLI process whose stdout is not a terminal by any account: no forcing variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CHAPERONE_OTEL_SINK", "TTY_COMPATIBLE", "FORCE_COLOR", "TTY_INTERACTIVE")
    }
    env.update({"NO_COLOR": "1", "COLUMNS": "80"})
    env.update(extra)
    return env


def _run_piped(*args: str) -> subprocess.CompletedProcess[str]:
    """``chaperone-otel ARGS`` as a real process, stdout a pipe, 80 columns in COLUMNS."""
    return subprocess.run(
        [sys.executable, "-m", "chaperone_otel.cli", *args],
        env=_cli_process_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------------------------
# 13: wide sql results on a terminal
# --------------------------------------------------------------------------------------------


def test_sql_select_star_on_80_columns_is_one_block_per_record(store: Store) -> None:
    """``SELECT * FROM jobs`` (about 50 columns) used to print a table squeezed to blanks."""
    result = invoke(
        "sql",
        "SELECT * FROM jobs ORDER BY started_at",
        "--db",
        str(store.path),
        env=TERMINAL_80,
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert len(re.findall(r"^-\[ RECORD \d+ \]-+$", out, re.MULTILINE)) == 8
    assert re.search(rf"^name +\| {re.escape(LONG_NAME)}$", out, re.MULTILINE), out[:2000]
    assert re.search(rf"^run_id +\| {store.ids['long0']}$", out, re.MULTILINE)
    assert re.search(r"^service_name +\| ", out, re.MULTILINE)  # every column, one per line
    assert "8 row(s)" in out


def test_sql_result_that_fits_stays_a_table(store: Store) -> None:
    result = invoke(
        "sql",
        "SELECT name, status FROM jobs WHERE name = 'prefix.demo' LIMIT 2",
        "--db",
        str(store.path),
        env=TERMINAL_80,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.match(r"^name +status", lines[0])
    assert re.match(r"^prefix\.demo +completed", lines[2])
    assert "RECORD" not in result.stdout


def test_sql_expanded_and_table_flags_force_the_layout(store: Store) -> None:
    narrow = "SELECT name, status FROM jobs WHERE name = 'prefix.demo' LIMIT 1"
    x = invoke("sql", narrow, "-x", "--db", str(store.path), env=TERMINAL_80)
    assert x.exit_code == 0, x.output
    assert x.stdout.splitlines()[:3] == [
        "-[ RECORD 1 ]-------",  # as wide as the widest line
        "name   | prefix.demo",
        "status | completed",
    ]
    wide = "SELECT * FROM jobs WHERE run_id = 'ffff-0000'"
    table = invoke("sql", wide, "--table", "--db", str(store.path), env=TERMINAL_80)
    assert table.exit_code == 0, table.output
    assert "RECORD" not in table.stdout
    header, _, row = table.stdout.splitlines()[:3]
    assert re.match(r"^run_id +attempt +seq +name ", header)
    assert re.match(r"^ffff-0000 +1 +\d+ +prefix\.demo ", row)  # whole values, not squeezed
    for bad in (("-x", "--table"), ("-x", "--json"), ("--table", "--csv")):
        refused = invoke("sql", narrow, *bad, "--db", str(store.path))
        assert refused.exit_code == 2, (bad, refused.output)


def test_sql_expanded_text_is_exact() -> None:
    """Labels aligned, NULL spelled out, a multi-line value continued under the bar, markup
    characters printed as written, a rule line over each record."""
    text = render.sql_expanded(
        ["n", "trace_text"], [(1, "line one\nline two"), (None, "[bold]x[/]")], width=80
    )
    assert text.splitlines() == [
        "-[ RECORD 1 ]----------",
        "n          | 1",
        "trace_text | line one",
        "           | line two",
        "-[ RECORD 2 ]----------",
        "n          | NULL",
        "trace_text | [bold]x[/]",
    ]


def test_sql_table_width_is_the_width_the_table_prints_at() -> None:
    """The auto switch compares this width with the terminal's: it must be exact."""
    columns = ["a", "a_longer_name", "c"]
    rows = [(1, "x" * 30, None), ("two\nlines, the longer one", "y", 3.5)]
    console = Console(width=10_000, record=True, color_system=None)
    console.print(render.sql_table(columns, rows))
    printed = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in printed) == render.sql_table_width(columns, rows)


def test_jobs_and_show_stay_readable_on_80_columns(store: Store) -> None:
    """On a terminal: one line per run within 80 columns; ``show`` wraps, never cuts."""
    jobs = invoke("jobs", "--db", str(store.path), env=TERMINAL_80)
    assert jobs.exit_code == 0, jobs.output
    lines = jobs.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert len([line for line in lines if "crm.stalled" in line]) == 2
    show = invoke("show", store.ids["long1"], "--db", str(store.path), env=TERMINAL_80)
    assert show.exit_code == 0, show.output
    assert all(len(line) <= 80 for line in show.stdout.splitlines())
    assert store.ids["long1"] in show.stdout
    assert "same cursor" in show.stdout


# --------------------------------------------------------------------------------------------
# 14: piped output keeps whole values
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_piped_jobs_prints_full_ids_and_whole_names(store: Store) -> None:
    """``jobs | grep crm.stalled_pagination`` found 0 of 2 runs: names were cut with … and
    ids were 8-character prefixes."""
    proc = _run_piped("jobs", "--db", str(store.path))
    assert proc.returncode == 0, proc.stderr
    matching = [line for line in proc.stdout.splitlines() if LONG_NAME in line]
    assert len(matching) == 2, proc.stdout
    for i, line in enumerate(reversed(matching)):  # newest first
        assert line.startswith(store.ids[f"long{i}"] + " "), line
        assert LONG_QUEUE in line
    assert "…" not in proc.stdout


@pytest.mark.slow
def test_piped_show_sql_stuck_and_health_print_whole_values(store: Store) -> None:
    failed = store.ids["long1"]
    show = _run_piped("show", failed[:8], "--db", str(store.path))
    assert show.returncode == 0, show.stderr
    assert LONG_ERROR.strip() in show.stdout  # one line, not wrapped at 80
    sql = _run_piped("sql", "SELECT run_id, name, queue FROM jobs", "--db", str(store.path))
    assert sql.returncode == 0, sql.stderr
    assert re.search(rf"^{failed} +{LONG_NAME} +{LONG_QUEUE}\s*$", sql.stdout, re.MULTILINE)
    health = _run_piped("health", failed[:8], "--db", str(store.path))
    assert f"{LONG_NAME} {failed}:" in health.stdout
    once = _run_piped("monitor", "--once", "--recent", "20", "--db", str(store.path))
    assert once.returncode == 0, once.stderr
    assert failed in once.stdout  # recently finished: the full id
    assert "…" not in show.stdout + sql.stdout + once.stdout


# --------------------------------------------------------------------------------------------
# 15: a run id prefix, in the whole store
# --------------------------------------------------------------------------------------------


def test_prefix_finds_a_run_older_than_ten_thousand_newer_ones(
    store: Store, tmp_path: Path
) -> None:
    """``show PREFIX`` matched only the newest 10,000 runs."""
    big = tmp_path / "big.duckdb"
    big.write_bytes(store.path.read_bytes())
    con = duckdb.connect(str(big))
    con.execute(
        """INSERT INTO jobs SELECT j.* REPLACE (
               printf('bulk-%06d', r.i) AS run_id,
               j.started_at + to_seconds(r.i + 1) AS started_at)
           FROM jobs j, range(10001) r(i) WHERE j.run_id = 'abcd-1111'"""
    )
    con.close()
    for command in ("show", "health"):
        result = invoke(command, "ffff", "--db", str(big), "--json")
        assert result.exit_code == 0, (command, result.output)
        assert "ffff-0000" in result.stdout


def test_prefix_wildcards_match_only_themselves(store: Store) -> None:
    """``%`` and ``_`` in a prefix are characters of the id, not LIKE wildcards."""
    for given, expected in (("a%cd", "a%cd-3333"), ("ab_d", "ab_d-4444")):
        result = invoke("show", given, "--db", str(store.path), "--json")
        assert result.exit_code == 0, (given, result.output)
        assert f'"id": "{expected}"' in result.stdout


def test_prefix_too_short_is_a_usage_error(store: Store) -> None:
    for command in ("show", "health"):
        result = invoke(command, "abc", "--db", str(store.path))
        assert result.exit_code == 2, (command, result.output)
        assert "too short" in result.stderr
        assert "at least 4 characters" in result.stderr
    own = invoke("show", "ab", "--db", str(store.path), "--json")  # an id of 2 characters
    assert own.exit_code == 0, own.output
    assert '"id": "ab"' in own.stdout


def test_ambiguous_prefix_lists_the_candidates(store: Store) -> None:
    for command in ("show", "health"):
        result = invoke(command, "abcd", "--db", str(store.path))
        assert result.exit_code == 2, (command, result.output)
        assert "matches several runs" in result.stderr
        assert re.search(r"abcd-2222 +prefix\.demo", result.stderr), result.stderr
        assert re.search(r"abcd-1111 +prefix\.demo", result.stderr), result.stderr
    exact = invoke("health", "abcd-1111", "--db", str(store.path))
    assert exact.exit_code == 0, exact.output
    assert "abcd-1111" in exact.stdout


# --------------------------------------------------------------------------------------------
# 17: a closed stdout
# --------------------------------------------------------------------------------------------

BIG_SQL = "SELECT range AS n, repeat('x', 60) AS pad FROM range(3000)"
"""About 200 KB of table: more than a pipe holds, so the writer meets the closed pipe."""


def _read_one_line_then_close(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stdout a pipe, read its first line, close the pipe (as ``head -1``
    does) and return (exit status, first line, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaperone_otel.cli", *args],
        env=_cli_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        with proc.stderr:
            err = proc.stderr.read()
        return proc.wait(timeout=60), first, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sql_piped_into_head_exits_0_quietly(store: Store) -> None:
    """``sql … | head`` exited 1 (click's answer to EPIPE)."""
    status, first, err = _read_one_line_then_close("sql", BIG_SQL, "--db", str(store.path))
    assert first.split() == ["n", "pad"]
    assert status == 0, err
    assert err == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [("sql", BIG_SQL, "--csv"), ("sql", BIG_SQL, "-x"), ("jobs", "--limit", "5000")]
)
def test_long_output_piped_into_head_exits_0_quietly(
    store: Store, tmp_path: Path, args: tuple[str, ...]
) -> None:
    big = tmp_path / "many.duckdb"
    big.write_bytes(store.path.read_bytes())
    con = duckdb.connect(str(big))
    con.execute(
        """INSERT INTO jobs SELECT j.* REPLACE (printf('bulk-%06d', r.i) AS run_id)
           FROM jobs j, range(3000) r(i) WHERE j.run_id = 'abcd-1111'"""
    )
    con.close()
    status, first, err = _read_one_line_then_close(*args, "--db", str(big))
    assert first, err
    assert status == 0, err
    assert err == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("jobs", "--help"),
        ("jobs",),
        ("show", "ffff"),
        ("stuck",),
        ("health",),
        ("monitor", "--once"),
        ("sql", "SELECT 1 AS one", "--json"),
    ],
)
def test_every_command_with_its_reader_gone_exits_0_quietly(
    store: Store, args: tuple[str, ...]
) -> None:
    """The pipe's reader is gone before the command writes anything: every write fails."""
    db = () if "--help" in args else ("--db", str(store.path))
    assert _close_at_once(*args, *db) == (0, "")


def _close_at_once(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose read end is closed at once (before the child
    has started, so its first write meets no reader); return (exit status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaperone_otel.cli", *args],
        env=_cli_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.slow
def test_a_finding_keeps_its_exit_code_when_the_reader_has_gone(store: Store) -> None:
    """``health`` on a failed run exits 1, ``stuck`` with nothing stuck 0: a closed pipe
    must not turn a verdict into 0 (the reader is gone before anything is written)."""
    for args, expected in (
        (("health", store.ids["long1"]), 1),
        (("health", store.ids["long1"], "--json"), 1),
        (("stuck",), 0),
    ):
        assert _close_at_once(*args, "--db", str(store.path)) == (expected, ""), args
