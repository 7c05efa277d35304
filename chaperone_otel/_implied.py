"""What a lifecycle record on the wire may leave out, because the sink restores it exactly.

A run's two lifecycle records are most of what a run costs with OTLP export (issue 16
goal 2): the OTel SDK validates each attribute on the job's thread (~0.5 us) and its Python
protobuf encoder spends several microseconds per attribute on the exporter's thread. Most
of a ``started`` record's state is what every run has at its start, and most of a
``finished`` record repeats the run's spec, unchanged since its ``started`` record. So the
OTel log writer (:mod:`._otel._logs`) leaves out:

* values a record's own other values imply (:func:`slim`, restored by :func:`restore` when
  the sink stages the record): at a start and at a finish, the defaults (no heartbeat, no
  violation, not stuck, no progress; at a start also ``running``, sequence 1, ``healthy``,
  the default lease and limit policy), the last heartbeat and the progress time when they
  are the start time. A value is left out only when it *equals* what the sink
  restores (same type, same value), so the stored row is identical either way;
* on a ``finished`` record, the run's spec (:data:`SPEC_ON_FINISHED`: heartbeat interval,
  lease, timeout, stall timeout, limits, limit policy), which the ``started`` record and
  every record since carried: the store keeps these columns once set (their merge rule is
  ``sticky`` in :data:`~chaperone_otel._fields.RUN_FIELDS`). A ``finished`` record whose
  ``started`` record was lost still makes a whole row (identity, status, times, outcome,
  verdict; a finished run's health depends only on its status and violations), with those
  spec columns empty. ``timeout_at`` is not in it: a framework's time limit may move the
  deadline at the finish.

What a reader of the raw log records in another backend filters and charts on stays on the
``finished`` record though the sink could derive it: its status, health and duration (a
duration is ~5 us of encoding; a log query that must subtract two attributes is a worse
trade). A ``finished`` record without a duration (a third party's) gets end minus start.

In-process listeners (the embedded store, ``testing``) still get the full state; only what
goes out as an OTel log record is slimmed. Layer 2: imports only :mod:`.semconv`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from . import semconv as sc

_AT_A_FINISH: Final[Mapping[str, Any]] = {
    sc.ATTR_JOB_STUCK: False,
    sc.ATTR_HEARTBEAT_COUNT: 0,
    sc.ATTR_VIOLATION_COUNT: 0,
    sc.ATTR_PROGRESS_RATIO: 0.0,
}

DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {
    sc.EVENT_JOB_STARTED: {
        sc.ATTR_JOB_STATUS: "running",
        sc.ATTR_JOB_SEQUENCE: 1,
        sc.ATTR_JOB_HEALTH: "healthy",
        sc.ATTR_JOB_LEASE: "heartbeat",
        sc.ATTR_LIMIT_POLICY: "record",
        **_AT_A_FINISH,
    },
    sc.EVENT_JOB_FINISHED: _AT_A_FINISH,
}
"""Event → attribute → the value an absent attribute means on that event's record."""

START_TIME_COPIES: Final = (sc.ATTR_HEARTBEAT_LAST, sc.ATTR_PROGRESS_UPDATED_AT)
"""Attributes that, absent from a ``started`` or ``finished`` record, equal its
start time (no heartbeat, no progress report since the start)."""

SPEC_ON_FINISHED: Final = frozenset(
    {
        sc.ATTR_HEARTBEAT_INTERVAL,
        sc.ATTR_JOB_LEASE,
        sc.ATTR_LIMIT_POLICY,
        sc.ATTR_JOB_TIMEOUT,
        sc.ATTR_JOB_STALL_TIMEOUT,
        sc.ATTR_LIMIT_MEMORY,
        sc.ATTR_LIMIT_CPU,
        sc.ATTR_LIMIT_FDS,
    }
)
"""The run's spec, which a ``finished`` record does not repeat (kept by the store)."""


def _duration(attributes: Mapping[str, Any]) -> float | None:
    """End minus start of a record, as the runtime computes a finished run's duration."""
    started = attributes.get(sc.ATTR_JOB_STARTED_AT)
    finished = attributes.get(sc.ATTR_JOB_FINISHED_AT)
    if type(started) is not float or type(finished) is not float:
        return None
    return max(0.0, finished - started)


_CHECKS: Final = {
    event: tuple((key, implied, type(implied)) for key, implied in defaults.items())
    for event, defaults in DEFAULTS.items()
}
""":data:`DEFAULTS` as (attribute, implied value, its type) per event, for :func:`slim`."""

_SPEC_KEYS: Final = tuple(sorted(SPEC_ON_FINISHED))


def slim(
    event_name: str, attributes: Mapping[str, Any], resource: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    """``attributes`` without what :func:`restore` gives back exactly (see the module doc)
    nor the ``resource`` values they repeat; ``attributes`` itself when nothing is left
    out. Never mutates ``attributes``.

    One copy, then a few targeted deletions, written out (no call per attribute): it runs
    on the job's thread twice per run. Deleting from a copy keeps the other attributes in
    their order.
    """
    checks = _CHECKS.get(event_name)
    if checks is None:
        if resource and any(attributes.get(k) == v for k, v in resource.items()):
            return {k: v for k, v in attributes.items() if k not in resource or resource[k] != v}
        return attributes
    out = dict(attributes)
    if event_name == sc.EVENT_JOB_FINISHED:
        pop = out.pop
        for key in _SPEC_KEYS:
            pop(key, None)
    get = out.get
    for key, implied, kind in checks:
        value = get(key)
        if value is not None and type(value) is kind and value == implied:
            del out[key]
    started_at = get(sc.ATTR_JOB_STARTED_AT)
    if started_at is not None:
        kind = type(started_at)
        for key in START_TIME_COPIES:
            value = get(key)
            if value is not None and type(value) is kind and value == started_at:
                del out[key]
    if resource:
        for key, implied in resource.items():
            if key in out and out[key] == implied:
                del out[key]
    return out


def restore(event_name: str, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """``attributes`` with what :func:`slim` left out put back (the spec excepted: the store
    keeps it); ``attributes`` itself when nothing is missing or for other events."""
    defaults = DEFAULTS.get(event_name)
    if defaults is None:
        return attributes
    missing = [k for k in defaults if k not in attributes]
    started_at = attributes.get(sc.ATTR_JOB_STARTED_AT)
    copies = [k for k in START_TIME_COPIES if k not in attributes] if started_at is not None else []
    duration = None
    if event_name == sc.EVENT_JOB_FINISHED and sc.ATTR_JOB_DURATION not in attributes:
        duration = _duration(attributes)
    if not missing and not copies and duration is None:
        return attributes
    out = dict(attributes)
    for key in missing:
        out[key] = defaults[key]
    for key in copies:
        out[key] = started_at
    if duration is not None:
        out[sc.ATTR_JOB_DURATION] = duration
    return out
