"""The health rules, defined once and rendered three ways: Python, SQL and PromQL.

DESIGN §5 requires that a scenario gets the same verdict from the live Python evaluator
(local hooks), the DuckDB scopes of the sink and the Prometheus alert rules. So the rules are
written here as a tiny expression tree over named *signals*, and three renderers walk that
tree:

* :meth:`Expr.holds` — Python: the tree is rendered to Python source once and compiled,
  with SQL ``NULL`` semantics (a missing signal makes a comparison false, never an error);
* :meth:`Expr.sql` — a DuckDB predicate, given how each signal is spelled as a column
  expression and with ``$now`` as the evaluation time (epoch seconds);
* :meth:`Expr.promql` — a PromQL filter expression over the worker's live-run gauges
  (names derived from :mod:`chaperone_otel.semconv`).

Signals (all times are Unix seconds, durations seconds):

=====================  =====================================================================
``status``             pending / running / completed / failed / cancelled / retried
``started_at``         when the run started
``last_heartbeat``     latest sign of life from the job's code (heartbeat or progress; the
                       start counts as the first)
``last_seen``          latest record of any kind from the run's process (liveness included)
``lease``              what renews the lease: ``heartbeat`` (absent: the same) or
                       ``liveness``; the heartbeat-age rules read :class:`LeaseRenewed`
``heartbeat_interval`` the run's lease
``timeout_at``         ``started_at + timeout`` (absent without a timeout)
``stall_deadline``     ``progress_updated_at + stall_timeout`` (absent without a stall budget)
``memory`` ...         latest samples, and ``memory_limit`` ... when a limit is set
``cpu``                CPU the run can be charged with: absent while its reading is shared
                       with other live runs (``cpu_scope = shared``, see ``_resources``), so
                       no rendering judges another run's CPU as this run's
``violation_count``    violations recorded so far
=====================  =====================================================================

Example::

    from chaperone_otel._health import DEFAULT_POLICY, rules
    r = rules(DEFAULT_POLICY)
    r.stuck.sql(SQL_COLUMNS)       # a WHERE predicate
    r.stuck.promql()               # an alert expression
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, cast

from . import semconv as sc
from .exceptions import ConfigurationError

Health = Literal["healthy", "degraded", "unhealthy", "unknown"]
"""The judged health of a run. ``unknown`` is a pending run (nothing to judge yet)."""

SignalValue = float | str | None

Folded: TypeAlias = "Expr | float | str | bool | None"
"""What :meth:`Expr.fold` gives: a constant when decided, else a residual expression."""


class _Never:
    """PromQL rendering of a condition that can never hold for a live run (e.g. failed)."""


NEVER: Final = _Never()
PromQL = str | _Never


# --------------------------------------------------------------------------------------------
# Expression tree.
# --------------------------------------------------------------------------------------------


class _Names:
    """Fresh temporary names for the generated Python source (walrus targets).

    With ``status`` set, the source is rendered for runs known to have that status:
    :class:`StatusIs` becomes a constant (see :meth:`Rules.verdict`).
    """

    def __init__(self, status: str | None = None) -> None:
        self._n = 0
        self.status = status

    def __call__(self) -> str:
        self._n += 1
        return f"_t{self._n}"


class Expr:
    """A node of the rule tree. Subclasses implement the three renderings."""

    def python(self, names: _Names) -> str:
        """Python expression source over ``s`` (signals) and ``now`` (NULL semantics)."""
        raise NotImplementedError

    def sql(self, columns: Mapping[str, str]) -> str:
        """DuckDB SQL; ``columns`` maps signal names to SQL expressions in epoch seconds."""
        raise NotImplementedError

    def promql(self) -> PromQL:
        """PromQL over the worker's live-run gauges."""
        raise NotImplementedError

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        """Partial evaluation: this node with the ``known`` signals substituted.

        A fully decided node folds to a constant (``True``/``False`` for a condition, a
        number, a string or ``None`` for a value); one that still depends on an unknown
        signal or on ``now`` folds to itself. The semantics are those of :meth:`holds`
        (NULL: a comparison with ``None`` is false), so a condition that folds to a
        constant is that constant for *every* value of the unknown signals.
        """
        raise NotImplementedError

    @functools.cached_property
    def _compiled(self) -> Callable[[Mapping[str, SignalValue], float], object]:
        # The Python rendering is compiled once: evaluating the tree node by node cost
        # ~40 us per verdict, the generated function ~2 us (it runs at every run's end).
        source = f"def _rule(s, now):\n    return {self.python(_Names())}\n"
        namespace: dict[str, object] = {}
        exec(compile(source, "<chaperone health rule>", "exec"), namespace)  # noqa: S102
        return cast(Callable[[Mapping[str, SignalValue], float], object], namespace["_rule"])

    def holds(self, signals: Mapping[str, SignalValue], now: float) -> bool:
        """True when the condition holds (a missing signal makes it false, as NULL in SQL)."""
        return bool(self._compiled(signals, now))

    def python_source(self) -> str:
        """The generated Python expression (for docs and tests)."""
        return self.python(_Names())


@dataclass(frozen=True)
class Signal(Expr):
    name: str

    def python(self, names: _Names) -> str:
        return f"s.get({self.name!r})"

    def sql(self, columns: Mapping[str, str]) -> str:
        return columns[self.name]

    def promql(self) -> PromQL:
        return _promql_source().signals[self.name]

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return known.get(self.name, self)


@dataclass(frozen=True)
class Now(Expr):
    def python(self, names: _Names) -> str:
        return "now"

    def sql(self, columns: Mapping[str, str]) -> str:
        return "$now"

    def promql(self) -> PromQL:
        return "time()"

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return self


@dataclass(frozen=True)
class Const(Expr):
    value: float

    def python(self, names: _Names) -> str:
        return repr(float(self.value))

    def sql(self, columns: Mapping[str, str]) -> str:
        return repr(float(self.value))

    def promql(self) -> PromQL:
        return repr(float(self.value))

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return float(self.value)


@dataclass(frozen=True)
class Arith(Expr):
    op: Literal["-", "*", "/"]
    left: Expr
    right: Expr

    def python(self, names: _Names) -> str:
        a, b = names(), names()
        result = f"{a} {self.op} {b}"
        if self.op == "/":  # a zero limit means "no limit", as NULLIF in SQL
            result = f"({result} if {b} else None)"
        return (
            f"(None if ({a} := {self.left.python(names)}) is None or "
            f"({b} := {self.right.python(names)}) is None else {result})"
        )

    def sql(self, columns: Mapping[str, str]) -> str:
        right = self.right.sql(columns)
        if self.op == "/":  # NULLIF: a zero limit means "no limit", never a division error
            right = f"NULLIF({right}, 0)"
        return f"({self.left.sql(columns)} {self.op} {right})"

    def promql(self) -> PromQL:
        a, b = self.left.promql(), self.right.promql()
        if isinstance(a, _Never) or isinstance(b, _Never):
            return NEVER
        if self.op == "/" and not isinstance(self.right, Const):
            # A zero limit means "no limit", as in Python and SQL: the filter drops the
            # series (x / 0 is +Inf in PromQL, at or above any ratio).
            b = f"({b} != 0)"
        return f"({a} {self.op} {b})"

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        a, b = self.left.fold(known), self.right.fold(known)
        if a is None or b is None:
            return None
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if self.op == "-":
                return a - b
            if self.op == "*":
                return a * b
            return a / b if b else None
        return self


@dataclass(frozen=True)
class Compare(Expr):
    op: Literal[">", ">=", "<="]
    left: Expr
    right: Expr

    def python(self, names: _Names) -> str:
        a, b = names(), names()
        return (
            f"(False if ({a} := {self.left.python(names)}) is None or "
            f"({b} := {self.right.python(names)}) is None else {a} {self.op} {b})"
        )

    def sql(self, columns: Mapping[str, str]) -> str:
        return f"({self.left.sql(columns)} {self.op} {self.right.sql(columns)})"

    def promql(self) -> PromQL:
        a, b = self.left.promql(), self.right.promql()
        if isinstance(a, _Never) or isinstance(b, _Never):
            return NEVER
        return f"({a} {self.op} {b})"

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        a, b = self.left.fold(known), self.right.fold(known)
        if a is None or b is None:
            return False
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if self.op == ">":
                return a > b
            return a >= b if self.op == ">=" else a <= b
        return self


@dataclass(frozen=True)
class StatusIs(Expr):
    """``status`` is one of ``values``. In PromQL only ``running`` exists (live gauges)."""

    values: tuple[str, ...]

    def python(self, names: _Names) -> str:
        if names.status is not None:  # rendered for a known status: a constant
            return repr(names.status in self.values)
        return f"(s.get('status') in {self.values!r})"

    def sql(self, columns: Mapping[str, str]) -> str:
        quoted = ", ".join("'" + v + "'" for v in self.values)  # internal constants only
        return f"({columns['status']} IN ({quoted}))"

    def promql(self) -> PromQL:
        return _promql_source().universe if "running" in self.values else NEVER

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return known["status"] in self.values if "status" in known else self


