"""The ``chaperone-otel`` command line (console script ``chaperone_otel.cli:main``).

Nothing in the library imports this package: click and rich load only when a command runs.
"""

from __future__ import annotations

from . import _close, _schedules  # noqa: F401 - register `close` and `schedules` on cli
from ._app import cli
from ._common import Exit


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="chaperone-otel")


__all__ = ["Exit", "cli", "main"]
