"""The shape both store queries share: immutable steps, an evaluation time, bound SQL values.

:class:`~chaperone_otel.sink.JobQuery` (runs) and :class:`~chaperone_otel.sink.ScheduleQuery`
(schedule slots) are lazy in the same way: a scope returns a new query with one more *step*,
``at()`` fixes the evaluation time, ``since()``/``today()`` add a time window measured back
from it, and SQL is built with every value bound. A window given as an age (``since("1h")``,
``today()``) stays relative in its step (:data:`Bound`) until the query renders, so it is
measured from the query's final evaluation time whichever side of ``at()`` it was added on,
and a remote owner replaying the steps measures it from its own clock (or the ``at()``).
That shape is written once here, so the two queries cannot drift in how they read a moment
or an age (they did: two ``_to_epoch`` with different checks). What each query filters and
returns stays in its own module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Final, Generic, TypeVar

from .._units import EPOCH_MAX, EPOCH_MIN, parse_duration, parse_iso_datetime
from ..exceptions import ConfigurationError

Step = tuple[Any, ...]

Bound = float | dict[str, Any] | None
"""One end of a time window in a step: ``None`` (open), Unix seconds, or a moment relative to
the evaluation time, resolved by :func:`resolve_bound` when the query renders: ``{"ago":
seconds}`` (``since("1h")``) or ``{"today": True}`` (midnight UTC of the evaluation day)."""

_AGE_MAX: Final = EPOCH_MAX - EPOCH_MIN
"""An age longer than the calendar reaches before the year 1 from any evaluation time."""

_S = TypeVar("_S")
_Q = TypeVar("_Q", bound="StepQuery[Any]")


class SqlBuilder:
    """Accumulates WHERE clauses with uniquely named, bound parameters."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "$" + name

    def add(self, clause: str) -> None:
        self.where.append(clause)

    def where_clause(self) -> str:
        """`` WHERE a AND b`` of the clauses added, or ``""`` when there are none."""
        return f" WHERE {' AND '.join(self.where)}" if self.where else ""


def in_range(seconds: float, what: str) -> float:
    """``seconds`` if a datetime can hold it, else a ConfigurationError (it was an
    ``OverflowError`` when the query ran)."""
    if not EPOCH_MIN <= seconds <= EPOCH_MAX:
        raise ConfigurationError(f"{what}={seconds!r} is outside the years 1 to 9999")
    return seconds


