"""RQ's cron scheduler: its registered jobs become schedules, each enqueue is recorded.

Public through ``chaperone_otel.integrations.rq`` (kept in its own module, as Celery beat's
is: the worker integration and this one change for different reasons). RQ (>= 2.5) runs
periodic jobs from a ``CronScheduler`` (``rq cron config.py``), which builds its scheduler
itself, so :func:`instrument_cron` hooks the classes of ``rq.cron``; call it in the cron
config module, after ``configure()``::

    # cron_config.py   (rq cron cron_config.py --url redis://...)
    from rq import cron

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.rq import instrument_cron

    chaperone.configure(sink="jobs.duckdb")
    instrument_cron(grace="2m")
    cron.register(nightly_report, "default", cron="0 2 * * *")
    cron.register(poll_feeds, "default", interval=300)

When the scheduler starts (``register_birth``), in its process:

* every registered job is declared as a schedule named as RQ names the cron job (its
  ``name=``, else the function's dotted name): a ``cron=`` string in the scheduler's local
  zone (RQ reads cron fields in local time; ``tz=`` overrides), an ``interval=`` as one;
* they are declared again every ``declare_every`` seconds, so the store reports the
  scheduler *lost* when it goes silent;
* each enqueue puts the schedule's name and, for cron jobs, the slot's due time in the
  job's ``meta`` (:data:`META_SCHEDULE`, :data:`META_SCHEDULED_FOR`) and publishes a
  ``chaperone.schedule.dispatched`` record.

In a worker of this module's classes (``SupervisedWorker``), the job's run carries the
schedule and slot from its ``meta`` (:func:`run_options`), so it fulfils the slot. A job on
a queue nobody consumes never starts: its slots are missed, and the dispatches show the
scheduler did its part.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Final

from .._config import get_config
from .._events import publish
from .._safety import handle_internal_errors as _guard
from .._schedule import declare, dispatch_record
from .._schedules import DEFAULT_GRACE, ScheduleSpec, make_schedule, previous_cron_due, zone
from ..exceptions import ConfigurationError

_rq: Any
try:
    from rq import cron as _rq
except ImportError:  # pragma: no cover - RQ before 2.5 has no cron scheduler
    _rq = None

logger = logging.getLogger("chaperone_otel")

META_SCHEDULE: Final = "chaperone_otel.schedule"
"""The ``job.meta`` key naming the schedule (the cron job) a job was enqueued for."""

META_SCHEDULED_FOR: Final = "chaperone_otel.scheduled_for"
"""The ``job.meta`` key of the Unix due time of the slot a cron job's job serves."""

DEFAULT_DECLARE_EVERY: Final = 60.0
"""Seconds between the scheduler's re-declarations (lost after three silent periods)."""


