"""Each ``chaperone-otel`` command against real stores made by real supervised runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pytest

import chaperone_otel
from chaperone_otel import supervised
from tests.cli._cli_helpers import Live, Recorded, invoke
from tests.waiting import wait_until

# --------------------------------------------------------------------------------------------
# Finding the store; bad input.
# --------------------------------------------------------------------------------------------


def test_missing_store_is_a_clean_exit_3(tmp_path: Path) -> None:
    result = invoke("jobs", "--db", str(tmp_path / "nope.duckdb"))
    assert result.exit_code == 3
    assert "no store at" in result.stderr
    assert "Traceback" not in result.output


def test_no_store_given_is_a_usage_error() -> None:
    result = invoke("jobs")
    assert result.exit_code == 2
    assert "--db" in result.stderr
    assert "CHAPERONE_OTEL_SINK" in result.stderr


def test_store_from_environment_variable(recorded_store: Recorded) -> None:
    result = invoke("jobs", "--json", env={"CHAPERONE_OTEL_SINK": str(recorded_store.path)})
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 5


def test_file_that_is_not_a_store_exits_3(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.duckdb"
    bogus.write_text("this is not a database\n" * 100)
    result = invoke("jobs", "--db", str(bogus))
    assert result.exit_code == 3
    assert "cannot open store" in result.stderr
    assert "Traceback" not in result.output


def test_store_from_a_newer_release_exits_3(recorded_store: Recorded, tmp_path: Path) -> None:
    newer = tmp_path / "newer.duckdb"
    shutil.copy(recorded_store.path, newer)
    con = duckdb.connect(str(newer))
    con.execute("INSERT INTO schema_version VALUES (99, now()::TIMESTAMP, 'from the future')")
    con.close()
    result = invoke("jobs", "--db", str(newer))
    assert result.exit_code == 3
    assert "newer" in result.stderr


def test_directory_is_not_a_store(tmp_path: Path) -> None:
    result = invoke("jobs", "--db", str(tmp_path))
    assert result.exit_code == 3
    assert "directory" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "nonsense"), "--since"),
        (("--since", "2024-13-45"), "--since"),
        (("--limit", "0"), "--limit"),
        (("--limit", "ten"), "--limit"),
        (("--memory-above", "lots"), "--memory-above"),
        (("--running", "--failed"), "choose one status flag"),
        (("--json", "--csv"), "exclusive"),
        (("--order-by", "no_such_column"), "no_such_column"),
    ],
)
def test_jobs_bad_flag_values_exit_2(
    recorded_store: Recorded, args: tuple[str, ...], message: str
) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_bad_url_is_a_usage_error() -> None:
    result = invoke("jobs", "--url", "127.0.0.1:9")
    assert result.exit_code == 2
    assert "http://" in result.stderr


def test_unreachable_url_exits_3() -> None:
    result = invoke("jobs", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output


def test_sql_whose_owner_goes_away_exits_3_not_2() -> None:
    """``sql`` against an owner that answered when the store was opened and is then gone
    (503: closing) is a store problem (exit 3, as every other command says), not bad SQL
    (exit 2, which tells a script to stop retrying)."""
    import http.server

    class GoingAway(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # /api/info: the owner is there when the CLI opens it
            body = json.dumps({"version": chaperone_otel.__version__, "path": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # the query: the owner is closing
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GoingAway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = invoke("sql", "--url", url, "SELECT 1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


def test_jobs_table_lists_every_run(recorded_store: Recorded) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path))
    assert result.exit_code == 0, result.output
    for name in ("etl.import", "reports.build", "emails.send", "analytics.embed"):
        assert name in result.stdout
    for run_id in recorded_store.ids.values():
        assert run_id in result.stdout
    assert "5 run(s)" in result.stdout


def test_jobs_failed_json(recorded_store: Recorded) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path), "--failed", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [recorded_store.ids["failed"]]
    assert rows[0]["error_type"].endswith("ImportRowsError")
    assert rows[0]["status"] == "failed"


def test_jobs_csv(recorded_store: Recorded) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path), "--completed", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["name"] for r in rows} == {"etl.import", "reports.build", "analytics.embed"}
    assert all(r["status"] == "completed" for r in rows)
    assert rows[0]["started_at"].endswith("Z")


def test_jobs_name_queue_and_violated(recorded_store: Recorded) -> None:
    db = str(recorded_store.path)
    named = json.loads(invoke("jobs", "--db", db, "--name", "etl.import", "--json").stdout)
    assert sorted(r["id"] for r in named) == sorted(
        [recorded_store.ids["import0"], recorded_store.ids["import1"]]
    )
    queued = json.loads(invoke("jobs", "--db", db, "--queue", "reports", "--json").stdout)
    assert [r["id"] for r in queued] == [recorded_store.ids["report"]]
    violated = json.loads(invoke("jobs", "--db", db, "--violated", "--json").stdout)
    assert [r["id"] for r in violated] == [recorded_store.ids["hog"]]
    unhealthy = {
        r["id"] for r in json.loads(invoke("jobs", "--db", db, "--unhealthy", "--json").stdout)
    }
    assert unhealthy == {recorded_store.ids["failed"], recorded_store.ids["hog"]}


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "--name", ""),
        ("jobs", "--queue", ""),
        ("stuck", "--name", ""),
        ("health", "--name", ""),
        ("jobs", "--limit", str(2**63)),
    ],
)
def test_an_empty_filter_or_an_impossible_limit_is_a_usage_error(
    recorded_store: Recorded, args: tuple[str, ...]
) -> None:
    """``--name "$JOB"`` with JOB unset is a usage error (exit 2), as ``named('')`` is in
    Python and ``name=`` over HTTP: it used to filter nothing and report on every run. A
    limit past int64 was a store error (exit 3)."""
    command, *flags = args
    result = invoke(command, "--db", str(recorded_store.path), *flags)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_jobs_since_limit_and_order(recorded_store: Recorded) -> None:
    db = str(recorded_store.path)
    assert json.loads(invoke("jobs", "--db", db, "--since", "2000-01-01", "--json").stdout)
    future = invoke("jobs", "--db", db, "--since", "2999-01-01T00:00:00Z", "--json")
    assert json.loads(future.stdout) == []
    recent = json.loads(invoke("jobs", "--db", db, "--since", "1h", "--json").stdout)
    assert len(recent) == 5
    oldest_first = json.loads(
        invoke(
            "jobs", "--db", db, "--order-by", "started_at", "--asc", "--limit", "2", "--json"
        ).stdout
    )
    assert [r["id"] for r in oldest_first] == [
        recorded_store.ids["import0"],
        recorded_store.ids["import1"],
    ]
    newest = json.loads(
        invoke("jobs", "--db", db, "--order-by", "-started_at", "--limit", "1", "--json").stdout
    )
    assert [r["id"] for r in newest] == [recorded_store.ids["hog"]]


# --------------------------------------------------------------------------------------------
# show
# --------------------------------------------------------------------------------------------


def test_show_failed_run_has_error_and_traceback(recorded_store: Recorded) -> None:
    result = invoke("show", recorded_store.ids["failed"], "--db", str(recorded_store.path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "emails.send" in out
    assert "failed" in out
    assert "ImportRowsError" in out
    assert "amount is not a number" in out
    assert "Traceback (most recent call last)" in out
    assert "_parse" in out  # a frame of the user's code


def test_show_says_a_traceless_error_once_and_no_last_heartbeat_before_one(
    tmp_path: Path,
) -> None:
    """An error recorded without a traceback (a run closed by another process, an
    exception never raised, one with no message) is one line, not its heading twice; a run
    that never heartbeat shows no "last heartbeat" (it was its start)."""
    db = str(tmp_path / "errors.duckdb")
    chaperone_otel.configure(sink=db)
    try:
        closed = chaperone_otel.start_run("closer.job", run_id="closed-run")
        chaperone_otel.close_run(
            "closed-run",
            execution_id=closed.execution_id,
            attempt=1,
            status="failed",
            error=RuntimeError("horse killed"),
            name="closer.job",
        )
        chaperone_otel.start_run("bare.job", run_id="bare-run").finish(LookupError())
        progressed = chaperone_otel.start_run("progress.job", run_id="progress-run")
        with progressed.activate():
            time.sleep(0.01)  # a progress report after the start, at another time
            chaperone_otel.report_progress(1, 2)
        progressed.finish()
    finally:
        chaperone_otel.shutdown()
        chaperone_otel.reset()
    closed_out = invoke("show", "closed-run", "--db", db).stdout
    assert closed_out.count("horse killed") == 1, closed_out
    bare_out = invoke("show", "bare-run", "--db", db).stdout
    assert bare_out.count("LookupError") == 1, bare_out
    assert "LookupError:" not in bare_out  # no message: no dangling colon
    assert "heartbeats    0 (interval 1m00s)" in bare_out  # no "last …": there was none
    progress_out = invoke("show", "progress-run", "--db", db).stdout
    assert "(interval 1m00s, last " in progress_out  # progress keeps the run alive too


def test_show_violation_and_heartbeats(recorded_store: Recorded) -> None:
    result = invoke("show", recorded_store.ids["hog"], "--db", str(recorded_store.path))
    assert result.exit_code == 0, result.output
    assert "resource violations" in result.stdout
    assert "memory" in result.stdout
    assert "1.0 MiB" in result.stdout  # the limit
    shown = invoke("show", recorded_store.ids["import0"], "--db", str(recorded_store.path))
    assert "100.0%" in shown.stdout
    assert "heartbeats" in shown.stdout


def test_show_json_and_prefix(recorded_store: Recorded) -> None:
    run_id = recorded_store.ids["hog"]
    result = invoke("show", run_id[:8], "--db", str(recorded_store.path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == run_id
    assert data["resource_violations"][0]["type"] == "memory"
    assert data["resource_violations"][0]["limit"] == 2**20


def test_show_unknown_run_exits_1(recorded_store: Recorded) -> None:
    result = invoke("show", "no-such-run", "--db", str(recorded_store.path))
    assert result.exit_code == 1
    assert "no run 'no-such-run'" in result.stderr


# --------------------------------------------------------------------------------------------
# sql
# --------------------------------------------------------------------------------------------


def test_sql_select_table_json_csv(recorded_store: Recorded) -> None:
    db = str(recorded_store.path)
    q = "SELECT name, count(*) AS runs FROM jobs GROUP BY name ORDER BY name"
    table = invoke("sql", q, "--db", db)
    assert table.exit_code == 0, table.output
    assert "etl.import" in table.stdout
    assert "4 row(s)" in table.stdout
    rows = json.loads(invoke("sql", q, "--db", db, "--json").stdout)
    assert {"name": "etl.import", "runs": 2} in rows
    text = invoke("sql", q, "--db", db, "--csv").stdout
    assert text.splitlines()[0] == "name,runs"
    assert "etl.import,2" in text


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM jobs",
        "DROP TABLE jobs",
        "INSERT INTO jobs (run_id, attempt) VALUES ('x', 1)",
        "UPDATE jobs SET status = 'completed'",
        "SELECT 1; DELETE FROM jobs",
    ],
)
def test_sql_that_writes_is_refused(recorded_store: Recorded, statement: str) -> None:
    db = str(recorded_store.path)
    result = invoke("sql", statement, "--db", db)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: sql:")
    assert "Traceback" not in result.output
    count = json.loads(invoke("sql", "SELECT count(*) AS n FROM jobs", "--db", db, "--json").stdout)
    assert count == [{"n": 5}]


def test_sql_syntax_error_exits_2(recorded_store: Recorded) -> None:
    result = invoke("sql", "SELEC nonsense", "--db", str(recorded_store.path))
    assert result.exit_code == 2
    assert "error: sql:" in result.stderr


# --------------------------------------------------------------------------------------------
# prune
# --------------------------------------------------------------------------------------------


def test_prune(recorded_store: Recorded, tmp_path: Path) -> None:
    copy = tmp_path / "prune.duckdb"
    shutil.copy(recorded_store.path, copy)
    kept = invoke("prune", "--older-than", "30d", "--db", str(copy))
    assert kept.exit_code == 0, kept.output
    assert "pruned 0 run(s)" in kept.stdout
    time.sleep(0.01)
    gone = invoke("prune", "--older-than", "1ms", "--db", str(copy), "--json")
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["deleted"] == 5
    assert json.loads(invoke("jobs", "--db", str(copy), "--json").stdout) == []


def test_prune_bad_values(recorded_store: Recorded) -> None:
    result = invoke("prune", "--older-than", "soon", "--db", str(recorded_store.path))
    assert result.exit_code == 2
    assert "not a duration" in result.stderr
    assert invoke("prune", "--db", str(recorded_store.path)).exit_code == 2  # required


# --------------------------------------------------------------------------------------------
# stuck / health / wait / monitor on a live store
# --------------------------------------------------------------------------------------------


def test_stuck_none_exits_0(recorded_store: Recorded) -> None:
    result = invoke("stuck", "--db", str(recorded_store.path))
    assert result.exit_code == 0, result.output
    assert "no stuck runs" in result.stdout


def test_stuck_found_exits_1(live_store: Live) -> None:
    result = invoke("stuck", "--db", str(live_store.path))
    assert result.exit_code == 1, result.output
    assert live_store.hung_id in result.stdout
    assert live_store.healthy_id not in result.stdout
    rows = json.loads(invoke("stuck", "--db", str(live_store.path), "--json").stdout)
    assert [r["id"] for r in rows] == [live_store.hung_id]
    assert rows[0]["stuck"] is True


def test_health_exit_codes(live_store: Live) -> None:
    db = str(live_store.path)
    overall = invoke("health", "--db", db)
    assert overall.exit_code == 1, overall.output
    assert live_store.hung_id in overall.stdout
    assert "FAIL" in overall.stdout
    one = invoke("health", live_store.healthy_id, "--db", db)
    assert one.exit_code == 0, one.output
    assert "healthy" in one.stdout
    only_healthy = invoke("health", "--db", db, "--name", "etl.stream", "--json")
    assert only_healthy.exit_code == 0, only_healthy.output
    assert json.loads(only_healthy.stdout)["ok"] is True
    assert invoke("health", "no-such-run", "--db", db).exit_code == 1


def test_wait_times_out_then_returns_when_runs_finish(live_store: Live) -> None:
    db = str(live_store.path)
    started = time.monotonic()
    timed_out = invoke("wait", "--db", db, "--timeout", "0.2", "--interval", "0.05")
    assert timed_out.exit_code == 1, timed_out.output
    assert "timed out" in timed_out.stderr
    assert time.monotonic() - started < 15
    ignore = invoke(
        "wait",
        "--db",
        db,
        "--name",
        "payments.reconcile",
        "--ignore-stuck",
        "--timeout",
        "5",
        "--interval",
        "0.1",
    )
    assert ignore.exit_code == 0, ignore.output
    threading.Timer(0.2, live_store.stop.set).start()
    done = invoke("wait", "--db", db, "--timeout", "20", "--interval", "0.1")
    assert done.exit_code == 0, done.output
    assert "no matching runs are running" in done.stdout


def test_wait_bad_timeout() -> None:
    assert invoke("wait", "--db", "x.duckdb", "--timeout", "forever").exit_code == 2


def test_monitor_once_renders_running_runs(live_store: Live) -> None:
    result = invoke("monitor", "--db", str(live_store.path), "--once")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "payments.reconcile" in out
    assert "etl.stream" in out
    assert "STUCK" in out
    assert "2 running" in out
    data = json.loads(invoke("monitor", "--db", str(live_store.path), "--once", "--json").stdout)
    assert {r["id"] for r in data["running"]} == {live_store.hung_id, live_store.healthy_id}


def test_monitor_once_on_closed_store(recorded_store: Recorded) -> None:
    result = invoke("monitor", "--db", str(recorded_store.path), "--once")
    assert result.exit_code == 0, result.output
    assert "no running runs" in result.stdout
    assert "recently finished" in result.stdout
    assert "emails.send" in result.stdout


def test_monitor_json_needs_once(recorded_store: Recorded) -> None:
    result = invoke("monitor", "--db", str(recorded_store.path), "--json")
    assert result.exit_code == 2


def test_wait_ends_when_a_real_run_finishes(tmp_path: Path) -> None:
    path = tmp_path / "wait.duckdb"
    chaperone_otel.configure(sink=str(path), heartbeat_interval=1.0)
    release = threading.Event()

    def job() -> None:
        with supervised("deploy.drain", queue="q1") as run:
            run.heartbeat()
            release.wait(20)

    t = threading.Thread(target=job, daemon=True)
    t.start()
    from chaperone_otel.sink import open_sink

    def running() -> bool:
        with open_sink(str(path)) as sink:
            return sink.jobs.running().count() == 1

    wait_until(running, 10, "the run to be recorded as running")
    threading.Timer(0.2, release.set).start()
    result = invoke(
        "wait", "--db", str(path), "--queue", "q1", "--timeout", "20", "--interval", "0.1"
    )
    t.join(10)
    assert result.exit_code == 0, result.output
    assert "waiting for 1 run(s)" in result.stderr


def test_version_and_help() -> None:
    assert invoke("--version").exit_code == 0
    result = invoke("--help")
    assert result.exit_code == 0
    for command in (
        "demo",
        "jobs",
        "show",
        "monitor",
        "stuck",
        "health",
        "sql",
        "prune",
        "wait",
        "sink",
    ):
        assert command in result.stdout


def test_jobs_table_fits_a_narrow_terminal() -> None:
    """On 80 columns each run stays on one line: short ids, no squeezed columns; wide
    terminals get full ids and every column."""
    from types import SimpleNamespace

    from rich.console import Console

    from chaperone_otel.cli import _render as render

    record = SimpleNamespace(id="0f8e6c3a-8a3c-4b8e-9a55-0a6c1c8e2d11", name="billing.process_transactions_nightly", queue="payments", status="completed", health="healthy", progress=100.0, started_at=None, duration=2.0, last_heartbeat_at=None, memory_bytes=2**27)
    for width in (80, 100, 200):
        console = Console(width=width, record=True, color_system=None)
        console.print(render.jobs_table([record] * 3, width=width))
        lines = console.export_text().rstrip("\n").splitlines()
        assert len(lines) == 2 + 3, lines  # header, rule, one line per run
        assert all(len(line.rstrip()) <= width for line in lines)
        assert ("DURATION" in lines[0])
        assert ("completed" in lines[2])
        assert ("0f8e6c3a-8a3c-4b8e-9a55-0a6c1c8e2d11" in lines[2]) is (width >= 150)
        assert ("MEMORY" in lines[0]) is (width >= 100)


# --------------------------------------------------------------------------------------------
# Awkward stored values: markup characters, non-finite floats, huge durations, time zones.
# --------------------------------------------------------------------------------------------


def _record_awkward_runs(path: Path) -> dict[str, str]:
    """A closed store whose names, queue and metadata hold rich markup syntax and whose
    heartbeat metadata holds NaN and infinity."""
    ids: dict[str, str] = {}
    chaperone_otel.configure(sink=str(path), heartbeat_interval=5.0)
    with supervised("reports.rebuild[daily]", queue="[q]") as run:
        run.report_progress(5, 10)
        run.heartbeat(tag="[bold red]alert[/]", ratio=float("nan"), big=float("inf"))
        ids["daily"] = run.id
    with supervised("etl[/]import", queue="q") as run:
        run.report_progress(1, 2)
        ids["closing"] = run.id
    chaperone_otel.shutdown()
    chaperone_otel.reset()
    return ids


def _strict_json(text: str) -> object:
    """``json.loads`` that rejects NaN/Infinity (not JSON: JSON.parse, Go, serde refuse it)."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_for_non_finite_values(
    recorded_store: Recorded, tmp_path: Path
) -> None:
    path = tmp_path / "awkward.duckdb"
    ids = _record_awkward_runs(path)
    result = invoke("jobs", "--db", str(path), "--json")
    assert result.exit_code == 0, result.output
    rows = _strict_json(result.stdout)
    assert isinstance(rows, list)
    daily = next(r for r in rows if r["id"] == ids["daily"])
    assert daily["metadata"]["ratio"] is None
    assert daily["metadata"]["big"] is None
    assert daily["metadata"]["tag"] == "[bold red]alert[/]"
    shown = _strict_json(invoke("show", ids["daily"], "--db", str(path), "--json").stdout)
    assert isinstance(shown, dict)
    assert shown["heartbeats"][-1]["metadata"]["ratio"] is None
    q = "SELECT 'nan'::DOUBLE AS x, '-inf'::DOUBLE AS y, [1.5, 'inf'::DOUBLE] AS l, 2.5::DOUBLE AS z"
    sql = invoke("sql", q, "--db", str(recorded_store.path), "--json")
    assert sql.exit_code == 0, sql.output
    assert _strict_json(sql.stdout) == [{"x": None, "y": None, "l": [1.5, None], "z": 2.5}]


