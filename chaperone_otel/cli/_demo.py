"""``chaperone-otel demo``: a realistic supervised workload on the embedded default.

The demo is the quickest way to see every moving part at once. It records to a local DuckDB
file through ``configure(sink=PATH)`` (the embedded sink), serves Prometheus ``/metrics`` on a
loopback port, and runs the seed's patterns (``_demo_workloads``) as supervised jobs on a
few worker threads:

* ``billing.process_transactions`` — batch processing in chunks, heartbeat every 50 records;
* ``imports.process_csv`` — a real CSV file in a temp directory, counted then parsed;
* ``crm.sync_contacts`` — an API sync with simulated latency, failures and retries;
* ``users.bulk_update`` — a bulk update of a real SQLite database, chunk by id;
* ``reports.nightly_rebuild`` — a multi-phase job (``run.phases``);

plus three runs that go wrong on purpose, early enough that even ``--duration 8`` shows them:

* ``payments.reconcile_ledger`` stops heartbeating (1 s interval): it is *stuck* after 3 s;
* ``emails.send_digest`` fails with a traceback;
* ``analytics.build_embeddings`` allocates past its ``memory_limit`` and is cancelled
  (``on_limit="cancel"``): a resource violation.

At the end the summary is read back from the store (through the query URL the embedded
sink advertises, while the hung run is still stuck), the hung run is cancelled the way an
operator would, and the exact commands to explore the store are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from .._decorator import supervised
from .._resources import ProcessSampler
from .._run import Supervision
from ..exceptions import ChaperoneError
from ..sink import JobRecord, ViolationRecord, open_sink
from ._demo_workloads import WORKLOADS, Ctx, worker_context
from ._monitor import Frame, render_frame
from ._render import StdoutConsole

HUNG_JOB = "payments.reconcile_ledger"
FAILING_JOB = "emails.send_digest"
MEMORY_JOB = "analytics.build_embeddings"
HUNG_INTERVAL = 1.0
"""The hung run's heartbeat interval: stuck after 3 silent intervals, well inside 8 s."""


class SmtpRelayError(ConnectionError):
    """The simulated mail relay refused the connection (the failing run's error)."""


class _StuckRunKilled(asyncio.CancelledError):
    """Ends the hung run at the end of the demo: recorded as ``cancelled``, with a reason."""


# --------------------------------------------------------------------------------------------
# Shared state: the run handles the live view shows.
# --------------------------------------------------------------------------------------------


@dataclass
class _Board:
    """Every run the demo started (handles), plus what the summary needs to know."""

    runs: list[Supervision] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: Callable[[str], None] = print

    def add(self, run: Supervision) -> None:
        with self.lock:
            self.runs.append(run)

    def find(self, name: str) -> Supervision | None:
        with self.lock:
            return next((r for r in self.runs if r.name == name), None)

    def snapshot(self) -> list[Supervision]:
        with self.lock:
            return list(self.runs)


def _row(run: Supervision) -> JobRecord:
    """A live run as the record the monitor renders (the fields it lacks stay ``None``)."""
    s = run.snapshot()
    return JobRecord.from_dict(
        {
            "id": s.id,
            "name": s.name,
            "queue": s.queue,
            "status": s.status,
            "health": s.health,
            "stuck": s.stuck,
            "lost": False,
            "progress": s.percent,
            "phase": s.phase,
            "eta": s.eta,
            "last_heartbeat_at": datetime.fromtimestamp(s.last_heartbeat, timezone.utc),
            "heartbeat_interval": s.heartbeat_interval,
            "memory_bytes": s.memory,
            "cpu_percent": s.cpu_percent,
            "duration": s.duration,
            "error_type": s.error_type,
            "error_message": s.error_message,
        }
    )


# --------------------------------------------------------------------------------------------
# The three runs that go wrong on purpose.
# --------------------------------------------------------------------------------------------


def hung_job(ctx: Ctx, release: threading.Event) -> None:
    """Makes some progress, then blocks without a heartbeat until the demo ends."""
    with supervised(HUNG_JOB, queue="payments", heartbeat_interval=HUNG_INTERVAL) as run:
        ctx.board.add(run)
        for i in range(1, 31):
            run.report_progress(i, 100)
            time.sleep(0.01)
        run.heartbeat(status="waiting for ledger lock")
        release.wait()  # the "deadlock": no heartbeat from here on
        age = time.time() - run.last_heartbeat
        raise _StuckRunKilled(
            f"stuck: no heartbeat for {age:.0f}s (interval {HUNG_INTERVAL:g}s); "
            "cancelled by the demo on exit"
        )


def _render_digest(recipients: list[str]) -> list[str]:
    return [f"To: {r}\nSubject: Your weekly digest\n" for r in recipients]


def _send(message: str, attempt: int) -> None:
    raise SmtpRelayError(f"SMTP relay 10.0.0.25:587 refused the connection (attempt {attempt})")


def failing_job(ctx: Ctx) -> None:
    """Sends part of a digest, then the relay refuses three times: the run fails."""
    with supervised(FAILING_JOB, queue="emails") as run:
        ctx.board.add(run)
        recipients = [f"user{i}@example.com" for i in range(40)]
        messages = _render_digest(recipients)
        for i, _message in enumerate(messages[:12], 1):
            run.report_progress(i, len(messages))
            time.sleep(0.02)
        for attempt in range(1, 4):
            try:
                _send(messages[12], attempt)
            except SmtpRelayError:
                if attempt == 3:
                    raise
                run.heartbeat(status="retrying", attempt=attempt)
                time.sleep(0.1)


def memory_hog(ctx: Ctx) -> None:
    """Allocates 8 MiB at a time past ``memory_limit`` (current RSS + 48 MiB): cancelled."""
    rss = ProcessSampler().sample(time.monotonic()).rss or 200 * 2**20
    limit = rss + 48 * 2**20
    chunks: list[bytes] = []
    with supervised(MEMORY_JOB, queue="analytics", memory_limit=limit, on_limit="cancel") as run:
        ctx.board.add(run)
        steps = 32  # at most 256 MiB, in case the monitor were late
        try:
            for step in range(1, steps + 1):
                chunks.append(b"\x01" * (8 * 2**20))  # written, so it counts in RSS
                run.report_progress(step, steps)
                run.heartbeat(allocated_mib=8 * step)
                time.sleep(0.12)
        finally:
            chunks.clear()


# --------------------------------------------------------------------------------------------
# Orchestration.
# --------------------------------------------------------------------------------------------


def _thread(target: Callable[[], None], name: str, board: _Board) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except (Exception, asyncio.CancelledError) as exc:
            # Expected for the failing, hung and memory runs; the store has the details.
            board.log(f"{name}: {type(exc).__name__}: {exc}")

    t = threading.Thread(target=body, name=f"demo-{name}", daemon=True)
    t.start()
    return t


def _worker(ctx: Ctx, offset: int, stop_launching: threading.Event) -> None:
    i = offset
    while not stop_launching.is_set() and not ctx.stop.is_set():
        workload = WORKLOADS[i % len(WORKLOADS)]
        i += 1
        with contextlib.suppress(Exception):  # a failed retry loop is recorded, not fatal
            workload(ctx)


def _wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def _owner_url(db: Path, setup: Any) -> str | None:
    """The embedded sink's query URL: from the setup, else from the sidecar beside the file."""
    sink = getattr(setup, "sink", None)
    url = getattr(sink, "url", None)
    if isinstance(url, str) and url:
        return url
    sidecar = db.with_name(db.name + ".owner.json")
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(sidecar.read_text())
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            return str(data["url"])
    return None


@dataclass
class Summary:
    """What the demo read back from the store at the end."""

    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_health: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    stuck: list[JobRecord] = field(default_factory=list)
    violated: list[tuple[JobRecord, list[ViolationRecord]]] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)
    source: str = ""


