"""stdout as Unix tools treat it: fitted to a terminal, whole values in a pipe, and a reader
that goes away (``chaperone-otel sql … | head``) is not a failure."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.console import Console

from ..exceptions import SinkError
from . import _render as render
from ._common import Exit, store_failure

__all__ = ["PIPE_WIDTH", "Group", "console", "note", "verdict", "widen"]

PIPE_WIDTH = 1_000_000
"""Width of the console when stdout is not a terminal: as wide as any line needs."""


def console() -> Console:
    """The stdout console. On a terminal (as rich decides it: a tty, or forced with
    ``TTY_COMPATIBLE=1``/``FORCE_COLOR``) it is fitted to the window and in colour. Otherwise
    (a pipe, a file) it is plain text as wide as the output needs, so tables print whole
    values, full ids and whole names, and ``grep``/``cut`` see what is stored."""
    out = render.StdoutConsole(highlight=False, soft_wrap=False)
    if not out.is_terminal:
        widen(out, PIPE_WIDTH)
    return out


def note(text: str | None) -> None:
    """A note under a command's output, when there is one: on stderr, so that stdout stays
    the data a pipe or ``--json`` reader parses."""
    if text:
        click.echo(text, err=True)


def widen(out: Console, width: int) -> None:
    """Let ``out`` print lines up to ``width`` cells (``Console.width = …`` alone is ignored
    on a dumb terminal)."""
    out.size = (max(out.width, width), out.height)


def _drop_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone (``… | head``), so nothing more,
    not even the interpreter's last flush, fails on the closed pipe (the Python docs' recipe
    for SIGPIPE, "Note on SIGPIPE" in the ``signal`` module)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # not a real file (an in-process runner)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout for the rest of the process
    finally:
        os.close(devnull)


_VERDICT = "chaperone_otel.verdict"
"""``Context.meta`` key: the exit code a check command has decided before it prints."""


def verdict(code: Exit) -> Exit:
    """Record a check's exit code before printing it, so that a reader that goes away
    (``chaperone-otel health | head -1``) does not turn a finding into exit 0."""
    click.get_current_context().meta[_VERDICT] = code
    return code


def _flush_stdout() -> None:
    """Flush stdout; a reader that has gone is not an error (the command's exit stands)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


class Group(click.Group):
    """Turns a Ctrl-C outside ``monitor`` into exit 130 with one line, not a traceback, and
    a closed stdout (``chaperone-otel sql … | head``) into a quiet exit 0, as Unix tools do.

    click itself exits 1 when stdout is a closed pipe; the reader stopping early is how a
    pipe is used, not a failure. A check that has decided its verdict (``stuck`` finding
    runs, ``health`` failing) keeps its exit code: see :func:`verdict`.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:  # --help and --version print while the arguments are parsed
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            _drop_stdout()
            raise click.exceptions.Exit(int(Exit.OK)) from None
        finally:
            _flush_stdout()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                _flush_stdout()  # a closed pipe may only show at the last flush
        except BrokenPipeError:
            _drop_stdout()
            ctx.exit(int(ctx.meta.get(_VERDICT, Exit.OK)))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(int(Exit.INTERRUPTED))
        except SinkError as exc:  # a store failure not caught closer to the query
            raise store_failure(str(exc)) from exc
