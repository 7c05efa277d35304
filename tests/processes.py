"""What the tests that run real interpreters share."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))
}
"""The environment for a child interpreter: none of the developer's or CI's ``OTEL_*`` or
``CHAPERONE_OTEL_*`` settings, which would send its telemetry elsewhere."""


def run_python(
    script: str,
    *args: object,
    timeout: float = 120,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (:data:`CLEAN_ENV`, plus ``env``), in ``cwd``,
    bounded by ``timeout``; fails the test, with its output, unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**CLEAN_ENV, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a process the test started, by its own PID: SIGTERM, then SIGKILL if it is
    still there after 20 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
