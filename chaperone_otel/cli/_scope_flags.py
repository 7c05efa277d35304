"""The CLI's filter flags, one per query scope, generated from the scope registry.

``chaperone-otel jobs --running --stuck --name etl.import`` is
``sink.jobs.running().stuck().named("etl.import")``: each flag is a scope of
:data:`chaperone_otel._scopes.SCOPES`, named by its :attr:`~ScopeSpec.flag`, with the
registry's help text, and applied through the scope's ``JobQuery`` method. A scope added to
the registry is a flag here without an edit (``tests/sink/test_scopes.py`` checks it).

The registry is layer 2, not part of the ``sink`` package: ``--help`` does not load DuckDB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._scopes import SCOPES, ScopeSpec
from ._common import BYTES, SINCE, UNTIL, Exit, fail

if TYPE_CHECKING:
    from ..sink import JobQuery, Sink

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["SCOPES", "apply_scope", "build_query", "scope_option"]


def scope_option(spec: ScopeSpec) -> Callable[[F], F]:
    """The click option of one scope; its value arrives under the scope's name."""
    if spec.arg == "none":
        return click.option(spec.flag, spec.name, is_flag=True, help=spec.help)
    if spec.arg == "range":  # each bound may be 0s, now: --between 2h 0s
        return click.option(
            spec.flag, spec.name, type=UNTIL, nargs=2, metavar=spec.metavar, help=spec.help
        )
    types: dict[str, Any] = {
        "since": UNTIL if spec.name == "until" else SINCE,  # --until 0s: before now
        "bytes": BYTES,
        "percent": click.FloatRange(min=0),
    }
    return click.option(
        spec.flag, spec.name, type=types.get(spec.arg), metavar=spec.metavar, help=spec.help
    )


def apply_scope(query: JobQuery, spec: ScopeSpec, value: Any) -> JobQuery:
    """``query`` with ``spec`` applied if its flag was given (``value`` as click parsed it)."""
    method: Callable[..., JobQuery] = getattr(query, spec.name)
    if spec.arg == "none":
        return method() if value else query
    if value is None:  # the flag was not given
        return query
    if spec.arg in ("text", "class"):
        # Given empty (``--name "$JOB"`` with JOB unset) is the scope's misuse, not "no
        # filter": the scope refuses it, as the Python API and the HTTP API do.
        return method(value)
    if spec.arg == "range":
        return method(*value)
    return method(value)


def build_query(sink: Sink, opts: Mapping[str, Any]) -> JobQuery:
    """The scopes the flags ask for, applied in registry order (they combine with AND).

    Two status flags can never both match a run, so asking for two is a usage error (exit 2)
    rather than an empty answer.
    """
    statuses = [spec for spec in SCOPES if spec.step == "status" and opts.get(spec.name)]
    if len(statuses) > 1:
        fail(
            f"choose one status flag, not {' and '.join(spec.flag for spec in statuses)} "
            "(flags combine with AND, as chained scopes do)",
            Exit.USAGE,
        )
    query = sink.jobs
    for spec in SCOPES:
        query = apply_scope(query, spec, opts.get(spec.name))
    return query
