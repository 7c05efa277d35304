"""CLI helpers: ``sql --json`` keeps every column when names repeat (``unique_names``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from chaperone_otel.cli._common import unique_names
from tests.cli._cli_helpers import Recorded, invoke


def test_unique_names_suffixes_repeats_without_clobbering_real_columns() -> None:
    """A repeated name gets the first free _k suffix; an existing n_1 keeps its name."""
    assert unique_names(["a", "b"]) == ["a", "b"]
    assert unique_names(["n", "n", "n"]) == ["n", "n_1", "n_2"]
    assert unique_names(["n", "n", "n_1"]) == ["n", "n_2", "n_1"]


def test_sql_json_keeps_duplicate_column_names(recorded_store: Recorded) -> None:
    """`SELECT 1 AS n, 2 AS n` gives both values in --json (it used to keep only the last)."""
    result = invoke(
        "sql", "SELECT 1 AS n, 2 AS n, 3 AS n", "--db", str(recorded_store.path), "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 1, "n_1": 2, "n_2": 3}]


def test_a_store_that_cannot_load_says_why_and_what_must_import(
    monkeypatch: pytest.MonkeyPatch, recorded_store: Recorded, tmp_path: Path
) -> None:
    """A pyarrow that refuses the environment's numpy (numpy < 2 pinned by another
    package) made every store command say "the job store module is unavailable" and
    ``sink serve`` "not available in this build", as though the install lacked it: exit 3,
    naming the import error and what must import."""
    monkeypatch.setitem(sys.modules, "chaperone_otel.sink", None)
    monkeypatch.setitem(sys.modules, "chaperone_otel.sink._server", None)
    for args in (
        ["jobs", "--db", str(recorded_store.path)],
        ["sink", "serve", "--db", str(tmp_path / "served.duckdb")],
    ):
        result = invoke(*args)
        assert result.exit_code == 3, result.output
        assert "cannot be loaded" in result.output
        assert "duckdb, pyarrow" in result.output
