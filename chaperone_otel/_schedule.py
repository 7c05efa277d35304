"""Declaring a schedule from code: ``chaperone_otel.schedule(name, cron=… | interval=…)``.

A declaration is published as a record (``chaperone.schedule.declared``) to the same
listeners as a run's lifecycle records, so it reaches every store a run would: the embedded
sink stores it directly (or forwards it to the file's owner), and the OTel log writer exports
it over OTLP to ``sink serve``. Detection (missed, late, …) then runs where the store is,
never in the declaring process: a worker that is not running cannot report its own missed
run.

The process keeps what it declared, and declares it all again when ``configure()`` installs
new listeners (a schedule declared at import time, before ``configure()``, still arrives).
A schedule with ``declare_every`` is re-declared that often by a daemon thread
(``chaperone-schedules``): the store then notices when the declaring process goes silent
(*scheduler lost*), which is what a beat process wants; a cron script that declares its own
schedule and exits leaves ``declare_every`` unset.

Example::

    nightly = chaperone_otel.schedule("nightly-import", cron="0 2 * * *", tz="Europe/Paris",
                                      grace="15m", max_runtime="2h")

    @supervised(schedule=nightly)
    def nightly_import(): ...
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final

from . import _process
from . import semconv as sc
from ._config import get_config
from ._events import LifecycleRecord, publish
from ._safety import internal_error
from ._schedules import DEFAULT_GRACE, ScheduleSpec, make_schedule

_MIN_DECLARE_EVERY: Final = 1.0
"""Seconds: the re-declaring thread wakes at most this often."""


class Schedule:
    """A declared schedule (what :func:`schedule` returns); pass it to
    ``@supervised(schedule=...)`` so the job's runs belong to it.

    .. versionadded:: 0.2
    """

    __slots__ = ("spec",)

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        """The schedule's name (what runs carry in ``chaperone.schedule.name``)."""
        return self.spec.name

    def declare(self) -> None:
        """Publish the declaration again now (idempotent: the store keeps the newest)."""
        _declare(self.spec, _now())

    def __repr__(self) -> str:
        what = f"cron={self.spec.cron!r}" if self.spec.cron else f"interval={self.spec.interval}"
        return f"Schedule({self.spec.name!r}, {what}, tz={self.spec.timezone!r})"


def schedule(
    name: str,
    *,
    cron: str | None = None,
    interval: Any = None,
    tz: str = "UTC",
    grace: Any = DEFAULT_GRACE,
    max_runtime: Any = None,
    failure_threshold: int = 1,
    declare_every: Any = None,
) -> Schedule:
    """Declare (or re-declare) the schedule ``name``: when its runs are due.

    Idempotent: declaring the same name again updates it; a changed definition applies to
    the slots due after the change, the slots before it keep what they were judged by.

    Args:
        name: the schedule's name (bounded: a metric label), e.g. the job's name.
        cron: a five-field cron expression (``"0 2 * * *"``), read in ``tz``.
        interval: or the time between runs (``"15m"``, seconds, ``timedelta``): the next
            run is due this long after the previous one started.
        tz: the IANA zone of ``cron`` (DST as cronsim handles it; see docs/schedules.md).
        grace: how long after its due time a run may start before the slot is missed.
        max_runtime: how long a run may run before the schedule has overrun.
        failure_threshold: failed runs in a row that make the schedule failing.
        declare_every: re-declare from this process this often; the store reports the
            scheduler lost after a few silent periods. Unset: declared once.

    Returns:
        The :class:`Schedule`, to pass to ``@supervised(schedule=...)``.

    Raises:
        ConfigurationError: an invalid option (a bad cron expression, an unknown zone …).

    .. versionadded:: 0.2
    """
    spec = make_schedule(
        name,
        cron=cron,
        interval=interval,
        tz=tz,
        grace=grace,
        max_runtime=max_runtime,
        failure_threshold=failure_threshold,
        declare_every=declare_every,
    )
    return declare(spec)


