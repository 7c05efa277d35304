"""Shared fixtures: swallowed internal errors fail tests; every test starts unconfigured; the
prometheus/promtool binaries (required under CI=true) and the repository root. Also: the
inner loop (``-m "not slow"``) runs on every core."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import chaperone_otel
from chaperone_otel._safety import reset_internal_errors, set_raise_internal_errors

REPO = Path(__file__).resolve().parents[1]

INNER_LOOP = "not slow"
"""The marker expression of the inner loop (README, "Two commands")."""


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run the inner loop (``pytest -m "not slow"``) on every core, as ``-n auto`` would.

    Its ~1,200 tests are CPU spread thin (a store opened here, a CLI call there), so the
    only lever left for a fast loop is the other cores (issue 9 item 9). Only that exact
    selection, only when ``-n`` is not given (``-n 0`` runs it serially), never under
    ``--pdb`` and never inside an xdist worker. The whole suite runs serially unless asked
    (CI asks: ``.ci/run`` passes ``-n auto``): its real workers, servers and timing tests
    are written for a machine that is otherwise quiet, which two of them side by side on
    two cores still are, and a developer's machine may not be.
    """
    option = config.option
    if (
        getattr(option, "numprocesses", 0) is None
        and option.markexpr == INNER_LOOP
        and not option.usepdb
        and not hasattr(config, "workerinput")
    ):
        option.numprocesses = "auto"  # xdist's own hook (tryfirst, called after this) resolves it


@pytest.fixture(autouse=True)
def _raise_internal_errors() -> Iterator[None]:
    """Errors chaperone-otel would swallow in production fail the test (STYLE §4.2)."""
    old = set_raise_internal_errors(True)
    try:
        yield
    finally:
        set_raise_internal_errors(old)
        chaperone_otel.reset()
        reset_internal_errors()


def require_binary(name: str) -> str:
    """Path of a binary; skip without it locally, fail under CI=true (STYLE amendment)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true (Debian package 'prometheus')")
        pytest.skip(f"{name} not installed (apt-get install --no-install-recommends prometheus)")
    return path


@pytest.fixture
def promtool() -> str:
    """Path of promtool: skips locally when missing, fails under CI=true."""
    return require_binary("promtool")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Path of prometheus: skips locally when missing, fails under CI=true."""
    return require_binary("prometheus")


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO
