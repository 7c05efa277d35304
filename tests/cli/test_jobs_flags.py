"""``jobs`` flags a user can combine (review of the CLI): a time window ending now, and sort
options that contradict each other."""

from __future__ import annotations

import json

import pytest

from tests.cli._cli_helpers import Recorded, invoke


@pytest.mark.parametrize(
    "window",
    [
        ("--since", "100000w", "--until", "0s"),
        ("--until", "0"),
        ("--between", "100000w", "0s"),
        ("--between", "2000-01-01", "0m"),
    ],
)
def test_an_upper_bound_of_0s_is_now(recorded_store: Recorded, window: tuple[str, ...]) -> None:
    """``--until 0s`` exited 2 saying "'0s' is neither a duration ago … nor an ISO
    date/time"; it is now, so every recorded run started before it."""
    result = invoke("jobs", "--db", str(recorded_store.path), *window, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 5


@pytest.mark.parametrize("flag", ["--since", "--stuck-since"])
def test_a_lower_bound_of_0s_must_be_more_than_0(recorded_store: Recorded, flag: str) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path), flag, "0s")
    assert result.exit_code == 2, result.output
    assert "must be more than 0" in result.stderr
    assert flag in result.stderr
    assert "neither a duration" not in result.stderr


def test_a_descending_column_with_asc_is_a_usage_error(recorded_store: Recorded) -> None:
    """``--order-by -duration --asc`` sorted descending without a word."""
    result = invoke("jobs", "--db", str(recorded_store.path), "--order-by", "-duration", "--asc")
    assert result.exit_code == 2, result.output
    assert "--order-by -duration" in result.stderr
    assert "--asc" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("flags", "descending"),
    [
        (("--order-by", "-duration"), True),
        (("--order-by", "-duration", "--desc"), True),
        (("--order-by", "duration", "--desc"), True),
        (("--order-by", "duration", "--asc"), False),
        (("--order-by", "duration"), False),
    ],
)
def test_the_sort_directions_that_agree_still_sort(
    recorded_store: Recorded, flags: tuple[str, ...], descending: bool
) -> None:
    result = invoke("jobs", "--db", str(recorded_store.path), *flags, "--json")
    assert result.exit_code == 0, result.output
    durations = [r["duration"] for r in json.loads(result.stdout)]
    assert durations == sorted(durations, reverse=descending)
    assert len(set(durations)) > 1