@dataclass(frozen=True)
class All(Expr):
    terms: tuple[Expr, ...]

    def python(self, names: _Names) -> str:
        return "(" + " and ".join(t.python(names) for t in self.terms) + ")"

    def sql(self, columns: Mapping[str, str]) -> str:
        return "(" + " AND ".join(t.sql(columns) for t in self.terms) + ")"

    def promql(self) -> PromQL:
        positives: list[str] = []
        negatives: list[str] = []
        for term in self.terms:
            if isinstance(term, Not):
                rendered = term.term.promql()
                if not isinstance(rendered, _Never):
                    negatives.append(rendered)
                continue
            rendered = term.promql()
            if isinstance(rendered, _Never):
                return NEVER
            positives.append(rendered)
        if not positives:
            positives.append(PROMQL_UNIVERSE)
        expr = " and ".join(positives)
        for neg in negatives:
            expr = f"({expr}) unless {neg}"
        return f"({expr})"

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return _fold_junction(self, self.terms, known, decisive=False)


@dataclass(frozen=True)
class AnyOf(Expr):
    terms: tuple[Expr, ...]

    def python(self, names: _Names) -> str:
        return "(" + " or ".join(t.python(names) for t in self.terms) + ")"

    def sql(self, columns: Mapping[str, str]) -> str:
        # COALESCE: a NULL term must not make the whole OR NULL where another term is false.
        return "(" + " OR ".join(f"COALESCE({t.sql(columns)}, FALSE)" for t in self.terms) + ")"

    def promql(self) -> PromQL:
        rendered = [r for r in (t.promql() for t in self.terms) if not isinstance(r, _Never)]
        if not rendered:
            return NEVER
        return "(" + " or ".join(rendered) + ")"

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        return _fold_junction(self, self.terms, known, decisive=True)


@dataclass(frozen=True)
class Not(Expr):
    """Negation; in PromQL it is only allowed as a term of :class:`All` (``unless``)."""

    term: Expr

    def python(self, names: _Names) -> str:
        return f"(not {self.term.python(names)})"

    def sql(self, columns: Mapping[str, str]) -> str:
        return f"(NOT COALESCE({self.term.sql(columns)}, FALSE))"

    def promql(self) -> PromQL:
        raise ValueError("Not() renders to PromQL only inside All() (as 'unless')")

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        value = self.term.fold(known)
        if value is True or value is False:
            return not value
        return self


@dataclass(frozen=True)
class LeaseRenewed(Expr):
    """When the run's lease was last renewed: ``last_heartbeat`` (the job's code) under the
    default heartbeat lease, ``last_seen`` (its process) under ``lease="liveness"``, so a
    run that promises no heartbeats is judged on being alive (stuck only past its timeout,
    lost when silent). In PromQL the last-heartbeat gauge already is this time, the worker's
    and the sink's alike: a liveness-lease run's gauge is the time its process was last seen
    alive."""

    def python(self, names: _Names) -> str:
        return "(s.get('last_seen') if s.get('lease') == 'liveness' else s.get('last_heartbeat'))"

    def sql(self, columns: Mapping[str, str]) -> str:
        return (
            f"(CASE WHEN {columns['lease']} = 'liveness' THEN {columns['last_seen']} "
            f"ELSE {columns['last_heartbeat']} END)"
        )

    def promql(self) -> PromQL:
        return _promql_source().signals["last_heartbeat"]

    def fold(self, known: Mapping[str, SignalValue]) -> Folded:
        if "lease" not in known:
            return self
        chosen = "last_seen" if known["lease"] == "liveness" else "last_heartbeat"
        return known.get(chosen, self)


def _fold_junction(
    expr: Expr, terms: tuple[Expr, ...], known: Mapping[str, SignalValue], *, decisive: bool
) -> Folded:
    """Fold an AND (``decisive=False``: one false term decides) or an OR (``decisive=True``):
    one term folding to ``decisive`` decides; every term folding to the other value decides
    the other; anything else leaves the expression undecided."""
    decided = True
    for term in terms:
        value = term.fold(known)
        if value is decisive:
            return decisive
        if value is not (not decisive):
            decided = False
    return (not decisive) if decided else expr


def _sig(name: str) -> Signal:
    return Signal(name)


