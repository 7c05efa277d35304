"""``chaperone-otel close RUN_ID``: end a run no process will finish.

A lost run (its process killed with no parent to close it) stays ``running`` in the store:
``ChaperoneJobLost`` keeps firing, ``stuck``/``health`` exit 1 and ``wait`` waits, until a
prune deletes it with every other run of its age. ``close`` ends that one run, as
``sink.close_run()`` does (``sink/_close.py``); the command is the operator's, so it asks
nothing and says what it closed.
"""

from __future__ import annotations

import sys

import click

from .._fields import CLOSE_STATUSES
from . import _render as render
from ._app import cli, db_option, named_run
from ._common import Exit, dump_json, fail, open_store, query, store_target


@cli.command("close")
@click.argument("run_id")
@click.option(
    "--status",
    type=click.Choice(CLOSE_STATUSES),
    default="failed",
    show_default=True,
    help="What the run ends as.",
)
@click.option("--reason", metavar="TEXT", help="Why, kept as the run's error message.")
@click.option(
    "--execution",
    "execution_id",
    metavar="ID",
    help="Which execution, when the run has several running (a redelivered task).",
)
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    metavar="N",
    help="Which attempt, when several are running under one execution id.",
)
@db_option
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def close(
    run_id: str,
    status: str,
    reason: str | None,
    execution_id: str | None,
    attempt: int | None,
    db: str | None,
    as_json: bool,
) -> None:
    """End a run no process will finish: a lost run, or one stuck for good.

    Its running (or pending) execution ends failed (or --status cancelled) with the error
    chaperone_otel.exceptions.RunClosed and --reason as its message (default: what the
    store judged, lost or stuck); its alerts resolve. Its process's later records, if it
    was alive after all, only fill in what is still empty. RUN_ID is the run id or a
    unique prefix of it. Exit 1 if the run is not running. When a process owns the store
    (`sink serve`, or an application with the embedded sink), this goes through its query
    API, with the token of its sidecar.
    """
    target = store_target(db, None)
    if target.startswith(("http://", "https://")):
        fail("close needs a store file (--db PATH), not a URL", Exit.USAGE)
    with open_store(target, read_only=False) as sink:
        run = named_run(sink, run_id, target, "close")
        active = [r for r in sink.jobs.with_id(run.id).all() if r.status in ("pending", "running")]
        if execution_id is not None:
            active = [r for r in active if r.execution_id == execution_id]
        if attempt is not None:
            active = [r for r in active if r.attempt == attempt]
        if not active:
            what = (
                "has no such running execution or attempt"
                if execution_id is not None or attempt is not None
                else f"is not running (it is {run.status})"
            )
            fail(f"run {run.id!r} {what}: nothing to close", Exit.FINDINGS)
        if len(active) > 1:
            listed = ", ".join(f"{r.execution_id} (attempt {r.attempt})" for r in active)
            fail(
                f"run {run.id!r} has {len(active)} running executions: {listed}; "
                "say which with --execution ID (and --attempt N)",
                Exit.USAGE,
            )
        closed = query(
            "close",
            lambda: sink.close_run(
                run.id,
                status=status,
                reason=reason,
                execution_id=active[0].execution_id,
                attempt=active[0].attempt,
            ),
        )
    if as_json:
        dump_json(render.record_dict(closed))
    else:
        click.echo(
            f"closed run {closed.id} (attempt {closed.attempt}) of {closed.name or '-'}: "
            f"{closed.status}, {closed.error_message}"
        )
    sys.exit(int(Exit.OK))