def read_summary(target: str, since: datetime) -> Summary:
    """Counts by status and health, the stuck, violated and failed runs since ``since``."""
    with open_sink(target, read_only=True) as sink:
        q = sink.jobs.since(since)
        runs = q.all()
        out = Summary(total=len(runs), source=target)
        for r in runs:
            out.by_status[str(r.status)] = out.by_status.get(str(r.status), 0) + 1
            out.by_health[r.health] = out.by_health.get(r.health, 0) + 1
            out.by_name[str(r.name)] = out.by_name.get(str(r.name), 0) + 1
        out.stuck = q.stuck().all()
        out.violated = [(r, list(r.resource_violations)) for r in q.violated().all()]
        out.failed = q.failed().order_by("started_at").all()
    return out


def _print_summary(
    console: Console, summary: Summary, *, db: str, metrics_url: str | None, hung_id: str | None
) -> None:
    def say(text: str) -> None:  # soft wrap: long ids and commands stay copy-pasteable
        console.print(text, soft_wrap=True)

    console.rule("[bold]summary (read back from the store)")
    say(f"store: [bold]{escape(db)}[/]   runs this demo: [bold]{summary.total}[/]")
    for label, counts in (
        ("by status: ", summary.by_status),
        ("by health: ", summary.by_health),
        ("by job:    ", summary.by_name),
    ):
        say(escape(label + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))
    for r in summary.stuck:
        say(
            f"[bold red]stuck[/]: {escape(str(r.name))} {r.id} — no heartbeat since "
            f"{r.last_heartbeat_at:%H:%M:%S} UTC (interval {r.heartbeat_interval:g}s)"
            + (" — cancelled by the demo on exit" if r.id == hung_id else "")
        )
    for r, violations in summary.violated:
        for v in violations:
            say(
                f"[bold yellow]violation[/]: {escape(str(r.name))} {r.id} — {v.type} "
                f"{_mib(v.actual)} > limit {_mib(v.limit)} (policy {v.policy}); "
                f"run {r.status}"
            )
    for r in summary.failed:
        say(
            f"[bold red]failed[/]: {escape(str(r.name))} {r.id} — "
            + escape(f"{r.error_type}: {r.error_message}")
        )
    failed_id = summary.failed[0].id if summary.failed else "<run-id>"
    hog_id = summary.violated[0][0].id if summary.violated else "<run-id>"
    # Commands a user pastes into a shell: every path quoted (a space would split it).
    cmd = shlex.quote(_cli_command())
    qdb = shlex.quote(db)
    console.rule("[bold]explore it next")
    lines = [
        f"{cmd} jobs --db {qdb}",
        f"{cmd} jobs --db {qdb} --failed",
        f"{cmd} show {failed_id} --db {qdb}",
        f"{cmd} show {hog_id} --db {qdb}",
        f"{cmd} jobs --db {qdb} --violated --json",
        f'{cmd} sql --db {qdb} "SELECT name, status, count(*) AS runs, '
        f'round(avg(duration), 1) AS avg_s FROM jobs GROUP BY ALL ORDER BY name"',
        # The demo to run beside it must record to the store the monitor watches.
        f"{cmd} monitor --db {qdb}    # live view; run "
        f"`{cmd} demo --db {qdb} --forever` in another terminal",
    ]
    for line in lines:
        console.print(Text(line), soft_wrap=True)
    if metrics_url:
        say(f"Prometheus metrics (while a demo runs): {metrics_url}")


