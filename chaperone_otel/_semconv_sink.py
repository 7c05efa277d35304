"""Names of the sink's ``/metrics``; import them from :mod:`chaperone_otel.semconv`.

The second part of the one registry of names, split out only to keep modules short: the
sink's fleet metrics, its per-run twins of the worker's live-run gauges (the health rules'
inputs in a sink-only deployment) and the schedule metrics. Built on :mod:`._semconv_base`.
"""

from __future__ import annotations

from typing import Final

from ._semconv_base import (
    ATTR_JOB_HEALTH,
    ATTR_JOB_NAME,
    ATTR_JOB_QUEUE,
    ATTR_JOB_RUN_ID,
    ATTR_JOB_STATUS,
    ATTR_SCHEDULE_NAME,
    METRIC_JOB_CPU,
    METRIC_JOB_CPU_LIMIT,
    METRIC_JOB_DEADLINE,
    METRIC_JOB_ETA,
    METRIC_JOB_FD_LIMIT,
    METRIC_JOB_HEARTBEAT_INTERVAL,
    METRIC_JOB_LAST_HEARTBEAT,
    METRIC_JOB_MEMORY,
    METRIC_JOB_MEMORY_LIMIT,
    METRIC_JOB_OPEN_FDS,
    METRIC_JOB_PROGRESS,
    METRIC_JOB_PROGRESS_CURRENT,
    METRIC_JOB_PROGRESS_TOTAL,
    METRIC_JOB_RUN_VIOLATIONS,
    METRIC_JOB_STALL_DEADLINE,
    METRIC_JOB_STARTED_TIMESTAMP,
    MetricSpec,
)

# --------------------------------------------------------------------------------------------
# Sink (fleet) metrics: computed from the job store by the sink server's /metrics.
# --------------------------------------------------------------------------------------------

_SINK_GROUP: Final = (ATTR_JOB_NAME, ATTR_JOB_QUEUE)

METRIC_SINK_RUNS: Final = MetricSpec(
    "chaperone.sink.runs",
    "gauge",
    "{run}",
    "Stored runs by name, queue, status and (for running runs) health.",
    (*_SINK_GROUP, ATTR_JOB_STATUS, ATTR_JOB_HEALTH),
)
METRIC_SINK_RUNS_STUCK: Final = MetricSpec(
    "chaperone.sink.runs.stuck",
    "gauge",
    "{run}",
    "Running runs that are stuck (health rules), by name and queue.",
    _SINK_GROUP,
)
METRIC_SINK_RUNS_LOST: Final = MetricSpec(
    "chaperone.sink.runs.lost",
    "gauge",
    "{run}",
    "Running runs whose process went silent (health rules), by name and queue.",
    _SINK_GROUP,
)
METRIC_SINK_HEARTBEAT_AGE_RATIO: Final = MetricSpec(
    "chaperone.sink.heartbeat_age_ratio",
    "gauge",
    "1",
    "Largest heartbeat age of running runs in units of their interval.",
    _SINK_GROUP,
)
METRIC_SINK_SILENCE_RATIO: Final = MetricSpec(
    "chaperone.sink.silence_ratio",
    "gauge",
    "1",
    "Largest age of the last record of any kind of running runs, in units of their interval.",
    _SINK_GROUP,
)
METRIC_SINK_RECORDS_INGESTED: Final = MetricSpec(
    "chaperone.sink.records.ingested",
    "counter",
    "{record}",
    "Lifecycle records and spans written to the store.",
    ("chaperone.sink.source",),
)
METRIC_SINK_REQUESTS_REJECTED: Final = MetricSpec(
    "chaperone.sink.requests.rejected",
    "counter",
    "{request}",
    "OTLP requests refused, by HTTP status code.",
    ("http.response.status_code",),
)
METRIC_SINK_RECORDS_DROPPED: Final = MetricSpec(
    "chaperone.sink.records.dropped",
    "counter",
    "{record}",
    "Accepted records the writer could not store (with ack=commit their request was answered "
    "400 or 503, never 2xx; only with ack=queue were they acknowledged first).",
    (),
)
METRIC_SINK_QUEUE_DEPTH: Final = MetricSpec(
    "chaperone.sink.queue.depth",
    "gauge",
    "{record}",
    "Records waiting for the writer.",
    (),
)
METRIC_SINK_QUEUE_CAPACITY: Final = MetricSpec(
    "chaperone.sink.queue.capacity",
    "gauge",
    "{record}",
    "Writer queue capacity.",
    (),
)
METRIC_SINK_STORE_SIZE: Final = MetricSpec(
    "chaperone.sink.store.size",
    "gauge",
    "By",
    "Size of the DuckDB file.",
    (),
)
METRIC_SINK_LAST_INGEST: Final = MetricSpec(
    "chaperone.sink.last_ingest_timestamp",
    "gauge",
    "s",
    "Unix time of the latest successful write.",
    (),
)

