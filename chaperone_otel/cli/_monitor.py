"""``chaperone-otel monitor``: a live, auto-refreshing view of the running runs.

Each frame opens the store, reads, and closes it again. That is deliberate: a read-only
DuckDB connection holds a lock, so a monitor that kept the file open would stop the
application from (re)starting its embedded sink; and a store that becomes owned by a live
process between frames (its sidecar appears) is followed through its query URL on the next
frame. A frame that cannot read the store shows why and the monitor keeps trying.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._render import (
    Cell,
    Column,
    fitted_table,
    fmt_age,
    fmt_bytes,
    fmt_duration,
    health_text,
    now_utc,
    progress_bar,
    safe_text,
    short_id,
    status_text,
    unwritten_hint,
    whole_table,
)
from ._render import field as f
from ._terminal import terminal_safe
from ._verdicts import filtered, lost_while_unwritten

if TYPE_CHECKING:
    from ..sink import JobRecord, Sink


@dataclass
class Frame:
    """What one refresh read: running runs, recently finished runs, or an error."""

    running: Sequence[JobRecord] = ()
    recent: Sequence[JobRecord] = ()
    error: str | None = None
    source: str = ""
    note: str | None = None
    """Said under the header: why the LOST runs may be alive (``render.unwritten_hint``)."""
    at: datetime = field(default_factory=now_utc)


def read_frame(sink: Sink, *, name: str | None, queue: str | None, recent: int) -> Frame:
    """Query one frame's data from an open sink."""
    q = filtered(sink.jobs, name, queue)
    running = q.running().order_by("started_at").all()
    finished: list[JobRecord] = []
    if recent > 0:
        since = now_utc() - timedelta(hours=1)
        finished = [
            r
            for r in q.since(since).order_by("started_at", desc=True).limit(recent * 3).all()
            if r.status != "running"
        ][:recent]
    unwritten = lost_while_unwritten(sink, running)
    note = unwritten_hint(str(getattr(sink, "path", "")), unwritten)
    return Frame(running=running, recent=finished, source=sink.url or "", note=note)


