"""The run's value helpers (``_values``) where the public API cannot reach them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from chaperone_otel._values import was_replaced


class _Racing(Mapping[str, Any]):
    """Metadata the job changes while the monitor compares it (a read raises)."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("dictionary changed size during iteration")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("dictionary changed size during iteration")

    def __len__(self) -> int:
        return 1


def test_was_replaced_compares_by_identity_and_treats_a_race_as_replaced() -> None:
    """Same objects: not replaced; another object, a removed key or a race: replaced."""
    value = [1]
    assert not was_replaced({"a": value}, {"a": value, "b": 2})
    assert not was_replaced({"a": None}, None)  # a removed key was on record as removed
    assert was_replaced({"a": value}, {"a": [1]})
    assert was_replaced({"a": value}, None)
    assert was_replaced({"a": value}, _Racing())