SINK_METRICS: Final = (
    METRIC_SINK_RUNS,
    METRIC_SINK_RUNS_STUCK,
    METRIC_SINK_RUNS_LOST,
    METRIC_SINK_HEARTBEAT_AGE_RATIO,
    METRIC_SINK_SILENCE_RATIO,
    METRIC_SINK_RECORDS_INGESTED,
    METRIC_SINK_REQUESTS_REJECTED,
    METRIC_SINK_RECORDS_DROPPED,
    METRIC_SINK_QUEUE_DEPTH,
    METRIC_SINK_QUEUE_CAPACITY,
    METRIC_SINK_STORE_SIZE,
    METRIC_SINK_LAST_INGEST,
)
"""Fleet metrics served by ``chaperone-otel sink serve`` (names only; values come from SQL)."""

# Sink-derived run signals (issue 14): the inputs of the health rules and dashboards, served
# by the sink from its store so a fleet that sends OTLP only to the sink gets every alert.
# Labelled like the worker's live-run gauges: name and queue, plus the run id for runs older
# than the long-run threshold (younger runs of a group are represented by the stalest one).

ATTR_SINK_PROBLEM: Final = "chaperone.sink.problem"
"""Label of :data:`METRIC_SINK_RUNS_PROBLEM`: the health predicate a running run matches."""

_SINK_RUN_LABELS: Final = (ATTR_JOB_NAME, ATTR_JOB_QUEUE, ATTR_JOB_RUN_ID)


def _sink_twin(worker: MetricSpec) -> MetricSpec:
    """The sink's gauge of a worker live-run gauge: same suffix, unit and meaning."""
    suffix = worker.name.removeprefix("chaperone.job.")
    return MetricSpec(
        f"chaperone.sink.run.{suffix}",
        "gauge",
        worker.unit,
        "From the sink's store: " + worker.description,
        _SINK_RUN_LABELS,
    )


METRIC_SINK_RUN_ACTIVE: Final = MetricSpec(
    "chaperone.sink.run.active",
    "gauge",
    "{run}",
    "Running runs of the group heard from within the problem window.",
    _SINK_RUN_LABELS,
)
METRIC_SINK_RUN_LAST_SEEN: Final = MetricSpec(
    "chaperone.sink.run.last_seen_timestamp",
    "gauge",
    "s",
    "Unix time of the latest record of any kind from the run (liveness included).",
    _SINK_RUN_LABELS,
)
METRIC_SINK_RUN_LAST_HEARTBEAT: Final = _sink_twin(METRIC_JOB_LAST_HEARTBEAT)
METRIC_SINK_RUN_HEARTBEAT_INTERVAL: Final = _sink_twin(METRIC_JOB_HEARTBEAT_INTERVAL)
METRIC_SINK_RUN_DEADLINE: Final = _sink_twin(METRIC_JOB_DEADLINE)
METRIC_SINK_RUN_STALL_DEADLINE: Final = _sink_twin(METRIC_JOB_STALL_DEADLINE)
METRIC_SINK_RUN_STARTED_TIMESTAMP: Final = _sink_twin(METRIC_JOB_STARTED_TIMESTAMP)
METRIC_SINK_RUN_PROGRESS: Final = _sink_twin(METRIC_JOB_PROGRESS)
METRIC_SINK_RUN_PROGRESS_CURRENT: Final = _sink_twin(METRIC_JOB_PROGRESS_CURRENT)
METRIC_SINK_RUN_PROGRESS_TOTAL: Final = _sink_twin(METRIC_JOB_PROGRESS_TOTAL)
METRIC_SINK_RUN_ETA: Final = _sink_twin(METRIC_JOB_ETA)
METRIC_SINK_RUN_MEMORY: Final = _sink_twin(METRIC_JOB_MEMORY)
METRIC_SINK_RUN_MEMORY_LIMIT: Final = _sink_twin(METRIC_JOB_MEMORY_LIMIT)
METRIC_SINK_RUN_CPU: Final = _sink_twin(METRIC_JOB_CPU)
METRIC_SINK_RUN_CPU_LIMIT: Final = _sink_twin(METRIC_JOB_CPU_LIMIT)
METRIC_SINK_RUN_OPEN_FDS: Final = _sink_twin(METRIC_JOB_OPEN_FDS)
METRIC_SINK_RUN_FD_LIMIT: Final = _sink_twin(METRIC_JOB_FD_LIMIT)
METRIC_SINK_RUN_VIOLATIONS: Final = _sink_twin(METRIC_JOB_RUN_VIOLATIONS)
METRIC_SINK_RUNS_PROBLEM: Final = MetricSpec(
    "chaperone.sink.runs.problem",
    "gauge",
    "{run}",
    "Running runs heard from within the problem window that match a health predicate "
    "(overtime, stalled, heartbeat_missed, near_limit, violated, stuck, lost).",
    (*_SINK_GROUP, ATTR_SINK_PROBLEM),
)
METRIC_SINK_RUNS_FINISHED: Final = MetricSpec(
    "chaperone.sink.runs.finished",
    "counter",
    "{run}",
    "Runs the store saw end, by final status (kept when runs are pruned).",
    (*_SINK_GROUP, ATTR_JOB_STATUS),
)
METRIC_SINK_LAST_SUCCESS: Final = MetricSpec(
    "chaperone.sink.last_success_timestamp",
    "gauge",
    "s",
    "Unix time the latest completed run of the job ended.",
    _SINK_GROUP,
)