# --------------------------------------------------------------------------------------------
# The policy (thresholds) and the rules built from it.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthPolicy:
    """Thresholds of the health rules (DESIGN §5), as multiples of the heartbeat interval.

    Attributes:
        degraded_after: heartbeat age above this many intervals is degraded.
        unhealthy_after: heartbeat age above this many intervals is unhealthy.
        stuck_after: heartbeat age above this many intervals, process alive, is stuck.
        lost_after: no record at all from the process for this many intervals is lost.
        warn_ratio: a resource at or above this fraction of its limit is degraded.
    """

    degraded_after: float = 1.5
    unhealthy_after: float = 3.0
    stuck_after: float = 3.0
    lost_after: float = 3.0
    warn_ratio: float = 0.8

    def __post_init__(self) -> None:
        for name in ("degraded_after", "unhealthy_after", "stuck_after", "lost_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"HealthPolicy.{name} must be a positive number")
        if self.degraded_after > self.unhealthy_after:
            raise ConfigurationError(
                "HealthPolicy.degraded_after must not exceed unhealthy_after "
                f"({self.degraded_after} > {self.unhealthy_after})"
            )
        if not 0 < self.warn_ratio <= 1:
            raise ConfigurationError("HealthPolicy.warn_ratio must be in (0, 1]")


DEFAULT_POLICY: Final = HealthPolicy()


@dataclass(frozen=True)
class Rules:
    """The rule set for one policy: each attribute is an :class:`Expr` predicate."""

    policy: HealthPolicy
    running: Expr
    overtime: Expr
    lost: Expr
    stuck: Expr
    stalled: Expr
    near_limit: Expr
    violated: Expr
    unhealthy: Expr
    degraded: Expr
    healthy: Expr
    heartbeat_missed: Expr = field(repr=False)
    _verdicts: dict[str, Callable[[Mapping[str, SignalValue], float], Health]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _settled: dict[tuple[str, frozenset[str]], Health | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def health(self, signals: Mapping[str, SignalValue], now: float) -> Health:
        """The Python verdict: first of unhealthy, degraded, healthy that holds."""
        if self.unhealthy.holds(signals, now):
            return "unhealthy"
        if self.degraded.holds(signals, now):
            return "degraded"
        if self.healthy.holds(signals, now):
            return "healthy"
        return "unknown"

    def verdict(self, status: str) -> Callable[[Mapping[str, SignalValue], float], Health]:
        """:meth:`health` for runs whose ``status`` is known, as one compiled function.

        The same trees rendered with ``status`` fixed (:class:`StatusIs` becomes a constant,
        so e.g. a finished run never evaluates the heartbeat-age terms, which all require
        ``running``), and the three predicates in one function instead of three calls, the
        healthy one re-evaluating the other two. Every run's end pays for a verdict. Compiled
        once per status (a handful of fixed strings) and policy; ``signals["status"]`` is
        ignored by the result, so callers must pass the run's actual status.
        """
        fn = self._verdicts.get(status)
        if fn is None:
            names = _Names(status)
            source = (
                "def _verdict(s, now):\n"
                f"    if {self.unhealthy.python(names)}:\n        return 'unhealthy'\n"
                f"    if {self.degraded.python(names)}:\n        return 'degraded'\n"
                f"    if {self.healthy.python(names)}:\n        return 'healthy'\n"
                "    return 'unknown'\n"
            )
            namespace: dict[str, object] = {}
            exec(compile(source, "<chaperone health verdict>", "exec"), namespace)  # noqa: S102
            fn = cast(Callable[[Mapping[str, SignalValue], float], Health], namespace["_verdict"])
            self._verdicts[status] = fn  # a race compiles twice, both equal: harmless
        return fn

    def settled(self, status: str, absent: frozenset[str]) -> Health | None:
        """The verdict of every run with ``status``, no violation and the ``absent``
        signals missing, when the rules decide it without looking at anything else.

        Found by folding the same three trees :meth:`verdict` compiles (:meth:`Expr.fold`),
        not by a second copy of the rules: a completed run without limits, timeout or stall
        budget is ``healthy`` whatever its heartbeats and samples were, and a failed run is
        ``unhealthy``. ``None`` when the verdict depends on the run's values (a completed run
        with a memory limit may have ended near it). Cached per (status, absent): the common
        run's end then costs a dict lookup instead of building its signals and judging them.
        """
        key = (status, absent)
        try:
            return self._settled[key]
        except KeyError:
            pass
        known: dict[str, SignalValue] = dict.fromkeys(absent)
        known["status"] = status
        known["violation_count"] = 0.0
        result: Health | None = None
        for verdict, expr in (
            ("unhealthy", self.unhealthy),
            ("degraded", self.degraded),
            ("healthy", self.healthy),
        ):
            value = expr.fold(known)
            if value is True:
                result = cast(Health, verdict)
                break
            if value is not False:  # undecided: the run's values matter
                break
        else:
            result = "unknown"
        self._settled[key] = result  # a race computes twice, both equal: harmless
        return result

    def by_name(self, name: str) -> Expr:
        """The predicate called ``name`` (``stuck``, ``lost``, ``healthy`` …)."""
        if name in PREDICATES:
            expr: Expr = getattr(self, name)
            return expr
        raise KeyError(f"no health predicate {name!r}; choose from {', '.join(PREDICATES)}")


PREDICATES: Final = (
    "running",
    "overtime",
    "lost",
    "stuck",
    "stalled",
    "near_limit",
    "violated",
    "unhealthy",
    "degraded",
    "healthy",
    "heartbeat_missed",
)


def rules(policy: HealthPolicy = DEFAULT_POLICY) -> Rules:
    """Build the rule tree for ``policy``; the only place the rules are written down."""
    running = StatusIs(("running",))
    interval = _sig("heartbeat_interval")
    heartbeat_age = Arith("-", Now(), LeaseRenewed())
    seen_age = Arith("-", Now(), _sig("last_seen"))

    def older_than(age: Expr, k: float) -> Expr:
        return Compare(">", age, Arith("*", Const(k), interval))

    overtime = All((running, Compare(">", Now(), _sig("timeout_at"))))
    lost = All((running, older_than(seen_age, policy.lost_after)))
    process_alive = Compare("<=", seen_age, Arith("*", Const(policy.lost_after), interval))
    stuck = All(
        (
            running,
            process_alive,
            AnyOf(
                (
                    Compare(">", Now(), _sig("timeout_at")),
                    older_than(heartbeat_age, policy.stuck_after),
                )
            ),
        )
    )
    stalled = All((running, Compare(">", Now(), _sig("stall_deadline"))))
    warn = Const(policy.warn_ratio)
    near = AnyOf(
        tuple(
            Compare(">=", Arith("/", _sig(used), _sig(limit)), warn)
            for used, limit in (
                ("memory", "memory_limit"),
                ("cpu", "cpu_limit"),
                ("fds", "fd_limit"),
            )
        )
    )
    # A live state, as stalled and overtime are: a finished run's last sample is no longer
    # near anything (issue 16; it was ungated, so near_limit() listed every finished run
    # whose last sample was high and had to read three column pairs of every stored run).
    near_limit = All((running, near))
    violated = Compare(">", _sig("violation_count"), Const(0))
    unhealthy = AnyOf(
        (
            StatusIs(("failed",)),
            violated,
            All(
                (
                    running,
                    AnyOf(
                        (
                            older_than(heartbeat_age, policy.unhealthy_after),
                            Compare(">", Now(), _sig("timeout_at")),
                        )
                    ),
                )
            ),
        )
    )
    degraded = All(
        (
            running,
            Not(unhealthy),
            AnyOf((older_than(heartbeat_age, policy.degraded_after), near, stalled)),
        )
    )
    healthy = All(
        (
            StatusIs(("running", "completed", "cancelled", "retried")),
            Not(unhealthy),
            Not(degraded),
        )
    )
    heartbeat_missed = All((running, older_than(heartbeat_age, 1.0)))
    return Rules(
        policy=policy,
        running=running,
        overtime=overtime,
        lost=lost,
        stuck=stuck,
        stalled=stalled,
        near_limit=near_limit,
        violated=violated,
        unhealthy=unhealthy,
        degraded=degraded,
        healthy=healthy,
        heartbeat_missed=heartbeat_missed,
    )


# --------------------------------------------------------------------------------------------
# PromQL signal mapping: the worker's live-run gauges (one series per live run group).
# --------------------------------------------------------------------------------------------

PROMQL_UNIVERSE: Final = sc.prometheus_name(sc.METRIC_JOB_LAST_HEARTBEAT)
"""Every live run has this series; it stands for ``status == running``."""

SIGNAL_GAUGES: Final[Mapping[str, sc.MetricSpec]] = {
    "last_heartbeat": sc.METRIC_JOB_LAST_HEARTBEAT,
    "started_at": sc.METRIC_JOB_STARTED_TIMESTAMP,
    "heartbeat_interval": sc.METRIC_JOB_HEARTBEAT_INTERVAL,
    "timeout_at": sc.METRIC_JOB_DEADLINE,
    "stall_deadline": sc.METRIC_JOB_STALL_DEADLINE,
    "memory": sc.METRIC_JOB_MEMORY,
    "memory_limit": sc.METRIC_JOB_MEMORY_LIMIT,
    "cpu": sc.METRIC_JOB_CPU,
    "cpu_limit": sc.METRIC_JOB_CPU_LIMIT,
    "fds": sc.METRIC_JOB_OPEN_FDS,
    "fd_limit": sc.METRIC_JOB_FD_LIMIT,
    "violation_count": sc.METRIC_JOB_RUN_VIOLATIONS,
}
"""The worker gauge that carries each health signal (alert rules and their tests use it)."""

PROMQL_SIGNALS: Final[Mapping[str, PromQL]] = {
    **{signal: spec.prometheus for signal, spec in SIGNAL_GAUGES.items()},
    # The scrape time of a live series is the last time its process was seen alive.
    "last_seen": f"timestamp({sc.prometheus_name(sc.METRIC_JOB_LAST_HEARTBEAT)})",
    "status": NEVER,
}


# --------------------------------------------------------------------------------------------
# PromQL sources: the same rules over the worker's gauges or over the sink's (issue 14).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromQLSource:
    """Where the PromQL rendering reads the signals.

    Attributes:
        name: ``worker`` (each worker's ``/metrics``) or ``sink`` (the sink's fleet
            ``/metrics``, computed from the store).
        universe: a series every live run group has; it stands for ``status == running``.
        signals: the PromQL of each signal.
    """

    name: str
    universe: str
    signals: Mapping[str, PromQL]


WORKER_SOURCE: Final = PromQLSource("worker", PROMQL_UNIVERSE, PROMQL_SIGNALS)

SINK_SIGNAL_GAUGES: Final[Mapping[str, sc.MetricSpec]] = {
    "last_heartbeat": sc.METRIC_SINK_RUN_LAST_HEARTBEAT,
    "last_seen": sc.METRIC_SINK_RUN_LAST_SEEN,
    "started_at": sc.METRIC_SINK_RUN_STARTED_TIMESTAMP,
    "heartbeat_interval": sc.METRIC_SINK_RUN_HEARTBEAT_INTERVAL,
    "timeout_at": sc.METRIC_SINK_RUN_DEADLINE,
    "stall_deadline": sc.METRIC_SINK_RUN_STALL_DEADLINE,
    "memory": sc.METRIC_SINK_RUN_MEMORY,
    "memory_limit": sc.METRIC_SINK_RUN_MEMORY_LIMIT,
    "cpu": sc.METRIC_SINK_RUN_CPU,
    "cpu_limit": sc.METRIC_SINK_RUN_CPU_LIMIT,
    "fds": sc.METRIC_SINK_RUN_OPEN_FDS,
    "fd_limit": sc.METRIC_SINK_RUN_FD_LIMIT,
    "violation_count": sc.METRIC_SINK_RUN_VIOLATIONS,
}
"""The sink gauge that carries each health signal. Unlike the worker, the sink outlives the
runs it reports, so ``last_seen`` is a gauge of its own (not the scrape time)."""

SINK_SOURCE: Final = PromQLSource(
    "sink",
    sc.METRIC_SINK_RUN_ACTIVE.prometheus,
    {**{k: spec.prometheus for k, spec in SINK_SIGNAL_GAUGES.items()}, "status": NEVER},
)
SOURCES: Final[Mapping[str, PromQLSource]] = {"worker": WORKER_SOURCE, "sink": SINK_SOURCE}

_PROMQL_SOURCE: contextvars.ContextVar[PromQLSource | None] = contextvars.ContextVar(
    "chaperone_promql_source", default=None
)


def _promql_source() -> PromQLSource:
    return _PROMQL_SOURCE.get() or WORKER_SOURCE


def promql(expr: Expr, source: str = "worker") -> PromQL:
    """``expr`` rendered to PromQL over the series of ``source`` (``worker`` or ``sink``):
    the same tree, only the signal names differ (:meth:`Expr.promql` is the worker's)."""
    token = _PROMQL_SOURCE.set(SOURCES[source])
    try:
        return expr.promql()
    finally:
        _PROMQL_SOURCE.reset(token)
