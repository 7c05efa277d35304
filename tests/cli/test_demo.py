"""The demo end to end, in real processes, and ``monitor`` in a real terminal (a pty).

* ``demo --duration 8`` runs to completion in a subprocess; its summary names the stuck run,
  the memory violation and the failure; the store it leaves answers ``jobs --failed``,
  ``show`` and ``sql``.
* ``demo --forever`` is watched from *other* processes while it runs: ``jobs --stuck`` and
  ``monitor`` (in a pseudo-terminal, quit with a real Ctrl-C typed into the terminal) reach
  the live store through the URL the demo advertises; its ``/metrics`` is scraped for the
  violation and the stuck run; then Ctrl-C ends the demo cleanly with its summary.

Every subprocess is bounded in time and stopped by its PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaperone_otel import semconv as sc
from chaperone_otel._health import rules
from tests.cli._cli_helpers import Recorded, cli_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "chaperone_otel.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\r")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A CLI command in its own process (bounded)."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(), check=False
    )


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop a child by PID: SIGINT, then SIGTERM, then SIGKILL, each with a deadline."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


class Output:
    """Collects a child's output on a thread so the test can wait for lines."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()

    def _pump(self, read: Callable[[], bytes]) -> None:
        while True:
            try:
                data = read()
            except OSError:  # EIO: the pty's other side closed
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data.decode("utf-8", "replace"))

    @property
    def text(self) -> str:
        with self._lock:
            return ANSI.sub("", "".join(self._chunks))

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)


@dataclass
class PtyProcess:
    proc: subprocess.Popen[bytes]
    master: int
    out: Output

    def ctrl_c(self) -> None:
        """Type Ctrl-C into the terminal: the tty driver sends SIGINT to the foreground."""
        os.write(self.master, b"\x03")