def local_zone() -> str:
    """The IANA name of this process's local zone (RQ reads cron fields in local time):
    ``TZ``, else the ``/etc/localtime`` link, else UTC."""
    candidates = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    link = os.path.realpath("/etc/localtime")
    if "zoneinfo/" in link:
        candidates.append(link.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            zone(name)
        except ConfigurationError:
            continue
        return name
    return "UTC"


def cron_job_spec(job: Any, *, timezone: str, **options: Any) -> ScheduleSpec:
    """The schedule of one RQ ``CronJob`` (its ``cron`` in ``timezone``, or its interval)."""
    if job.cron:
        return make_schedule(job.name, cron=job.cron, tz=timezone, source="rq-cron", **options)
    return make_schedule(job.name, interval=job.interval, source="rq-cron", **options)


def run_options(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """``start_run`` options of a job from its ``meta`` (none when the cron scheduler did not
    enqueue it)."""
    if not isinstance(meta, Mapping):
        return {}
    name = meta.get(META_SCHEDULE)
    if not isinstance(name, str) or not name:
        return {}
    options: dict[str, Any] = {"schedule": name}
    due = meta.get(META_SCHEDULED_FOR)
    if isinstance(due, (int, float)) and not isinstance(due, bool):
        options["scheduled_for"] = float(due)
    return options


class _Cron:
    """What :func:`instrument_cron` installed: the options, the declared specs by name, and
    the originals of the hooked methods."""

    def __init__(self, options: dict[str, Any], tz: str | None) -> None:
        self.options = options
        self.tz = tz
        self.specs: dict[str, ScheduleSpec] = {}
        self.lock = threading.Lock()
        self.register_birth = _rq.CronScheduler.register_birth
        self.enqueue = _rq.CronJob.enqueue

    def declare_jobs(self, scheduler: Any) -> None:
        """Declare every cron job's schedule; one that cannot be declared is skipped with a
        warning naming it (one odd job must not leave the ones after it undeclared)."""
        timezone = self.tz or local_zone()
        for job in scheduler.get_jobs():
            try:
                spec = cron_job_spec(job, timezone=timezone, **self.options)
            except Exception as exc:  # any job may be odd; the others still count
                logger.warning(
                    "chaperone-otel: RQ cron job %r cannot be declared as a schedule (%s): "
                    "not declared",
                    getattr(job, "name", job),
                    exc,
                )
                continue
            with self.lock:
                known = self.specs.get(spec.name)
                if known is not None and known.definition() != spec.definition():
                    logger.warning(
                        "chaperone-otel: RQ cron jobs named %r have different schedules: "
                        "only the first is declared (give each a name=)",
                        spec.name,
                    )
                    continue
                self.specs[spec.name] = spec
            declare(spec)

    def slot_meta(self, job: Any) -> tuple[ScheduleSpec, float | None, float] | None:
        with self.lock:
            spec = self.specs.get(job.name)
        if spec is None:
            return None
        now = get_config().clock()
        due = previous_cron_due(spec, now + 1.0) if spec.cron is not None else None
        return spec, due, now


_installed: _Cron | None = None


def _register_birth(self: Any) -> Any:
    cron = _installed
    assert cron is not None
    result = cron.register_birth(self)
    with _guard("rq_cron.declare"):
        cron.declare_jobs(self)
    return result


def _enqueue(self: Any, connection: Any) -> Any:
    cron = _installed
    assert cron is not None
    slot: tuple[ScheduleSpec, float | None, float] | None = None
    with _guard("rq_cron.enqueue"):
        slot = cron.slot_meta(self)
    if slot is None:
        return cron.enqueue(self, connection)
    spec, due, now = slot
    had_meta = "meta" in self.job_options
    own_meta = self.job_options.get("meta")
    meta = dict(own_meta or {})
    meta[META_SCHEDULE] = spec.name
    if due is not None:
        meta[META_SCHEDULED_FOR] = due
    self.job_options["meta"] = meta
    try:
        job = cron.enqueue(self, connection)
    finally:
        if had_meta:
            self.job_options["meta"] = own_meta
        else:
            self.job_options.pop("meta", None)
    with _guard("rq_cron.dispatch"):
        publish(dispatch_record(spec.name, str(job.id), due, now))
    return job


def instrument_cron(
    *,
    tz: str | None = None,
    grace: Any = DEFAULT_GRACE,
    max_runtime: Any = None,
    failure_threshold: int = 1,
    declare_every: Any = DEFAULT_DECLARE_EVERY,
) -> None:
    """Declare the jobs of RQ's cron scheduler as schedules and record each enqueue (in the
    ``rq cron`` process; see the module doc). A second call replaces the options.

    Args:
        tz: the IANA zone of the ``cron=`` strings (default: this process's local zone,
            which is what RQ reads them in).
        grace: how long after its due time a job may start before the slot is missed.
        max_runtime: how long a run may run before its schedule has overrun.
        failure_threshold: failed runs in a row that make a schedule failing.
        declare_every: the scheduler re-declares this often; silent for 3 periods, it is lost.

    Raises:
        ImportError: the installed RQ has no cron scheduler (it came in RQ 2.5).
        ConfigurationError: an invalid option.

    .. versionadded:: 0.2
    """
    global _installed
    if _rq is None:
        raise ImportError("instrument_cron() needs RQ's cron scheduler: pip install 'rq>=2.5'")
    options = {
        "grace": grace,
        "max_runtime": max_runtime,
        "failure_threshold": failure_threshold,
        "declare_every": declare_every,
    }
    make_schedule("check", interval=1, tz=tz or "UTC", **options)  # misuse fails now
    if _installed is not None:
        _installed.options, _installed.tz = options, tz
        return
    _installed = _Cron(options, tz)
    _rq.CronScheduler.register_birth = _register_birth
    _rq.CronJob.enqueue = _enqueue


def uninstrument_cron() -> None:
    """Undo :func:`instrument_cron` (the schedules already declared stay declared).

    .. versionadded:: 0.2
    """
    global _installed
    cron, _installed = _installed, None
    if cron is None:
        return
    _rq.CronScheduler.register_birth = cron.register_birth
    _rq.CronJob.enqueue = cron.enqueue


__all__ = [
    "META_SCHEDULE",
    "META_SCHEDULED_FOR",
    "cron_job_spec",
    "instrument_cron",
    "local_zone",
    "run_options",
    "uninstrument_cron",
]
