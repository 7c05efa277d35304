"""The inner loop (``pytest -m "not slow"``) runs on every core; everything else stays serial.

The hook is ``tests/conftest.py::pytest_cmdline_main``. Each case runs a real pytest in a
subprocess over one small module and reads whether xdist brought up workers.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _pytest(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_units.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_inner_loop_runs_on_xdist_workers() -> None:
    assert "bringing up nodes" in _pytest("-m", "not slow")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("-m", "not slow", "-n", "0"), id="-n 0"),
        pytest.param((), id="whole suite"),
        pytest.param(("-m", "not prometheus"), id="another selection"),
    ],
)
def test_anything_else_runs_serially(args: tuple[str, ...]) -> None:
    assert "bringing up nodes" not in _pytest(*args)
