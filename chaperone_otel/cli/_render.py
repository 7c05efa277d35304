"""Turning job records into rich tables, detail panels, JSON and CSV.

Rendering works on any object with the ``JobRecord`` attributes (the sink's records, and
:class:`RunRow` built from a live ``JobState`` for the demo's own view), read with
``getattr`` so a field the store does not have yet renders as ``-`` instead of failing.

Every stored or user-given string reaches rich as :class:`~rich.text.Text`, never as a
``str``: rich reads a ``str`` as markup, so a job named ``etl[/]import`` would crash the
command and ``rebuild[daily]`` would lose its ``[daily]``. And it goes through
:func:`~chaperone_otel.cli._terminal.terminal_safe` (:func:`safe_text`) first: a control
character in it (ESC, a line break, a bidi override) is shown escaped, not acted on.
"""

from __future__ import annotations

import csv
import errno
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._fields import LISTED
from ._terminal import terminal_safe, terminal_safe_lines

if TYPE_CHECKING:
    from ._verdicts import HealthReport

HEALTH_STYLES = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unknown": "dim",
}
STATUS_STYLES = {
    "running": "cyan",
    "pending": "dim",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "retried": "magenta",
}


class StdoutConsole(Console):
    """The commands' stdout console: a reader that has gone (``chaperone-otel sql … | head``)
    raises :class:`BrokenPipeError`, which the command group turns into a quiet exit 0.
    rich's own answer is ``SystemExit(1)``."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout was closed by its reader")


JOB_COLUMNS = LISTED
"""Columns of ``jobs --csv`` (and the table); ``--json`` gives every field."""


# --------------------------------------------------------------------------------------------
# Small formatters.
# --------------------------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def fmt_duration(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h04m``, ``3d02h``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_bytes(value: float | None) -> str:
    """``812.0 KiB``, ``1.2 GiB``."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - loop always returns


def fmt_time(moment: datetime | None) -> str:
    """A moment for a table cell, in UTC as everything else the CLI prints (``show``,
    ``--today``, JSON/CSV): ``HH:MM:SS`` on the current UTC day, else ``YYYY-MM-DD HH:MM``.
    A naive datetime is UTC (DuckDB's ``TIMESTAMP``)."""
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    utc = moment.astimezone(timezone.utc)
    if utc.date() == now_utc().date():
        return utc.strftime("%H:%M:%S")
    return utc.strftime("%Y-%m-%d %H:%M")


