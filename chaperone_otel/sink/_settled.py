"""The settled verdict of a finished run: stored once, so scopes judge only live runs.

A finished run's verdict never changes: every rule that reads the clock (heartbeat age,
timeout, stall, loss) is gated on ``status = 'running'``. Judging ``healthy()`` by the whole
rule over every finished run made it the slowest scope (9.6x a ``GROUP BY status`` at 10 M
runs, issue 16). So the store keeps a ``settled_health`` column: the writer computes it when
it stores a row with a terminal status, and the scopes read it for those rows and evaluate
the rule only for the rest (running and pending runs).

Nothing here is a second copy of the rules. The value is the *residual* of the one rule tree
(:func:`chaperone_otel._health.rules`) for each terminal status: :func:`residual` partially
evaluates the tree with only ``status`` known and keeps what is still undecided (for a
completed run, ``violation_count > 0``), and that residual is rendered to SQL by the tree's own
:meth:`~chaperone_otel._health.Expr.sql`. A status whose residual still reads the clock is not
settled (NULL: judged by the full rule), so a future rule that makes a finished run's verdict
time-dependent degrades to the old, slower path instead of storing a wrong answer.

Policy: the residuals of the terminal statuses contain no threshold of
:class:`~chaperone_otel._health.HealthPolicy` (every threshold sits in a running-gated term),
so the column is computed with :data:`~chaperone_otel._health.DEFAULT_POLICY` and is valid
for every policy whose settled SQL is the same text; :func:`settled_usable` checks exactly
that, and a policy for which it differs is judged by the full rule.

Example::

    settle_case(HEALTH_COLUMNS)   # CASE status WHEN 'completed' THEN CASE WHEN ... END
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from .._fields import STATUSES, TERMINAL_STATUSES
from .._health import (
    DEFAULT_POLICY,
    All,
    AnyOf,
    Arith,
    Compare,
    Expr,
    HealthPolicy,
    Not,
    Now,
    Rules,
    SignalValue,
    rules,
)

SETTLED_COLUMN: Final = "settled_health"
"""The ``jobs`` column holding a finished run's verdict (NULL while the run is live)."""

VERDICTS: Final = ("unhealthy", "degraded", "healthy")
"""The verdict predicates, in the order :meth:`Rules.health` tries them."""

Residual = Expr | bool


def residual(
    expr: Expr, known: Mapping[str, SignalValue], facts: Mapping[Expr, bool] | None = None
) -> Residual:
    """``expr`` with the ``known`` signals substituted and every decided term dropped.

    :meth:`Expr.fold` answers only "decided or not" and keeps an undecided node whole; this
    keeps the undecided *rest*: ``All(running, x)`` with ``status = 'completed'`` is
    ``False``, ``AnyOf(failed, violated, All(running, …))`` is ``violated``. Same NULL
    semantics as :meth:`Expr.holds` (a comparison with a missing value is false), so the
    residual holds exactly when ``expr`` does for every row with the known values.

    ``facts`` are sub-trees known to have a value where the residual is used (``unhealthy``
    is false where ``degraded`` is asked, see :func:`status_residual`): they become constants.
    """
    if facts and expr in facts:
        return facts[expr]
    if isinstance(expr, (All, AnyOf)):
        decisive = isinstance(expr, AnyOf)  # OR: a true term decides; AND: a false one
        rest: list[Expr] = []
        for term in expr.terms:
            value = residual(term, known, facts)
            if value is decisive:
                return decisive
            if isinstance(value, Expr):
                rest.append(value)
        if not rest:
            return not decisive
        if len(rest) == 1:
            return rest[0]
        return type(expr)(tuple(rest))
    if isinstance(expr, Not):
        value = residual(expr.term, known, facts)
        return (not value) if isinstance(value, bool) else Not(value)
    folded = expr.fold(known)
    if folded is True or folded is False:
        return folded
    return expr


def reads_clock(expr: Residual) -> bool:
    """True when ``expr`` depends on the evaluation time (contains :class:`Now`)."""
    if isinstance(expr, bool):
        return False
    if isinstance(expr, Now):
        return True
    if isinstance(expr, (All, AnyOf)):
        return any(reads_clock(t) for t in expr.terms)
    if isinstance(expr, Not):
        return reads_clock(expr.term)
    if isinstance(expr, (Arith, Compare)):
        return reads_clock(expr.left) or reads_clock(expr.right)
    return False  # Signal, Const, StatusIs, LeaseRenewed: no clock


