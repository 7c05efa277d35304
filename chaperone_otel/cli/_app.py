"""The ``chaperone-otel`` commands: parse → query the store → render (STYLE: thin CLI).

All store access goes through the sink's public API (``open_sink``, ``JobQuery`` scopes,
``JobRecord``); health verdicts come from the same rules the sink's scopes render, so the CLI
never re-types a threshold.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from .._version import __version__
from ..exceptions import SinkError
from . import _render as render
from ._common import (
    DURATION,
    ENV_SINK,
    LOADS,
    TOKEN_ENV,
    CliFailure,
    Exit,
    dump_json,
    fail,
    open_store,
    query,
    store_target,
    unique_names,
)
from ._monitor import Frame, read_frame, render_frame, run_live
from ._pipes import Group, console, note, verdict, widen
from ._scope_flags import SCOPES, build_query, scope_option
from ._verdicts import (
    RunIdError,
    filtered,
    find_run,
    health_report,
    lost_while_unwritten,
    ordered,
    sort_order,
    still_running,
    stuck_runs,
)

if TYPE_CHECKING:
    from ..sink import JobRecord, Sink

F = TypeVar("F", bound=Callable[..., Any])


def table_of_runs(out: Console, records: list[JobRecord], title: str | None = None) -> Any:
    """The runs table for ``out``: fitted to a terminal, whole values in a pipe."""
    return render.jobs_table(records, title=title, width=out.width, whole=not out.is_terminal)


def db_option(func: F) -> F:
    """``--db``: the store file (same env var as ``configure()``), for the commands that
    write it themselves (``prune``, ``schedules forget``); :func:`store_options` adds
    ``--url`` for the ones that only read."""
    return click.option(
        "--db",
        metavar="PATH",
        default=None,
        envvar=ENV_SINK,
        show_envvar=True,
        help="The DuckDB store file (configure(sink=PATH)).",
    )(func)


def store_options(func: F) -> F:
    """``--db`` / ``--url``: where the store is (same env var as ``configure()``)."""

    @click.option(
        "--url",
        metavar="URL",
        default=None,
        help="Query URL of a live owner (sink server or app with the embedded "
        "sink), e.g. http://127.0.0.1:4318. Usually found automatically.",
    )
    @db_option
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def output_options(func: F) -> F:
    @click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout (for pipes).")
    @click.option("--json", "as_json", is_flag=True, help="JSON on stdout (for pipes).")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("as_json") and kwargs.get("as_csv"):
            raise click.UsageError("--json and --csv are exclusive; choose one")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="chaperone-otel")
def cli() -> None:
    """Supervise long-running Python jobs: query and watch the job store.

    The store is the DuckDB file your app records to with configure(sink=PATH); give it
    with --db PATH or CHAPERONE_OTEL_SINK. While a process owns the file, commands reach it
    through the URL it advertises beside the file.

    Exit codes: 0 ok · 1 findings (stuck/unhealthy runs, wait timed out, no such run) ·
    2 bad usage or input · 3 store missing, unreadable or incompatible.
    """


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--db",
    metavar="PATH",
    default="chaperone-demo.duckdb",
    show_default=True,
    help="Where to record the demo's runs.",
)
@click.option(
    "--duration",
    type=DURATION,
    default="60s",
    show_default=True,
    help="How long to keep starting jobs (seconds or 90s/2m).",
)
@click.option("--forever", is_flag=True, help="Keep going until Ctrl-C.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the Prometheus /metrics endpoint (0: a free one).",
)
@click.option("--seed", type=int, default=None, help="Random seed (repeatable demo).")
@click.option("--no-live", is_flag=True, help="No live progress view (log lines instead).")
def demo(
    db: str, duration: float, forever: bool, port: int, seed: int | None, no_live: bool
) -> None:
    """Run a realistic supervised workload recorded to a local store.

    Batch processing, a CSV import, an API sync with retries, a bulk SQL update and a
    multi-phase report, plus one run that hangs (turns stuck), one that fails and one that
    exceeds its memory limit. Ends with a summary read back from the store and the commands
    to explore it.
    """
    from ._demo import run_demo  # noqa: PLC0415 - the demo's workloads load only for it

    code = run_demo(
        db=db, duration=None if forever else duration, port=port, seed=seed, live=not no_live
    )
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


def scope_options(func: F) -> F:
    """One option per query scope of the registry (``sink.jobs.running().stuck()…``)."""
    for spec in reversed(SCOPES):
        func = scope_option(spec)(func)
    return func


@cli.command()
@store_options
@scope_options
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
@click.option(
    "--order-by",
    metavar="COLUMN",
    default=None,
    help="Sort column (started_at, duration, memory_bytes, progress …); "
    "prefix with - for descending. Default: newest first.",
)
@click.option("--desc/--asc", default=None, help="Sort direction for --order-by.")
@output_options
def jobs(
    db: str | None,
    url: str | None,
    limit: int,
    order_by: str | None,
    desc: bool | None,
    as_json: bool,
    as_csv: bool,
    **scopes: Any,
) -> None:
    """List runs, filtered by scope flags (they combine with AND).

    \b
    Examples:
      chaperone-otel jobs --failed --since 1h
      chaperone-otel jobs --running --stuck --json
      chaperone-otel jobs --name etl.import --order-by -memory_bytes --limit 5
    """
    try:
        sort_order(order_by, desc)  # contradicting flags: a usage error before the store opens
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    target = store_target(db, url)
    with open_store(target) as sink:
        records = query(
            "jobs", lambda: ordered(build_query(sink, scopes), order_by, desc).limit(limit).all()
        )
        unwritten = lost_while_unwritten(sink, records)
    if as_json:
        dump_json([render.record_dict(r) for r in records])
    elif as_csv:
        click.echo(render.records_csv(records), nl=False)
    else:
        out = console()
        if records:
            out.print(table_of_runs(out, records))
        out.print(
            f"[dim]{len(records)} run(s)"
            + (f" (limit {limit}; use --limit)" if len(records) == limit else "")
            + "[/]"
        )
    note(render.unwritten_hint(target, unwritten))


# --------------------------------------------------------------------------------------------
# show
# --------------------------------------------------------------------------------------------


def named_run(sink: Sink, run_id: str, target: str, what: str) -> JobRecord:
    """The run ``RUN_ID`` names (its whole id or a unique prefix, searched in the whole
    store), for ``show`` and ``health``: a prefix too short or naming several runs exits 2
    (listing the candidates), no such run exits 1."""
    try:
        record = query(what, lambda: find_run(sink, run_id))
    except RunIdError as exc:
        fail(str(exc), Exit.USAGE)
    if record is None:
        fail(
            f"no run {run_id!r} in {target} (list runs with `chaperone-otel jobs`)",
            Exit.FINDINGS,
        )
    return record


@cli.command()
@click.argument("run_id")
@store_options
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def show(run_id: str, db: str | None, url: str | None, as_json: bool) -> None:
    """One run: details, progress, health, heartbeats, errors with traces, violations.

    RUN_ID is the run id (or a unique prefix of it, at least 4 characters).
    """
    target = store_target(db, url)
    with open_store(target) as sink:
        record = named_run(sink, run_id, target, "show")
        others = [
            r
            for r in sink.jobs.with_id(record.id).order_by("attempt").all()
            if (r.attempt, r.execution_id) != (record.attempt, record.execution_id)
        ]
        unwritten = lost_while_unwritten(sink, [record])
        if as_json:
            data = render.record_dict(record)
            data["heartbeats"] = [h.to_dict() for h in record.heartbeats()]
            data["errors"] = [e.to_dict() for e in record.errors]
            data["resource_violations"] = [v.to_dict() for v in record.resource_violations]
            data["other_executions"] = render.executions_dict(others)
            dump_json(data)
        else:
            console().print(render.detail(record, others))
    note(render.unwritten_hint(target, unwritten))


# --------------------------------------------------------------------------------------------
# monitor
# --------------------------------------------------------------------------------------------


@cli.command()
@store_options
@click.option("--name", metavar="JOB", help="Only this job name.")
@click.option("--queue", metavar="QUEUE", help="Only this queue.")
@click.option("--interval", type=DURATION, default="1s", show_default=True, help="Refresh period.")
@click.option(
    "--recent",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Also show this many recently finished runs.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (scripts, CI logs).")
@click.option("--json", "as_json", is_flag=True, help="With --once: the frame as JSON.")
def monitor(
    db: str | None,
    url: str | None,
    name: str | None,
    queue: str | None,
    interval: float,
    recent: int,
    once: bool,
    as_json: bool,
) -> None:
    """Live view of running runs: progress, ETA, heartbeat age, health. Ctrl-C quits.

    Works against a store file, or a live owner (the demo, an app with the embedded sink,
    `sink serve`) through the URL it advertises beside the file.
    """
    if as_json and not once:
        raise click.UsageError("--json needs --once (a live view cannot be piped)")
    target = store_target(db, url)
    if once:
        with open_store(target) as sink:
            frame = query(
                "monitor", lambda: read_frame(sink, name=name, queue=queue, recent=recent)
            )
        if as_json:
            dump_json(
                {
                    "running": [render.record_dict(r) for r in frame.running],
                    "recent": [render.record_dict(r) for r in frame.recent],
                }
            )
        else:
            out = console()
            out.print(
                render_frame(
                    frame,
                    title=target,
                    interval=interval,
                    width=out.width,
                    whole=not out.is_terminal,
                    live=False,
                )
            )
        return

    def fetch() -> Frame:
        try:
            with open_store(target) as sink:
                return read_frame(sink, name=name, queue=queue, recent=recent)
        except CliFailure as exc:
            return Frame(error=exc.format_message())
        except Exception as exc:  # keep the view alive; show why this frame failed
            if type(exc).__name__ == "InterruptException":  # duckdb's Ctrl-C
                raise KeyboardInterrupt from exc
            return Frame(error=f"{type(exc).__name__}: {exc}")

    with contextlib.suppress(KeyboardInterrupt):
        run_live(console(), fetch, title=target, interval=interval)
    click.echo("monitor stopped")


# --------------------------------------------------------------------------------------------
# stuck / health
# --------------------------------------------------------------------------------------------


@cli.command()
@store_options
@click.option("--name", metavar="JOB", help="Only this job name.")
@click.option("--queue", metavar="QUEUE", help="Only this queue.")
@click.option(
    "--include-lost/--no-lost",
    default=True,
    show_default=True,
    help="Also report runs whose process went silent (lost).",
)
@output_options
def stuck(
    db: str | None,
    url: str | None,
    name: str | None,
    queue: str | None,
    include_lost: bool,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Report stuck runs; exit 1 if there are any (for cron and deploy scripts).

    Stuck: the process is alive but the job's code has not heartbeat for more than 3
    heartbeat intervals, or it is past its timeout. Lost: the process itself went silent.
    """
    target = store_target(db, url)
    with open_store(target) as sink:
        found = query(
            "stuck",
            lambda: stuck_runs(filtered(sink.jobs, name, queue), include_lost=include_lost),
        )
        unwritten = lost_while_unwritten(sink, found)
    code = verdict(Exit.FINDINGS if found else Exit.OK)
    if as_json:
        dump_json([render.record_dict(r) for r in found])
    elif as_csv:
        click.echo(render.records_csv(found), nl=False)
    elif found:
        out = console()
        out.print(table_of_runs(out, found, title="stuck runs"))
    else:
        console().print("[green]no stuck runs[/]")
    note(render.unwritten_hint(target, unwritten))
    sys.exit(int(code))


