"""Names of the worker side; import them from :mod:`chaperone_otel.semconv`.

The first part of the one registry of names, split out only to keep modules short: the
instrumentation scope, lifecycle events, attributes (the schedule's too), the metric
instrument type :class:`MetricSpec`, the worker's metrics and the Prometheus name
derivation. :mod:`._semconv_sink` builds the sink's metrics on these; ``semconv`` re-exports
both, so ``semconv.X`` is the only spelling code outside the registry uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

INSTRUMENTATION_SCOPE: Final = "chaperone_otel"
"""Instrumentation scope name for the tracer, meter and logger."""

# --------------------------------------------------------------------------------------------
# Lifecycle events (OTel log records with an event name; the same names are span events).
# --------------------------------------------------------------------------------------------

EVENT_JOB_STARTED: Final = "chaperone.job.started"
"""Emitted once when a run starts, while it is alive (the span is exported only at its end)."""

EVENT_JOB_HEARTBEAT: Final = "chaperone.job.heartbeat"
"""A coalesced heartbeat: at most one per run per flush period, carrying the latest metadata
and the number of ``heartbeat()`` calls since the previous one. With zero calls it is a
*liveness* record: the process is alive but the job said nothing (see ``ATTR_HEARTBEAT_KIND``)."""

EVENT_JOB_PROGRESS: Final = "chaperone.job.progress"
"""A progress milestone: a phase change, or each further 10 % of the run (span event only
for milestones; every heartbeat record also carries the latest progress)."""

EVENT_JOB_VIOLATION: Final = "chaperone.job.violation"
"""A resource limit (memory, cpu, fds, timeout) was crossed."""

EVENT_JOB_HEALTH: Final = "chaperone.job.health"
"""The run's judged health changed (healthy, degraded, unhealthy; stuck)."""

EVENT_JOB_FINISHED: Final = "chaperone.job.finished"
"""Emitted once when a run ends, with its final status and totals."""

EVENT_JOB_PENDING: Final = "chaperone.job.pending"
"""A run known but not started yet (``pending_run()``: a task received with an ETA or a
countdown), with the time it is due (``chaperone.job.scheduled_at``)."""

EVENT_JOB_CLOSED: Final = "chaperone.job.closed"
"""A run's outcome recorded by another process (``close_run()``: the parent that saw its
child die, time out or be revoked). The sink applies it like a finish of what it knows: it
ends a running run and fills what the run's own records left empty; a finish the run wrote
itself keeps its status."""

LIFECYCLE_EVENTS: Final = (
    EVENT_JOB_PENDING,
    EVENT_JOB_STARTED,
    EVENT_JOB_HEARTBEAT,
    EVENT_JOB_PROGRESS,
    EVENT_JOB_VIOLATION,
    EVENT_JOB_HEALTH,
    EVENT_JOB_FINISHED,
    EVENT_JOB_CLOSED,
)
"""All lifecycle event names, in the order a run emits them (a run another process closed
ends with ``closed`` instead of ``finished``)."""

# --------------------------------------------------------------------------------------------
# Attributes (on the run span, on lifecycle records, and as metric labels where bounded).
# --------------------------------------------------------------------------------------------

ATTR_JOB_NAME: Final = "chaperone.job.name"
"""The job's name: the qualified function name unless given. Bounded; a metric label."""

ATTR_JOB_QUEUE: Final = "chaperone.job.queue"
"""The queue the run came from (``default`` unless given). Bounded; a metric label."""

ATTR_JOB_RUN_ID: Final = "chaperone.job.run.id"
"""The run's supervision id (uuid4 unless given, e.g. a Celery task id). Unbounded: never a
metric label except for long runs (see ``Config.long_run_threshold``)."""

ATTR_JOB_ATTEMPT: Final = "chaperone.job.attempt"
"""The attempt number of this run, 1 for the first try."""

ATTR_JOB_EXECUTION_ID: Final = "chaperone.job.execution.id"
"""A fresh id per start of a run (one execution of ``(run id, attempt)``): a redelivered task
that runs the same attempt again is a second execution, stored apart from the first."""

ATTR_JOB_LEASE: Final = "chaperone.job.lease"
"""What renews the run's lease: ``heartbeat`` (the job's code, within the heartbeat interval)
or ``liveness`` (its process being alive: stuck only past the timeout, lost when silent)."""

