"""``chaperone-otel schedules``: schedule slots by state; exit 1 on findings, like ``stuck``.

Without a state flag it lists each schedule's latest slot with its state, and exits 1 if
any of them is missed, overran, failing or its scheduler is lost (a late slot is still
within its grace: listed, not a finding). With flags (``--missed --today``) it lists the
matching slots and exits 1 when there are any. ``schedules forget NAME`` removes a
schedule with its slots and dispatches. Registered on the ``cli`` group by ``cli/__init__``
(``_app`` is full).
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime
from typing import Any

import click
from rich import box
from rich.table import Table

from .._schedules import SCHEDULE_PREDICATES
from ._app import cli, db_option, output_options, store_options
from ._common import SINCE, Exit, dump_json, fail, open_store, query, store_target
from ._pipes import console, note, verdict
from ._render import safe_text
from ._terminal import terminal_safe
from ._verdicts import read_unwritten

FINDINGS = frozenset({"missed", "overran", "failing", "scheduler_lost"})
"""Slot states that make the command exit 1."""

_COLUMNS = (
    "schedule",
    "due_at",
    "state",
    "run_id",
    "run_status",
    "run_started_at",
    "dispatched_at",
    "consecutive_failures",
    "grace",
)


def _value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row(slot: Any) -> dict[str, Any]:
    return {name: _value(getattr(slot, name)) for name in _COLUMNS}


@cli.group(invoke_without_command=True)
@store_options
@click.option("--name", metavar="SCHEDULE", help="Only this schedule.")
@click.option("--missed", is_flag=True, help="Slots past their grace without a run.")
@click.option("--late", is_flag=True, help="Slots due, within their grace, without a run yet.")
@click.option("--overran", is_flag=True, help="Slots whose run is running past max_runtime.")
@click.option("--failing", is_flag=True, help="Slots where the last N runs failed.")
@click.option("--lost", is_flag=True, help="Schedules whose scheduler stopped declaring.")
@click.option("--healthy", is_flag=True, help="Slots neither missed, overran, failing nor lost.")
@click.option("--today", is_flag=True, help="Slots due since midnight UTC.")
@click.option("--since", type=SINCE, metavar="WHEN", help="Slots due since: 1h, 7d or ISO.")
@output_options
@click.pass_context
def schedules(
    ctx: click.Context,
    /,
    db: str | None,
    url: str | None,
    name: str | None,
    today: bool,
    since: Any,
    as_json: bool,
    as_csv: bool,
    **states: bool,
) -> None:
    """Schedules and their slots: what ran on time, late, or never; exit 1 on findings.

    Detection runs where the store is (the embedded owner or `sink serve`): a slot that
    fell due without a run is a row of its own, so it can be listed and counted.
    `schedules forget NAME` removes a renamed or removed schedule.
    """
    chosen = [p for p in SCHEDULE_PREDICATES if states.get(p)]
    if ctx.invoked_subcommand is not None:
        if chosen or name is not None or today or since is not None or as_json or as_csv:
            raise click.UsageError(
                f"the listing options do not go with `schedules {ctx.invoked_subcommand}`"
            )
        ctx.obj = {"db": db, "url": url}  # `schedules --db PATH forget NAME` works too
        return
    target = store_target(db, url)
    with open_store(target) as sink:

        def fetch() -> list[Any]:
            q = sink.schedules
            if name is not None:  # given empty: refused by the scope, not "every schedule"
                q = q.named(name)
            for predicate in chosen:
                q = getattr(q, predicate)()
            if today:
                q = q.today()
            if since is not None:
                q = q.since(since)
            if not chosen and not today and since is None:
                q = q.current()
            return q.all()

        found = query("schedules", fetch)
        if name is not None and not found:
            _check_declared(sink, name, target)
        unowned = read_unwritten(sink) and (
            bool(found) or query("schedules", sink.schedules.count) > 0
        )
    if chosen and "healthy" not in chosen:
        findings = bool(found)
    else:
        findings = any(s.state in FINDINGS for s in found)
    code = verdict(Exit.FINDINGS if findings else Exit.OK)
    rows = [_row(s) for s in found]
    if as_json:
        dump_json(rows)
    elif as_csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    elif found:
        # As the other listings: a plain grid that pipes well; names are shown, never
        # read as markup, their control characters escaped.
        table = Table(
            title="schedule slots",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            title_justify="left",
        )
        for column in _COLUMNS:
            table.add_column(column)
        for row in rows:
            table.add_row(*(safe_text("" if row[c] is None else row[c]) for c in _COLUMNS))
        console().print(table)
    else:
        console().print("[green]no matching schedule slots[/]")
    if unowned:
        note(
            f"note: no process owns {terminal_safe(target)} now, so no slot falls due in it: "
            "a run that should have come since it was last owned is not missed yet, and a "
            "schedule whose job stopped running still shows its last state. Missed runs are "
            "found by an owner: `chaperone-otel sink serve --db PATH`, or an application "
            "that keeps configure(sink=PATH) running."
        )
    sys.exit(int(code))


def _check_declared(sink: Any, name: str, target: str) -> None:
    """``--name`` of a schedule the store does not know exits 1, naming those it knows: a
    typo in ``chaperone-otel schedules --name nightly || page`` must not pass for good."""
    _columns, found = query(
        "schedules", lambda: sink.sql("SELECT 1 FROM schedules WHERE name = $name", {"name": name})
    )
    if found:
        return
    _columns, rows = query(
        "schedules", lambda: sink.sql("SELECT name FROM schedules ORDER BY name LIMIT 21")
    )
    known = [str(row[0]) for row in rows]
    listed = ", ".join(repr(k) for k in known[:20]) + (", …" if len(known) > 20 else "")
    fail(
        f"no schedule {name!r} in {target}"
        + (f" (declared: {listed})" if known else " (no schedule is declared there)"),
        Exit.FINDINGS,
    )


@schedules.command("forget")
@click.argument("name", metavar="NAME")
@db_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def forget(ctx: click.Context, /, name: str, db: str | None, as_json: bool) -> None:
    """Remove the schedule NAME, its slots and dispatches (a renamed or removed entry).

    Its alerts resolve and its /metrics series go. A declaration made before now and
    delivered later (a delayed OTLP batch) is ignored; a process that still declares it
    declares it again, and it starts afresh. Exit 1 if the store has no such schedule.
    When `sink serve` owns the store, this goes through its query API (with its token); an
    application with the embedded sink refuses (exit 3): stop it, or call
    sink.forget_schedule(NAME) in that process.
    """
    parent = ctx.obj or {}
    if parent.get("url"):
        fail("schedules forget needs a store file (--db PATH), not a URL", Exit.USAGE)
    target = store_target(db or parent.get("db"), None)
    if target.startswith(("http://", "https://")):
        fail("schedules forget needs a store file (--db PATH), not a URL", Exit.USAGE)
    with open_store(target, read_only=False) as sink:
        found = query("schedules forget", lambda: sink.forget_schedule(name))
    code = verdict(Exit.OK if found else Exit.FINDINGS)
    if as_json:
        dump_json({"schedule": name, "forgotten": found})
    elif found:
        click.echo(f"forgot schedule {name!r}: its slots and dispatches are deleted")
    else:
        click.echo(f"no schedule {name!r} in the store", err=True)
    sys.exit(int(code))