def to_epoch(value: Any, what: str) -> float:
    """datetime (naive = UTC) / epoch number / ISO string → epoch seconds."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a datetime, not a bool")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what} must be finite")
        return in_range(float(value), what)
    if isinstance(value, str):
        try:
            value = parse_iso_datetime(value)
        except ValueError as e:
            raise ConfigurationError(
                f"{what}={value!r} is not a time: use a datetime, Unix seconds or ISO 8601"
            ) from e
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    raise ConfigurationError(f"{what}={value!r} is not a time: use a datetime or Unix seconds")


def relative_bound(value: Any, what: str) -> dict[str, Any]:
    """A relative :data:`Bound` as a step holds it (validated: it may come over the wire)."""
    if isinstance(value, dict):
        if value == {"today": True}:
            return {"today": True}
        age = value.get("ago") if len(value) == 1 else None
        if isinstance(age, (int, float)) and not isinstance(age, bool):
            if not (math.isfinite(age) and age >= 0):  # 0: the evaluation time itself
                raise ConfigurationError(f"{what} must be a duration of 0 or more, got {age!r}")
            if age > _AGE_MAX:
                raise ConfigurationError(f"{what}: an age of {age:g} s reaches before the year 1")
            return {"ago": float(age)}
    raise ConfigurationError(f"{what}={value!r} is not a relative time")


def step_bound(value: Any, what: str) -> Bound:
    """A :data:`Bound` received in a step (a remote query's), validated."""
    if value is None:
        return None
    if isinstance(value, dict):
        return relative_bound(value, what)
    return to_epoch(value, what)


def resolve_bound(bound: Bound, now: float, what: str) -> float | None:
    """``bound`` as Unix seconds, a relative one measured from the evaluation time ``now``."""
    if bound is None or not isinstance(bound, dict):
        return bound
    if "today" in bound:
        day = datetime.fromtimestamp(now, timezone.utc)
        return day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    moment = now - float(bound["ago"])
    if moment < EPOCH_MIN:
        raise ConfigurationError(f"{what}: an age of {bound['ago']:g} s reaches before the year 1")
    return moment


class StepQuery(Generic[_S]):
    """An immutable, lazy query: ``sink`` answers it, ``steps`` say what it selects.

    A subclass names the step kind of its time window (:attr:`_WINDOW`: a run's start, a
    slot's due time) and builds a new query of its own kind in :meth:`_with`.

    Args:
        sink: where terminals run.
        steps: the scopes so far (JSON values).
        clock: Unix-seconds clock for relative scopes and the default evaluation time.
    """

    __slots__ = ("_clock", "_sink", "_steps")

    _WINDOW: ClassVar[str]
    """The step kind ``since()`` and ``today()`` add, as ``(kind, lo, hi)``."""

    def __init__(
        self, sink: _S, steps: tuple[Step, ...] = (), *, clock: Callable[[], float] = time.time
    ) -> None:
        self._sink = sink
        self._steps = steps
        self._clock = clock

    def _with(self: _Q, *step: Any) -> _Q:
        """A new query of the same kind with one more step."""
        raise NotImplementedError

    @property
    def steps(self) -> tuple[Step, ...]:
        """The scopes of this query as JSON-ready tuples (for a remote sink)."""
        return self._steps

    @property
    def now(self) -> float:
        """The evaluation time in Unix seconds (``at()`` if set, else the clock now)."""
        for step in reversed(self._steps):
            if step[0] == "at":
                return float(step[1])
        return float(self._clock())

    _RELATIVE: ClassVar[frozenset[str]] = frozenset()
    """Step kinds whose values after the kind are :data:`Bound` s (besides :attr:`_WINDOW`)."""

    def _moment(
        self, when: datetime | timedelta | str | float, what: str, *, zero_is_now: bool = False
    ) -> Bound:
        """A datetime or ISO text as epoch seconds; an age (back from the evaluation time,
        whenever that is fixed) as a relative :data:`Bound`.

        An age of 0 is the evaluation time itself: an upper bound (``until(0)``, "started
        before now") takes it when ``zero_is_now``; a lower bound refuses it, as nothing
        has started since now."""
        if isinstance(when, datetime):
            return to_epoch(when, what)
        try:
            age = parse_duration(when, what=what, allow_zero=True)
        except ConfigurationError:
            if isinstance(when, str):
                return to_epoch(when, what)
            raise
        if age == 0 and not zero_is_now:
            raise ConfigurationError(
                f"{what}={when!r} must be more than 0: an age back from now, such as '1h' (0 "
                "would be now itself)"
            )
        return relative_bound({"ago": age}, what)

    def _resolved_steps(self, now: float) -> tuple[Step, ...]:
        """:attr:`steps` with every relative :data:`Bound` measured from ``now``, the
        query's :attr:`now` read once for the whole rendering (what the SQL renders: the
        order of ``at()`` in the chain does not matter; the bounds and ``$now`` agree)."""
        out: list[Step] = []
        for step in self._steps:
            if step[0] == self._WINDOW:
                lo = resolve_bound(step[1], now, "since")
                out.append((step[0], lo, resolve_bound(step[2], now, "until")))
            elif step[0] in self._RELATIVE:
                out.append((step[0], resolve_bound(step[1], now, step[0])))
            else:
                out.append(step)
        return tuple(out)

    def since(self: _Q, when: datetime | timedelta | str | float) -> _Q:
        """Rows since ``when`` (runs by start, slots by due time): a datetime, or an age
        (``timedelta``, ``"1h"``, ``"30d"``, seconds) measured back from the query's
        evaluation time (``at()``, wherever it is in the chain, else the clock when the
        query runs)."""
        return self._with(self._WINDOW, self._moment(when, "since"), None)

    def today(self: _Q) -> _Q:
        """Rows since midnight UTC of the evaluation day (runs by start, slots by due time;
        the day of ``at()`` wherever it is in the chain, else of the clock when the query
        runs)."""
        return self._with(self._WINDOW, {"today": True}, None)

    def at(self: _Q, when: datetime | float) -> _Q:
        """Judge as of ``when`` instead of now (tests, post-mortems)."""
        return self._with("at", to_epoch(when, "at"))