@cli.command()
@click.argument("run_id", required=False)
@store_options
@click.option("--name", metavar="JOB", help="Only this job name.")
@click.option("--queue", metavar="QUEUE", help="Only this queue.")
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on degraded runs.")
@output_options
def health(
    run_id: str | None,
    db: str | None,
    url: str | None,
    name: str | None,
    queue: str | None,
    strict: bool,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Health of running runs (or of one run); exit 1 if any is unhealthy, stuck or lost.

    Without RUN_ID: counts by health and the runs that are not healthy. With RUN_ID: that
    run's verdict. --strict counts degraded as a failure too.
    """
    target = store_target(db, url)
    records: list[JobRecord]
    with open_store(target) as sink:
        if run_id is not None:
            records = [named_run(sink, run_id, target, "health")]
        else:
            records = query(
                "health",
                lambda: filtered(sink.jobs.running(), name, queue).order_by("started_at").all(),
            )
        unwritten = lost_while_unwritten(sink, records)
    report = health_report(records, strict=strict)
    code = verdict(Exit.OK if report.ok else Exit.FINDINGS)
    single = run_id is not None
    if as_json:
        dump_json(render.health_dict(report, single=single))
    elif as_csv:
        click.echo(render.records_csv(records if single else report.failing), nl=False)
    else:
        out = console()
        lines = render.health_lines(
            report, single=single, width=out.width, whole=not out.is_terminal
        )
        for parts in lines:
            out.print(*parts)
    note(render.unwritten_hint(target, unwritten))
    sys.exit(int(code))


# --------------------------------------------------------------------------------------------
# sql / prune / wait
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("statement")
@store_options
@click.option(
    "--expanded",
    "-x",
    is_flag=True,
    help="One block of `column | value` lines per row (the default when the table is "
    "wider than the terminal).",
)
@click.option(
    "--table",
    "as_table",
    is_flag=True,
    help="A table even when it is wider than the terminal (values whole, lines long).",
)
@output_options
def sql(
    statement: str,
    db: str | None,
    url: str | None,
    expanded: bool,
    as_table: bool,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Run a read-only SQL query against the store.

    On a terminal the result is a table when it fits the width, else one block per row
    (`column | value` lines, as psql's \\x); piped, a table of whole values. -x and --table
    choose. The query reads only the store (no files, URLs or extensions), is interrupted
    after $CHAPERONE_OTEL_SQL_TIMEOUT (30 s) and returns at most
    $CHAPERONE_OTEL_SQL_MAX_ROWS (100000) rows; a cut result is said on stderr.

    \b
    Examples:
      chaperone-otel sql "SELECT name, status, count(*) FROM jobs GROUP BY ALL"
      chaperone-otel sql -x "SELECT * FROM jobs ORDER BY started_at DESC LIMIT 1"
      chaperone-otel sql "SELECT * FROM resource_violations" --csv > violations.csv
    """
    if not statement.strip():
        raise click.BadParameter("empty SQL statement", param_hint="STATEMENT")
    if expanded and as_table:
        raise click.UsageError("--expanded and --table are exclusive; choose one")
    if (expanded or as_table) and (as_json or as_csv):
        raise click.UsageError("--expanded and --table shape the text output, not --json/--csv")
    target = store_target(db, url)
    with open_store(target) as sink:
        from ..sink._remote import OwnerUnreachableError  # noqa: PLC0415 - loaded with the sink

        try:
            result = sink.sql(statement)
        except OwnerUnreachableError as exc:  # the store's owner went away: not the SQL's fault
            fail(f"sql: {exc}", Exit.STORE)
        except (SinkError, ValueError) as exc:  # writes, files, syntax, time limit: bad input
            fail(f"sql: {exc}", Exit.USAGE)
        except Exception as exc:  # duckdb's own error classes
            fail(f"sql: {type(exc).__name__}: {exc}", Exit.USAGE)
    columns, rows = result
    columns = [str(c) for c in columns]
    truncated = getattr(result, "truncated", None)
    if truncated:  # on stderr, so --json/--csv output stays parseable
        click.echo(f"sql: result truncated: {truncated}", err=True)
    if as_json:
        keys = unique_names(columns)  # "SELECT 1 AS n, 2 AS n" must not lose a value
        dump_json([dict(zip(keys, row, strict=False)) for row in rows])
    elif as_csv:
        click.echo(render.to_csv(columns, rows), nl=False)
    else:
        out = console()
        if not (expanded or as_table):  # psql's \x auto: a block per row when it is too wide
            expanded = out.is_terminal and render.sql_table_width(columns, rows) > out.width
        if expanded:
            if rows:
                click.echo(render.sql_expanded(columns, rows, width=out.width))
        else:
            widen(out, render.sql_table_width(columns, rows))  # whole values, never squeezed
            out.print(render.sql_table(columns, rows))
        out.print(f"[dim]{len(rows)} row(s)[/]")


@cli.command()
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    metavar="AGE",
    help="Delete runs whose latest record is older than AGE (30d, 12h …): finished runs, and "
    "lost ones silent that long.",
)
@db_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def prune(older_than: float, db: str | None, as_json: bool) -> None:
    """Delete old runs with their heartbeats, errors and violations, and retired schedules.

    A run goes when its latest record of any kind is older than AGE; a schedule, with its
    slots and dispatches, when nothing declared, ran or dispatched it for AGE. A run still reporting
    is kept, however long ago it started; a lost run (still running, its process silent) is
    deleted once it has been silent that long. It prints how many runs it deleted and how
    many schedules it retired (--json: "deleted", "schedules_retired"). When `sink serve`
    owns the store, this goes through its query API; an application with the embedded sink
    refuses (stop it, or call sink.prune(...) in that process).
    """
    from datetime import timedelta  # noqa: PLC0415

    target = store_target(db, None)
    if target.startswith(("http://", "https://")):
        fail("prune needs a store file (--db PATH), not a URL", Exit.USAGE)
    with open_store(target, read_only=False) as sink:
        pruned = query("prune", lambda: sink.prune(timedelta(seconds=older_than)))
    runs, retired, age = int(pruned), pruned.schedules_retired, render.fmt_duration(older_than)
    if as_json:
        dump_json({"deleted": runs, "schedules_retired": retired, "older_than_seconds": older_than})
    else:
        click.echo(f"pruned {runs} run(s) older than {age}; retired {retired} schedule(s)")