SINK_RUN_METRICS: Final = (
    METRIC_SINK_RUN_ACTIVE,
    METRIC_SINK_RUN_LAST_HEARTBEAT,
    METRIC_SINK_RUN_LAST_SEEN,
    METRIC_SINK_RUN_HEARTBEAT_INTERVAL,
    METRIC_SINK_RUN_DEADLINE,
    METRIC_SINK_RUN_STALL_DEADLINE,
    METRIC_SINK_RUN_STARTED_TIMESTAMP,
    METRIC_SINK_RUN_PROGRESS,
    METRIC_SINK_RUN_PROGRESS_CURRENT,
    METRIC_SINK_RUN_PROGRESS_TOTAL,
    METRIC_SINK_RUN_ETA,
    METRIC_SINK_RUN_MEMORY,
    METRIC_SINK_RUN_MEMORY_LIMIT,
    METRIC_SINK_RUN_CPU,
    METRIC_SINK_RUN_CPU_LIMIT,
    METRIC_SINK_RUN_OPEN_FDS,
    METRIC_SINK_RUN_FD_LIMIT,
    METRIC_SINK_RUN_VIOLATIONS,
    METRIC_SINK_RUNS_PROBLEM,
    METRIC_SINK_RUNS_FINISHED,
    METRIC_SINK_LAST_SUCCESS,
)
"""Sink-derived inputs of the alerts and dashboards (``alerts/chaperone-sink.rules.yaml``)."""

# --------------------------------------------------------------------------------------------
# Schedule metrics: computed from the store's schedules and slots by the sink's /metrics.
# --------------------------------------------------------------------------------------------

_SCHEDULE_LABELS: Final = (ATTR_SCHEDULE_NAME,)

METRIC_SCHEDULE_LAST_DUE: Final = MetricSpec(
    "chaperone.schedule.last_due_timestamp",
    "gauge",
    "s",
    "Unix time the schedule's latest decided slot fell due (the newest whose grace has passed).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_LAST_OPENS: Final = MetricSpec(
    "chaperone.schedule.last_opens_timestamp",
    "gauge",
    "s",
    "Unix time from which a run counts for the schedule's latest decided slot (a cron slot: a "
    "little before it is due; an interval slot: the previous run's start).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_LAST_START: Final = MetricSpec(
    "chaperone.schedule.last_start_timestamp",
    "gauge",
    "s",
    "Unix time the schedule's latest run started (no series before its first run).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_LAST_SUCCESS: Final = MetricSpec(
    "chaperone.schedule.last_success_timestamp",
    "gauge",
    "s",
    "Unix time the schedule's latest completed run finished (no series before one).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_RUNNING_SINCE: Final = MetricSpec(
    "chaperone.schedule.running_since_timestamp",
    "gauge",
    "s",
    "Unix time the schedule's latest run started, while that run is running (else no series).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_GRACE: Final = MetricSpec(
    "chaperone.schedule.grace",
    "gauge",
    "s",
    "The schedule's grace: how long after a due time a run may still start.",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_MAX_RUNTIME: Final = MetricSpec(
    "chaperone.schedule.max_runtime",
    "gauge",
    "s",
    "How long a run of the schedule may run (no series without one).",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_CONSECUTIVE_FAILURES: Final = MetricSpec(
    "chaperone.schedule.consecutive_failures",
    "gauge",
    "{run}",
    "Failed runs in a row, counted back from the schedule's latest finished run.",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_FAILURE_THRESHOLD: Final = MetricSpec(
    "chaperone.schedule.failure_threshold",
    "gauge",
    "{run}",
    "Failed runs in a row that make the schedule failing.",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_LAST_DECLARED: Final = MetricSpec(
    "chaperone.schedule.last_declared_timestamp",
    "gauge",
    "s",
    "Unix time of the schedule's latest declaration.",
    _SCHEDULE_LABELS,
)
METRIC_SCHEDULE_DECLARE_EVERY: Final = MetricSpec(
    "chaperone.schedule.declare_every",
    "gauge",
    "s",
    "Seconds between the scheduler's re-declarations (no series when declared once).",
    _SCHEDULE_LABELS,
)

SCHEDULE_METRICS: Final = (
    METRIC_SCHEDULE_LAST_DUE,
    METRIC_SCHEDULE_LAST_OPENS,
    METRIC_SCHEDULE_LAST_START,
    METRIC_SCHEDULE_LAST_SUCCESS,
    METRIC_SCHEDULE_RUNNING_SINCE,
    METRIC_SCHEDULE_GRACE,
    METRIC_SCHEDULE_MAX_RUNTIME,
    METRIC_SCHEDULE_CONSECUTIVE_FAILURES,
    METRIC_SCHEDULE_FAILURE_THRESHOLD,
    METRIC_SCHEDULE_LAST_DECLARED,
    METRIC_SCHEDULE_DECLARE_EVERY,
)
"""Schedule metrics served on the sink's fleet ``/metrics`` (values from the store)."""