ATTR_JOB_SCHEDULED_AT: Final = "chaperone.job.scheduled_at"
"""When a pending run is due to start (a task's ETA or countdown), Unix seconds; its queue
wait is the start minus this."""

ATTR_JOB_STATUS: Final = "chaperone.job.status"
"""``pending``, ``running``, ``completed``, ``failed``, ``cancelled`` or ``retried``.
A metric label."""

ATTR_JOB_HEALTH: Final = "chaperone.job.health"
"""``healthy``, ``degraded`` or ``unhealthy`` as judged by the health rules."""

ATTR_JOB_STUCK: Final = "chaperone.job.stuck"
"""True while the run is stuck (overdue heartbeat or past its deadline, process alive)."""

ATTR_JOB_STUCK_SINCE: Final = "chaperone.job.stuck.since"
"""When the run first became stuck, Unix seconds; absent on a run that never was. Kept once
set, so a run that was stuck and then completed still says so."""

ATTR_JOB_STUCK_DURATION: Final = "chaperone.job.stuck.duration"
"""Seconds the run has spent stuck so far (every stuck spell added up); absent on a run that
never was stuck."""

ATTR_JOB_PARENT_RUN_ID: Final = "chaperone.job.parent.run_id"
"""The run id of the supervised run this one was started in (same thread or task context),
absent for a top-level run. Unbounded: never a metric label."""

ATTR_JOB_SEQUENCE: Final = "chaperone.job.sequence"
"""Per-run record sequence number; lets the sink ingest idempotently and in order."""

ATTR_JOB_STARTED_AT: Final = "chaperone.job.started_at"
"""Start time of the run, Unix seconds (float)."""

ATTR_JOB_FINISHED_AT: Final = "chaperone.job.finished_at"
"""End time of the run, Unix seconds (float)."""

ATTR_JOB_DURATION: Final = "chaperone.job.duration"
"""Run duration in seconds (float), on the finished record."""

ATTR_JOB_TIMEOUT: Final = "chaperone.job.timeout"
"""Maximum runtime budget in seconds, if any."""

ATTR_JOB_TIMEOUT_AT: Final = "chaperone.job.timeout_at"
"""``started_at + timeout`` in Unix seconds: past it, the run is overtime (and stuck)."""

ATTR_JOB_STALL_TIMEOUT: Final = "chaperone.job.stall_timeout"
"""Optional budget, seconds: progress flat this long while heartbeats arrive means stalled."""

ATTR_HEARTBEAT_INTERVAL: Final = "chaperone.job.heartbeat.interval"
"""The run's declared heartbeat interval (its lease), seconds."""

ATTR_HEARTBEAT_COUNT: Final = "chaperone.job.heartbeat.count"
"""Total ``heartbeat()`` calls of the run so far."""

ATTR_HEARTBEAT_CALLS: Final = "chaperone.job.heartbeat.calls"
"""``heartbeat()`` calls coalesced into this heartbeat record (0 for a liveness record)."""

ATTR_HEARTBEAT_LAST: Final = "chaperone.job.heartbeat.last"
"""Time of the run's latest sign of life from its code (heartbeat or progress), Unix seconds."""

ATTR_HEARTBEAT_KIND: Final = "chaperone.job.heartbeat.kind"
"""``heartbeat`` when the job's code beat since the last record, ``liveness`` when only the
process vouches for it (the job is silent: hung, or between beats)."""

ATTR_METADATA: Final = "chaperone.job.metadata"
"""The latest user metadata, as a JSON object string (OTLP attributes cannot nest)."""

ATTR_PROGRESS_CURRENT: Final = "chaperone.job.progress.current"
"""Items done in the current phase (as reported)."""

ATTR_PROGRESS_TOTAL: Final = "chaperone.job.progress.total"
"""Items in the current phase (as reported)."""

ATTR_PROGRESS_RATIO: Final = "chaperone.job.progress.ratio"
"""Overall progress 0..1 across all phases."""

ATTR_PROGRESS_PHASE: Final = "chaperone.job.progress.phase"
"""The current phase name, if any."""

ATTR_PROGRESS_UPDATED_AT: Final = "chaperone.job.progress.updated_at"
"""When the progress ratio last moved, Unix seconds (the stall rule's clock)."""

