"""``chaperone-otel schedules``: schedule slots by state; exit 1 on findings, like ``stuck``.

Without a state flag it lists each schedule's latest slot with its state, and exits 1 if
any of them is missed, overran, failing or its scheduler is lost (a late slot is still
within its grace: listed, not a finding). With flags (``--missed --today``) it lists the
matching slots and exits 1 when there are any. Registered on the ``cli`` group by
``cli/__init__`` (``_app`` is full).
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime
from typing import Any

import click
from rich.table import Table

from .._schedules import SCHEDULE_PREDICATES
from ._app import cli, output_options, store_options
from ._common import SINCE, Exit, dump_json, open_store, query, store_target
from ._pipes import console, verdict

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


@cli.command()
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
def schedules(
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
    """
    chosen = [p for p in SCHEDULE_PREDICATES if states.get(p)]
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
        table = Table(title="schedule slots")
        for column in _COLUMNS:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if row[c] is None else str(row[c]) for c in _COLUMNS))
        console().print(table)
    else:
        console().print("[green]no matching schedule slots[/]")
    sys.exit(int(code))
