"""Every ``chaperone-otel`` command the user documentation shows parses as the CLI has it.

The pages' shell blocks (``sh``, ``shell``, ``bash``, ``console``) are where a reader copies
commands from, and where a renamed or removed option goes unnoticed: the Python blocks are
run by ``tests/test_docs_snippets.py``, these were checked by nobody. Each concrete command
line, and each inline code span of the prose that is one, is cut at the shell's pipes, lists
and redirections, split as a shell would, and parsed by the real click command down to its
subcommand, callbacks included (an unknown option, a missing argument or a bad duration
fails); nothing is run. A synopsis (``[...]``, ``<run-id>``, an option's ``PLACEHOLDER``) is
the reference's shape, not a command, and is left out.
"""

from __future__ import annotations

import re
import shlex
import warnings

import click
import pytest

from chaperone_otel.cli import cli
from tests.conftest import REPO

MAINTAINERS = {"architecture.md", "decisions.md", "performance.md"}
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")
                              if p.name not in MAINTAINERS)]
SHELL_FENCE = re.compile(r"^[ \t]*```(?:sh|shell|bash|console)[ \t]*$")
OTHER_FENCE = re.compile(r"^[ \t]*```\S*[ \t]*$")
INLINE = re.compile(r"`(chaperone-otel [^`]+)`")
PLACEHOLDER = re.compile(r"^\[|\]$|^<[^>]+>$|^[A-Z][A-Z_]+$")
"""A synopsis's token: ``[--db PATH]``, ``<run-id>``, ``RUN_ID``: a shape, not a command."""

NOT_COMMANDS = {
    "chaperone-otel jobs/monitor/wait": "prose: three commands named at once",
}
"""Inline spans that name the CLI without being a command line, and why."""


def _segments(text: str) -> list[str]:
    """The ``chaperone-otel`` commands of one shell line: cut at a trailing comment, the
    shell's lists and pipes, and an output redirection."""
    text = re.split(r"\s+#", text.strip().removeprefix("$ "), maxsplit=1)[0]
    parts = (re.split(r"\s>{1,2}\s", part, maxsplit=1)[0].strip()
             for part in re.split(r"\s(?:\|\|?|&&|;)\s", text))
    return [part for part in parts if part.startswith("chaperone-otel ")]


def _commands(page: str) -> list[tuple[int, str, bool]]:
    """``(line, command, whole)`` for each ``chaperone-otel`` command of the page: in its
    shell blocks (``whole``: a line to run as it is), and in its inline code spans outside
    any block (prose that names a command and some of its options, not always all it
    needs: ``chaperone-otel prune`` without its ``--older-than``)."""
    found: list[tuple[int, str, bool]] = []
    fence: str | None = None  # "shell", "other" or None (prose)
    for number, line in enumerate((REPO / page).read_text().splitlines(), 1):
        if fence is None:
            if SHELL_FENCE.match(line):
                fence = "shell"
            elif OTHER_FENCE.match(line):
                fence = "other"
            else:
                found += [(number, span, False) for m in INLINE.finditer(line)
                          for span in _segments(m[1])]
            continue
        if line.strip() == "```":
            fence = None
        elif fence == "shell":
            found += [(number, cmd, True) for cmd in _segments(line)]
    return found


def _is_synopsis(command: str) -> bool:
    return any(PLACEHOLDER.search(token) for token in shlex.split(command))


DOCUMENTED = [(page, n, cmd, whole) for page in PAGES for n, cmd, whole in _commands(page)]


def _parse(args: list[str]) -> list[str]:
    """Parse ``args`` through the command tree as click would run them; the path of
    command names taken (``["jobs"]``, ``["sink", "serve"]``)."""
    ctx = cli.make_context("chaperone-otel", list(args))
    command: click.Command = cli
    names: list[str] = []
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates it; 9 puts all in args
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*getattr(ctx, "protected_args", ()), *ctx.args]
        if not rest:  # a group that runs on its own (`schedules` lists, `schedules forget`)
            if not command.invoke_without_command:
                raise click.UsageError(f"{' '.join(names) or 'chaperone-otel'} needs a command")
            return names
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None
        assert name is not None
        names.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return names


def test_the_pages_show_commands() -> None:
    """The collection finds the commands a reader sees (a guard on the parser above): the
    quick ones of the README and the CLI reference's examples."""
    commands = {cmd for _, _, cmd, _ in DOCUMENTED}
    assert len(DOCUMENTED) >= 20
    assert "chaperone-otel jobs --db jobs.duckdb --failed --since 24h" in commands
    assert "chaperone-otel stuck" in commands  # `chaperone-otel stuck || echo ...`
    assert "chaperone-otel demo" in commands  # README: `pip install ... && chaperone-otel demo`
    assert "chaperone-otel monitor --db jobs.duckdb" in commands  # inline, in the README
    assert set(NOT_COMMANDS) <= commands  # each exception is still on a page
    assert any(c.startswith("chaperone-otel sink serve ") for c in commands)


@pytest.mark.parametrize(
    ("page", "line", "command", "whole"),
    [pytest.param(*d, id=f"{d[0]}:{d[1]}") for d in DOCUMENTED
     if d[2] not in NOT_COMMANDS and not _is_synopsis(d[2])],
)
def test_a_documented_command_parses(page: str, line: int, command: str, whole: bool) -> None:
    """A shell block's line parses whole; a command named in prose must name a command
    that exists, with options it has (what it leaves out may be required)."""
    args = shlex.split(command)[1:]
    try:
        names = _parse(args)
    except click.exceptions.Exit:  # --help / --version: parsed
        return
    except click.MissingParameter as e:
        if whole:
            pytest.fail(f"{page}:{line}: `{command}` does not parse: {e.format_message()}")
        return
    except click.UsageError as e:
        pytest.fail(f"{page}:{line}: `{command}` does not parse: {e.format_message()}")
    assert names, f"{page}:{line}: `{command}` names no command"


def test_a_wrong_option_fails_the_parse() -> None:
    """The check can fail: an option the CLI does not have, a bad duration."""
    with pytest.raises(click.UsageError, match="--no-such-option"):
        _parse(["jobs", "--db", "jobs.duckdb", "--no-such-option"])
    with pytest.raises(click.UsageError):
        _parse(["wait", "--timeout", "fifteen minutes"])
    with pytest.raises(click.UsageError, match="No such command"):
        _parse(["views", "abc"])
    with pytest.raises(click.MissingParameter):  # allowed in prose, not in a block
        _parse(["prune"])
    assert _parse(["sink", "serve", "--db", "x.duckdb"]) == ["sink", "serve"]