ATTR_PROGRESS_RATE: Final = "chaperone.job.progress.rate"
"""Throughput: overall ratio per second since the first report."""

ATTR_PROGRESS_ETA: Final = "chaperone.job.progress.eta"
"""Estimated seconds to completion at the current throughput."""

ATTR_MEMORY_USAGE: Final = "chaperone.job.memory.usage"
"""Resident memory of the run's process, bytes (latest sample)."""

ATTR_MEMORY_PEAK: Final = "chaperone.job.memory.peak"
"""Highest sampled resident memory during the run, bytes."""

ATTR_CPU_PERCENT: Final = "chaperone.job.cpu.percent"
"""CPU use in percent of one core over the last sample window (thread CPU for a
thread-bound run where the OS allows, else the process)."""

ATTR_CPU_SCOPE: Final = "chaperone.job.cpu.scope"
"""What ``chaperone.job.cpu.percent`` measured: ``thread`` (the run's own thread: a sync run,
or an async run alone on its event loop), ``process`` (the whole process, the run being its
only live run) or ``shared`` (a thread or process other live runs use too: the reading is not
the run's own, so no CPU limit is enforced on it and no CPU rule or scope judges it)."""

ATTR_OPEN_FDS: Final = "chaperone.job.open_fds"
"""Open file descriptors of the run's process."""

ATTR_LIMIT_MEMORY: Final = "chaperone.job.limit.memory"
"""The memory limit, bytes."""

ATTR_LIMIT_CPU: Final = "chaperone.job.limit.cpu"
"""The CPU limit, percent of one core."""

ATTR_LIMIT_FDS: Final = "chaperone.job.limit.fds"
"""The open file descriptor limit."""

ATTR_LIMIT_POLICY: Final = "chaperone.job.limit.policy"
"""What a violation does: ``record``, ``warn`` or ``cancel``."""

ATTR_VIOLATION_COUNT: Final = "chaperone.job.violation.count"
"""Violations recorded for the run so far."""

ATTR_LIMIT_TYPE: Final = "chaperone.limit.type"
"""Which limit a violation is about: ``memory``, ``cpu``, ``fds`` or ``timeout``. Bounded."""

ATTR_LIMIT_VALUE: Final = "chaperone.limit.value"
"""The limit's value in its unit (bytes, percent, count, seconds)."""

ATTR_LIMIT_ACTUAL: Final = "chaperone.limit.actual"
"""The measured value that crossed the limit, same unit (float: CPU is fractional)."""

ATTR_ERROR_TYPE: Final = "error.type"
"""The exception's qualified class name (OTel general attribute). Bounded; a metric label."""

ATTR_ERROR_MESSAGE: Final = "exception.message"
"""The exception message (OTel exception convention)."""

ATTR_ERROR_STACKTRACE: Final = "exception.stacktrace"
"""The formatted traceback (OTel exception convention)."""

ATTR_HOST_NAME: Final = "host.name"
"""Host of the run's process (OTel resource convention). On a log record only when its
resource does not say the same (``configure()``'s resource does)."""

ATTR_PROCESS_PID: Final = "process.pid"
"""PID of the run's process (OTel resource convention); on a log record only when its
resource does not say the same, e.g. in a forked child."""

ATTR_SERVICE_NAME: Final = "service.name"
"""The service (OTel resource convention)."""

ATTR_SERVICE_INSTANCE_ID: Final = "service.instance.id"
"""A per-process id, new after ``fork`` (tells two prefork workers apart); on a log record
only when its resource does not say the same."""

ATTR_HEALTH_PREVIOUS: Final = "chaperone.job.health.previous"
"""On a health record: the health before this change."""

ATTR_INTERNAL_WHERE: Final = "chaperone.internal.where"
"""Where an internal (swallowed) error happened: a small fixed set of code places."""

ATTR_USER_PREFIX: Final = "chaperone.job.attr."
"""Prefix of user-supplied static run attributes (``attributes=`` of ``supervised``)."""

# --------------------------------------------------------------------------------------------
# Schedules (issue 15): a declaration is a log record of its own; a run names its schedule.
# --------------------------------------------------------------------------------------------