_GRACE = 5.0
"""Seconds ``wait`` retries a store that answered before and now fails (its owner exiting)."""
_GRACE_POLL = 0.05


@cli.command()
@store_options
@click.option("--name", metavar="JOB", help="Only runs of this job name.")
@click.option("--queue", metavar="QUEUE", help="Only runs on this queue.")
@click.option(
    "--timeout",
    type=DURATION,
    default="10m",
    show_default=True,
    help="Give up after this long (exit 1).",
)
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Poll period.")
@click.option(
    "--ignore-stuck",
    is_flag=True,
    help="Do not wait for stuck or lost runs (they may never finish).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def wait(
    db: str | None,
    url: str | None,
    name: str | None,
    queue: str | None,
    timeout: float,
    interval: float,
    ignore_stuck: bool,
    quiet: bool,
) -> None:
    """Block until matching running runs finish (deployment coordination).

    Exit 0 when none is running, 1 when --timeout passes first (the runs still going are
    listed), 3 when the store cannot be read.

    \b
    Example (drain a queue before a deploy):
      chaperone-otel wait --queue imports --timeout 15m && deploy.sh
    """
    target = store_target(db, url)
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    reached = False  # the store was opened once: a later failure may be an owner exiting
    failing_since: float | None = None
    told_lost = False
    while True:
        try:
            with open_store(target) as sink:
                reached = True
                running = query(
                    "wait",
                    lambda: filtered(sink.jobs.running(), name, queue).order_by("started_at").all(),
                )
                unwritten = lost_while_unwritten(sink, running)
        except CliFailure as failure:
            # An app that owns the store and exits when its job ends stops its query server
            # before it releases the file: a query sent in between fails. Retried for a few
            # seconds (open_sink itself waits out a lock in a handover); a store that could
            # never be opened fails at once.
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            if not reached or failure.exit_code != Exit.STORE or now - failing_since > _GRACE:
                raise
            stop.wait(_GRACE_POLL)
            continue
        failing_since = None
        last = still_running(running, ignore_stuck=ignore_stuck)
        if not last:
            if not quiet:
                click.echo("no matching runs are running")
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict(Exit.FINDINGS)
            click.echo(
                f"timed out after {render.fmt_duration(timeout)}: {len(last)} run(s) still running",
                err=True,
            )
            out = console()
            out.print(table_of_runs(out, last))
            sys.exit(int(Exit.FINDINGS))
        if not quiet:
            click.echo(render.waiting_line(last), err=True)
            lost = next((r for r in last if r.lost), None)
            if lost is not None and not told_lost:
                told_lost = True  # once: a lost run never finishes on its own
                click.echo(render.lost_hint(lost), err=True)
                note(render.unwritten_hint(target, unwritten))
        stop.wait(min(interval, remaining, threading.TIMEOUT_MAX))  # Event.wait overflows


