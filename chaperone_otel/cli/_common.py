"""What every command shares: exit codes, the store option, value parsing, clean errors.

Every failure a user can cause (a missing store, a bad flag value, SQL that writes) ends as
one line on stderr and a documented exit code, never a traceback. The codes are part of the
CLI's contract, because cron jobs and deployment scripts branch on them (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from .._units import parse_bytes, parse_duration, parse_iso_datetime
from ..exceptions import ChaperoneError, ConfigurationError, SinkError

if TYPE_CHECKING:
    from ..sink import Sink

ENV_SINK = "CHAPERONE_OTEL_SINK"
"""The same environment variable ``configure()`` reads for the store path."""

TOKEN_ENV = "CHAPERONE_OTEL_SINK_TOKEN"  # noqa: S105 - a variable name, not a secret
"""The sink server's bearer token (the same variable the remote client reads, kept here so
that the CLI does not import the sink to name it)."""


class Exit(IntEnum):
    """Exit codes of every ``chaperone-otel`` command (documented in docs/cli.md)."""

    OK = 0
    FINDINGS = 1
    """The check found something: stuck or unhealthy runs, ``wait`` timed out, no such run."""
    USAGE = 2
    """Bad flags or values, SQL that writes or does not parse (click's own usage code)."""
    STORE = 3
    """The store is missing, unreadable, of an incompatible version, or unreachable."""
    INTERRUPTED = 130
    """Ctrl-C in a command that was waiting (``wait``, ``demo``); ``monitor`` exits 0."""


class CliFailure(click.ClickException):
    """A clean failure: one ``error: ...`` line on stderr and a documented exit code."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _FindingsFailure(CliFailure):
    exit_code = int(Exit.FINDINGS)


class _UsageFailure(CliFailure):
    exit_code = int(Exit.USAGE)


class _StoreFailure(CliFailure):
    exit_code = int(Exit.STORE)


_FAILURES: dict[Exit, type[CliFailure]] = {
    Exit.FINDINGS: _FindingsFailure,
    Exit.USAGE: _UsageFailure,
    Exit.STORE: _StoreFailure,
}


def fail(message: str, code: Exit) -> NoReturn:
    """Stop the command with ``message`` on stderr and exit code ``code``."""
    raise _FAILURES[code](message)


def store_failure(message: str) -> CliFailure:
    """The exception :func:`fail` raises for a store problem (for ``raise ... from``)."""
    return _StoreFailure(message)


# --------------------------------------------------------------------------------------------
# Finding and opening the store.
# --------------------------------------------------------------------------------------------


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def store_target(db: str | None, url: str | None) -> str:
    """The path or URL a command should open: ``--url`` > ``--db`` > ``$CHAPERONE_OTEL_SINK``.

    A missing *file* is a store problem (exit 3) caught here, before DuckDB would create an
    empty database or fail with a lower-level message.
    """
    if url:
        if not _is_url(url):
            fail(f"--url {url!r} is not an http:// URL (e.g. http://127.0.0.1:8080)", Exit.USAGE)
        return url
    target = db or os.environ.get(ENV_SINK)
    if not target:
        fail(
            "no store given: pass --db PATH (a DuckDB file written by configure(sink=PATH)), "
            f"set {ENV_SINK}, or --url http://HOST:PORT of a running owner. "
            "No store yet? `chaperone-otel demo` makes one.",
            Exit.USAGE,
        )
    if _is_url(target):
        return target
    path = Path(target).expanduser()
    if path.is_dir():
        fail(f"{path} is a directory, not a DuckDB store file", Exit.STORE)
    if not path.exists():
        fail(
            f"no store at {path}: nothing has been recorded there yet "
            f"(configure(sink={str(path)!r}) in your app, or `chaperone-otel demo --db {path}`)",
            Exit.STORE,
        )
    return str(path)


LOADS: Final = "duckdb, pyarrow and what they import must import in this environment"
"""Why a store command's modules may not load (a pyarrow that refuses the installed numpy)."""


@contextlib.contextmanager
def open_store(target: str, *, read_only: bool = True) -> Iterator[Sink]:
    """Open the store, turning every failure to open it into a clean exit 3."""
    try:
        from ..sink import open_sink  # noqa: PLC0415 - duckdb loads only for store commands
    except ImportError as exc:  # the sink package is not installed/built yet
        fail(f"the job store cannot be loaded: {exc} ({LOADS})", Exit.STORE)
    try:
        sink = open_sink(target, read_only=read_only)
    except ChaperoneError as exc:
        fail(f"cannot open store {target}: {exc}", Exit.STORE)
    except OSError as exc:
        fail(f"cannot open store {target}: {exc}", Exit.STORE)
    except Exception as exc:  # duckdb's own errors (corrupt file, not a database …)
        fail(f"cannot open store {target}: {type(exc).__name__}: {exc}", Exit.STORE)
    try:
        yield sink
    finally:
        with contextlib.suppress(Exception):
            sink.close()


T = TypeVar("T")


def query(what: str, fn: Callable[[], T]) -> T:
    """Run a query against an open store; store failures exit 3, bad requests exit 2."""
    try:
        return fn()
    except (ConfigurationError, ValueError) as exc:
        fail(f"{what}: {exc}", Exit.USAGE)
    except SinkError as exc:
        fail(f"{what}: {exc}", Exit.STORE)
    except OSError as exc:
        fail(f"{what}: the store is unreachable: {exc}", Exit.STORE)


# --------------------------------------------------------------------------------------------
# Value parsing (click parameter types: bad values exit 2 with click's usage message).
# --------------------------------------------------------------------------------------------


class DurationType(click.ParamType):  # type: ignore[type-arg]
    """``90s``, ``5m``, ``2h``, ``30d``, ``1w`` or plain seconds → seconds (float)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            seconds = parse_duration(
                str(value), what=param.name if param and param.name else "value"
            )
        except ConfigurationError as e:
            if "positive" in str(
                e
            ):  # well formed, but 0 or negative: say that, not "not a duration"
                self.fail(
                    f"{value!r} is not more than 0; give a positive duration such as 90s, 2h "
                    "or 30d",
                    param,
                    ctx,
                )
            self.fail(
                f"{value!r} is not a duration; use e.g. 90s, 15m, 2h, 30d (or seconds)",
                param,
                ctx,
            )
        if _ago(seconds) is None:
            self.fail(_too_long(value), param, ctx)
        return seconds


def _ago(seconds: float) -> datetime | None:
    """The moment ``seconds`` before now, or None when no ``datetime`` can hold it.

    Every duration ends up as a ``timedelta`` subtracted from now (``--since``, ``prune``'s
    cutoff); one past the calendar's start (year 1) would end in an ``OverflowError``
    traceback instead of a usage error.
    """
    try:
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    except OverflowError:
        return None


def _too_long(value: Any) -> str:
    years = (datetime.now(timezone.utc) - datetime.min.replace(tzinfo=timezone.utc)).days // 365
    return f"{value!r} is too long a duration (at most about {years} years)"


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}")


class SinceType(click.ParamType):  # type: ignore[type-arg]
    """A moment: a duration ago (``1h``, ``30d``) or an ISO date/time (UTC unless given).

    ``zero_is_now``: a duration of 0 (``0s``, ``0``) is now, for an upper bound
    (``--until 0s``: started before now). A lower bound refuses it (nothing started since
    now), saying it must be more than 0.
    """

    name = "since"

    def __init__(self, *, zero_is_now: bool = False) -> None:
        self.zero_is_now = zero_is_now

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if _ISO.match(text):
            try:
                moment = parse_iso_datetime(text)
            except ValueError:
                self.fail(f"{value!r} is not an ISO date/time (e.g. 2024-05-01T12:00)", param, ctx)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment
        try:
            seconds = parse_duration(text, what="since", allow_zero=True)
        except ConfigurationError:
            self.fail(
                f"{value!r} is neither a duration ago (30m, 1h, 7d) nor an ISO date/time "
                "(2024-05-01 or 2024-05-01T12:00:00Z)",
                param,
                ctx,
            )
        if seconds == 0 and not self.zero_is_now:
            self.fail(
                f"{value!r} must be more than 0: a duration ago (30m, 1h, 7d; 0 would be now "
                "itself) or an ISO date/time",
                param,
                ctx,
            )
        ago = _ago(seconds)
        if ago is None:
            self.fail(_too_long(value), param, ctx)
        return ago


class BytesType(click.ParamType):  # type: ignore[type-arg]
    """``512MiB``, ``2GB`` or plain bytes → bytes (int)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(str(value), what="size")
        except ConfigurationError:
            self.fail(f"{value!r} is not a size; use e.g. 512MiB, 2GB or bytes", param, ctx)


DURATION = DurationType()
SINCE = SinceType()
UNTIL = SinceType(zero_is_now=True)
BYTES = BytesType()


# --------------------------------------------------------------------------------------------
# Output helpers.
# --------------------------------------------------------------------------------------------


def json_default(value: Any) -> Any:
    """JSON for the values records carry (datetimes as ISO 8601 UTC, sets as lists).

    A naive datetime is UTC: DuckDB returns ``TIMESTAMP`` values naive in UTC, and reading
    them as local time would shift them by the machine's offset.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with every NaN/infinite float (at any depth) replaced by None.

    ``json.dumps`` would write them as ``NaN``/``Infinity``, which is not JSON (RFC 8259):
    ``JSON.parse``, Go and serde reject the whole document. Values ``json_default`` converts
    come back through here too, so a record's own non-finite floats become ``null``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_finite(v) for v in value]
    return value


def dump_json(data: Any) -> None:
    """Print ``data`` as indented, strict JSON to stdout (non-finite floats as ``null``)."""
    click.echo(
        json.dumps(
            _finite(data),
            default=lambda v: _finite(json_default(v)),
            indent=2,
            sort_keys=False,
            allow_nan=False,
        )
    )


def unique_names(columns: list[str]) -> list[str]:
    """Column names made unique for JSON objects: a repeated name gets the first free
    ``_1``, ``_2`` … suffix (DuckDB's own naming of duplicate columns in a subquery), never
    one that another column already has, so every value of a row keeps a key."""
    taken = set(columns)
    seen: set[str] = set()
    out: list[str] = []
    for column in columns:
        name = column
        if name in seen:
            k = 1
            while f"{column}_{k}" in taken:
                k += 1
            name = f"{column}_{k}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def stdout_is_terminal() -> bool:
    """True when a person is probably watching (colour, live views)."""
    return sys.stdout.isatty()