EVENT_SCHEDULE_DECLARED: Final = "chaperone.schedule.declared"
"""A schedule was declared (or re-declared: the newest declaration of a name wins). Not a
run's record: it carries the schedule's attributes only, no run id."""

EVENT_SCHEDULE_DISPATCHED: Final = "chaperone.schedule.dispatched"
"""A scheduler (Celery beat) sent a run of a schedule: the run may still never start (a queue
nobody consumes), and the store can then tell that apart from a scheduler that never sent it."""

ATTR_SCHEDULE_RUN_ID: Final = "chaperone.schedule.run.id"
"""On a dispatch record: the run id the dispatched run will have (the Celery task id)."""

ATTR_SCHEDULE_NAME: Final = "chaperone.schedule.name"
"""The schedule a declaration defines, or a run belongs to. Bounded; a metric label."""

ATTR_SCHEDULE_SCHEDULED_FOR: Final = "chaperone.schedule.scheduled_for"
"""On a run: the Unix time of the slot it serves, when the scheduler knows it (beat does)."""

ATTR_SCHEDULE_CRON: Final = "chaperone.schedule.cron"
"""A cron expression (5 fields, evaluated by cronsim in ``chaperone.schedule.timezone``)."""

ATTR_SCHEDULE_CRON_DAY_AND: Final = "chaperone.schedule.cron_day_and"
"""``true`` when a cron slot needs both its day of month and day of week to match (as a
Celery ``crontab`` does); absent: either one, as in cron."""

ATTR_SCHEDULE_INTERVAL: Final = "chaperone.schedule.interval"
"""Seconds between runs, for an interval schedule (the next run is due this long after the
previous one started, as a healthchecks.io "simple" check)."""

ATTR_SCHEDULE_TIMEZONE: Final = "chaperone.schedule.timezone"
"""The IANA zone a cron expression is read in (``UTC`` unless given)."""

ATTR_SCHEDULE_GRACE: Final = "chaperone.schedule.grace"
"""Seconds after a slot's due time within which a run still fulfils it (late, not missed)."""

ATTR_SCHEDULE_MAX_RUNTIME: Final = "chaperone.schedule.max_runtime"
"""Seconds a run of the schedule may run before it has overrun."""

ATTR_SCHEDULE_FAILURE_THRESHOLD: Final = "chaperone.schedule.failure_threshold"
"""Consecutive failed runs that make the schedule failing."""

ATTR_SCHEDULE_DECLARE_EVERY: Final = "chaperone.schedule.declare_every"
"""Seconds between re-declarations by a scheduler that keeps declaring (beat); its silence
for a few of them means the scheduler is lost. Absent: declared once (no liveness)."""

ATTR_SCHEDULE_SOURCE: Final = "chaperone.schedule.source"
"""Who declared it: ``code`` (``chaperone_otel.schedule()``), ``celery-beat`` or ``rq-cron``."""

# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------