def render_frame(
    frame: Frame,
    *,
    title: str,
    interval: float,
    width: int = 120,
    whole: bool = False,
    live: bool = True,
) -> RenderableType:
    """The frame as a rich renderable (used by the live view and ``--once``). ``live``: it
    will be refreshed, and its footer says how often and how to quit (``--once``: no
    footer, it has exited).

    Fitted to ``width``: one line per run, the job name always shown; PHASE, CPU, QUEUE …
    are left out on narrow terminals rather than cut (every column is as wide as its widest
    cell, QUEUE and PHASE at most 16 with ``…``; the job name takes what is left).
    ``whole`` (stdout is not a terminal): full run ids and nothing cut.
    """
    ident = (lambda run_id: run_id) if whole else short_id
    now = frame.at
    header = Text()
    header.append("chaperone-otel monitor", style="bold")
    header.append(f"  {terminal_safe(title)}", style="dim")
    header.append(f"  {now.astimezone(timezone.utc).strftime('%H:%M:%S')} UTC", style="dim")
    if frame.error:
        header.append("\n")
        header.append(
            f"store unavailable: {terminal_safe(frame.error)} (retrying every {interval:g}s)",
            style="bold red",
        )
        return Group(header)
    running = list(frame.running)
    stuck = sum(1 for r in running if f(r, "stuck"))
    lost = sum(1 for r in running if f(r, "lost"))
    unhealthy = sum(1 for r in running if f(r, "health") == "unhealthy")
    degraded = sum(1 for r in running if f(r, "health") == "degraded")
    header.append("\n")
    header.append(f"{len(running)} running", style="bold cyan")
    for count, label, style in (
        (stuck, "stuck", "bold red"),
        (lost, "lost", "bold magenta"),
        (unhealthy, "unhealthy", "red"),
        (degraded, "degraded", "yellow"),
    ):
        header.append("  ·  ")
        header.append(f"{count} {label}", style=style if count else "dim")
    if frame.note:
        header.append("\n")
        header.append(frame.note, style="yellow")

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    bar_width = 16 if width >= 120 else 10 if width >= 80 else 0  # 0: the percentage only
    columns: list[Column] = [
        ("JOB", "left", 14),
        ("RUN", "left", 8),
        ("QUEUE", "left", 8),
        ("PROGRESS", "left", bar_width + 7),
        ("PHASE", "left", 8),
        ("ETA", "right", 5),
        ("HEARTBEAT", "right", 9),
        ("MEMORY", "right", 9),
        ("CPU", "right", 4),
        ("HEALTH", "left", 15),  # "unhealthy STUCK" must not be cut
    ]
    rows: list[dict[str, Cell]] = []
    for r in running:
        eta = f(r, "eta")
        cpu = f(r, "cpu_percent")
        hb_age = fmt_age(f(r, "last_heartbeat_at"), now)
        interval_s = f(r, "heartbeat_interval")
        hb_style = "red" if f(r, "stuck") or f(r, "lost") else ""
        if not hb_style and interval_s and f(r, "last_heartbeat_at") is not None:
            seconds = (now - f(r, "last_heartbeat_at")).total_seconds()
            hb_style = "yellow" if seconds > float(interval_s) else ""
        rows.append(
            {
                "JOB": safe_text(f(r, "name") or "-"),  # stored strings: never markup
                "RUN": safe_text(ident(str(f(r, "id")))),
                "QUEUE": safe_text(f(r, "queue") or "-"),
                "PROGRESS": progress_bar(f(r, "progress"), bar_width),
                "PHASE": safe_text(f(r, "phase") or ""),
                "ETA": "-"
                if eta is None or f(r, "stuck") or f(r, "lost")
                else fmt_duration(float(eta)),
                "HEARTBEAT": Text(hb_age, style=hb_style),
                "MEMORY": fmt_bytes(f(r, "memory_bytes")),
                "CPU": "-" if cpu is None else f"{float(cpu):.0f}%",
                "HEALTH": health_text(r),
            }
        )
    if whole:
        whole_table(table, [(name, justify) for name, justify, _ in columns], rows)
    else:
        fitted_table(
            table,
            columns,
            rows,
            width=width,
            flexible="JOB",
            drop_order=("PHASE", "CPU", "QUEUE", "MEMORY", "RUN", "ETA"),
            caps={"QUEUE": 16, "PHASE": 16},
        )
    parts: list[RenderableType] = [header]
    if running:
        parts.append(table)
    else:
        parts.append(Text("no running runs", style="dim"))
    if frame.recent:
        done = Table(
            title="recently finished",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            title_style="dim",
        )
        # Fixed columns, then the job name up to what leaves ERROR (which wraps) 20 cells:
        # a long name must not squeeze RUN/STATUS/DURATION to "…".
        done.add_column("JOB", no_wrap=True, overflow="ellipsis", max_width=max(14, width - 65))
        done.add_column("RUN", no_wrap=True, min_width=8)
        done.add_column("STATUS", no_wrap=True, min_width=9)
        done.add_column("DURATION", no_wrap=True, min_width=8, justify="right")
        done.add_column("ERROR")
        for r in frame.recent:
            err = f(r, "error_type")
            err = str(err).rsplit(".", 1)[-1] if err else None
            message = terminal_safe(f"{err}: {f(r, 'error_message') or ''}")
            done.add_row(
                safe_text(f(r, "name")),
                safe_text(ident(str(f(r, "id")))),
                status_text(r),
                fmt_duration(f(r, "duration")),
                Text(message if whole else message[:70], style="red") if err else "",
            )
        parts.append(done)
    if live:
        parts.append(Text(f"refresh every {interval:g}s · Ctrl-C to quit", style="dim"))
    return Group(*parts)


def run_live(
    console: Console,
    fetch: Callable[[], Frame],
    *,
    title: str,
    interval: float,
    stop: threading.Event | None = None,
) -> None:
    """Refresh until Ctrl-C (KeyboardInterrupt propagates to the caller, which exits 0)."""
    stop = stop or threading.Event()
    if not console.is_terminal:
        # A pipe or a dumb log: print a frame per refresh instead of redrawing.
        while not stop.is_set():
            console.print(
                render_frame(
                    fetch(), title=title, interval=interval, width=console.width, whole=True
                )
            )
            console.print()
            stop.wait(min(interval, threading.TIMEOUT_MAX))  # a longer wait overflows
        return
    frame = fetch()
    with Live(
        render_frame(frame, title=title, interval=interval, width=console.width),
        console=console,
        auto_refresh=False,
        transient=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        next_at = time.monotonic() + interval
        while not stop.is_set():
            stop.wait(min(max(0.0, next_at - time.monotonic()), threading.TIMEOUT_MAX))
            next_at = time.monotonic() + interval
            live.update(
                render_frame(fetch(), title=title, interval=interval, width=console.width),
                refresh=True,
            )
