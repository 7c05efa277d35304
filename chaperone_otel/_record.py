"""A run as lifecycle records: its full-state attributes, and publishing a record.

Every record a run publishes carries the run's *whole* current state as flat attributes
(``_events`` says why), built here by :func:`record_attributes` — the one place that maps a
run's state to semconv attribute names. :func:`emit` builds a record only when a listener
wants its kind, and hands it to those listeners; the lifecycle (started, finished) and the
monitor (heartbeat, progress, violation, health) are its only callers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from . import _process
from . import semconv as sc
from ._events import AttributeValue, LifecycleRecord, Receiver, receivers
from ._events import publish as deliver
from ._run import Run
from ._safety import internal_error
from ._values import present

_EVENT_WORDS: Final = {event: event.rsplit(".", 1)[-1] for event in sc.LIFECYCLE_EVENTS}
"""The last word of each lifecycle event name, for record bodies ("etl.load started")."""


def to_json(value: Mapping[str, Any]) -> str:
    """User metadata as one compact JSON attribute. Never raises.

    A value JSON cannot encode is written as its ``str()``; one that cannot be written at all
    (``str()`` and ``repr()`` raise, an int past Python's digit limit) as
    ``"<unrepresentable TYPE>"``, counted as an internal error: a bad value must not cost
    the run its records, least of all its finished record (issue 12).
    """
    try:
        text = json.dumps(value, default=str, separators=(",", ":"), sort_keys=True)
    except Exception:
        text = json.dumps(
            {_text(k): _value(v) for k, v in value.items()}, separators=(",", ":"), sort_keys=True
        )
    if len(text) <= MAX_METADATA_JSON:
        return text
    # Too large for a record (every record of the run carries it): the keys, each value cut.
    keep = max(16, MAX_METADATA_JSON // (2 * max(len(value), 1)))
    cut = {_text(k): _cut(v, keep) for k, v in value.items()}
    text = json.dumps(cut, default=str, separators=(",", ":"), sort_keys=True)
    if len(text) <= MAX_METADATA_JSON:
        return text
    return json.dumps({"_cut": f"{len(value)} metadata values, {len(text)} characters as JSON"})


MAX_METADATA_JSON: Final = 64 * 1024
"""Characters of a run's metadata (as JSON) a record carries at most: a 9 MB value put every
record of its run over the sink's 8 MiB request limit, its finished record too."""


def _cut(value: object, keep: int) -> object:
    safe = _value(value)  # JSON can write it (else its text)
    text = safe if isinstance(safe, str) else json.dumps(safe, default=str)
    if len(text) <= keep:
        return safe
    return text[:keep] + f"... [{len(text) - keep} characters cut]"


def _value(value: object) -> object:
    try:
        json.dumps(value, default=str)
    except Exception:
        return _text(value)
    return value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    for convert in (str, repr):
        try:
            text = convert(value)
        except Exception:
            text = None
        if isinstance(text, str):
            return text
    error = ValueError(f"metadata value of type {type(value).__qualname__} cannot be written")
    internal_error("record.metadata", error)
    return f"<unrepresentable {type(value).__qualname__}>"


def record_attributes(run: Run, now: float) -> dict[str, AttributeValue]:
    """The run's full state as flat OTel attributes (every lifecycle record carries it):
    :func:`core_attributes`, then progress, resources, limits and the user's values.

    Optional values are added only when the run has them; written out one by one (a
    loop over (key, value) pairs built per call cost ~0.5 us, and this runs twice per
    run and at every flush).
    """
    handle = run.handle  # the hot path's fields: read here, on the record's thread
    a = core_attributes(run, now)
    a[sc.ATTR_PROGRESS_RATIO] = handle.progress_ratio
    a[sc.ATTR_PROGRESS_UPDATED_AT] = run.progress_updated_at
    if run.timeout is not None:
        a[sc.ATTR_JOB_TIMEOUT] = run.timeout
    if run.timeout_at is not None:
        a[sc.ATTR_JOB_TIMEOUT_AT] = run.timeout_at
    if run.stall_timeout is not None:
        a[sc.ATTR_JOB_STALL_TIMEOUT] = run.stall_timeout
    if handle._current is not None:
        a[sc.ATTR_PROGRESS_CURRENT] = handle._current
    if handle._total is not None:
        a[sc.ATTR_PROGRESS_TOTAL] = handle._total
    if handle._phase is not None:
        a[sc.ATTR_PROGRESS_PHASE] = handle._phase
    if run._first_progress is not None:  # no rate nor ETA before a progress report
        rate = run.rate(now)
        if rate is not None:
            a[sc.ATTR_PROGRESS_RATE] = rate
            eta = run.eta(now)
            if eta is not None:
                a[sc.ATTR_PROGRESS_ETA] = eta
    if run.memory is not None:
        a[sc.ATTR_MEMORY_USAGE] = run.memory
    if run.memory_peak is not None:
        a[sc.ATTR_MEMORY_PEAK] = run.memory_peak
    if run.cpu_percent is not None:
        a[sc.ATTR_CPU_PERCENT] = run.cpu_percent
        if run.cpu_scope is not None:
            a[sc.ATTR_CPU_SCOPE] = run.cpu_scope
    if run.fds is not None:
        a[sc.ATTR_OPEN_FDS] = run.fds
    if run.memory_limit is not None:
        a[sc.ATTR_LIMIT_MEMORY] = run.memory_limit
    if run.cpu_limit is not None:
        a[sc.ATTR_LIMIT_CPU] = run.cpu_limit
    if run.fd_limit is not None:
        a[sc.ATTR_LIMIT_FDS] = run.fd_limit
    if run.error_stacktrace is not None:
        a[sc.ATTR_ERROR_STACKTRACE] = run.error_stacktrace
    if run.schedule is not None:
        a[sc.ATTR_SCHEDULE_NAME] = run.schedule
        if run.scheduled_for is not None:
            a[sc.ATTR_SCHEDULE_SCHEDULED_FOR] = run.scheduled_for
    meta = present(handle._meta)
    if meta:
        a[sc.ATTR_METADATA] = to_json(meta)
    if run.attributes:
        for key, value in run.attributes.items():
            a[sc.ATTR_USER_PREFIX + key] = value
    return a


def core_attributes(run: Run, now: float) -> dict[str, AttributeValue]:
    """The part of :func:`record_attributes` that holds no user value (identity, status,
    times, outcome): the fallback when the full state cannot be written."""
    a: dict[str, AttributeValue] = {
        sc.ATTR_JOB_NAME: run.name,
        sc.ATTR_JOB_QUEUE: run.queue,
        sc.ATTR_JOB_RUN_ID: run.id,
        sc.ATTR_JOB_ATTEMPT: run.attempt,
        sc.ATTR_JOB_EXECUTION_ID: run.execution_id,
        sc.ATTR_JOB_STATUS: run.status,
        sc.ATTR_JOB_HEALTH: run.health,
        sc.ATTR_JOB_STUCK: run.stuck,
        sc.ATTR_JOB_SEQUENCE: run.next_seq(),
        sc.ATTR_JOB_STARTED_AT: run.started_at,
        sc.ATTR_HEARTBEAT_INTERVAL: run.heartbeat_interval,
        sc.ATTR_JOB_LEASE: run.static.lease,
        sc.ATTR_HEARTBEAT_COUNT: run.calls,
        sc.ATTR_HEARTBEAT_LAST: run.last_heartbeat,
        sc.ATTR_VIOLATION_COUNT: len(run.violations),
        sc.ATTR_LIMIT_POLICY: run.on_limit,
        sc.ATTR_HOST_NAME: _process.HOST,
        sc.ATTR_PROCESS_PID: _process.pid,
        sc.ATTR_SERVICE_INSTANCE_ID: _process.instance_id,
    }
    if run.finished_at is not None:
        a[sc.ATTR_JOB_FINISHED_AT] = run.finished_at
        a[sc.ATTR_JOB_DURATION] = max(0.0, run.finished_at - run.started_at)
    if run.error_type is not None:
        a[sc.ATTR_ERROR_TYPE] = run.error_type
    if run.error_message is not None:
        a[sc.ATTR_ERROR_MESSAGE] = run.error_message
    if run.parent is not None:
        a[sc.ATTR_JOB_PARENT_RUN_ID] = run.parent.id
    stuck = run.stuck_time
    if stuck is not None:  # kept after the run recovers: the store keeps the history
        a[sc.ATTR_JOB_STUCK_SINCE] = stuck.since
        a[sc.ATTR_JOB_STUCK_DURATION] = stuck.seconds(now)
    return a


def emit(
    run: Run,
    event_name: str,
    now: float,
    *,
    severity: str = "INFO",
    event: Mapping[str, AttributeValue] | None = None,
    body: str = "",
) -> None:
    """Publish one lifecycle record with the run's full state (telemetry-safe).

    ``event`` is the event's own attribute set (the heartbeat's call count, the
    violation's limit, …): the record carries it inside its full-state attributes and
    separately as :attr:`LifecycleRecord.event_attributes`, so every writer of the
    event (the log record, the span event) writes this one set.
    """
    to = receivers(event_name)
    if to:
        publish(run, to, event_name, now, severity, event, body)


def publish(
    run: Run,
    to: tuple[Receiver, ...],
    event_name: str,
    now: float,
    severity: str = "INFO",
    event: Mapping[str, AttributeValue] | None = None,
    body: str = "",
) -> None:
    """:func:`emit` to the listeners ``to`` that want it (the caller asked ``receivers``).

    Should the run's state not be writable (a value the entry points let through), the
    record still goes out, with what the runtime itself set (:func:`core_attributes`), and
    an internal error is counted: a lost ``finished`` record leaves a run ``running`` for
    ever, and later *lost*.
    """
    try:
        try:
            attributes = record_attributes(run, now)
        except Exception as exc:
            internal_error(f"record:{event_name}", exc)
            attributes = core_attributes(run, now)
        if event:
            attributes.update(event)
        deliver(
            LifecycleRecord(
                event_name=event_name,
                timestamp=now,
                attributes=attributes,
                trace_id=run.trace_id,
                span_id=run.span_id,
                severity=severity,
                body=body or f"{run.name} {_EVENT_WORDS.get(event_name, event_name)}",
                context=run.otel_context,
                event_attributes=event,
            ),
            to,
        )
    except Exception as exc:
        internal_error(f"emit:{event_name}", exc)