def _cli_command() -> str:
    """How to call the CLI from this shell: ``chaperone-otel`` when it is on PATH, else the
    path of the one beside this interpreter (``scripts/demo`` installs into ``.venv``, which
    is not on PATH), relative to the working directory when that is shorter."""
    on_path = shutil.which("chaperone-otel")
    beside = Path(sys.executable).parent / "chaperone-otel"
    if not beside.exists() or (on_path and Path(on_path).resolve() == beside.resolve()):
        return "chaperone-otel"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _view(
    board: _Board,
    *,
    started: float,
    deadline: float | None,
    store: str,
    metrics_url: str | None,
    width: int,
) -> RenderableType:
    runs = board.snapshot()
    rows = [_row(r) for r in runs]
    running = [r for r in rows if r.status == "running"]
    finished = [r for r in rows if r.status != "running"][-6:][::-1]
    elapsed = time.monotonic() - started
    head = Text()
    head.append("chaperone-otel demo", style="bold")
    head.append(f"  {elapsed:4.0f}s")
    head.append(f" / {deadline - started:.0f}s" if deadline else " (forever: Ctrl-C ends)")
    head.append(f"   {len(rows)} runs   store {store}", style="dim")
    if metrics_url:
        head.append(f"   metrics {metrics_url}", style="dim")
    frame = Frame(running=running, recent=finished, source="in-process")
    return Group(
        head, render_frame(frame, title="live runs (in-process)", interval=0.25, width=width)
    )