# --------------------------------------------------------------------------------------------
# sink serve
# --------------------------------------------------------------------------------------------


@cli.group()
def sink() -> None:
    """The sink server: OTLP/HTTP in, DuckDB store, query API and fleet /metrics out."""


@sink.command("serve")
@click.option(
    "--db",
    metavar="PATH",
    default=None,
    envvar=ENV_SINK,
    show_envvar=True,
    required=True,
    help="The DuckDB store file to own (created if missing).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4318,
    show_default=True,
    help="Port for OTLP/HTTP, the query API and /metrics (0: a free one).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    default=None,
    help="Require this bearer token on ingest and the query API (needed off loopback).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback --host without a token (only on a network you trust).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    metavar="NAME",
    multiple=True,
    help="Also answer requests for this Host name (repeatable); loopback names and IP "
    "addresses are always allowed.",
)
@click.option(
    "--long-run-threshold",
    metavar="AGE",
    type=DURATION,
    default=120.0,
    show_default=True,
    envvar="CHAPERONE_OTEL_LONG_RUN_THRESHOLD",
    show_envvar=True,
    help="In /metrics, running runs older than this (120s, 2m …) get series of their own (run "
    "id label), as on the workers.",
)
def sink_serve(
    db: str,
    host: str,
    port: int,
    token: str | None,
    insecure: bool,
    allowed_hosts: tuple[str, ...],
    long_run_threshold: float,
) -> None:
    """Receive OTLP from workers/Collectors and record runs in the store (docs/sink-server.md)."""
    if token is None and os.environ.get(TOKEN_ENV) is not None:
        token = os.environ[TOKEN_ENV]  # click ignores an empty variable: it must not mean "no auth"
    if token is not None and not token.strip():
        fail(
            f"the token is empty (--token or {TOKEN_ENV}): give a non-empty one, e.g. "
            f"`export {TOKEN_ENV}=$(openssl rand -hex 32)`, or leave both unset to serve "
            "loopback without auth",
            Exit.USAGE,
        )
    try:
        from ..sink._server import serve  # noqa: PLC0415
    except ImportError as exc:
        fail(f"the sink server cannot be loaded: {exc} ({LOADS})", Exit.STORE)
    try:
        serve(
            db,
            host=host,
            port=port,
            token=token,
            insecure=insecure,
            allowed_hosts=allowed_hosts,
            long_run_threshold=long_run_threshold,
        )
    except SinkError as exc:
        fail(f"sink serve: {exc}", Exit.STORE)
    except ValueError as exc:  # ConfigurationError too: a token, host or option refused
        fail(f"sink serve: {exc}", Exit.USAGE)
    except OSError as exc:
        fail(f"sink serve: cannot bind {host}:{port}: {exc}", Exit.USAGE)
