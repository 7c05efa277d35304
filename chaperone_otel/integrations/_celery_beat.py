"""Celery beat: the ``beat_schedule`` entries become schedules, each dispatch is recorded.

Public through ``chaperone_otel.integrations.celery`` (kept in its own module: the task
integration and this one change for different reasons). ``instrument(app)`` calls
:func:`instrument_beat` with the defaults; call it yourself (before or after) for other
thresholds. In the beat process (``beat_init``):

* every entry of ``app.conf.beat_schedule`` is declared as a schedule of the same name: a
  ``crontab`` as its cron expression in the app's time zone, a number, ``timedelta`` or
  ``schedule`` as an interval (solar and custom schedules are skipped, logged once);
* they are declared again every ``declare_every`` seconds, so the store reports the beat
  *lost* when it goes silent;
* each dispatch of an entry puts the entry's name and slot on the task message (headers
  ``chaperone_schedule`` and ``chaperone_scheduled_for``, the latter for cron entries) and
  publishes a ``chaperone.schedule.dispatched`` record: the store then tells "beat never sent
  it" (no dispatch) from "nobody ran it" (a dispatch, no run).

In the worker, the instrumented task's run carries the schedule from those headers, so its
slot is matched by name (and by the slot's due time for cron entries). A task routed to a
queue nobody consumes never starts: its slots are missed, and the dispatches show beat did
its part.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

from .._events import publish
from .._safety import handle_internal_errors as _guard
from .._schedule import declare, dispatch_record
from .._schedules import (
    DEFAULT_GRACE,
    ScheduleSpec,
    make_schedule,
    previous_cron_due,
)
from ._framework import framework_import_error as _framework_import_error

try:
    from celery import Celery, signals
    from celery.schedules import crontab, schedule
except ImportError as _error:  # pragma: no cover - exercised only without celery
    raise _framework_import_error("celery", _error) from _error

logger = logging.getLogger("chaperone_otel")

HEADER_SCHEDULE: Final = "chaperone_schedule"
"""Message header naming the beat entry (the schedule) a task was dispatched for."""

HEADER_SCHEDULED_FOR: Final = "chaperone_scheduled_for"
"""Message header: the Unix due time of the slot a cron entry's task serves."""

DEFAULT_DECLARE_EVERY: Final = 60.0
"""Seconds between a beat's re-declarations (lost after three silent periods)."""

_UID: Final = "chaperone_otel.integrations.celery_beat"


_CRON_FIELDS: Final = (
    # (crontab's expanded set, its original argument, every value of the field)
    ("minute", "_orig_minute", range(60)),
    ("hour", "_orig_hour", range(24)),
    ("day_of_month", "_orig_day_of_month", range(1, 32)),
    ("month_of_year", "_orig_month_of_year", range(1, 13)),
    ("day_of_week", "_orig_day_of_week", range(7)),
)
"""The five cron fields of a ``crontab``, in cron's order."""


def crontab_cron(every: crontab) -> str:
    """The cron expression of a ``crontab``, read from the sets Celery expanded.

    Celery accepts more than cron text: ``hour=[1, 13]``, ``minute=range(0, 60, 15)``,
    ``day_of_week="monday"``. Their ``str()`` is no cron field ("[1, 13]"), and one such
    entry used to stop the beat integration for every entry. The expanded int sets are
    what Celery itself fires on, so each field is built from them: ``*`` for every value
    (cron's day rule depends on it), the original text when cronsim reads it as the same
    set (``*/15``, ``mon-fri`` stay readable), else a comma list.
    """
    return " ".join(
        _cron_field(i, set(getattr(every, expanded)), getattr(every, original, None), full)
        for i, (expanded, original, full) in enumerate(_CRON_FIELDS)
    )


def _cron_field(index: int, values: set[int], original: object, full: range) -> str:
    if values >= set(full):
        return "*"
    text = str(original) if isinstance(original, (str, int)) else ""
    if text and _cronsim_reads(index, text) == values:
        return text
    return ",".join(str(v) for v in sorted(values))


def _cronsim_reads(index: int, text: str) -> set[int] | None:
    """The set cronsim reads ``text`` as in field ``index`` (day of week: 0 is Sunday, as
    in Celery), or None when it refuses it."""
    from datetime import datetime, timezone  # noqa: PLC0415

    from cronsim import CronSim, CronSimError  # noqa: PLC0415

    fields = ["*"] * 5
    fields[index] = text
    try:
        sim = CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=timezone.utc))
    except CronSimError:
        return None
    parsed = (sim.minutes, sim.hours, sim.days, sim.months, sim.weekdays)[index]
    if not all(isinstance(v, int) for v in parsed):  # "L", "5#2": no Celery set is one
        return None
    return {v % 7 if index == 4 else v for v in parsed if isinstance(v, int)}


def entry_spec(
    name: str, entry: Mapping[str, Any], *, timezone: str, **options: Any
) -> ScheduleSpec | None:
    """The schedule of one ``beat_schedule`` entry, or None for a kind we cannot read.

    Raises:
        ConfigurationError: the entry's schedule cannot be declared (an option refused).
    """
    every = entry.get("schedule")
    if isinstance(every, crontab):
        cron = crontab_cron(every)
        _minute, _hour, day_of_month, _month, day_of_week = cron.split()
        return make_schedule(
            name,
            cron=cron,
            tz=timezone,
            source="celery-beat",
            # Celery fires only on days matching both day fields; cron on either.
            day_and=day_of_month != "*" and day_of_week != "*",
            **options,
        )
    if isinstance(every, schedule):
        every = every.run_every
    if isinstance(every, (int, float, timedelta)) and not isinstance(every, bool):
        return make_schedule(name, interval=every, source="celery-beat", **options)
    return None