@pytest.mark.slow
def test_sql_timestamps_are_utc_in_any_local_time_zone(recorded_store: Recorded) -> None:
    """DuckDB returns TIMESTAMP values naive in UTC; CSV and JSON must not read them as local
    time (a real process with TZ set, so the C library's zone is the one in effect)."""
    import os
    import subprocess
    import sys

    q = "SELECT TIMESTAMP '2024-05-01 12:00:00' AS t"
    env = {k: v for k, v in os.environ.items() if k != "CHAPERONE_OTEL_SINK"}
    for tz in ("Asia/Tokyo", "America/Los_Angeles", "UTC"):
        env.update({"TZ": tz, "NO_COLOR": "1"})
        outputs = {}
        for fmt in ("--csv", "--json"):
            proc = subprocess.run(
                [sys.executable, "-m", "chaperone_otel.cli", "sql", q, fmt],
                env={**env, "CHAPERONE_OTEL_SINK": str(recorded_store.path)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            outputs[fmt] = proc.stdout
        assert outputs["--csv"].splitlines() == ["t", "2024-05-01T12:00:00Z"], (tz, outputs)
        assert json.loads(outputs["--json"]) == [{"t": "2024-05-01T12:00:00+00:00"}], tz


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "--since", "10000000w"),
        ("jobs", "--since", "99999999999999999999"),
        ("prune", "--older-than", "99999999999w"),
        ("prune", "--older-than", "106000w"),
        ("wait", "--timeout", "99999999999999999999"),
        ("monitor", "--once", "--interval", "99999999999999999999w"),
    ],
)
def test_durations_too_long_for_a_datetime_are_usage_errors(
    recorded_store: Recorded, tmp_path: Path, args: tuple[str, ...]
) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(recorded_store.path, db)
    result = invoke(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "too long a duration" in result.stderr
    with duckdb.connect(str(db), read_only=True) as con:  # prune deleted nothing
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (5,)


def test_the_longest_duration_a_datetime_holds_still_works(
    recorded_store: Recorded, tmp_path: Path
) -> None:
    db = tmp_path / "copy.duckdb"
    shutil.copy(recorded_store.path, db)
    since = invoke("jobs", "--since", "100000w", "--db", str(db), "--json")
    assert since.exit_code == 0, since.output
    assert len(json.loads(since.stdout)) == 5
    pruned = invoke("prune", "--older-than", "100000w", "--db", str(db))
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 0 run(s)" in pruned.stdout


def test_square_brackets_in_stored_data_are_shown_as_written(tmp_path: Path) -> None:
    """Rich reads a str as markup: stored names, queues, metadata and SQL values must reach
    it as plain text (no MarkupError traceback, no lost ``[daily]``)."""
    path = tmp_path / "brackets.duckdb"
    ids = _record_awkward_runs(path)
    db = str(path)
    jobs = invoke("jobs", "--db", db)
    assert jobs.exit_code == 0, jobs.output
    assert "reports.rebuild[daily]" in jobs.stdout
    assert "etl[/]import" in jobs.stdout
    assert "[q]" in jobs.stdout
    shown = invoke("show", ids["daily"], "--db", db)
    assert shown.exit_code == 0, shown.output
    assert "reports.rebuild[daily]" in shown.stdout  # the panel title
    assert "tag=[bold red]alert[/]" in shown.stdout  # heartbeat metadata
    monitor = invoke("monitor", "--once", "--db", db)
    assert monitor.exit_code == 0, monitor.output
    assert "etl[/]import" in monitor.stdout  # recently finished
    health = invoke("health", ids["closing"], "--db", db)
    assert health.exit_code == 0, health.output
    assert f"etl[/]import {ids['closing']}:" in health.stdout
    sql = invoke("sql", "SELECT '[/]' AS \"[b]x\", '[red]y' AS z", "--db", db)
    assert sql.exit_code == 0, sql.output
    assert "[b]x" in sql.stdout
    assert "[/]" in sql.stdout
    assert "[red]y" in sql.stdout


def test_square_brackets_in_running_runs_tables() -> None:
    """The tables ``stuck``/``health``/``wait`` and ``monitor`` print for running runs."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from rich.console import Console

    from chaperone_otel.cli import _render as render
    from chaperone_otel.cli._monitor import Frame, render_frame

    now = datetime.now(timezone.utc)
    record = SimpleNamespace(id="[/]4c97744-0f27", name="etl[/]import", queue="[q]", status="running", health="unhealthy", stuck=True, lost=False, progress=42.0, phase="[bold]load", eta=None, started_at=now, duration=3.0, last_heartbeat_at=now - timedelta(seconds=200), heartbeat_interval=60.0, memory_bytes=2**27, cpu_percent=1.0)  # fmt: skip
    for renderable in (
        render.jobs_table([record], title="stuck runs", width=200),
        render_frame(Frame(running=[record], at=now), title="[x]", interval=1, width=200),
    ):
        console = Console(width=200, record=True, color_system=None)
        console.print(renderable)
        text = console.export_text()
        for value in ("etl[/]import", "[q]", "[/]4c977"):
            assert value in text, text
    assert "[bold]load" in text  # the monitor's PHASE column


def test_tables_fit_the_terminal_without_cutting_values() -> None:
    """A value wider than its planned minimum (a date for a run started on an earlier day,
    a 12-character queue) must not push the table past the terminal, where rich cuts it:
    columns are left out whole instead, and the ones shown keep their values intact."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from rich.console import Console

    from chaperone_otel.cli import _render as render
    from chaperone_otel.cli._monitor import Frame, render_frame

    now = datetime.now(timezone.utc)
    started = now - timedelta(days=2)
    record = SimpleNamespace(id="e4c97744-0f27-4bd9-b27f-69f2511aff1c", name="crm.sync_contacts", queue="integrations", status="running", health="unhealthy", stuck=True, lost=False, progress=42.0, phase="processing", eta=None, started_at=started, duration=1.1, last_heartbeat_at=now - timedelta(seconds=200), heartbeat_interval=60.0, memory_bytes=166985728, cpu_percent=12.0)  # fmt: skip
    finished = SimpleNamespace(id="0f8e6c3a-8a3c-4b8e", name="x" * 150, status="failed", duration=3.0, error_type="ValueError", error_message="boom")  # fmt: skip
    seen_memory: set[str] = set()
    for width in range(60, 141, 5):
        for kind, renderable in (
            ("jobs", render.jobs_table([record], width=width)),
            (
                "monitor",
                render_frame(
                    Frame(running=[record], recent=[finished], at=now),
                    title="t",
                    interval=1,
                    width=width,
                ),
            ),
        ):
            console = Console(width=width, record=True, color_system=None)
            console.print(renderable)
            lines = console.export_text().splitlines()
            assert all(len(line) <= width for line in lines), (kind, width, lines)
            header = next(line for line in lines if "HEALTH" in line)
            row = next(line for line in lines if line.startswith(("e4c97744", "crm.")))
            assert row.rstrip().endswith("unhealthy STUCK") or kind == "jobs", (width, row)
            assert "unhealthy STUCK" in row, (kind, width, row)
            if "MEMORY" in header:
                seen_memory.add(f"{kind}@{width}")
                assert "159.2 MiB" in row, (kind, width, row)
            if "STARTED" in header:
                assert render.fmt_time(started) in row, (kind, width, row)
            if "QUEUE" in header:
                assert "integrations" in row, (kind, width, row)
            if kind == "monitor":
                failed = next(line for line in lines if line.startswith("xxx"))
                assert "failed" in failed, (width, failed)
                assert "3.0s" in failed, (width, failed)
    assert {"jobs@120", "jobs@140", "monitor@110", "monitor@140"} <= seen_memory


@pytest.mark.parametrize(
    ("given", "code"), [("2m", 3), ("90", 3), ("nonsense", 2), ("0s", 2)]
)
def test_sink_serve_takes_the_long_run_threshold_as_a_duration(
    tmp_path: Path, given: str, code: int
) -> None:
    """``--long-run-threshold`` (and ``CHAPERONE_OTEL_LONG_RUN_THRESHOLD``, which the
    workers read as a duration) takes ``2m`` as the workers do; it was a float, so the
    value that configured the workers made ``sink serve`` exit 2. A directory as the store
    stops the server right after the options are read (exit 3), not in them (exit 2)."""
    result = invoke("sink", "serve", "--db", str(tmp_path), "--port", "0",
                    "--long-run-threshold", given)
    assert result.exit_code == code, result.output
    result = invoke("sink", "serve", "--db", str(tmp_path), "--port", "0",
                    env={"CHAPERONE_OTEL_LONG_RUN_THRESHOLD": given})
    assert result.exit_code == code, result.output
