"""The values a run handle takes from the job's code, checked and kept: run ids, progress
numbers, metadata (``None`` removes a key). Plain functions of the standard library, so the
hot path (``_run``) and the records (``_record``) share one definition of each."""

from __future__ import annotations

import decimal
import numbers
import random
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["ABSENT", "as_float", "new_run_id", "present", "replaced"]

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