def age(moment: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds since ``moment`` (None when unknown)."""
    if moment is None:
        return None
    return max(0.0, ((now or now_utc()) - moment).total_seconds())


def fmt_age(moment: datetime | None, now: datetime | None = None) -> str:
    seconds = age(moment, now)
    return "-" if seconds is None else f"{fmt_duration(seconds)} ago"


def progress_bar(percent: float | None, width: int = 20) -> Text:
    """A text progress bar (no cursor tricks: renders in any terminal and in a pipe)."""
    if percent is None:
        return Text("-")
    pct = min(100.0, max(0.0, float(percent)))
    filled = pct / 100.0 * width
    full = int(filled)
    partial = " ▏▎▍▌▋▊▉"[int((filled - full) * 8)] if full < width else ""
    bar = "█" * full + partial
    text = Text(bar.ljust(width), style="cyan")
    text.append(f" {pct:5.1f}%", style="bold")
    return text


def safe_text(value: Any, style: str = "") -> Text:
    """A stored or user-given value as one line of plain text: never markup, its control
    characters escaped (:func:`~chaperone_otel.cli._terminal.terminal_safe`)."""
    return Text(terminal_safe(str(value)), style=style)


def field(record: Any, name: str, default: Any = None) -> Any:
    """``record.name`` or ``default`` (tolerates records without the field)."""
    return getattr(record, name, default)


def health_text(record: Any) -> Text:
    """Health with the stuck/lost flags, coloured."""
    health = field(record, "health") or "unknown"
    text = safe_text(health, HEALTH_STYLES.get(str(health), ""))
    if field(record, "lost"):
        text.append(" LOST", style="bold magenta")
    elif field(record, "stuck"):
        text.append(" STUCK", style="bold red")
    return text


def status_text(record: Any) -> Text:
    status = str(field(record, "status") or "-")
    return safe_text(status, STATUS_STYLES.get(status, ""))


def short_id(run_id: str) -> str:
    return run_id if len(run_id) <= 13 else run_id[:8]


# --------------------------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------------------------


Column = tuple[str, Literal["left", "right"], int]
Cell = str | Text


def fit_columns(columns: Sequence[Column], width: int, drop_order: Sequence[str]) -> list[Column]:
    """Leave out columns in ``drop_order`` until the rest fit ``width`` at their planned
    widths (each column also takes 3 characters of padding and separator)."""
    shown = list(columns)
    for name in drop_order:
        if sum(w + 3 for _, _, w in shown) <= width:
            break
        shown = [c for c in shown if c[0] != name]
    return shown


def size_columns(
    columns: Sequence[Column],
    rows: Sequence[dict[str, Cell]],
    *,
    flexible: str,
    caps: dict[str, int] | None = None,
) -> list[Column]:
    """Each column's width: its widest cell (and header), at least its minimum, at most its
    cap (longer cells end in ``…``); ``flexible`` keeps its minimum and takes what is left.

    Planning with minimum widths is not enough: rich cannot shrink a ``no_wrap`` column
    below its content, so a table planned at minimums came out wider than the terminal and
    was cut at the edge (``MEMORY`` without its unit, ``HEALTH`` gone). Sizing from the real
    cells first lets :func:`fit_columns` leave out whole columns instead.
    """
    caps = caps or {}
    sized: list[Column] = []
    for name, justify, minimum in columns:
        planned = minimum
        if name != flexible:
            widest = max([minimum, cell_len(name)] + [_cell_len(row[name]) for row in rows])
            planned = min(widest, caps.get(name, widest))
        sized.append((name, justify, planned))
    return sized


def _cell_len(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def add_fitted_columns(table: Table, shown: Sequence[Column], width: int, flexible: str) -> None:
    """Add ``shown`` to ``table``: cells never wrap; every column is exactly its planned
    width except ``flexible``, which takes the spare width (and no more)."""
    others = sum(w + 3 for n, _, w in shown if n != flexible)
    for name, justify, planned in shown:
        table.add_column(
            name,
            justify=justify,
            no_wrap=True,
            overflow="ellipsis",
            min_width=planned,
            max_width=max(planned, width - others - 3) if name == flexible else planned,
        )


def fitted_table(
    table: Table,
    columns: Sequence[Column],
    rows: Sequence[dict[str, Cell]],
    *,
    width: int,
    flexible: str,
    drop_order: Sequence[str],
    caps: dict[str, int] | None = None,
) -> Table:
    """Fill ``table`` with ``rows`` (one line each) in at most ``width`` columns: size the
    columns from their cells, leave out columns in ``drop_order`` until the rest fit, and
    give ``flexible`` (the job name) what is left."""
    sized = size_columns(columns, rows, flexible=flexible, caps=caps)
    shown = fit_columns(sized, width, drop_order)
    add_fitted_columns(table, shown, width, flexible)
    for row in rows:
        table.add_row(*(row[name] for name, _, _ in shown))
    return table


STARTED: Final = "STARTED UTC"
"""The runs table's start column: its times are UTC (:func:`fmt_time`), and it says so."""


def jobs_table(
    records: Sequence[Any], *, title: str | None = None, width: int = 80, whole: bool = False
) -> Table:
    """The ``jobs`` / ``stuck`` / ``health`` list, fitted to ``width`` columns.

    Cells never wrap (a run per line); on a narrow terminal the ids are shortened (``show``
    takes a prefix) and the least useful columns are left out rather than cut. ``whole``
    (stdout is not a terminal: a pipe or a file) prints every column and every value whole,
    full ids and untruncated names, so ``jobs | grep NAME`` finds what is stored.
    """
    now = now_utc()
    full_ids = whole or width >= 150
    columns: list[Column] = [
        ("ID", "left", 36 if full_ids else 8),
        ("NAME", "left", 12),
        ("QUEUE", "left", 8),
        ("STATUS", "left", 9),
        ("HEALTH", "left", 9),
        ("PROGRESS", "right", 8),
        (STARTED, "left", 8),
        ("DURATION", "right", 8),
        ("HEARTBEAT", "right", 9),
        ("MEMORY", "right", 9),
    ]
    rows: list[dict[str, Cell]] = []
    for r in records:
        progress = field(r, "progress")
        running = field(r, "status") == "running"
        run_id = str(field(r, "id"))
        rows.append(
            {
                "ID": safe_text(run_id if full_ids else short_id(run_id)),
                "NAME": safe_text(field(r, "name") or "-"),
                "QUEUE": safe_text(field(r, "queue") or "-"),
                "STATUS": status_text(r),
                "HEALTH": health_text(r),
                "PROGRESS": "-" if progress is None else f"{float(progress):.0f}%",
                STARTED: fmt_time(field(r, "started_at")),
                "DURATION": fmt_duration(field(r, "duration")),
                "HEARTBEAT": fmt_age(field(r, "last_heartbeat_at"), now) if running else "-",
                "MEMORY": fmt_bytes(field(r, "memory_bytes")),
            }
        )
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    if whole:
        return whole_table(table, [(name, justify) for name, justify, _ in columns], rows)
    return fitted_table(
        table,
        columns,
        rows,
        width=width,
        flexible="NAME",
        drop_order=(STARTED, "QUEUE", "MEMORY", "HEARTBEAT", "PROGRESS", "DURATION"),
        caps={"QUEUE": 16},
    )


def whole_table(
    table: Table,
    columns: Sequence[tuple[str, Literal["left", "right"]]],
    rows: Sequence[dict[str, Cell]],
) -> Table:
    """Fill ``table`` with ``rows`` at their natural width: every column as wide as its
    widest cell, nothing wrapped, cut or left out (print it on a console wide enough)."""
    for name, justify in columns:
        widest = max([cell_len(name)] + [_cell_len(row[name]) for row in rows])
        table.add_column(name, justify=justify, no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*(row[name] for name, _ in columns))
    return table


# --------------------------------------------------------------------------------------------
# sql results: a table when it fits, else one block per record (psql's \x, DuckDB's .mode line).
# --------------------------------------------------------------------------------------------


def sql_cell(value: Any) -> str:
    """A result value as a table shows it: ``NULL`` for SQL NULL, control characters
    escaped (a line break as ``\\n``: a row is one line)."""
    return "NULL" if value is None else terminal_safe(str(value))


def sql_cell_lines(value: Any) -> list[str]:
    """A result value as ``sql -x`` shows it: its lines, each with control characters
    escaped (a traceback goes on under the ``|``)."""
    return ["NULL"] if value is None else terminal_safe_lines(str(value)).split("\n")


def sql_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A query result as a table at its natural width: values whole, one line per row."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for c in columns:  # names and values as Text: "SELECT '[/]'" is data, not markup
        table.add_column(safe_text(c), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(sql_cell(v)) for v in row))
    return table


def sql_table_width(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    """Columns the :func:`sql_table` of this result needs (its widest line)."""
    widths = [
        max([cell_len(terminal_safe(c))] + [cell_len(sql_cell(row[i])) for row in rows])
        for i, c in enumerate(columns)
    ]
    return sum(widths) + 3 * max(0, len(widths) - 1)  # " │ " between columns, no edges


def sql_expanded(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int) -> str:
    """The result as one block per record, ``column | value`` lines, each block under a
    ``-[ RECORD n ]---`` line (psql's expanded display). A value with newlines goes on
    under the ``|``. Plain text: nothing in it is read as markup; control characters are
    shown escaped."""
    columns = [terminal_safe(c) for c in columns]
    label = max((cell_len(c) for c in columns), default=0)
    values = [cell_len(line) for row in rows for v in row for line in sql_cell_lines(v)]
    rule = min(width, label + 3 + max(values, default=0))
    out: list[str] = []
    for n, row in enumerate(rows, 1):
        head = f"-[ RECORD {n} ]"
        out.append(head + "-" * max(0, rule - cell_len(head)))
        for name, value in zip(columns, row, strict=False):
            first, *more = sql_cell_lines(value)
            out.append(f"{name}{' ' * (label - cell_len(name))} | {first}".rstrip())
            out.extend(f"{' ' * label} | {line}".rstrip() for line in more)
    return "\n".join(out)


def detail(record: Any, others: Sequence[Any] = ()) -> RenderableType:
    """``show RUN_ID``: everything about one run; ``others`` are the run id's other attempts
    and executions (a redelivered task runs an attempt again), listed at the end."""
    now = now_utc()
    r = record
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold", no_wrap=True)
    info.add_column()

    def row(label: str, value: Any) -> None:
        if value is None or value == "":
            return
        info.add_row(label, value if isinstance(value, Text) else safe_text(value))

    row("run id", field(r, "id"))
    row("parent run", field(r, "parent_run_id"))  # list its nested runs: jobs --parent ID
    row("attempt", field(r, "attempt"))
    row("execution", field(r, "execution_id"))
    row("job", field(r, "name"))
    row("queue", field(r, "queue"))
    row("status", status_text(r))
    row("health", health_text(r))
    row("host / pid", f"{field(r, 'host') or '-'} / {field(r, 'pid') or '-'}")
    row("started", _iso(field(r, "started_at")))
    row("finished", _iso(field(r, "finished_at")))
    row("duration", fmt_duration(field(r, "duration")))
    if field(r, "timeout_at") is not None:
        row("timeout at", _iso(field(r, "timeout_at")))
    if field(r, "stuck_since") is not None:  # kept after it recovered or ended
        row(
            "stuck",
            f"since {_iso(field(r, 'stuck_since'))}, "
            f"{fmt_duration(field(r, 'stuck_seconds'))} in all",
        )
    progress = field(r, "progress")
    if progress is not None:
        bar = progress_bar(progress, 30)
        current, total = field(r, "current"), field(r, "total")
        if current is not None:
            bar.append(f"  {_num(current)}" + (f" / {_num(total)}" if total is not None else ""))
        row("progress", bar)
    row("phase", field(r, "phase"))
    rate = field(r, "rate")
    if rate:
        row("rate", f"{float(rate) * 100:.2f} %/s")
    if field(r, "status") == "running":
        row("eta", fmt_duration(field(r, "eta")) if field(r, "eta") is not None else None)
    hb_count = field(r, "heartbeat_count")
    interval = field(r, "heartbeat_interval")
    # Nothing reported yet: the stored "last heartbeat" is the start (the lease runs from
    # it). A progress report moves it without counting a heartbeat.
    last_at = field(r, "last_heartbeat_at")
    shown = hb_count or (last_at is not None and last_at != field(r, "started_at"))
    last = f", last {fmt_age(last_at, now)}" if shown else ""
    row(
        "heartbeats",
        f"{hb_count if hb_count is not None else '-'} (interval {fmt_duration(interval)}{last})",
    )
    if field(r, "last_seen_at") is not None:
        row("process seen", fmt_age(field(r, "last_seen_at"), now))
    row(
        "memory",
        _with_limit(
            fmt_bytes(field(r, "memory_bytes")),
            field(r, "memory_limit_bytes"),
            fmt_bytes,
            peak=field(r, "memory_peak_bytes"),
        ),
    )
    cpu = field(r, "cpu_percent")
    scope = field(r, "cpu_scope")
    row(
        "cpu",
        _with_limit(
            ("-" if cpu is None else f"{float(cpu):.1f}%")
            + (_CPU_SCOPE_TEXT.get(scope, f" ({scope})") if scope and cpu is not None else ""),
            field(r, "cpu_limit_percent"),
            lambda v: f"{float(v):.0f}%",
        ),
    )
    row("open fds", _with_limit(str(field(r, "open_fds") or "-"), field(r, "fd_limit"), str))
    trace_id = field(r, "trace_id")
    if trace_id:
        row("trace", f"{trace_id} / span {field(r, 'span_id') or '-'}")
    meta = field(r, "metadata")
    if meta:
        row("metadata", ", ".join(f"{k}={v}" for k, v in dict(meta).items()))
    title = safe_text(field(r, "name"), "bold")
    parts: list[RenderableType] = [Panel(info, title=title, expand=False)]

    violations = list(field(r, "resource_violations") or [])
    if violations:
        vt = Table(title="resource violations", box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("AT", "LIMIT", "LIMIT VALUE", "ACTUAL", "POLICY"):
            vt.add_column(col)
        for v in violations:
            kind = str(field(v, "type"))
            fmt = fmt_bytes if kind == "memory" else _num
            vt.add_row(
                _iso(field(v, "at")),
                safe_text(kind, "red"),
                Text(fmt(field(v, "limit"))),
                Text(fmt(field(v, "actual"))),
                safe_text(field(v, "policy") or "-"),
            )
        parts.append(vt)

    errors = list(field(r, "errors") or [])
    if not errors and field(r, "error_type"):
        errors = [
            _Error(None, field(r, "error_type"), field(r, "error_message"), field(r, "error_trace"))
        ]
    for e in errors:
        body = Text()
        kind, message = field(e, "type"), field(e, "message") or ""
        heading = f"{kind}: {message}" if message else str(kind)
        body.append(terminal_safe(heading), style="bold red")
        trace = str(field(e, "trace") or "").strip()
        if trace and not _repeats(trace, str(kind), message):  # a traceback keeps its lines
            body.append("\n" + terminal_safe_lines(trace))
        parts.append(
            Panel(
                body,
                title=f"error {_iso(field(e, 'at'))}".rstrip(),
                expand=False,
                border_style="red",
            )
        )

    every = _heartbeats(r)
    # The job's own beats; the monitor's liveness records (the process alive, the job
    # silent) would crowd them out of the last ten, so they are counted, not listed.
    beats = [hb for hb in every if field(hb, "kind") != "liveness"]
    if every:
        shown = beats[-_SHOWN_HEARTBEATS:]
        heading = f"heartbeats: the latest {len(shown)} of {len(beats)}"
        if len(every) > len(beats):
            heading += f" (and {len(every) - len(beats)} liveness records, not listed)"
        ht = Table(title=heading, box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("AT", "KIND", "CALLS", "PROGRESS", "METADATA"):
            ht.add_column(col)
        for hb in shown:
            p = field(hb, "progress")
            hmeta = field(hb, "metadata") or {}
            ht.add_row(
                _iso(field(hb, "at")),
                safe_text(field(hb, "kind") or "-"),
                str(field(hb, "calls") if field(hb, "calls") is not None else "-"),
                "-" if p is None else f"{float(p):.0f}%",
                Text(terminal_safe(", ".join(f"{k}={v}" for k, v in dict(hmeta).items()))[:80]),
            )
        parts.append(ht)
    if others:
        et = Table(
            title=f"other attempts and executions of this run id: {len(others)}",
            box=box.SIMPLE_HEAD,
            title_justify="left",
        )
        for col in ("ATTEMPT", "EXECUTION", "STATUS", "STARTED", "PID"):
            et.add_column(col)
        for o in others:
            et.add_row(
                str(field(o, "attempt")),
                safe_text(field(o, "execution_id") or "-"),
                status_text(o),
                _iso(field(o, "started_at")),
                str(field(o, "pid") or "-"),
            )
        parts.append(et)
    return Group(*parts)


def executions_dict(others: Sequence[Any]) -> list[dict[str, Any]]:
    """``show --json``'s ``other_executions``: the run id's other attempts and executions."""
    return [
        {
            "attempt": field(o, "attempt"),
            "execution_id": field(o, "execution_id"),
            "status": field(o, "status"),
            "started_at": _iso(field(o, "started_at"), exact=True),
        }
        for o in others
    ]


def _repeats(trace: str, kind: str, message: str) -> bool:
    """Whether a stored "trace" only says the heading again: one line, the exception's type
    (qualified or not) and message, as an error recorded without a traceback has it (a run
    closed by another process, an exception never raised)."""
    if "\n" in trace:
        return False
    said = trace.rstrip(":").strip()
    short = kind.rsplit(".", 1)[-1]
    return said in {kind, short} or (
        bool(message) and said in {f"{kind}: {message}", f"{short}: {message}"}
    )


@dataclass
class _Error:
    at: datetime | None
    type: str | None
    message: str | None
    trace: str | None


_SHOWN_HEARTBEATS = 10
"""Heartbeats ``show`` lists (``show --json`` gives them all)."""


_CPU_SCOPE_TEXT: Final = {
    "thread": " (its thread)",
    "process": " (whole process)",
    "shared": " (shared with other runs: no limit or rule judges it)",
}


def _heartbeats(record: Any) -> list[Any]:
    fn = getattr(record, "heartbeats", None)
    if fn is None:
        return []
    beats = fn() if callable(fn) else fn
    return list(beats or [])


def _with_limit(value: str, limit: Any, fmt: Any, *, peak: Any = None) -> str | None:
    if value == "-" and limit is None and peak is None:
        return None
    out = value
    if peak is not None:
        out += f" (peak {fmt(peak)})"
    if limit is not None:
        out += f"  limit {fmt(limit)}"
    return out


def _num(value: Any) -> str:
    if value is None:
        return "-"
    f = float(value)
    return f"{f:.0f}" if f.is_integer() else f"{f:g}"


def _iso(moment: datetime | None, *, exact: bool = False) -> str:
    """ISO 8601 in UTC (``…Z``): to the second for people, ``exact`` (machine output: CSV,
    JSON) with the microseconds it has, as ``--json`` writes it. A naive datetime is UTC:
    DuckDB returns ``TIMESTAMP`` values naive in UTC, and ``astimezone`` would read them as
    local time."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    timespec = "auto" if exact else "seconds"
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def health_lines(
    report: HealthReport, *, single: bool, width: int, whole: bool = False
) -> list[tuple[RenderableType | str, ...]]:
    """``health``'s terminal output, each line as the parts of one ``Console.print``: one
    run's verdict (``single``), or the counts and the runs that are not healthy; then
    ``OK`` or ``FAIL``."""
    lines: list[tuple[RenderableType | str, ...]] = []
    if single:
        r = report.records[0]
        lines.append((safe_text(f"{r.name} {r.id}: "), status_text(r), " ", health_text(r)))
    else:
        summary = "  ".join(f"{k}: {v}" for k, v in report.counts.items())
        lines.append((safe_text(f"{len(report.records)} running run(s)  {summary}"),))
        if report.not_ok:
            not_ok = jobs_table(report.not_ok, title="not healthy", width=width, whole=whole)
            lines.append((not_ok,))
    lines.append(("[red]FAIL[/]" if not report.ok else "[green]OK[/]",))
    return lines


def health_dict(report: HealthReport, *, single: bool) -> dict[str, Any]:
    """``health --json``: the verdict, the counts, and the runs shown (all of one run's, or
    the ones not healthy)."""
    shown = report.records if single else report.not_ok
    return {
        "ok": report.ok,
        "counts": report.counts,
        "runs": [record_dict(r) for r in shown],
    }


# --------------------------------------------------------------------------------------------
# Machine output.
# --------------------------------------------------------------------------------------------


def record_dict(record: Any) -> dict[str, Any]:
    """The record as a plain dict (``to_dict()`` when it has one)."""
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return {k: v for k, v in vars(record).items() if not k.startswith("_")}


def to_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with a header line; datetimes as ISO 8601 UTC, to the microsecond."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _iso(value, exact=True)
    if isinstance(value, (dict, list)):
        import json  # noqa: PLC0415

        return json.dumps(value, default=str)
    return value


def records_csv(records: Sequence[Any], columns: Sequence[str] = JOB_COLUMNS) -> str:
    return to_csv(columns, ([field(r, c) for c in columns] for r in records))


def waiting_line(runs: Sequence[Any]) -> str:
    """``wait``'s progress line: the first five runs it waits for, each with its progress
    and, when the rules say so, LOST or STUCK (a lost run never finishes on its own)."""
    shown = ", ".join(
        terminal_safe(f"{r.name} {short_id(str(r.id))}")
        + f" {float(r.progress or 0):.0f}%"
        + (" LOST" if r.lost else " STUCK" if r.stuck else "")
        for r in runs[:5]
    )
    return f"waiting for {len(runs)} run(s): {shown}" + (" …" if len(runs) > 5 else "")


def unwritten_hint(store: str, lost: Sequence[Any], now: datetime | None = None) -> str | None:
    """What a command says under its output when it shows LOST runs of a store that no
    process writes (:func:`~chaperone_otel.cli._verdicts.lost_while_unwritten`; None when
    there are none): a fleet whose ``sink serve`` is down looks exactly like one that died."""
    if not lost:
        return None
    now = now or datetime.now(timezone.utc)
    seen = [r.last_seen_at for r in lost if r.last_seen_at is not None]
    last = (
        f"; the last of them was heard from {fmt_duration((now - max(seen)).total_seconds())} ago"
        if seen
        else ""
    )
    return (
        f"note: no process is writing {terminal_safe(store)} now (this command read the file "
        f"itself){last}. If your workers send to `chaperone-otel sink serve`, it is not "
        "running and these LOST runs may be alive: start it again and what the workers kept "
        "(up to 5 minutes) arrives. A run whose process is gone ends with "
        "`chaperone-otel close RUN_ID`."
    )


def lost_hint(run: Any) -> str:
    """What ``wait`` says once when a run it waits for is lost."""
    return (
        "a LOST run's process went silent: it will not finish on its own (--ignore-stuck "
        f"leaves it out; `chaperone-otel close {terminal_safe(str(run.id))}` ends it once "
        "you know its process is gone)"
    )
