"""The schedules row of the sink dashboard (issue 15), from the schedule rules' PromQL.

The counts use the alert expressions themselves (``count(<missed>) or vector(0)``), with the
dashboard's instance matcher added to each schedule series, so a panel and its alert cannot
disagree on one sink. Built with the caller's panel and target helpers so
that ``_dashboards`` and this module do not import each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .. import semconv as sc
from .._schedules import (
    DEFAULT_SCHEDULE_POLICY,
    SCHEDULE_PROMQL_SIGNALS,
    SchedulePolicy,
    schedule_rules,
)

SCHEDULE = sc.prometheus_label(sc.ATTR_SCHEDULE_NAME)

# A bare schedule series in a rendered rule (every name is whole: the word boundaries keep
# one name from matching inside a longer one).
_SERIES = re.compile(
    r"\b("
    + "|".join(sorted(re.escape(m.prometheus) for m in SCHEDULE_PROMQL_SIGNALS.values()))
    + r")\b(?!\{)"
)


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def schedule_panels(
    panel: Callable[..., dict[str, Any]],
    target: Callable[..., dict[str, Any]],
    sel: str,
    policy: SchedulePolicy = DEFAULT_SCHEDULE_POLICY,
) -> list[dict[str, Any]]:
    """The schedule panels (one grid row of four counts, then two graphs); ``sel`` is the
    dashboard's instance matcher. No Grafana ``row`` panel: every panel here has targets."""
    r = schedule_rules(policy)
    red = _thresholds(("green", None), ("red", 1))

    def count(expr: Any) -> str:
        scoped = _SERIES.sub(lambda m: f"{m.group(1)}{{{sel}}}", str(expr))
        return f"count({scoped}) or vector(0)"

    def filtered(metric: sc.MetricSpec) -> str:
        return f"{metric.prometheus}{{{sel}}}"

    stats = [
        (
            "Schedules missed",
            "Schedules whose latest slot passed its grace without a run.",
            r.missed,
        ),
        ("Schedules overran", "Schedules with a run past max_runtime.", r.overran),
        ("Schedules failing", "Schedules whose last N runs failed.", r.failing),
        ("Schedulers lost", "Schedules whose declaring process went silent.", r.lost),
    ]
    return [
        *(
            panel("stat", title, text, [target(count(expr.promql()))], w=6, h=4, thresholds=red)
            for title, text, expr in stats
        ),
        panel(
            "timeseries",
            "Since last due, by schedule",
            "Seconds since each schedule's latest slot fell due (a saw-tooth: it drops at each "
            "new slot); the grace is the line a run must start under.",
            [
                target(f"time() - {filtered(sc.METRIC_SCHEDULE_LAST_DUE)}", "{{" + SCHEDULE + "}}"),
                target(
                    filtered(sc.METRIC_SCHEDULE_GRACE),
                    "grace {{" + SCHEDULE + "}}",
                    "B",
                ),
            ],
            unit="s",
            minimum=0,
        ),
        panel(
            "timeseries",
            "Since last success, by schedule",
            "Seconds since each schedule's latest completed run ended.",
            [
                target(
                    f"time() - {filtered(sc.METRIC_SCHEDULE_LAST_SUCCESS)}",
                    "{{" + SCHEDULE + "}}",
                )
            ],
            unit="s",
            minimum=0,
        ),
    ]


__all__ = ["schedule_panels"]
