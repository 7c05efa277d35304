"""Fixtures for the end-to-end tests: the prometheus/promtool binaries (required under CI=true)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def root_conftest(config: pytest.Config) -> Any:
    """The suite's root conftest module (``require_binary`` lives there)."""
    plugin = config.pluginmanager.get_plugin(str(REPO / "tests" / "conftest.py"))
    assert plugin is not None, "tests/conftest.py is not loaded"
    return plugin


@pytest.fixture
def promtool(request: pytest.FixtureRequest) -> str:
    """Path of promtool: skips locally when missing, fails under CI=true."""
    return str(root_conftest(request.config).require_binary("promtool"))


@pytest.fixture(scope="module")
def prometheus_binary(request: pytest.FixtureRequest) -> str:
    """Path of prometheus: skips locally when missing, fails under CI=true."""
    return str(root_conftest(request.config).require_binary("prometheus"))


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO
