"""The schedule alerts (issue 15): missed, overran, failing, scheduler lost.

Each expression is a schedule rule of :mod:`chaperone_otel._schedules` rendered to PromQL
over the sink's schedule series (``time() - last_due > grace unless last_start >
last_opens``): the same trees the store's ``sink.schedules.missed()`` renders to SQL, so the
alert and the query agree. Prometheus evaluates them in its own clock, and a value the store
does not have is no series, so no rule needs ``absent()``.

Kept apart from ``_rules`` (which builds the run alerts) and given its ``Alert`` and
``Scenario`` types by :func:`schedule_alerts`'s caller, so neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .. import semconv as sc
from .._schedules import DEFAULT_SCHEDULE_POLICY, SchedulePolicy, schedule_rules

A = TypeVar("A")

SCHEDULE = sc.prometheus_label(sc.ATTR_SCHEDULE_NAME)
"""The schedule label of every schedule series."""

Series = Mapping[str, tuple[sc.MetricSpec, str]]
"""Promtool input series by a local name: (metric, promtool values)."""


@dataclass(frozen=True)
class _ScheduleAlert:
    """One schedule state's alert: what it says, and a promtool scenario where it fires plus
    what changes in it to keep it quiet.

    ``description`` is a ``str.format`` template over ``name`` (the schedule label, a Go
    template) and ``lost_after`` (the policy's periods before a scheduler counts as lost).
    """

    name: str
    rule: str  # a SCHEDULE_PREDICATES name
    severity: str
    summary: str
    description: str
    fire: Series
    quiet: Series  # replaces or adds series of ``fire``
    eval_time: str


# Promtool series: one sample per 15 s, "aXn" repeats a; values are Unix times (0 = epoch).
_DUE = (sc.METRIC_SCHEDULE_LAST_DUE, "60x20")  # the slot fell due at t=60 s
_OPENS = (sc.METRIC_SCHEDULE_LAST_OPENS, "0x20")  # runs count from t=0
_GRACE = (sc.METRIC_SCHEDULE_GRACE, "30x20")

_ALERTS: Final = (
    _ScheduleAlert(
        "ChaperoneScheduleMissed",
        "missed",
        "critical",
        "Schedule {name} missed a run",
        "No run of schedule {name} started within its grace after its latest due time "
        "(a broken crontab, a dead beat, nobody consuming the queue). Reported by the "
        "sink, which knows the schedule.",
        # due at 60 s, grace 30 s, no run since it opened: missed from 90 s.
        fire={"due": _DUE, "opens": _OPENS, "grace": _GRACE},
        quiet={"start": (sc.METRIC_SCHEDULE_LAST_START, "65x20")},
        eval_time="2m",
    ),
    _ScheduleAlert(
        "ChaperoneScheduleOverran",
        "overran",
        "warning",
        "Schedule {name} has a run past its max runtime",
        "A run of schedule {name} is still running longer than the schedule's max_runtime.",
        fire={
            "since": (sc.METRIC_SCHEDULE_RUNNING_SINCE, "0x20"),
            "limit": (sc.METRIC_SCHEDULE_MAX_RUNTIME, "60x20"),
        },
        quiet={"limit": (sc.METRIC_SCHEDULE_MAX_RUNTIME, "3600x20")},
        eval_time="2m",
    ),
    _ScheduleAlert(
        "ChaperoneScheduleFailing",
        "failing",
        "critical",
        "Schedule {name} is failing",
        "The latest runs of schedule {name} failed, as many in a row as its failure_threshold.",
        fire={
            "n": (sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES, "3x20"),
            "k": (sc.METRIC_SCHEDULE_FAILURE_THRESHOLD, "3x20"),
        },
        quiet={"n": (sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES, "2x20")},
        eval_time="1m",
    ),
    _ScheduleAlert(
        "ChaperoneSchedulerLost",
        "lost",
        "critical",
        "The scheduler of {name} went silent",
        "The process that declares schedule {name} every declare_every seconds (a beat "
        "process) has not declared it for {lost_after:g} periods: no run of it "
        "will be dispatched.",
        # declared at t=0 only, every 10 s expected: lost after 30 s.
        fire={
            "at": (sc.METRIC_SCHEDULE_LAST_DECLARED, "0x20"),
            "every": (sc.METRIC_SCHEDULE_DECLARE_EVERY, "10x20"),
        },
        quiet={"at": (sc.METRIC_SCHEDULE_LAST_DECLARED, "0+15x20")},
        eval_time="1m",
    ),
)

SCHEDULE_ALERTS = tuple(a.name for a in _ALERTS)


def _series(metric: sc.MetricSpec, labels: Mapping[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric.prometheus}{{{inner}}}", "values": values}


def _promql(rendered: object) -> str:
    if not isinstance(rendered, str):  # pragma: no cover - every schedule rule renders
        raise ValueError("a schedule rule has no PromQL form")
    return rendered


def schedule_alerts(
    alert: Callable[..., A],
    scenario: Callable[..., Any],
    sink_labels: Mapping[str, str],
    policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY,
) -> list[A]:
    """The schedule alerts, built with the caller's ``alert`` and ``scenario`` types."""
    r = schedule_rules(policy)
    labels = {SCHEDULE: "nightly", **sink_labels}
    name = "{{ $labels.%s }}" % SCHEDULE  # noqa: UP031 - a Go template, not a format

    def live(series: Series) -> tuple[dict[str, str], ...]:
        return tuple(_series(metric, labels, values) for metric, values in series.values())

    return [
        alert(
            a.name,
            _promql(r.by_name(a.rule).promql()),
            a.severity,
            a.summary.format(name=name),
            a.description.format(name=name, lost_after=policy.lost_after),
            fire=scenario(live(a.fire), a.eval_time, labels),
            quiet=scenario(live({**a.fire, **a.quiet}), a.eval_time),
        )
        for a in _ALERTS
    ]


__all__ = ["SCHEDULE", "SCHEDULE_ALERTS", "schedule_alerts"]
