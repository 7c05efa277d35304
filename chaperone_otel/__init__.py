"""chaperone-otel: supervise long-running Python jobs with OpenTelemetry.

Decorate a function, coroutine or generator (or wrap a block) and each call becomes a
*supervised run*: one OTel span, heartbeats and progress recorded, resources sampled, limits
enforced and health judged, with lifecycle log events emitted while it runs so that running,
hung and lost jobs are visible before the span ends.

Example::

    import chaperone_otel as chaperone

    chaperone.configure(sink="jobs.duckdb", prometheus_port=9464)

    @chaperone.supervised(queue="imports", heartbeat_interval=30)
    def import_file(path):
        rows = load(path)
        for row in chaperone.track(rows):
            save(row)

Importing this package loads only ``opentelemetry-api`` (no SDK, duckdb or
prometheus_client); ``configure()`` loads what it is asked to wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Supervised
from ._config import Config
from ._current import current_job, heartbeat, report_progress, track, wrap
from ._decorator import supervised
from ._health import HealthPolicy
from ._model import JobState, Violation
from ._run import Supervision
from ._schedule import Schedule, schedule
from ._setup import configure, flush, reset, shutdown
from ._start import StartedRun, close_run, pending_run, start_run
from ._version import __version__
from .exceptions import (
    ChaperoneError,
    ConfigurationError,
    JobLimitExceeded,
    NoActiveJobError,
    SchemaVersionError,
    SinkError,
)

if TYPE_CHECKING:
    from .sink import Sink


def open_sink(path: str, *, read_only: bool = True, **kwargs: Any) -> Sink:
    """Open a job store (DuckDB file) for queries: ``open_sink("jobs.duckdb").jobs.running()``.

    Imported lazily so that ``import chaperone_otel`` does not load duckdb.
    """
    from .sink import open_sink as _open_sink  # noqa: PLC0415

    return _open_sink(path, read_only=read_only, **kwargs)


__all__ = [
    "ChaperoneError",
    "Config",
    "ConfigurationError",
    "HealthPolicy",
    "JobLimitExceeded",
    "JobState",
    "NoActiveJobError",
    "Schedule",
    "SchemaVersionError",
    "SinkError",
    "StartedRun",
    "Supervised",
    "Supervision",
    "Violation",
    "__version__",
    "close_run",
    "configure",
    "current_job",
    "flush",
    "heartbeat",
    "open_sink",
    "pending_run",
    "report_progress",
    "reset",
    "schedule",
    "shutdown",
    "start_run",
    "supervised",
    "track",
    "wrap",
]
