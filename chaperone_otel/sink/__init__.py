"""The job store: DuckDB schema, the single writer, the scope-style query API.

``open_sink(path)`` gives a :class:`Sink`; ``sink.jobs`` is an immutable, lazy
:class:`JobQuery` whose terminals return :class:`JobRecord` objects::

    from chaperone_otel.sink import open_sink

    with open_sink("jobs.duckdb") as sink:
        stuck = sink.jobs.running().stuck().order_by("started_at").all()
        run = sink.job(run_id)
        run.duration, run.progress, run.is_healthy(), run.errors, run.heartbeats()

Writing goes through one :class:`Writer` per store (see ``_writer``); the embedded sink
(``configure(sink=path)``) and ``chaperone-otel sink serve`` both use it. See
``docs/querying.md``.

.. versionadded:: 0.1
"""

from __future__ import annotations

from ._local import LocalSink, open_sink
from ._query import JobQuery, Sink
from ._records import SpanRecord, record_from_span
from ._results import ErrorRecord, HeartbeatRecord, JobRecord, ViolationRecord
from ._schema import HEARTBEATS_PER_RUN, SCHEMA_VERSION
from ._writer import Writer, WriterStats

__all__ = [
    "ErrorRecord",
    "HEARTBEATS_PER_RUN",
    "HeartbeatRecord",
    "JobQuery",
    "JobRecord",
    "LocalSink",
    "SCHEMA_VERSION",
    "Sink",
    "SpanRecord",
    "ViolationRecord",
    "Writer",
    "WriterStats",
    "open_sink",
    "record_from_span",
]