InstrumentKind = Literal["counter", "updowncounter", "histogram", "gauge"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric instrument: its OTel name, kind, UCUM unit, description and labels."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    labels: tuple[str, ...]

    @property
    def prometheus(self) -> str:
        """The name Prometheus sees (see :func:`prometheus_name`)."""
        return prometheus_name(self)


_RUN_LABELS: Final = (ATTR_JOB_NAME, ATTR_JOB_QUEUE)
# Gauges of live runs carry the run id only for runs older than the long-run threshold
# (DESIGN §7): cardinality is then bounded by the number of concurrent long runs.
_LIVE_LABELS: Final = (ATTR_JOB_NAME, ATTR_JOB_QUEUE, ATTR_JOB_RUN_ID)

METRIC_JOB_RUNS_ACTIVE: Final = MetricSpec(
    "chaperone.job.runs.active",
    "updowncounter",
    "{run}",
    "Runs in progress in this process.",
    _RUN_LABELS,
)
METRIC_JOB_RUNS_STARTED: Final = MetricSpec(
    "chaperone.job.runs.started",
    "counter",
    "{run}",
    "Runs started.",
    _RUN_LABELS,
)
METRIC_JOB_RUNS_FINISHED: Final = MetricSpec(
    "chaperone.job.runs.finished",
    "counter",
    "{run}",
    "Runs finished, by final status and error type.",
    (*_RUN_LABELS, ATTR_JOB_STATUS, ATTR_ERROR_TYPE),
)
METRIC_JOB_DURATION: Final = MetricSpec(
    "chaperone.job.duration",
    "histogram",
    "s",
    "Run duration.",
    (*_RUN_LABELS, ATTR_JOB_STATUS),
)
METRIC_JOB_HEARTBEATS: Final = MetricSpec(
    "chaperone.job.heartbeats",
    "counter",
    "{heartbeat}",
    "heartbeat() calls (counted at each flush).",
    _RUN_LABELS,
)
METRIC_JOB_HEARTBEATS_MISSED: Final = MetricSpec(
    "chaperone.job.heartbeats.missed",
    "counter",
    "{heartbeat}",
    "Heartbeat intervals that passed with no sign of life from the job's code.",
    _RUN_LABELS,
)
METRIC_JOB_VIOLATIONS: Final = MetricSpec(
    "chaperone.job.violations",
    "counter",
    "{violation}",
    "Resource limit violations, by limit type.",
    (*_RUN_LABELS, ATTR_LIMIT_TYPE),
)
METRIC_JOB_LAST_HEARTBEAT: Final = MetricSpec(
    "chaperone.job.last_heartbeat_timestamp",
    "gauge",
    "s",
    "Unix time of the latest sign of life from the job's code (for a run with a liveness "
    "lease, of its process: the time it was observed); alert on time() - x > k * "
    "interval. The oldest of the group's runs when the run id is not a label.",
    _LIVE_LABELS,
)
METRIC_JOB_HEARTBEAT_INTERVAL: Final = MetricSpec(
    "chaperone.job.heartbeat_interval",
    "gauge",
    "s",
    "Declared heartbeat interval (lease) of live runs.",
    _LIVE_LABELS,
)
METRIC_JOB_DEADLINE: Final = MetricSpec(
    "chaperone.job.deadline_timestamp",
    "gauge",
    "s",
    "Unix time the run's max runtime ends (timeout_at); only runs with a timeout.",
    _LIVE_LABELS,
)
METRIC_JOB_STALL_DEADLINE: Final = MetricSpec(
    "chaperone.job.stall_deadline_timestamp",
    "gauge",
    "s",
    "Unix time at which flat progress makes the run stalled; only runs with a stall budget.",
    _LIVE_LABELS,
)
METRIC_JOB_STARTED_TIMESTAMP: Final = MetricSpec(
    "chaperone.job.started_timestamp",
    "gauge",
    "s",
    "Unix time the live run started.",
    _LIVE_LABELS,
)
METRIC_JOB_PROGRESS: Final = MetricSpec(
    "chaperone.job.progress.ratio",
    "gauge",
    "1",
    "Overall progress of live runs, 0..1.",
    _LIVE_LABELS,
)
METRIC_JOB_PROGRESS_CURRENT: Final = MetricSpec(
    "chaperone.job.progress.current",
    "gauge",
    "{item}",
    "Items done in the current phase.",
    _LIVE_LABELS,
)
METRIC_JOB_PROGRESS_TOTAL: Final = MetricSpec(
    "chaperone.job.progress.total",
    "gauge",
    "{item}",
    "Items in the current phase.",
    _LIVE_LABELS,
)
METRIC_JOB_ETA: Final = MetricSpec(
    "chaperone.job.eta",
    "gauge",
    "s",
    "Estimated seconds to completion of live runs.",
    _LIVE_LABELS,
)
METRIC_JOB_MEMORY: Final = MetricSpec(
    "chaperone.job.memory.usage",
    "gauge",
    "By",
    "Resident memory of live runs' process.",
    _LIVE_LABELS,
)
METRIC_JOB_MEMORY_LIMIT: Final = MetricSpec(
    "chaperone.job.memory.limit",
    "gauge",
    "By",
    "Memory limit of live runs that have one.",
    _LIVE_LABELS,
)
METRIC_JOB_CPU: Final = MetricSpec(
    "chaperone.job.cpu.utilization",
    "gauge",
    "1",
    "CPU use of live runs as a fraction of one core (1.0 = one full core); only CPU a run "
    "can be charged with: no series while its reading is shared with other runs.",
    _LIVE_LABELS,
)
METRIC_JOB_CPU_LIMIT: Final = MetricSpec(
    "chaperone.job.cpu.limit",
    "gauge",
    "1",
    "CPU limit of live runs, fraction of one core.",
    _LIVE_LABELS,
)
METRIC_JOB_OPEN_FDS: Final = MetricSpec(
    "chaperone.job.open_fds",
    "gauge",
    "{fd}",
    "Open file descriptors of live runs' process.",
    _LIVE_LABELS,
)
METRIC_JOB_FD_LIMIT: Final = MetricSpec(
    "chaperone.job.open_fds.limit",
    "gauge",
    "{fd}",
    "File descriptor limit of live runs.",
    _LIVE_LABELS,
)
METRIC_JOB_RUN_VIOLATIONS: Final = MetricSpec(
    "chaperone.job.violation.count",
    "gauge",
    "{violation}",
    "Violations recorded so far by each live run (the health rules' 'violated').",
    _LIVE_LABELS,
)
METRIC_INTERNAL_ERRORS: Final = MetricSpec(
    "chaperone.internal.errors",
    "counter",
    "{error}",
    "Failures inside chaperone-otel's own telemetry paths (swallowed, never reach the job).",
    (ATTR_INTERNAL_WHERE,),
)

RUNTIME_METRICS: Final = (
    METRIC_JOB_RUNS_ACTIVE,
    METRIC_JOB_RUNS_STARTED,
    METRIC_JOB_RUNS_FINISHED,
    METRIC_JOB_DURATION,
    METRIC_JOB_HEARTBEATS,
    METRIC_JOB_HEARTBEATS_MISSED,
    METRIC_JOB_VIOLATIONS,
    METRIC_JOB_LAST_HEARTBEAT,
    METRIC_JOB_HEARTBEAT_INTERVAL,
    METRIC_JOB_DEADLINE,
    METRIC_JOB_STALL_DEADLINE,
    METRIC_JOB_STARTED_TIMESTAMP,
    METRIC_JOB_PROGRESS,
    METRIC_JOB_PROGRESS_CURRENT,
    METRIC_JOB_PROGRESS_TOTAL,
    METRIC_JOB_ETA,
    METRIC_JOB_MEMORY,
    METRIC_JOB_MEMORY_LIMIT,
    METRIC_JOB_CPU,
    METRIC_JOB_CPU_LIMIT,
    METRIC_JOB_OPEN_FDS,
    METRIC_JOB_FD_LIMIT,
    METRIC_JOB_RUN_VIOLATIONS,
    METRIC_INTERNAL_ERRORS,
)
"""Instruments the supervision runtime creates (worker side)."""


# --------------------------------------------------------------------------------------------
# Prometheus name derivation (mirrors opentelemetry-exporter-prometheus/_mapping.py).
# --------------------------------------------------------------------------------------------

_SANITIZE_NAME = re.compile(r"[^a-zA-Z0-9:]+")
_SANITIZE_LABEL = re.compile(r"[^a-zA-Z0-9]+")
_UNIT_ANNOTATION = re.compile(r"{.*}")
_UNIT_MAP: Final = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "1": "",
    "%": "percent",
}


def prometheus_unit(unit: str) -> str:
    """The Prometheus suffix for a UCUM unit (``s`` → ``seconds``, ``{run}`` → nothing)."""
    unit = _UNIT_ANNOTATION.sub("", unit)
    if unit in _UNIT_MAP:
        return _UNIT_MAP[unit]
    return _SANITIZE_NAME.sub("_", unit).strip("_")


def prometheus_label(attribute: str) -> str:
    """The Prometheus label name of an attribute key (``chaperone.job.name`` →
    ``chaperone_job_name``)."""
    if attribute and attribute[0].isdigit():
        attribute = "_" + attribute[1:]
    return _SANITIZE_LABEL.sub("_", attribute)


def prometheus_name(metric: MetricSpec) -> str:
    """The series name Prometheus stores for ``metric``.

    Dots become underscores, the unit suffix is appended unless present, and counters get
    ``_total``, as the OTel Prometheus exporter and prometheus_client do. Histograms are the
    base name (``_bucket``, ``_sum`` and ``_count`` follow).
    """
    name = _SANITIZE_NAME.sub("_", metric.name)
    suffix = prometheus_unit(metric.unit)
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    if metric.kind == "counter" and not name.endswith("_total"):
        name += "_total"
    return name