def _controlling_tty() -> None:  # runs in the child before exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.fixture
def pty_run() -> Iterator[Callable[..., PtyProcess]]:
    started: list[PtyProcess] = []

    def start(*args: str) -> PtyProcess:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 220, 0, 0))
        env = cli_env()
        env.pop("NO_COLOR", None)
        env.update({"TERM": "xterm-256color", "COLUMNS": "220", "LINES": "50"})
        proc = subprocess.Popen(
            [*CLI, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=_controlling_tty,  # noqa: PLW1509 - pty as controlling tty
            close_fds=True,
        )
        os.close(slave)
        p = PtyProcess(proc, master, Output(lambda: os.read(master, 65536)))
        started.append(p)
        return p

    yield start
    for p in started:
        stop_process(p.proc)
        p.out.join(5)
        os.close(p.master)


# --------------------------------------------------------------------------------------------
# monitor in a real terminal against a store file
# --------------------------------------------------------------------------------------------


def test_monitor_in_a_terminal_quits_on_ctrl_c(
    recorded_store: Recorded, pty_run: Callable[..., PtyProcess]
) -> None:
    p = pty_run("monitor", "--db", str(recorded_store.path), "--interval", "0.3")
    wait_until(
        lambda: "recently finished" in p.out.text and "emails.send" in p.out.text,
        30,
        "the monitor's first frame",
    )
    frames = p.out.text.count("chaperone-otel monitor")
    wait_until(lambda: p.out.text.count("chaperone-otel monitor") > frames, 15, "a refreshed frame")
    assert "no running runs" in p.out.text
    p.ctrl_c()
    assert p.proc.wait(timeout=15) == 0
    p.out.join(5)
    assert "monitor stopped" in p.out.text
    assert "Traceback" not in p.out.text


# --------------------------------------------------------------------------------------------
# demo --duration 8 to completion
# --------------------------------------------------------------------------------------------


@dataclass
class FinishedDemo:
    db: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> FinishedDemo:
    db = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    proc = subprocess.Popen(
        [*CLI, "demo", "--duration", "8", "--db", str(db), "--seed", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    return FinishedDemo(db, proc.returncode, out, err)


def test_demo_runs_to_completion_with_summary(finished_demo: FinishedDemo) -> None:
    d = finished_demo
    assert d.returncode == 0, d.stdout + d.stderr
    assert "Traceback" not in d.stderr, d.stderr
    out = d.stdout
    assert "summary (read back from the store)" in out
    assert re.search(r"stuck: payments\.reconcile_ledger [0-9a-f-]{36}", out), out
    assert re.search(r"violation: analytics\.build_embeddings [0-9a-f-]{36} — memory", out), out
    assert re.search(r"failed: emails\.send_digest [0-9a-f-]{36} — \S*SmtpRelayError", out), out
    for pattern in (
        "billing.process_transactions",
        "imports.process_csv",
        "crm.sync_contacts",
        "users.bulk_update",
        "reports.nightly_rebuild",
    ):
        assert pattern in out  # every seed pattern ran at least once (live log lines)
    assert f"chaperone-otel jobs --db {d.db} --failed" in out
    assert re.search(r"Prometheus metrics .*http://127\.0\.0\.1:\d+/metrics", out)
    assert not Path(str(d.db) + ".owner.json").exists()  # the sidecar is removed on exit


def test_demo_store_answers_jobs_show_sql(finished_demo: FinishedDemo) -> None:
    db = str(finished_demo.db)
    failed = run_cli("jobs", "--db", db, "--failed", "--json")
    assert failed.returncode == 0, failed.stderr
    rows = json.loads(failed.stdout)
    assert [r["name"] for r in rows if r["name"] == "emails.send_digest"]
    failed_id = next(r["id"] for r in rows if r["name"] == "emails.send_digest")
    show = run_cli("show", failed_id, "--db", db)
    assert show.returncode == 0, show.stderr
    assert "SmtpRelayError" in show.stdout
    assert "Traceback (most recent call last)" in show.stdout
    hog = json.loads(run_cli("jobs", "--db", db, "--violated", "--json").stdout)
    assert [r["name"] for r in hog] == ["analytics.build_embeddings"]
    assert hog[0]["status"] == "cancelled"
    hog_show = run_cli("show", hog[0]["id"], "--db", db)
    assert "resource violations" in hog_show.stdout
    assert "memory" in hog_show.stdout
    hung = json.loads(
        run_cli("jobs", "--db", db, "--name", "payments.reconcile_ledger", "--json").stdout
    )
    assert hung[0]["status"] == "cancelled"
    assert "stuck: no heartbeat" in hung[0]["error_message"]
    sql = run_cli(
        "sql",
        "--db",
        db,
        "--json",
        "SELECT name, count(*) AS runs FROM jobs GROUP BY name ORDER BY name",
    )
    assert sql.returncode == 0, sql.stderr
    names = {r["name"] for r in json.loads(sql.stdout)}
    assert {
        "billing.process_transactions",
        "imports.process_csv",
        "crm.sync_contacts",
        "users.bulk_update",
        "reports.nightly_rebuild",
        "payments.reconcile_ledger",
        "emails.send_digest",
        "analytics.build_embeddings",
    } <= names


# --------------------------------------------------------------------------------------------
# A running demo, watched from other processes
# --------------------------------------------------------------------------------------------


@dataclass
class RunningDemo:
    db: Path
    proc: subprocess.Popen[bytes]
    out: Output
    metrics_url: str = ""
    seen: dict[str, str] = field(default_factory=dict)


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _series(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, job: str
) -> list[tuple[dict[str, str], float]]:
    label = sc.prometheus_label(sc.ATTR_JOB_NAME)
    return [
        (dict(labels), v)
        for (n, labels), v in metrics.items()
        if n == name and dict(labels).get(label) == job
    ]


def test_running_demo_from_other_processes(
    tmp_path: Path, pty_run: Callable[..., PtyProcess]
) -> None:
    db = tmp_path / "live-demo.duckdb"
    proc = subprocess.Popen(
        [*CLI, "demo", "--forever", "--db", str(db), "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    out = Output(lambda: os.read(stdout.fileno(), 65536))
    try:
        m = wait_until(
            lambda: re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", out.text),
            60,
            "the demo's metrics URL",
        )
        metrics_url = m.group(1)
        wait_until(lambda: Path(str(db) + ".owner.json").exists(), 30, "the owner sidecar")

        # `jobs --stuck` from another process, through the advertised URL.
        def stuck_ids() -> list[str]:
            r = run_cli("jobs", "--db", str(db), "--stuck", "--json")
            assert r.returncode == 0, r.stderr
            return [
                x["id"] for x in json.loads(r.stdout) if x["name"] == "payments.reconcile_ledger"
            ]

        hung_id = wait_until(stuck_ids, 40, "the hung run to be reported stuck", every=0.5)[0]
        stuck_cmd = run_cli("stuck", "--db", str(db))
        assert stuck_cmd.returncode == 1
        assert hung_id in stuck_cmd.stdout

        # The violation and the stuck run in the demo's /metrics.
        violations = sc.prometheus_name(sc.METRIC_JOB_VIOLATIONS)

        def violation_scraped() -> list[tuple[dict[str, str], float]]:
            return [
                (labels, v)
                for labels, v in _series(
                    _metrics(metrics_url), violations, "analytics.build_embeddings"
                )
                if v >= 1
            ]

        series = wait_until(violation_scraped, 30, "the violation counter", every=0.5)
        assert series[0][0][sc.prometheus_label(sc.ATTR_LIMIT_TYPE)] == "memory"
        scraped = _metrics(metrics_url)
        last = _series(
            scraped, sc.prometheus_name(sc.METRIC_JOB_LAST_HEARTBEAT), "payments.reconcile_ledger"
        )
        interval = _series(
            scraped,
            sc.prometheus_name(sc.METRIC_JOB_HEARTBEAT_INTERVAL),
            "payments.reconcile_ledger",
        )
        assert last, "the hung run's last-heartbeat gauge is missing"
        assert interval, "the hung run's heartbeat-interval gauge is missing"
        now = time.time()
        signals = {
            "status": "running",
            "last_heartbeat": last[0][1],
            "last_seen": now,
            "heartbeat_interval": interval[0][1],
            "started_at": now,
        }
        assert rules().stuck.holds(signals, now), signals  # the alert rule's verdict

        # `show` of the violation through the URL.
        hog = json.loads(run_cli("jobs", "--db", str(db), "--violated", "--json").stdout)
        assert hog
        assert hog[0]["name"] == "analytics.build_embeddings"

        # `monitor` in a real terminal, from a second process, against the live demo.
        p = pty_run("monitor", "--db", str(db), "--interval", "0.5")
        wait_until(
            lambda: "payments.reconcile_ledger" in p.out.text and "STUCK" in p.out.text,
            40,
            "the monitor to render the running runs",
        )
        assert re.search(r"\d+ running", p.out.text)
        p.ctrl_c()
        assert p.proc.wait(timeout=15) == 0
        p.out.join(5)
        assert "monitor stopped" in p.out.text
        assert "Traceback" not in p.out.text

        # Ctrl-C ends a --forever demo cleanly, with its summary.
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out.text
        out.join(10)
        assert "summary (read back from the store)" in out.text
        assert f"stuck: payments.reconcile_ledger {hung_id}" in out.text
        assert "Traceback" not in out.text
    finally:
        stop_process(proc)
        out.join(5)
        stdout.close()


# --------------------------------------------------------------------------------------------
# sink serve, and the quickstart's code
# --------------------------------------------------------------------------------------------


def test_sink_serve_is_reachable_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    sidecar = Path(str(db) + ".owner.json")
    proc = subprocess.Popen([*CLI, "sink", "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env())
    assert proc.stdout is not None
    stdout = proc.stdout
    out = Output(lambda: os.read(stdout.fileno(), 65536))
    try:
        wait_until(sidecar.exists, 30, "the sink server's sidecar")
        url = json.loads(sidecar.read_text())["url"]
        assert url in out.text or wait_until(lambda: url in out.text, 10, "the printed URL")
        listed = run_cli("jobs", "--db", str(db), "--json")  # through the advertised URL
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        explicit = run_cli("jobs", "--url", url, "--json")
        assert explicit.returncode == 0, explicit.stderr
        second = run_cli("sink", "serve", "--db", str(db), "--port", "0", timeout=60)
        assert second.returncode == 3, second.stdout + second.stderr
        assert "error: sink serve:" in second.stderr
        # An application recording to the file the server owns forwards its runs to it.
        demo = run_cli("demo", "--db", str(db), "--duration", "1", timeout=60)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "internal error" not in demo.stdout + demo.stderr
        recorded = run_cli("jobs", "--db", str(db), "--json")
        assert recorded.returncode == 0, recorded.stderr
        assert {"imports.process_csv", "payments.reconcile_ledger"} <= {
            j["name"] for j in json.loads(recorded.stdout)
        }
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0, out.text
        assert not sidecar.exists()
        assert "Traceback" not in out.text
    finally:
        stop_process(proc)
        out.join(5)
        stdout.close()


def _quickstart_code() -> str:
    text = (Path(__file__).parents[2] / "docs" / "quickstart.md").read_text()
    section = text.split("## Your own jobs", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_quickstart_code_runs_and_its_store_answers(tmp_path: Path) -> None:
    code = _quickstart_code()
    assert len(code.strip().splitlines()) <= 16  # "a 15-line quickstart"
    code = code.replace("prometheus_port=9464", "prometheus_port=0")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=cli_env(), check=False)
    assert done.returncode == 0, done.stderr
    result = run_cli("jobs", "--db", str(tmp_path / "jobs.duckdb"), "--json")
    assert result.returncode == 0, result.stderr
    runs = {r["name"]: r for r in json.loads(result.stdout)}
    assert runs["import_file"]["status"] == "completed"
    assert runs["import_file"]["progress"] == 100
    assert runs["nightly.rebuild"]["status"] == "completed"
    assert runs["nightly.rebuild"]["progress"] == 100  # both phases (it ended at 25 % before)


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The README's example runs as written (its /metrics on a free port), prints what it
    queried, and the CLI reads the run it stored."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("prometheus_port=9464", "prometheus_port=0")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=cli_env(),
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 [('import_orders', 'completed')]", done.stdout
    result = run_cli("jobs", "--db", str(tmp_path / "jobs.duckdb"), "--json")
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["name"] == "import_orders"
    assert run["status"] == "completed"
    assert run["queue"] == "imports"
    assert run["progress"] == 100


def test_demo_prints_commands_that_work_for_a_path_with_spaces(tmp_path: Path) -> None:
    """The printed commands are pasted into a shell: a store path with a space (and rich
    markup characters) must come out quoted, and the monitor hint's demo must record to the
    store that monitor watches."""
    import shlex

    db = tmp_path / "my stores [demo]" / "demo store.duckdb"
    proc = subprocess.Popen(
        [*CLI, "demo", "--db", str(db), "--duration", "1", "--no-live", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, out + err
    assert f"store: {db}" in out  # the path is not read as markup
    failed = next(line for line in out.splitlines() if line.endswith(" --failed"))
    shell = subprocess.run(
        ["/bin/sh", "-c", failed + " --json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=tmp_path,
        check=False,
    )
    assert shell.returncode == 0, (failed, shell.stderr)
    failed_runs = json.loads(shell.stdout)
    # The filter reached the store through the quoted path: only failed runs, the failing
    # job's among them (a sync whose retries all time out fails too, by design).
    assert {r["status"] for r in failed_runs} == {"failed"}, failed_runs
    assert "emails.send_digest" in [r["name"] for r in failed_runs]
    hint = next(line for line in out.splitlines() if "# live view" in line)
    monitor_cmd, _, comment = hint.partition("#")
    monitor_args = shlex.split(monitor_cmd)
    assert monitor_args[-3:] == ["monitor", "--db", str(db)], hint
    demo_args = shlex.split(comment.split("`")[1])
    assert demo_args[1:] == ["demo", "--db", str(db), "--forever"], hint
    try_line = next(line for line in out.splitlines() if line.startswith("owner query URL"))
    assert shlex.split(try_line.split("`")[1])[1:] == ["monitor", "--db", str(db)], try_line


def test_demo_seed_repeats_each_workers_draws_whatever_the_thread_order() -> None:
    """``--seed`` promises a repeatable demo: each worker's numbers depend on the seed and the
    worker alone, not on how the threads interleave their draws."""
    import random

    from chaperone_otel.cli._demo_workloads import Ctx, worker_context

    base = Ctx(pace=1.0, workdir=Path("."), rng=random.Random(3), board=None,  # type: ignore[arg-type]
                stop=threading.Event())
    first = [worker_context(base, 3, i).rng for i in range(3)]
    second = [worker_context(base, 3, i).rng for i in range(3)]
    # The first run draws worker by worker; the second interleaves them the other way round.
    drawn_first = [[rng.random() for _ in range(5)] for rng in first]
    drawn_second: list[list[float]] = [[], [], []]
    for _ in range(5):
        for i in reversed(range(3)):
            drawn_second[i].append(second[i].random())
    assert drawn_first == drawn_second
    assert len({tuple(d) for d in drawn_first}) == 3  # the workers do not repeat each other
    unseeded = [worker_context(base, None, 0).rng.random() for _ in range(2)]
    assert unseeded[0] != unseeded[1]
