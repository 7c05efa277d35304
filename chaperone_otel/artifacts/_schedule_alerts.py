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
from typing import Any, TypeVar

from .. import semconv as sc
from .._schedules import DEFAULT_SCHEDULE_POLICY, SchedulePolicy, schedule_rules

A = TypeVar("A")

SCHEDULE = sc.prometheus_label(sc.ATTR_SCHEDULE_NAME)
"""The schedule label of every schedule series."""

SCHEDULE_ALERTS = (
    "ChaperoneScheduleMissed",
    "ChaperoneScheduleOverran",
    "ChaperoneScheduleFailing",
    "ChaperoneSchedulerLost",
)


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

    def live(**values: tuple[sc.MetricSpec, str]) -> tuple[dict[str, str], ...]:
        return tuple(_series(metric, labels, v) for metric, v in values.values())

    # Promtool series: one sample per 15 s, "aXn" repeats a; values are Unix times (0 = epoch).
    due = (sc.METRIC_SCHEDULE_LAST_DUE, "60x20")  # the slot fell due at t=60 s
    opens = (sc.METRIC_SCHEDULE_LAST_OPENS, "0x20")  # runs count from t=0
    grace = (sc.METRIC_SCHEDULE_GRACE, "30x20")
    return [
        alert(
            "ChaperoneScheduleMissed",
            _promql(r.missed.promql()),
            "critical",
            f"Schedule {name} missed a run",
            f"No run of schedule {name} started within its grace after its latest due time "
            "(a broken crontab, a dead beat, nobody consuming the queue). Reported by the "
            "sink, which knows the schedule.",
            # due at 60 s, grace 30 s, no run since it opened: missed from 90 s.
            fire=scenario(live(due=due, opens=opens, grace=grace), "2m", labels),
            quiet=scenario(
                live(
                    due=due,
                    opens=opens,
                    grace=grace,
                    start=(sc.METRIC_SCHEDULE_LAST_START, "65x20"),
                ),
                "2m",
            ),
        ),
        alert(
            "ChaperoneScheduleOverran",
            _promql(r.overran.promql()),
            "warning",
            f"Schedule {name} has a run past its max runtime",
            f"A run of schedule {name} is still running longer than the schedule's max_runtime.",
            fire=scenario(
                live(
                    since=(sc.METRIC_SCHEDULE_RUNNING_SINCE, "0x20"),
                    limit=(sc.METRIC_SCHEDULE_MAX_RUNTIME, "60x20"),
                ),
                "2m",
                labels,
            ),
            quiet=scenario(
                live(
                    since=(sc.METRIC_SCHEDULE_RUNNING_SINCE, "0x20"),
                    limit=(sc.METRIC_SCHEDULE_MAX_RUNTIME, "3600x20"),
                ),
                "2m",
            ),
        ),
        alert(
            "ChaperoneScheduleFailing",
            _promql(r.failing.promql()),
            "critical",
            f"Schedule {name} is failing",
            f"The latest runs of schedule {name} failed, as many in a row as its "
            "failure_threshold.",
            fire=scenario(
                live(
                    n=(sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES, "3x20"),
                    k=(sc.METRIC_SCHEDULE_FAILURE_THRESHOLD, "3x20"),
                ),
                "1m",
                labels,
            ),
            quiet=scenario(
                live(
                    n=(sc.METRIC_SCHEDULE_CONSECUTIVE_FAILURES, "2x20"),
                    k=(sc.METRIC_SCHEDULE_FAILURE_THRESHOLD, "3x20"),
                ),
                "1m",
            ),
        ),
        alert(
            "ChaperoneSchedulerLost",
            _promql(r.lost.promql()),
            "critical",
            f"The scheduler of {name} went silent",
            f"The process that declares schedule {name} every declare_every seconds (a beat "
            f"process) has not declared it for {policy.lost_after:g} periods: no run of it "
            "will be dispatched.",
            # declared at t=0 only, every 10 s expected: lost after 30 s.
            fire=scenario(
                live(
                    at=(sc.METRIC_SCHEDULE_LAST_DECLARED, "0x20"),
                    every=(sc.METRIC_SCHEDULE_DECLARE_EVERY, "10x20"),
                ),
                "1m",
                labels,
            ),
            quiet=scenario(
                live(
                    at=(sc.METRIC_SCHEDULE_LAST_DECLARED, "0+15x20"),
                    every=(sc.METRIC_SCHEDULE_DECLARE_EVERY, "10x20"),
                ),
                "1m",
            ),
        ),
    ]


__all__ = ["SCHEDULE", "SCHEDULE_ALERTS", "schedule_alerts"]
