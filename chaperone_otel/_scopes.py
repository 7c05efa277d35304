"""Every query scope, declared once: its name, argument, SQL, CLI flag, HTTP parameter, help.

Four surfaces offer the scopes — the Python API (:class:`~chaperone_otel.sink.JobQuery`
methods), the CLI's filter flags (``chaperone-otel jobs --running --stuck``), the HTTP query
API (``GET /api/jobs?scope=running&name=etl``) and the remote client's replay of a query's
steps on the store's owner. They used to be listed separately and drifted apart; now each is
generated from, or checked against, :data:`SCOPES` (``tests/sink/test_scopes.py``):

* the argument-free scopes (status and health) are generated ``JobQuery`` methods, the
  others are written out there (they validate their argument) under the registry's name;
* the CLI builds one option per scope (:attr:`ScopeSpec.flag`) and applies them in order;
* ``/api/jobs`` accepts ``scope=NAME`` for argument-free scopes and
  :attr:`ScopeSpec.params` for the others;
* :meth:`JobQuery.replay` accepts exactly the step kinds the scopes produce.

A scope adds one *step* to a query; a step is a JSON value (``("status", "running")``,
``("started_between", lo, hi)``). Each step kind has one SQL rendering, in
``sink/_query.py`` (``STEP_SQL``, checked there to cover every kind used here).

This module is layer 2 (it imports only ``_fields`` and ``_health``), so the CLI can build
its flags without loading DuckDB, as the health rules are rendered by the layers above.

Example::

    from chaperone_otel._scopes import SCOPES, scope_named
    scope_named("memory_above").flag      # '--memory-above'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ._fields import STATUSES
from ._health import PREDICATES

Arg = Literal["none", "text", "class", "since", "range", "bytes", "percent"]
"""What a scope takes: nothing; a string; a class or its qualified name; a moment or an age
(``since``); a pair of moments (``range``); a size (``512MiB``); a percentage."""


@dataclass(frozen=True)
class ScopeSpec:
    """One query scope.

    Attributes:
        name: the :class:`~chaperone_otel.sink.JobQuery` method.
        step: the kind of step it adds (how it travels to a remote owner and renders to SQL).
        arg: what it takes (see :data:`Arg`).
        help: one line for people (CLI ``--help``, docstrings of generated methods).
        option: the CLI option and HTTP parameter stem (default: ``name``).
        metavar: the CLI's placeholder for the value.
    """

    name: str
    step: str
    arg: Arg
    help: str
    option: str = ""
    metavar: str = ""

    @property
    def stem(self) -> str:
        return self.option or self.name

    @property
    def flag(self) -> str:
        """The CLI option (``--near-limit``, ``--memory-above``, ``--class``)."""
        return "--" + self.stem.replace("_", "-")

    @property
    def params(self) -> tuple[str, ...]:
        """The HTTP query parameters it reads: ``scope`` (its name as the value) for an
        argument-free scope, ``start``/``end`` for a range, else its stem."""
        if self.arg == "none":
            return ("scope",)
        if self.arg == "range":
            return ("start", "end")
        return (self.stem,)


_STATUS_HELP: Final = {
    "pending": "Runs not started yet.",
    "running": "Runs in progress (including stuck and lost ones: their last word was running).",
    "completed": "Runs that finished successfully.",
    "failed": "Runs that raised.",
    "cancelled": "Runs cancelled (limit policy cancel, task cancellation, interrupt).",
    "retried": "Attempts that ended in a retry (Celery Retry): the framework runs them again.",
}

_HEALTH_HELP: Final = {
    "healthy": "Heartbeat within 1.5 intervals, no limit near, not failed.",
    "degraded": "Heartbeat late (1.5-3 intervals), a resource at 80 % of its limit, or stalled.",
    "unhealthy": "Heartbeat over 3 intervals late, past timeout_at, a limit violated, or failed.",
    "stuck": "Running, process alive, but past timeout_at or heartbeat over 3 intervals late.",
    "lost": "Running, but no record of any kind for 3 intervals (process gone).",
    "stalled": "Running with progress flat past its stall budget.",
    "overtime": "Running past timeout_at.",
    "violated": "Crossed a resource limit.",
    "near_limit": "Running with a resource at or above 80 % of its limit.",
    "heartbeat_missed": "Running with its heartbeat older than one interval.",
}

SCOPES: Final[tuple[ScopeSpec, ...]] = (
    *(ScopeSpec(s, "status", "none", _STATUS_HELP[s]) for s in STATUSES),
    *(ScopeSpec(h, "health", "none", text) for h, text in _HEALTH_HELP.items()),
    ScopeSpec("today", "started_between", "none", "Started since midnight UTC."),
    ScopeSpec("named", "name", "text", "Job name (exact).", "name", "JOB"),
    ScopeSpec("by_class", "class", "class", "Job class / qualified name.", "class", "CLASS"),
    ScopeSpec("on_queue", "queue", "text", "Queue name (exact).", "queue", "QUEUE"),
    ScopeSpec("with_id", "run_id", "text", "Attempts of this run id.", "id", "RUN_ID"),
    ScopeSpec(
        "since",
        "started_between",
        "since",
        "Started since: a duration ago (1h, 7d) or an ISO date/time.",
        metavar="WHEN",
    ),
    ScopeSpec(
        "until",
        "started_between",
        "since",
        "Started before: a duration ago (1h, 7d; 0s: now) or an ISO date/time.",
        metavar="WHEN",
    ),
    ScopeSpec(
        "between",
        "started_between",
        "range",
        "Started in [START, END).",
        metavar="START END",
    ),
    ScopeSpec("memory_above", "memory_above", "bytes", "Memory above, e.g. 512MiB.", "", "SIZE"),
    ScopeSpec("cpu_above", "cpu_above", "percent", "CPU percent above (own CPU only).", "", "PCT"),
    ScopeSpec(
        "was_stuck", "stuck_since", "none", "Were ever stuck: still, or recovered, or ended."
    ),
    ScopeSpec(
        "stuck_since",
        "stuck_since",
        "since",
        "First stuck since: a duration ago (1h, 7d) or an ISO date/time.",
        metavar="WHEN",
    ),
    ScopeSpec(
        "children_of",
        "parent_run_id",
        "text",
        "Runs started inside this run (nested runs).",
        "parent",
        "RUN_ID",
    ),
)
"""Every scope, in the order the CLI lists (and applies) them."""

_BY_NAME: Final[Mapping[str, ScopeSpec]] = {s.name: s for s in SCOPES}

FLAG_SCOPES: Final = tuple(s.name for s in SCOPES if s.arg == "none")
"""Scopes without an argument (``scope=NAME`` over HTTP, a boolean flag in the CLI)."""

STATUS_SCOPES: Final = tuple(s.name for s in SCOPES if s.step == "status")
HEALTH_SCOPES: Final = tuple(s.name for s in SCOPES if s.step == "health")

SHAPING_STEPS: Final = ("order", "limit", "at")
"""Steps that shape a query (sort, cut, evaluation time) rather than filter it."""


def scope_named(name: str) -> ScopeSpec:
    """The scope called ``name``.

    Raises:
        KeyError: no such scope.
    """
    return _BY_NAME[name]


def _check() -> None:
    statuses = set(STATUS_SCOPES)
    if statuses != set(STATUSES):
        raise ValueError(f"status scopes {sorted(statuses)} are not the statuses {STATUSES}")
    unknown = sorted(set(HEALTH_SCOPES) - set(PREDICATES))
    if unknown:
        raise ValueError(f"health scopes without a rule in _health: {unknown}")
    options = [s.stem for s in SCOPES]
    if len(set(options)) != len(options):
        raise ValueError("two scopes share a CLI option / HTTP parameter")


_check()
