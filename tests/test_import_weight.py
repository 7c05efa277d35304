"""`import chaperone_otel` stays light: the runtime layer needs only opentelemetry-api."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "duckdb",
    "prometheus_client",
    "opentelemetry.sdk",
    "click",
    "rich",
    "pyarrow",
    "starlette",
    "uvicorn",
    "celery",
)


def test_import_loads_no_heavy_modules() -> None:
    """A fresh interpreter importing the package (and running a job) loads none of them."""
    code = (
        "import sys, chaperone_otel as c\n"
        "@c.supervised\n"
        "def job():\n"
        "    c.heartbeat()\n"
        "job()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_public_api_is_declared_once() -> None:
    """__all__ is sorted, complete, and every name resolves."""
    import chaperone_otel

    names = chaperone_otel.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(chaperone_otel, name), name
    public = {n for n in dir(chaperone_otel) if not n.startswith("_") and not n.islower()}
    assert public <= set(names) | {"TYPE_CHECKING", "Any"}


def test_the_cli_loads_no_store_engine_until_a_command_runs() -> None:
    """Importing the CLI (what ``chaperone-otel --help`` does) loads neither DuckDB nor
    pyarrow: with a broken pyarrow every command, ``--help`` included, died in an import
    instead of exiting 3 with the store's reason (``close``'s module imported the sink's
    writer once)."""
    code = (
        "import sys, chaperone_otel.cli\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert set(out.stdout.strip().split(",")) <= {"click", "rich", ""}
