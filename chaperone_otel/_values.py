"""The values a run handle takes from the job's code, checked and kept: run ids, progress
numbers, metadata (``None`` removes a key). Plain functions of the standard library, so the
hot path (``_run``) and the records (``_record``) share one definition of each."""

from __future__ import annotations

import decimal
import numbers
import random
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn, cast

__all__ = [
    "not_a_mapping",
    "ABSENT",
    "FirstProgress",
    "StuckTime",
    "as_float",
    "checked_progress",
    "new_run_id",
    "present",
    "progress_eta",
    "progress_rate",
    "progress_throughput",
    "replaced",
    "track_total",
    "was_replaced",
]

_random_bits = random.getrandbits
_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC << 60))  # version and variant bits
_UUID_SET: Final = (0x4000 << 64) | (0x8 << 60)  # version 4, RFC 4122 variant


def new_run_id() -> str:
    """A random (version 4) UUID string without a syscall per run.

    ``uuid.uuid4()`` reads ``os.urandom`` (~2.5 us); run ids need uniqueness, not secrecy, so
    122 bits from the ``random`` module (seeded from the OS, reseeded after fork) do.
    """
    h = (_random_bits(128) & _UUID_CLEAR | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


ABSENT: Final = object()


def present(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run's metadata without the keys set to ``None`` (removed); None when empty."""
    if not meta:
        return None
    kept = {k: v for k, v in meta.items() if v is not None}
    return kept or None


def replaced(then: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether a value of ``then`` was since replaced or removed in ``now`` (by identity:
    ``==`` may raise, a numpy array's does)."""
    for key, value in then.items():
        if value is not None and now.get(key, ABSENT) is not value:
            return True
    return False


def was_replaced(then: Mapping[str, Any], now: Mapping[str, Any] | None) -> bool:
    """:func:`replaced`, for a run's live metadata ``now`` (None: none yet): True as well
    when the job changed the dict under us (record the old state then)."""
    try:
        return replaced(then, now or {})
    except RuntimeError:
        return True


def as_float(value: object, what: str) -> float:
    """A progress number as a ``float`` (a ``Decimal``, ``Fraction``, numpy scalar, ``bool``,
    or an int beyond a float's exactness), or a clear error at the caller's line.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is too large for a float.
    """
    if not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise TypeError(
            f"progress {what} must be a real number (int or float), got "
            f"{type(value).__name__} {value!r}"
        )
    try:
        return float(value)
    except (OverflowError, ValueError, decimal.InvalidOperation) as error:
        raise ValueError(f"progress {what} {value!r} is not representable as a float") from error


FirstProgress = tuple[float, float, float]
"""A run's first progress report: (when, overall ratio, current items)."""


def progress_rate(first: FirstProgress | None, ratio: float, now: float) -> float | None:
    """Overall progress per second since the first report (None before two points)."""
    if first is None or now <= first[0]:
        return None
    return (ratio - first[1]) / (now - first[0]) or None


def progress_throughput(
    first: FirstProgress | None, current: float | None, now: float
) -> float | None:
    """Items per second in the current phase since the first report."""
    if first is None or now <= first[0] or current is None:
        return None
    done = current - first[2]
    return done / (now - first[0]) if done > 0 else None


def progress_eta(rate: float | None, ratio: float) -> float | None:
    """Seconds to completion at ``rate`` (None when unknown)."""
    if rate is None or rate <= 0:
        return None
    return max(0.0, (1.0 - ratio) / rate)


def checked_progress(current: object, total: object) -> tuple[float, float]:
    """``report_progress()``'s numbers as plain ``float``/``int``, or the error at the
    caller's line (the hot path calls this only for what its quick checks did not pass).

    Raises:
        TypeError: not real numbers.
        ValueError: negative or NaN, too large for a float, or ``total == 0`` while
            ``current > 0``.
    """
    c = cast(float, current) if current.__class__ in (int, float) else as_float(current, "current")
    t = cast(float, total) if total.__class__ in (int, float) else as_float(total, "total")
    if not (c >= 0 and t >= 0):  # also rejects NaN
        raise ValueError(
            f"report_progress({c!r}, {t!r}): current and total must be non-negative numbers"
        )
    if c > t and t == 0:
        raise ValueError(
            f"report_progress({c!r}, 0): total is 0 but current is not; pass the real total "
            "(or 0, 0 for an empty batch)"
        )
    return c, t


def track_total(iterable: Iterable[Any], total: float | None) -> float | None:
    """The total ``track()`` reports against: ``total`` checked as a progress number, or
    ``len(iterable)`` when not given and the iterable has one (None: unknown).

    Raises:
        TypeError: ``total`` is not a real number.
        ValueError: ``total`` is negative or NaN, or too large for a float.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if total is not None:
        if total.__class__ is not int and total.__class__ is not float:
            total = as_float(total, "total")
        if not total >= 0:
            raise ValueError(f"track(total={total!r}): total must be a non-negative number")
    return total


class StuckTime:
    """When a run first became stuck and how long it has been stuck, all spells added up.

    Created by the monitor the first time it judges the run stuck and kept for the run's
    life (written under the run's lock), so the run's records say it was stuck even after it
    recovered or ended: "which runs got stuck today" needs the history, not the live flag.
    """

    __slots__ = ("entered", "since", "total")

    def __init__(self, now: float) -> None:
        self.since = now  # the first spell's start
        self.total = 0.0  # seconds of the spells that have ended
        self.entered: float | None = now  # the current spell's start, None when not stuck

    def enter(self, now: float) -> None:
        """The run is stuck again (a new spell)."""
        if self.entered is None:
            self.entered = now

    def leave(self, now: float) -> None:
        """The run is no longer stuck (it beat, or it ended)."""
        if self.entered is not None:
            self.total += max(0.0, now - self.entered)
            self.entered = None

    def seconds(self, now: float) -> float:
        """Seconds stuck up to ``now``."""
        entered = self.entered
        return self.total + (max(0.0, now - entered) if entered is not None else 0.0)


def not_a_mapping(metadata: object) -> NoReturn:
    """Refuse metadata that is not a mapping (``heartbeat("alive")``), saying what to pass."""
    raise TypeError(
        f"heartbeat/report_progress metadata must be a mapping, got {metadata!r}: pass "
        "heartbeat({'rows': n}) or heartbeat(rows=n)"
    )
