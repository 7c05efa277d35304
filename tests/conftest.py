"""Shared fixtures: swallowed internal errors fail tests; every test starts unconfigured; the
prometheus/promtool binaries (required under CI=true) and the repository root. Compiled
modules are cached outside the tree even where PYTHONDONTWRITEBYTECODE=1 is set."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import chaperone_otel  # already imported: the package's pytest plugin (chaperone_otel.testing)
from chaperone_otel._safety import reset_internal_errors, set_raise_internal_errors


def _cache_compiled_modules() -> None:
    """With PYTHONDONTWRITEBYTECODE=1 (set on this project's development machines) every run
    compiled the package and rewrote the asserts of every test module again: ~2.5 s of CPU
    per run. The compiled files go to this user's cache instead (``sys.pycache_prefix``,
    ``~/.cache/chaperone-otel/pycache``), so the tree stays free of ``__pycache__`` as that
    setting wants. Python and pytest check each cached file against its source's mtime and
    size. Off under CI=true (a fresh clone each time) or with CHAPERONE_OTEL_TEST_PYCACHE=0;
    an explicit PYTHONPYCACHEPREFIX is used as given."""
    if not sys.dont_write_bytecode or os.environ.get("CI") == "true":
        return
    if os.environ.get("CHAPERONE_OTEL_TEST_PYCACHE") == "0":
        return
    if sys.pycache_prefix is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        sys.pycache_prefix = os.path.join(base, "chaperone-otel", "pycache")
    sys.dont_write_bytecode = False


_cache_compiled_modules()  # before the test modules are collected (they are rewritten then)

REPO = Path(__file__).resolve().parents[1]


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
