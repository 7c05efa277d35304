"""Grafana dashboards as plain data: overview, run drill-down and sink.

Plain dicts rather than a dashboards-as-code library (grafanalib, grafana-foundation-sdk):
the JSON model is stable, the panels here use a handful of fields, and a dependency that
pins a Grafana schema would cost more than it saves. Every PromQL name comes from
:mod:`chaperone_otel.semconv` or from the recording rules in :mod:`.rules`; thresholds come
from the health policy, so the colours agree with the alerts.

The JSON imports by construction: ``schemaVersion`` set, stable ``uid`` (``chaperone-<slug>``),
no numeric ``id``, tag ``chaperone-otel``, a ``datasource`` template variable used by every
panel and target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import semconv as sc
from .._health import DEFAULT_POLICY, HealthPolicy, promql, rules
from ._rules import (
    BY_JOB,
    HEALTH,
    HTTP_STATUS,
    NAME,
    QUEUE,
    REC_DURATION_QUANTILE,
    REC_FAILURE_RATIO,
    REC_FINISHED_RATE,
    REC_SINK_FAILURE_RATIO,
    REC_SINK_FINISHED_RATE,
    RUN_ID,
    SINK_SCRAPE_JOB,
    SOURCES,
    STATUS,
    AlertSettings,
)
from ._schedule_panels import schedule_panels

SCHEMA_VERSION = 39
"""Grafana dashboard JSON schema version (Grafana 10.4 / 11)."""

TAG = "chaperone-otel"

DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
LIMIT_TYPE = sc.prometheus_label(sc.ATTR_LIMIT_TYPE)
SOURCE = sc.prometheus_label(sc.METRIC_SINK_RECORDS_INGESTED.labels[0])

Panel = dict[str, Any]

PROBLEM = sc.prometheus_label(sc.ATTR_SINK_PROBLEM)

# The sink's gauge of each worker live-run gauge (sink-source dashboards).
_SINK_OF: dict[str, sc.MetricSpec] = {
    w.name: k
    for w, k in (
        (sc.METRIC_JOB_LAST_HEARTBEAT, sc.METRIC_SINK_RUN_LAST_HEARTBEAT),
        (sc.METRIC_JOB_HEARTBEAT_INTERVAL, sc.METRIC_SINK_RUN_HEARTBEAT_INTERVAL),
        (sc.METRIC_JOB_DEADLINE, sc.METRIC_SINK_RUN_DEADLINE),
        (sc.METRIC_JOB_STALL_DEADLINE, sc.METRIC_SINK_RUN_STALL_DEADLINE),
        (sc.METRIC_JOB_STARTED_TIMESTAMP, sc.METRIC_SINK_RUN_STARTED_TIMESTAMP),
        (sc.METRIC_JOB_PROGRESS, sc.METRIC_SINK_RUN_PROGRESS),
        (sc.METRIC_JOB_PROGRESS_CURRENT, sc.METRIC_SINK_RUN_PROGRESS_CURRENT),
        (sc.METRIC_JOB_PROGRESS_TOTAL, sc.METRIC_SINK_RUN_PROGRESS_TOTAL),
        (sc.METRIC_JOB_ETA, sc.METRIC_SINK_RUN_ETA),
        (sc.METRIC_JOB_MEMORY, sc.METRIC_SINK_RUN_MEMORY),
        (sc.METRIC_JOB_MEMORY_LIMIT, sc.METRIC_SINK_RUN_MEMORY_LIMIT),
        (sc.METRIC_JOB_CPU, sc.METRIC_SINK_RUN_CPU),
        (sc.METRIC_JOB_CPU_LIMIT, sc.METRIC_SINK_RUN_CPU_LIMIT),
        (sc.METRIC_JOB_OPEN_FDS, sc.METRIC_SINK_RUN_OPEN_FDS),
        (sc.METRIC_JOB_FD_LIMIT, sc.METRIC_SINK_RUN_FD_LIMIT),
        (sc.METRIC_JOB_RUN_VIOLATIONS, sc.METRIC_SINK_RUN_VIOLATIONS),
    )
}


def _m(spec: sc.MetricSpec, source: str) -> str:
    """The Prometheus name of a worker live-run gauge, or of its sink twin."""
    return spec.prometheus if source == "worker" else _SINK_OF[spec.name].prometheus


def _suffix(source: str) -> str:
    return "" if source == "worker" else f"-{source}"


def _l(label: str) -> str:
    """A Grafana legend reference to a label."""
    return "{{" + label + "}}"


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


_OK = _thresholds(("green", None))


def _target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref}
    if legend:
        target["legendFormat"] = legend
    if instant:
        target["instant"] = True
        target["range"] = False
    return target


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[dict[str, Any]],
    *,
    unit: str = "short",
    thresholds: dict[str, Any] | None = None,
    w: int = 12,
    h: int = 8,
    minimum: float | None = None,
    maximum: float | None = None,
    options: dict[str, Any] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds or _OK}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        }
    if kind in ("stat", "bargauge", "gauge"):
        defaults["color"] = {"mode": "thresholds"}
    panel: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
        "targets": list(targets),
    }
    return panel


def _layout(panels: list[Panel]) -> list[Panel]:
    """Flow panels left to right into a 24-column grid and give them ids."""
    x = y = row_h = 0
    for pid, panel in enumerate(panels, 1):
        pos = panel["gridPos"]
        if x + pos["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        pos["x"], pos["y"] = x, y
        x += pos["w"]
        row_h = max(row_h, pos["h"])
        panel["id"] = pid
    return panels


def _datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def _query_var(
    name: str, label: str, metric: str, source_label: str, *, multi: bool = True, match: str = ""
) -> dict[str, Any]:
    query = f"label_values({metric}{match}, {source_label})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "includeAll": True,
        "multi": multi,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "options": [],
        "regex": "",
    }


def _dashboard(
    slug: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]
) -> dict[str, Any]:
    return {
        "uid": f"chaperone-{slug}",
        "title": title,
        "description": description,
        "tags": [TAG],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "utc",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": True,
                "title": "chaperone-otel",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "templating": {"list": [_datasource_var(), *variables]},
        "panels": _layout(panels),
    }


def overview(
    policy: HealthPolicy = DEFAULT_POLICY,
    settings: AlertSettings | None = None,
    source: str = "worker",
) -> dict[str, Any]:
    """Fleet overview: what runs, how it ends, how long it takes, what is in trouble.

    ``source="sink"`` reads only the sink's fleet ``/metrics``: the same panels, except that
    the duration percentiles (the sink keeps no histogram) become the time since the last
    success, and the hourly miss and violation counts become the runs in that state now."""
    s = settings or AlertSettings()
    sink_only = source == "sink"
    sel = f'{NAME}=~"$job_name", {QUEUE}=~"$queue"'
    # every live run group has this series (the health rules' universe of the source)
    universe = (
        sc.METRIC_SINK_RUN_ACTIVE.prometheus
        if sink_only
        else sc.METRIC_JOB_LAST_HEARTBEAT.prometheus
    )
    r = rules(policy)
    finished_rate = REC_SINK_FINISHED_RATE if sink_only else REC_FINISHED_RATE
    failure_ratio = REC_SINK_FAILURE_RATIO if sink_only else REC_FAILURE_RATIO
    problems = sc.METRIC_SINK_RUNS_PROBLEM.prometheus

    def problem(pred: str) -> str:
        rendered = promql(r.by_name(pred), source)
        assert isinstance(rendered, str)
        return f"{rendered} and on ({BY_JOB}) {universe}{{{sel}}}"

    if sink_only:
        running = (
            f'sum by ({BY_JOB}) ({sc.METRIC_SINK_RUNS.prometheus}{{{STATUS}="running", {sel}}})'
        )
        duration = _panel(
            "timeseries",
            "Time since the last success",
            "Seconds since the latest completed run of each job ended (sink view).",
            [
                _target(
                    f"time() - {sc.METRIC_SINK_LAST_SUCCESS.prometheus}{{{sel}}}",
                    _l(NAME) + " / " + _l(QUEUE),
                )
            ],
            unit="s",
            minimum=0,
        )
        misses = _panel(
            "stat",
            "Runs missing heartbeats now",
            "Running runs whose code has not beaten for more than one interval (sink view).",
            [_target(f'sum({problems}{{{PROBLEM}="heartbeat_missed", {sel}}})')],
            w=4,
            thresholds=_thresholds(("green", None), ("orange", 1)),
        )
        violations = _panel(
            "stat",
            "Runs over or near a limit now",
            "Running runs that violated a resource limit, or are near one (sink view).",
            [
                _target(
                    f'sum by ({PROBLEM}) ({problems}{{{PROBLEM}=~"violated|near_limit", {sel}}})',
                    _l(PROBLEM),
                )
            ],
            w=4,
            thresholds=_thresholds(("green", None), ("orange", 1)),
        )
    else:
        running = f"sum by ({BY_JOB}) ({sc.METRIC_JOB_RUNS_ACTIVE.prometheus}{{{sel}}})"
        duration = _panel(
            "timeseries",
            "Run duration percentiles",
            "p50 / p95 / p99 of run duration per job (5 minute window).",
            [_target(f"{REC_DURATION_QUANTILE}{{{sel}}}", _l(NAME) + " p" + _l("quantile"))],
            unit="s",
            minimum=0,
        )
        misses = _panel(
            "stat",
            "Heartbeat misses (1h)",
            "Heartbeat intervals that passed with no sign of life from job code.",
            [_target(f"sum(increase({sc.METRIC_JOB_HEARTBEATS_MISSED.prometheus}{{{sel}}}[1h]))")],
            w=4,
            thresholds=_thresholds(("green", None), ("orange", 1)),
        )
        violations = _panel(
            "stat",
            "Limit violations (1h)",
            "Resource limit violations, by limit type.",
            [
                _target(
                    f"sum by ({LIMIT_TYPE}) (increase("
                    f"{sc.METRIC_JOB_VIOLATIONS.prometheus}{{{sel}}}[1h]))",
                    _l(LIMIT_TYPE),
                )
            ],
            w=4,
            thresholds=_thresholds(("green", None), ("orange", 1)),
        )
    view = "sink view" if sink_only else "worker view"

    def problem_table(pred: str, text: str) -> Panel:
        """A table of the run groups in state ``pred`` now; its value is the number of running
        runs (sink view) or the heartbeat age in seconds (worker view: the rendering's value
        is the last heartbeat's Unix time, in seconds, which Grafana's date units would read
        as milliseconds)."""
        if sink_only:
            expr, column, unit = problem(pred), "Running runs", "short"
            what = "the number of running runs in the group."
        else:
            expr, column, unit = f"time() - ({problem(pred)})", "Heartbeat age", "s"
            what = "the heartbeat age in seconds (of the group's oldest run)."
        table = _panel(
            "table",
            f"{pred.capitalize()} runs now ({view})",
            text + what,
            [{**_target(expr, instant=True), "format": "table"}],
            w=12,
            unit=unit,
            options={"showHeader": True},
        )
        table["fieldConfig"]["overrides"].append(
            {
                "matcher": {"id": "byName", "options": "Value"},
                "properties": [{"id": "displayName", "value": column}],
            }
        )
        return table

    panels = [
        _panel(
            "timeseries",
            "Running runs by job and queue",
            "Runs in progress per job and queue, as counted by the "
            + ("sink's store." if sink_only else "workers."),
            [_target(running, _l(NAME) + " / " + _l(QUEUE))],
            unit="short",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Finished runs by status",
            "Runs finishing per second, by final status (5 minute rate).",
            [_target(f"sum by ({STATUS}) ({finished_rate}{{{sel}}})", _l(STATUS))],
            unit="ops",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Failure ratio",
            "Failed / finished runs per job over 15 minutes; the red line is the "
            "ChaperoneJobFailureRatioHigh threshold.",
            [_target(f"{failure_ratio}{{{sel}}}", _l(NAME) + " / " + _l(QUEUE))],
            unit="percentunit",
            minimum=0,
            maximum=1,
            thresholds=_thresholds(("green", None), ("red", s.failure_ratio)),
        ),
        duration,
        _panel(
            "bargauge",
            "Health of running runs",
            "Running runs by judged health, from the sink's store (all workers).",
            [
                _target(
                    f"sum by ({HEALTH}) ({sc.METRIC_SINK_RUNS.prometheus}"
                    f'{{{STATUS}="running", {sel}}})',
                    _l(HEALTH),
                    instant=True,
                )
            ],
            w=8,
            options={
                "displayMode": "basic",
                "orientation": "horizontal",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            },
        ),
        _panel(
            "stat",
            "Stuck runs",
            "Running runs that are stuck (sink view).",
            [_target(f"sum({sc.METRIC_SINK_RUNS_STUCK.prometheus}{{{sel}}})")],
            w=4,
            thresholds=_thresholds(("green", None), ("red", 1)),
        ),
        _panel(
            "stat",
            "Lost runs",
            "Running runs whose process went silent (sink view).",
            [_target(f"sum({sc.METRIC_SINK_RUNS_LOST.prometheus}{{{sel}}})")],
            w=4,
            thresholds=_thresholds(("green", None), ("red", 1)),
        ),
        misses,
        violations,
        problem_table("stuck", "Run groups the health rules judge stuck right now; the value is "),
        problem_table(
            "degraded",
            "Run groups the health rules judge degraded right now (late heartbeat, near a "
            "limit or stalled); the value is ",
        ),
        _panel(
            "bargauge",
            "Top memory",
            "Resident memory of the 10 largest live runs.",
            [
                _target(
                    f"topk(10, {_m(sc.METRIC_JOB_MEMORY, source)}{{{sel}}})",
                    _l(NAME) + " " + _l(RUN_ID),
                    instant=True,
                )
            ],
            unit="bytes",
            options={
                "displayMode": "gradient",
                "orientation": "horizontal",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            },
        ),
        _panel(
            "bargauge",
            "Top CPU",
            "CPU of the 10 busiest live runs (1.0 = one core).",
            [
                _target(
                    f"topk(10, {_m(sc.METRIC_JOB_CPU, source)}{{{sel}}})",
                    _l(NAME) + " " + _l(RUN_ID),
                    instant=True,
                )
            ],
            unit="percentunit",
            thresholds=_thresholds(("green", None), ("orange", policy.warn_ratio)),
            options={
                "displayMode": "gradient",
                "orientation": "horizontal",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            },
        ),
    ]
    started = sc.METRIC_SINK_RUNS.prometheus if sink_only else sc.METRIC_JOB_RUNS_STARTED.prometheus
    return _dashboard(
        "overview" + _suffix(source),
        "Chaperone / Overview" + (" (sink)" if sink_only else ""),
        "Supervised jobs across all workers: activity, outcomes, duration and health"
        + (", from the sink's fleet /metrics only." if sink_only else "."),
        [
            _query_var("job_name", "Job", started, NAME),
            _query_var("queue", "Queue", started, QUEUE),
        ],
        panels,
    )


def run(policy: HealthPolicy = DEFAULT_POLICY, source: str = "worker") -> dict[str, Any]:
    """Drill-down into one job's live runs (a run id exists for runs past the long-run
    threshold; shorter runs show as their job's stalest run). ``source="sink"``: the sink's
    twins of the worker gauges, the same panels."""
    sel = f'{NAME}=~"$job_name", {RUN_ID}=~"$run_id"'
    lhb = _m(sc.METRIC_JOB_LAST_HEARTBEAT, source)
    interval = _m(sc.METRIC_JOB_HEARTBEAT_INTERVAL, source)
    legend = _l(NAME) + " " + _l(RUN_ID)
    ratio_thresholds = _thresholds(
        ("green", None), ("yellow", policy.degraded_after), ("red", policy.unhealthy_after)
    )
    panels = [
        _panel(
            "timeseries",
            "Progress",
            "Overall progress of the run, 0..100 %.",
            [_target(f"{_m(sc.METRIC_JOB_PROGRESS, source)}{{{sel}}}", legend)],
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        _panel(
            "stat",
            "ETA",
            "Estimated time to completion at the current throughput.",
            [_target(f"{_m(sc.METRIC_JOB_ETA, source)}{{{sel}}}", legend)],
            unit="s",
            w=6,
        ),
        _panel(
            "stat",
            "Time left before timeout",
            "Seconds until the run's maximum runtime ends (negative: overtime).",
            [_target(f"{_m(sc.METRIC_JOB_DEADLINE, source)}{{{sel}}} - time()", legend)],
            unit="s",
            w=6,
            thresholds=_thresholds(("red", None), ("green", 0)),
        ),
        _panel(
            "timeseries",
            "Heartbeat age against its interval",
            "Seconds since the job's code last beat, with its interval times the "
            f"degraded ({policy.degraded_after:g}x) and stuck ({policy.stuck_after:g}x) "
            "thresholds.",
            [
                _target(f"time() - {lhb}{{{sel}}}", "age " + legend),
                _target(
                    f"{policy.degraded_after!r} * {interval}{{{sel}}}", "degraded " + legend, "B"
                ),
                _target(f"{policy.stuck_after!r} * {interval}{{{sel}}}", "stuck " + legend, "C"),
            ],
            unit="s",
            minimum=0,
        ),
        _panel(
            "gauge",
            "Heartbeat age / interval",
            "Heartbeat age in units of the run's interval; yellow is degraded, red is unhealthy.",
            [_target(f"(time() - {lhb}{{{sel}}}) / {interval}{{{sel}}}", legend)],
            unit="none",
            minimum=0,
            maximum=policy.unhealthy_after * 2,
            thresholds=ratio_thresholds,
        ),
        _panel(
            "timeseries",
            "Memory against its limit",
            "Resident memory of the run's process and its memory limit.",
            [
                _target(f"{_m(sc.METRIC_JOB_MEMORY, source)}{{{sel}}}", "rss " + legend),
                _target(
                    f"{_m(sc.METRIC_JOB_MEMORY_LIMIT, source)}{{{sel}}}", "limit " + legend, "B"
                ),
            ],
            unit="bytes",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "CPU against its limit",
            "CPU use (1.0 = one core) and the run's CPU limit.",
            [
                _target(f"{_m(sc.METRIC_JOB_CPU, source)}{{{sel}}}", "cpu " + legend),
                _target(f"{_m(sc.METRIC_JOB_CPU_LIMIT, source)}{{{sel}}}", "limit " + legend, "B"),
            ],
            unit="percentunit",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Open file descriptors against the limit",
            "Open fds of the run's process and its fd limit.",
            [
                _target(f"{_m(sc.METRIC_JOB_OPEN_FDS, source)}{{{sel}}}", "fds " + legend),
                _target(f"{_m(sc.METRIC_JOB_FD_LIMIT, source)}{{{sel}}}", "limit " + legend, "B"),
            ],
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Items done in the current phase",
            "Progress counters as the job reports them.",
            [
                _target(
                    f"{_m(sc.METRIC_JOB_PROGRESS_CURRENT, source)}{{{sel}}}", "current " + legend
                ),
                _target(
                    f"{_m(sc.METRIC_JOB_PROGRESS_TOTAL, source)}{{{sel}}}", "total " + legend, "B"
                ),
            ],
            minimum=0,
        ),
    ]
    return _dashboard(
        "run" + _suffix(source),
        "Chaperone / Run" + (" (sink)" if source == "sink" else ""),
        "One job's live runs: progress, heartbeat lease, resources against limits, ETA.",
        [
            _query_var("job_name", "Job", lhb, NAME, multi=False),
            _query_var("run_id", "Run", lhb, RUN_ID, match=f'{{{NAME}=~"$job_name"}}'),
        ],
        panels,
    )


def sink(policy: HealthPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """The sink server: ingest, rejects, queue, store, and the fleet's problem runs."""
    sel = 'instance=~"$instance"'
    panels = [
        _panel(
            "timeseries",
            "Ingest rate",
            "Records and spans written to the store, per second, by source.",
            [
                _target(
                    f"sum by ({SOURCE}) (rate("
                    f"{sc.METRIC_SINK_RECORDS_INGESTED.prometheus}{{{sel}}}"
                    "[$__rate_interval]))",
                    _l(SOURCE),
                )
            ],
            unit="ops",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Rejected requests",
            "OTLP requests refused per second, by HTTP status.",
            [
                _target(
                    f"sum by ({HTTP_STATUS}) (rate("
                    f"{sc.METRIC_SINK_REQUESTS_REJECTED.prometheus}{{{sel}}}"
                    "[$__rate_interval]))",
                    "HTTP " + _l(HTTP_STATUS),
                )
            ],
            unit="reqps",
            minimum=0,
            thresholds=_thresholds(("green", None), ("red", 0.001)),
        ),
        _panel(
            "stat",
            "Dropped records (1h)",
            "Records lost inside the sink; must stay 0.",
            [_target(f"sum(increase({sc.METRIC_SINK_RECORDS_DROPPED.prometheus}{{{sel}}}[1h]))")],
            w=6,
            thresholds=_thresholds(("green", None), ("red", 1)),
        ),
        _panel(
            "stat",
            "Sink up",
            "Whether Prometheus can scrape the sink.",
            [_target(f'up{{job="{SINK_SCRAPE_JOB}", {sel}}}')],
            w=6,
            thresholds=_thresholds(("red", None), ("green", 1)),
            options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False}},
        ),
        _panel(
            "stat",
            "Since last ingest",
            "Seconds since the latest successful write.",
            [_target(f"time() - {sc.METRIC_SINK_LAST_INGEST.prometheus}{{{sel}}}")],
            w=6,
            unit="s",
        ),
        _panel(
            "stat",
            "Store size",
            "Size of the DuckDB file.",
            [_target(f"{sc.METRIC_SINK_STORE_SIZE.prometheus}{{{sel}}}")],
            w=6,
            unit="bytes",
        ),
        _panel(
            "timeseries",
            "Writer queue depth",
            "Records waiting for the writer, and the "
            "queue capacity (at capacity the sink answers 503).",
            [
                _target(f"{sc.METRIC_SINK_QUEUE_DEPTH.prometheus}{{{sel}}}", "depth"),
                _target(f"{sc.METRIC_SINK_QUEUE_CAPACITY.prometheus}{{{sel}}}", "capacity", "B"),
            ],
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Stored runs by status",
            "Runs in the store, by status.",
            [
                _target(
                    f"sum by ({STATUS}) ({sc.METRIC_SINK_RUNS.prometheus}{{{sel}}})",
                    _l(STATUS),
                )
            ],
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Worst heartbeat age / interval by job",
            "Largest heartbeat age of running runs in units of their interval.",
            [
                _target(
                    f"max by ({NAME}) ({sc.METRIC_SINK_HEARTBEAT_AGE_RATIO.prometheus}{{{sel}}})",
                    _l(NAME),
                )
            ],
            unit="none",
            minimum=0,
            thresholds=_thresholds(
                ("green", None), ("yellow", policy.degraded_after), ("red", policy.unhealthy_after)
            ),
        ),
        _panel(
            "timeseries",
            "Worst silence / interval by job",
            f"Largest age of any record of running runs; above {policy.lost_after:g} "
            "the run is lost.",
            [
                _target(
                    f"max by ({NAME}) ({sc.METRIC_SINK_SILENCE_RATIO.prometheus}{{{sel}}})",
                    _l(NAME),
                )
            ],
            unit="none",
            minimum=0,
            thresholds=_thresholds(("green", None), ("red", policy.lost_after)),
        ),
        *schedule_panels(_panel, _target, sel),  # issue 15: _schedule_panels
    ]
    return _dashboard(
        "sink",
        "Chaperone / Sink",
        "The chaperone-otel sink server: ingest, rejects, queue, store and fleet health.",
        [_query_var("instance", "Instance", f'up{{job="{SINK_SCRAPE_JOB}"}}', "instance")],
        panels,
    )


def dashboards(
    policy: HealthPolicy = DEFAULT_POLICY,
    settings: AlertSettings | None = None,
    sources: tuple[str, ...] = SOURCES,
) -> dict[str, dict[str, Any]]:
    """Every dashboard by file name (``dashboards/<name>``): overview and run for each
    source (``-sink`` for the sink-derived ones), and the sink server's own."""
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        out[f"chaperone-overview{_suffix(source)}.json"] = overview(policy, settings, source)
        out[f"chaperone-run{_suffix(source)}.json"] = run(policy, source)
    out["chaperone-sink.json"] = sink(policy)
    return out