def settled_residuals(policy: HealthPolicy = DEFAULT_POLICY) -> dict[str, tuple[Residual, ...]]:
    """Terminal status → the residuals of (unhealthy, degraded, healthy) for its runs,
    for every terminal status whose verdict does not read the clock."""
    r = rules(policy)
    out: dict[str, tuple[Residual, ...]] = {}
    for status in TERMINAL_STATUSES:
        parts = tuple(residual(r.by_name(v), {"status": status}) for v in VERDICTS)
        if not any(reads_clock(p) for p in parts):
            out[status] = parts
    return out


def _verdict_sql(parts: tuple[Residual, ...], columns: Mapping[str, str]) -> str:
    """The first verdict whose residual holds, as SQL (constants folded away)."""
    whens: list[str] = []
    for verdict, part in zip(VERDICTS, parts, strict=True):
        if part is False:
            continue
        if part is True:
            if not whens:
                return f"'{verdict}'"
            return f"CASE {' '.join(whens)} ELSE '{verdict}' END"
        assert isinstance(part, Expr)
        whens.append(f"WHEN COALESCE({part.sql(columns)}, FALSE) THEN '{verdict}'")
    if not whens:
        return "'unknown'"
    return f"CASE {' '.join(whens)} ELSE 'unknown' END"


@functools.lru_cache(maxsize=16)
def _settle_case(policy: HealthPolicy, columns: tuple[tuple[str, str], ...]) -> str:
    mapping = dict(columns)
    arms = " ".join(
        f"WHEN '{status}' THEN {_verdict_sql(parts, mapping)}"
        for status, parts in settled_residuals(policy).items()
    )
    return f"(CASE {mapping['status']} {arms} END)" if arms else "CAST(NULL AS VARCHAR)"