def declare(spec: ScheduleSpec) -> Schedule:
    """Remember and publish a validated declaration (integrations declare through it)."""
    with _lock:
        _declared[spec.name] = spec
        if spec.declare_every is not None:
            _ensure_thread()
    _declare(spec, _now())
    return Schedule(spec)


def declared() -> tuple[ScheduleSpec, ...]:
    """What this process declared, in declaration order."""
    with _lock:
        return tuple(_declared.values())


def redeclare_all() -> None:
    """Publish every declaration again (``configure()`` calls it for its new listeners)."""
    now = _now()
    for spec in declared():
        _declare(spec, now)


def forget_all() -> None:
    """Forget every declaration and stop re-declaring (``reset()``; tests)."""
    global _thread
    with _lock:
        _declared.clear()
        _stop.set()
        _thread = None


def _now() -> float:
    return get_config().clock()


def declaration_record(spec: ScheduleSpec, now: float) -> LifecycleRecord:
    """The record a declaration travels as (not a run's: no run id)."""
    attributes = spec.attributes()
    attributes[sc.ATTR_HOST_NAME] = _process.HOST
    attributes[sc.ATTR_PROCESS_PID] = _process.pid
    attributes[sc.ATTR_SERVICE_INSTANCE_ID] = _process.instance_id
    return LifecycleRecord(
        event_name=sc.EVENT_SCHEDULE_DECLARED,
        timestamp=now,
        attributes=attributes,
        body=f"schedule {spec.name} declared",
    )


def dispatch_record(name: str, task_id: str, due: float | None, now: float) -> LifecycleRecord:
    """The record of one scheduler dispatch (``chaperone.schedule.dispatched``): Celery beat
    and RQ's cron scheduler publish it, so the store tells "never sent" from "never run"."""
    attributes: dict[str, Any] = {
        sc.ATTR_SCHEDULE_NAME: name,
        sc.ATTR_SCHEDULE_RUN_ID: task_id,
        sc.ATTR_HOST_NAME: _process.HOST,
        sc.ATTR_PROCESS_PID: _process.pid,
    }
    if due is not None:
        attributes[sc.ATTR_SCHEDULE_SCHEDULED_FOR] = due
    return LifecycleRecord(
        event_name=sc.EVENT_SCHEDULE_DISPATCHED,
        timestamp=now,
        attributes=attributes,
        body=f"schedule {name} dispatched {task_id}",
    )


def _declare(spec: ScheduleSpec, now: float) -> None:
    try:
        publish(declaration_record(spec, now))
    except Exception as exc:  # telemetry never breaks the caller
        internal_error("schedule.declare", exc)


# --- the re-declaring thread ------------------------------------------------------------------

_lock = threading.Lock()
_declared: dict[str, ScheduleSpec] = {}
_stop = threading.Event()
_thread: threading.Thread | None = None


def _ensure_thread() -> None:
    global _thread, _stop
    if _thread is not None and _thread.is_alive():
        return
    _stop = threading.Event()
    _thread = threading.Thread(
        target=_redeclare_loop, args=(_stop,), name="chaperone-schedules", daemon=True
    )
    _thread.start()


def _redeclare_loop(stop: threading.Event) -> None:
    last: dict[str, float] = {}
    while not stop.wait(_MIN_DECLARE_EVERY):
        now = time.monotonic()
        for spec in declared():
            every = spec.declare_every
            if every is None:
                continue
            if now - last.setdefault(spec.name, now) >= every:
                last[spec.name] = now
                _declare(spec, _now())


def _after_fork_in_child() -> None:
    # A forked child declares nothing by itself: its parent (the scheduler) still does.
    global _lock, _thread
    _lock = threading.Lock()
    _declared.clear()
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Schedule", "declare", "declared", "redeclare_all", "schedule"]