def beat_specs(app: Celery, **options: Any) -> list[ScheduleSpec]:
    """Every readable entry of ``app.conf.beat_schedule`` as a schedule.

    An entry that cannot be declared is skipped with a warning naming it: one odd entry
    must not take the beat integration away from the others.
    """
    zone = getattr(app.timezone, "key", None) or "UTC"
    specs = []
    for name, entry in (app.conf.beat_schedule or {}).items():
        try:
            spec = entry_spec(name, entry, timezone=zone, **options)
        except Exception as exc:  # any entry may be odd; the others still count
            logger.warning(
                "chaperone-otel: beat entry %r cannot be declared as a schedule (%s): not declared",
                name,
                exc,
            )
            continue
        if spec is None:
            logger.warning(
                "chaperone-otel: beat entry %r has a schedule it cannot read (%s): not declared",
                name,
                type(entry.get("schedule")).__name__,
            )
            continue
        specs.append(spec)
    return specs


class _Beat:
    """The beat-side receivers of one app."""

    def __init__(self, app: Celery, options: dict[str, Any]) -> None:
        self.app = app
        self.options = options
        self.specs: dict[str, ScheduleSpec] = {}
        self.local = threading.local()

    def init(self, sender: Any = None, **_: Any) -> None:
        """``beat_init``: declare the entries; wrap this beat's ``apply_entry``."""
        if getattr(sender, "app", None) is not self.app:
            return
        with _guard("celery_beat.init"):
            # Wrapped first: dispatches are named and recorded even if declaring fails.
            scheduler = sender.scheduler
            original = scheduler.apply_entry

            def apply_entry(entry: Any, producer: Any = None) -> Any:
                self.local.entry = entry
                try:
                    return original(entry, producer=producer)
                finally:
                    self.local.entry = None

            scheduler.apply_entry = apply_entry
        with _guard("celery_beat.init"):
            for spec in beat_specs(self.app, **self.options):
                self.specs[spec.name] = spec
                declare(spec)

    def before_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        """``before_task_publish`` (beat process, in ``apply_entry``): name the slot."""
        entry = getattr(self.local, "entry", None)
        if entry is None or headers is None:
            return
        with _guard("celery_beat.publish"):
            spec = self.specs.get(entry.name)
            if spec is None:
                return
            now = _now()
            headers[HEADER_SCHEDULE] = spec.name
            due: float | None = None
            if spec.cron is not None:
                due = previous_cron_due(spec, now + 1.0)
                headers[HEADER_SCHEDULED_FOR] = due
            publish(dispatch_record(spec.name, str(headers.get("id") or ""), due, now))


def _now() -> float:
    from .._config import get_config  # noqa: PLC0415

    return get_config().clock()


def run_options(request: Any) -> dict[str, Any]:
    """``start_run`` options of a task run from its beat headers (none when not from beat)."""
    name = getattr(request, HEADER_SCHEDULE, None)
    if not isinstance(name, str) or not name:
        headers = getattr(request, "headers", None) or {}
        name = headers.get(HEADER_SCHEDULE) if isinstance(headers, Mapping) else None
        due = headers.get(HEADER_SCHEDULED_FOR) if isinstance(headers, Mapping) else None
    else:
        due = getattr(request, HEADER_SCHEDULED_FOR, None)
    if not isinstance(name, str) or not name:
        return {}
    options: dict[str, Any] = {"schedule": name}
    if isinstance(due, (int, float)) and not isinstance(due, bool):
        options["scheduled_for"] = float(due)
    return options


_beats: dict[int, _Beat] = {}


def instrument_beat(
    app: Celery,
    *,
    grace: Any = DEFAULT_GRACE,
    max_runtime: Any = None,
    failure_threshold: int = 1,
    declare_every: Any = DEFAULT_DECLARE_EVERY,
) -> None:
    """Declare ``app``'s beat entries as schedules and record each dispatch (in the beat
    process; see the module doc). A second call replaces the options.

    Args:
        app: the Celery app.
        grace: how long after its due time a task may start before the slot is missed.
        max_runtime: how long a run may run before its schedule has overrun.
        failure_threshold: failed runs in a row that make a schedule failing.
        declare_every: the beat re-declares this often; silent for 3 periods, it is lost.

    .. versionadded:: 0.2
    """
    options = {
        "grace": grace,
        "max_runtime": max_runtime,
        "failure_threshold": failure_threshold,
        "declare_every": declare_every,
    }
    make_schedule("check", interval=1, **options)  # misuse fails now, not in the beat
    beat = _beats.get(id(app))
    if beat is not None:
        beat.options = options
        return
    beat = _beats[id(app)] = _Beat(app, options)
    uid = f"{_UID}:{id(app)}"
    signals.beat_init.connect(beat.init, weak=False, dispatch_uid=uid)
    signals.before_task_publish.connect(beat.before_publish, weak=False, dispatch_uid=uid)


def uninstrument_beat(app: Celery) -> None:
    """Undo :func:`instrument_beat` for ``app``.

    .. versionadded:: 0.2
    """
    beat = _beats.pop(id(app), None)
    if beat is None:
        return
    uid = f"{_UID}:{id(app)}"
    signals.beat_init.disconnect(beat.init, dispatch_uid=uid)
    signals.before_task_publish.disconnect(beat.before_publish, dispatch_uid=uid)


__all__ = [
    "HEADER_SCHEDULE",
    "HEADER_SCHEDULED_FOR",
    "beat_specs",
    "instrument_beat",
    "run_options",
    "uninstrument_beat",
]
