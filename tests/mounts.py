"""A tmpfs the test mounts itself (a full or read-only file system): skipped where mounting
is not permitted, never under CI=true (CI runs as root on a machine that allows it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(target: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` (``size=24m``, ``ro,size=1m``) on ``target`` (created),
    and unmount it after."""
    ci = os.environ.get("CI") == "true"
    if os.geteuid() != 0:
        if ci:
            pytest.fail("CI=true must run as root to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        if ci:
            pytest.fail(f"mount failed under CI=true: {mounted.stderr.strip()}")
        pytest.skip(f"mount is not permitted here: {mounted.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)