def settle_case(columns: Mapping[str, str], policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """SQL for ``settled_health``: a finished run's verdict, NULL for a live run (or a status
    whose verdict reads the clock). Rendered from the residuals of the one rule tree."""
    return _settle_case(policy, tuple(sorted(columns.items())))


def settled_usable(policy: HealthPolicy, columns: Mapping[str, str]) -> bool:
    """True when the stored column (computed with the default policy) is the verdict under
    ``policy`` too: the settled SQL is the same text (no threshold reaches a finished run)."""
    return policy == DEFAULT_POLICY or settle_case(columns, policy) == settle_case(columns)


def verdict_is_exclusive(r: Rules, name: str) -> bool:
    """True when predicate ``name`` holds exactly when :meth:`Rules.health` gives ``name``,
    checked on the tree's structure: ``degraded`` has ``Not(unhealthy)`` as a top-level term,
    ``healthy`` has both ``Not(unhealthy)`` and ``Not(degraded)`` (so a run matching it is
    judged that way). Only then may a scope read the stored verdict for it."""
    expr = r.by_name(name)
    before = VERDICTS[: VERDICTS.index(name)]
    if not before:
        return True
    terms = expr.terms if isinstance(expr, All) else ()
    return all(Not(r.by_name(b)) in terms for b in before)


def _sql(part: Residual, columns: Mapping[str, str]) -> str:
    if isinstance(part, bool):
        return "TRUE" if part else "FALSE"
    return part.sql(columns)


def status_residual(r: Rules, name: str, status: str | None) -> Residual:
    """Predicate ``name`` for runs with ``status``, as small as the tree allows.

    For a verdict predicate the earlier verdicts' negations come first and are then known
    false (``facts``): ``healthy`` of a running run is ``not unhealthy and not (late, near a
    limit or stalled)`` instead of a tree that asks ``unhealthy`` three times. Equal to the
    predicate because the verdicts are exclusive (:func:`verdict_is_exclusive`).
    """
    known: dict[str, SignalValue] = {"status": status}
    if name not in VERDICTS or not verdict_is_exclusive(r, name):
        return residual(r.by_name(name), known)
    facts: dict[Expr, bool] = {}
    terms: list[Expr] = []
    for verdict in VERDICTS[: VERDICTS.index(name)]:
        part = residual(r.by_name(verdict), known, facts)
        if part is True:
            return False
        if isinstance(part, Expr):
            terms.append(Not(part))
        facts[r.by_name(verdict)] = False
    part = residual(r.by_name(name), known, facts)
    if part is False:
        return False
    if isinstance(part, Expr):
        terms.append(part)
    if not terms:
        return True
    return terms[0] if len(terms) == 1 else All(tuple(terms))


OTHER_STATUS: Final = None
"""The ``status`` a residual is taken with for the ``ELSE`` arm of a per-status ``CASE``: a
NULL status, or one a sender made up. Every :class:`StatusIs` is false for it, in Python
(``None in values``) as in SQL (a NULL or unknown status matches no ``WHEN``)."""


def live_sql(name: str, columns: Mapping[str, str], policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """Predicate ``name`` over runs without a stored verdict: per status, its residual.

    A live run is judged by the rule, but not by the whole tree: with ``status`` known the
    residual drops every status test and every branch that cannot hold
    (:func:`status_residual`), and DuckDB evaluates each arm only on the rows of its status.
    A terminal status (no stored verdict under another policy) and any other status (NULL,
    or one a sender made up: :data:`OTHER_STATUS`) get their residuals too: the whole tree
    once in the ``ELSE`` cost DuckDB ~2 ms to plan per query at any store size.
    """
    r = rules(policy)
    arms = {s: _sql(status_residual(r, name, s), columns) for s in (*STATUSES, OTHER_STATUS)}
    return by_status(columns["status"], arms, where=True)


def by_status(column: str, arms: Mapping[str | None, str], *, where: bool = False) -> str:
    """``CASE`` over ``column`` giving ``arms[status]`` (``arms[OTHER_STATUS]`` for any other
    or NULL status), short: statuses with the same SQL share a ``WHEN … IN``, and those
    equal to the ``ELSE`` have none. In a ``WHERE`` (``where``), one arm with an ``ELSE
    FALSE`` becomes ``status IN (…) AND …``, a conjunction DuckDB pushes into the scan."""
    other = arms[OTHER_STATUS]
    groups: dict[str, list[str]] = {}
    for status in STATUSES:
        if arms[status] != other:
            groups.setdefault(arms[status], []).append(status)
    if not groups:
        return other
    tests = {
        sql: f"{column} IN ({', '.join(repr(s) for s in statuses)})"
        for sql, statuses in groups.items()
    }
    if where and other == "FALSE" and len(groups) == 1:
        ((sql, test),) = tests.items()
        return f"({test} AND {sql})"
    whens = " ".join(f"WHEN {test} THEN {sql}" for sql, test in tests.items())
    return f"(CASE {whens} ELSE {other} END)"


def verdict_parts(r: Rules, status: str | None) -> tuple[Residual, ...]:
    """The residuals of (unhealthy, degraded, healthy) for runs with ``status``, each taken
    with the earlier verdicts known false: the arms of :meth:`Rules.health`'s ordered test,
    as :meth:`Rules.verdict` compiles them for Python."""
    known: dict[str, SignalValue] = {"status": status}
    facts: dict[Expr, bool] = {}
    parts: list[Residual] = []
    for verdict in VERDICTS:
        expr = r.by_name(verdict)
        parts.append(residual(expr, known, facts))
        facts[expr] = False
    return tuple(parts)


def health_by_status(columns: Mapping[str, str], policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """SQL giving :meth:`Rules.health` of a row: ``CASE status`` with, per status, the
    verdict of its residuals (:func:`verdict_parts`). Equal to testing the three whole
    trees in order, and about a third of their size: DuckDB took ~3 ms to plan those for
    every fetch, more than fetching a hundred rows at 10 M runs (issue 16)."""
    r = rules(policy)
    arms = {s: _verdict_sql(verdict_parts(r, s), columns) for s in (*STATUSES, OTHER_STATUS)}
    return by_status(columns["status"], arms)


def scope_parts(
    name: str, columns: Mapping[str, str], policy: HealthPolicy = DEFAULT_POLICY
) -> tuple[str | None, str] | None:
    """A health scope as (stored-verdict part or None, live part), their OR being the
    scope's rows; None when the stored column cannot help (judge every row by the rule).

    The live part is ``settled_health IS NULL AND`` :func:`live_sql`: DuckDB pushes the
    ``IS NULL`` of a one-byte column into the scan and skips every vector of finished runs.
    A predicate false for every finished run (``stuck``, ``degraded`` …) needs only it; a
    verdict predicate that finished runs can match (``healthy``, ``unhealthy``) adds
    ``settled_health = 'name'``; one that depends on a finished run's values in another way
    (``violated``) gets None.
    """
    if not settled_usable(policy, columns):
        return None
    r = rules(policy)
    expr = r.by_name(name)
    finished = [residual(expr, {"status": status}) for status in settled_residuals(policy)]
    live = f"({SETTLED_COLUMN} IS NULL AND {live_sql(name, columns, policy)})"
    if all(part is False for part in finished):
        return None, live
    if name in VERDICTS and verdict_is_exclusive(r, name):
        return f"{SETTLED_COLUMN} = '{name}'", live
    return None