def run_demo(
    *,
    db: str = "chaperone-demo.duckdb",
    duration: float | None = 60.0,
    port: int = 0,
    seed: int | None = None,
    live: bool = True,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the process exit code (0 ok, 3 store problem, 130 aborted)."""
    import chaperone_otel  # noqa: PLC0415

    console = console or StdoutConsole(highlight=False)
    errors = Console(stderr=True, highlight=False)
    path = Path(db).expanduser()
    if path.is_dir():
        errors.print(
            f"error: {path} is a directory; --db takes a file path", soft_wrap=True, markup=False
        )
        return 3
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_sigterm = _sigterm_as_ctrl_c()
    try:
        setup = chaperone_otel.configure(
            service_name="chaperone-demo",
            sink=str(path),
            prometheus_port=port,
            heartbeat_interval=2.0,
            sample_interval=0.25,
        )
    except ChaperoneError as exc:
        errors.print(f"error: cannot record to {path}: {exc}", soft_wrap=True, markup=False)
        restore_sigterm()
        return 3
    metrics_url: str | None = getattr(setup, "prometheus_url", None)
    console.print(
        f"[bold]chaperone-otel demo[/]: recording to [bold]{escape(str(path))}[/]"
        + (f", metrics at [bold]{escape(metrics_url)}[/]" if metrics_url else ""),
        soft_wrap=True,
    )
    console.print(
        f"owner query URL: {_owner_url(path, setup) or '-'}  "
        f"(try `{shlex.quote(_cli_command())} monitor --db {shlex.quote(str(path))}` "
        "in another terminal)",
        soft_wrap=True,
        markup=False,
    )

    rng = random.Random(seed)
    stop = threading.Event()  # abort (second Ctrl-C)
    stop_launching = threading.Event()
    release_hung = threading.Event()
    interrupted = False
    board = _Board()
    messages: list[str] = []
    board.log = messages.append
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    pace = 8.0 if duration is None else min(12.0, max(1.5, duration / 5))
    deadline = None if duration is None else started + duration
    use_live = live and console.is_terminal
    code = 0

    with tempfile.TemporaryDirectory(prefix="chaperone-demo-") as tmp:
        ctx = Ctx(pace=pace, workdir=Path(tmp), rng=rng, board=board, stop=stop)
        threads = [
            _thread(lambda: hung_job(ctx, release_hung), HUNG_JOB, board),
            _thread(lambda: memory_hog(ctx), MEMORY_JOB, board),
        ]
        workers = [
            threading.Thread(
                target=_worker,
                args=(worker_context(ctx, seed, i), i, stop_launching),
                name=f"demo-worker-{i}",
                daemon=True,
            )
            for i in range(3)
        ]
        for w in workers:
            w.start()
        failing_started = False
        live_view: Live | None = None
        view = functools.partial(
            _view,
            board,
            started=started,
            deadline=deadline,
            store=str(path),
            metrics_url=metrics_url,
            width=console.width,
        )
        try:
            if use_live:
                live_view = Live(
                    view(),
                    console=console,
                    auto_refresh=False,
                )
                live_view.start()
            last_log = 0.0
            while deadline is None or time.monotonic() < deadline:
                if not failing_started and time.monotonic() - started > 1.0:
                    threads.append(_thread(lambda: failing_job(ctx), FAILING_JOB, board))
                    failing_started = True
                if live_view is not None:
                    live_view.update(
                        view(),
                        refresh=True,
                    )
                elif time.monotonic() - last_log >= 2.0:
                    last_log = time.monotonic()
                    _log_progress(console, board, started)
                time.sleep(0.25)
        except KeyboardInterrupt:
            interrupted = duration is not None  # --forever ends with Ctrl-C: that is normal
            console.print("stopping: finishing the runs in flight (Ctrl-C again to abort)")
        try:
            stop_launching.set()
            if not failing_started:
                threads.append(_thread(lambda: failing_job(ctx), FAILING_JOB, board))
            # The three problem runs must have happened before the summary.
            _wait_until(lambda: _stuck(board), timeout=8.0)
            for t in threads[1:]:
                t.join(timeout=10.0)
            for w in workers:
                while w.is_alive():
                    w.join(timeout=0.25)
                    if live_view is not None:
                        live_view.update(
                            view(),
                            refresh=True,
                        )
        except KeyboardInterrupt:
            stop.set()
            interrupted = True
        finally:
            if live_view is not None:
                live_view.update(
                    view(),
                    refresh=True,
                )
                live_view.stop()
        for line in messages:
            console.print(Text(line, style="dim"))

        # Read the summary while the hung run is still stuck and the store still owned.
        hung = board.find(HUNG_JOB)
        summary: Summary | None = None
        summary_error: str | None = None
        owner = _owner_url(path, setup)
        if owner:
            try:
                time.sleep(0.3)  # let the writer flush the last records
                summary = read_summary(owner, started_at)
            except Exception as exc:  # reported, then retried from the file below
                summary_error = f"{type(exc).__name__}: {exc}"
        release_hung.set()
        threads[0].join(timeout=5.0)
        chaperone_otel.shutdown()
        restore_sigterm()
        if summary is None:
            try:
                summary = read_summary(str(path), started_at)
            except Exception as exc:
                summary_error = f"{type(exc).__name__}: {exc}"
    if summary is None:
        errors.print(
            f"error: could not read the summary back from {path}: {summary_error}",
            soft_wrap=True,
            markup=False,
        )
        return 3
    _print_summary(
        console, summary, db=str(path), metrics_url=metrics_url, hung_id=hung.id if hung else None
    )
    if interrupted:
        code = 130
    return code


def _sigterm_as_ctrl_c() -> Callable[[], None]:
    """Make SIGTERM end the demo like Ctrl-C (summary included); returns the restorer.

    Also re-enables SIGINT when the demo was started with it ignored (``cmd &`` in a
    non-interactive shell), so ``kill -INT`` works as documented.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def to_ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, to_ctrl_c)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, old_term)
        if old_int == signal.SIG_IGN:
            signal.signal(signal.SIGINT, old_int)

    return restore


def _stuck(board: _Board) -> bool:
    run = board.find(HUNG_JOB)
    return run is not None and run.stuck


def _log_progress(console: Console, board: _Board, started: float) -> None:
    rows = [_row(r) for r in board.snapshot()]
    running = [r for r in rows if r.status == "running"]
    line = Text(
        f"[{time.monotonic() - started:5.1f}s] {len(running)} running, "
        f"{sum(1 for r in rows if r.status == 'completed')} completed, "
        f"{sum(1 for r in rows if r.status == 'failed')} failed, "
        f"{sum(1 for r in rows if r.status == 'cancelled')} cancelled"
    )
    stuck = [str(r.name) for r in running if r.stuck]
    if stuck:
        line.append(f"; STUCK: {', '.join(stuck)}", style="bold red")
    console.print(line, soft_wrap=True)  # a log line: never wrapped mid-name


def iter_workloads() -> Iterator[str]:
    """Names of the demo's regular workloads (docs and tests)."""
    for fn in WORKLOADS:
        yield fn.__name__


__all__ = ["Summary", "read_summary", "run_demo"]
