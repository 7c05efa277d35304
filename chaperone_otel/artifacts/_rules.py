"""Prometheus recording and alerting rules, and their ``promtool test rules`` suite.

The rule file ``alerts/chaperone.rules.yaml`` is generated from here, never edited by hand:

* the per-run health alerts (heartbeat missed, stuck, overtime, stalled, limits) render the
  *one* health definition, :func:`chaperone_otel._health.rules`, to PromQL, so the alerts
  agree with the Python evaluator and the DuckDB scopes by construction;
* lost runs come from the sink's fleet metrics (a SIGKILLed worker's own series vanish with
  it, so only the store can say a run went silent), with the policy's ``lost_after``;
* every metric and label name is derived from :mod:`chaperone_otel.semconv`.

Each alert is declared together with two scenarios, one where it must fire and one where it
must not; :func:`rule_tests` turns them into the promtool suite, so an alert cannot be added
without its tests.

Example::

    from chaperone_otel.artifacts import rule_file, AlertSettings
    groups = rule_file(settings=AlertSettings(failure_ratio=0.1))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import semconv as sc
from .._health import (
    DEFAULT_POLICY,
    PROMQL_UNIVERSE,
    SIGNAL_GAUGES,
    SINK_SIGNAL_GAUGES,
    SINK_SOURCE,
    Expr,
    HealthPolicy,
    Rules,
    _Never,
    promql,
    rules,
)
from ._schedule_alerts import schedule_alerts

GROUP = "chaperone-otel"
"""The rule group name (STYLE §2)."""

WORKER_SCRAPE_JOB = "chaperone-workers"
"""Scrape job name of worker ``/metrics`` endpoints in ``exporters/prometheus/prometheus.yml``."""

SINK_SCRAPE_JOB = "chaperone-sink"
"""Scrape job name of the sink server; ``ChaperoneSinkDown`` watches ``up`` of this job."""

# Label names as Prometheus sees them.
NAME = sc.prometheus_label(sc.ATTR_JOB_NAME)
QUEUE = sc.prometheus_label(sc.ATTR_JOB_QUEUE)
RUN_ID = sc.prometheus_label(sc.ATTR_JOB_RUN_ID)
STATUS = sc.prometheus_label(sc.ATTR_JOB_STATUS)
HEALTH = sc.prometheus_label(sc.ATTR_JOB_HEALTH)
ERROR_TYPE = sc.prometheus_label(sc.ATTR_ERROR_TYPE)
HTTP_STATUS = sc.prometheus_label(sc.METRIC_SINK_REQUESTS_REJECTED.labels[0])
BY_JOB = f"{NAME}, {QUEUE}"
PROBLEM = sc.prometheus_label(sc.ATTR_SINK_PROBLEM)

# Recording rules the dashboards and alerts share.
REC_FINISHED_RATE = "chaperone:job_runs_finished:rate5m"
REC_FAILURE_RATIO = "chaperone:job_failure_ratio:rate15m"
REC_DURATION_QUANTILE = "chaperone:job_duration_seconds:quantile_rate5m"
DURATION_QUANTILES = ("0.5", "0.95", "0.99")
# The same aggregations over the sink's finished-runs counter (sink-derived rule file).
REC_SINK_FINISHED_RATE = "chaperone:sink_runs_finished:rate5m"
REC_SINK_FAILURE_RATIO = "chaperone:sink_failure_ratio:rate15m"

SOURCES = ("worker", "sink")
"""Where the alerts read the runs: ``worker`` (each worker's ``/metrics`` or a Collector fed
by the workers, plus the sink for lost runs) or ``sink`` (only the sink's fleet ``/metrics``,
computed from its store: a fleet that sends OTLP only to ``chaperone-otel sink serve``)."""


@dataclass(frozen=True)
class AlertSettings:
    """Knobs of the alerts that are not health rules (those live in ``HealthPolicy``).

    Attributes:
        failure_ratio: failed / finished runs of a job over 15 minutes above this fires
            ``ChaperoneJobFailureRatioHigh``.
        no_success_window: ``ChaperoneJobNoRecentSuccess`` fires when runs of a job finished
            in this window but none completed.
        heartbeat_missed_for: ``for:`` of the heartbeat-missed warning; it absorbs scrape lag
            (the gauge is read at scrape time, up to one scrape interval before evaluation).
        limit_near_for: ``for:`` of the near-limit warning (CPU spikes are normal).
        sink_down_for: ``for:`` of ``ChaperoneSinkDown``.
        runbook_base: URL (or path) of ``docs/operations.md``; alert anchors are appended.
    """

    failure_ratio: float = 0.25
    no_success_window: str = "24h"
    heartbeat_missed_for: str = "1m"
    limit_near_for: str = "2m"
    sink_down_for: str = "1m"
    queue_full_ratio: float = 0.8
    runbook_base: str = "docs/operations.md"


# --------------------------------------------------------------------------------------------
# Test scenarios (promtool input series), declared next to each alert.
# --------------------------------------------------------------------------------------------

WORKER_LABELS: Mapping[str, str] = {
    NAME: "etl.import",
    QUEUE: "default",
    "instance": "127.0.0.1:9464",
    "job": WORKER_SCRAPE_JOB,
}
SINK_LABELS: Mapping[str, str] = {"instance": "127.0.0.1:4318", "job": SINK_SCRAPE_JOB}
COUNTED_JOB: Mapping[str, str] = {NAME: "etl.import", QUEUE: "default", **SINK_LABELS}
"""The sink's per-job series (its problem counts) as Prometheus stores them."""


def series(name: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    """One promtool input series."""
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


@dataclass(frozen=True)
class Scenario:
    """Input series, an evaluation time and, when it must fire, the alert's labels."""

    input_series: tuple[dict[str, str], ...]
    eval_time: str
    fires_with: Mapping[str, str] | None = None
    interval: str = "15s"


@dataclass(frozen=True)
class Alert:
    """One alerting rule with its firing and quiet scenarios."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    fire: Scenario
    quiet: Scenario
    for_: str = "0s"
    extra: Mapping[str, str] = field(default_factory=dict)


def _promql(rendered: str | _Never, what: str) -> str:
    if isinstance(rendered, _Never):  # pragma: no cover - a rule change would surface here
        raise ValueError(f"health predicate {what!r} has no PromQL form")
    return rendered


SINK_RUN_LABELS: Mapping[str, str] = {
    NAME: "etl.import",
    QUEUE: "default",
    **SINK_LABELS,
}
"""Labels of a sink-derived run-group series as Prometheus stores them."""


def _live(labels: Mapping[str, str] = WORKER_LABELS, **gauges: str) -> tuple[dict[str, str], ...]:
    """Worker live-run gauges for one run group, by health-signal name."""
    return tuple(series(SIGNAL_GAUGES[k].prometheus, labels, v) for k, v in gauges.items())


def _sink_live(
    labels: Mapping[str, str] = SINK_RUN_LABELS, **gauges: str
) -> tuple[dict[str, str], ...]:
    """Sink run-group gauges, by health-signal name: the group's ``active`` series, and a
    process heard from at every scrape unless ``last_seen`` says otherwise."""
    gauges = {"last_seen": "0+15x20", **gauges}
    out = [series(SINK_SOURCE.universe, labels, "1x20")]
    out.extend(series(SINK_SIGNAL_GAUGES[k].prometheus, labels, v) for k, v in gauges.items())
    return tuple(out)


@dataclass(frozen=True)
class _Source:
    """What differs between the two rule files: the series and the scenario labels."""

    name: str
    live: Callable[..., tuple[dict[str, str], ...]]
    run_labels: Mapping[str, str]
    finished: str
    finished_rate: str
    failure_ratio: str
    where: str

    def expr(self, rule: Expr, what: str) -> str:
        """The rule over the run-group gauges, or any run of the job matching it.

        A run group's gauges are those of its stalest run (the rule judges one real run),
        so the rendering alone misses a second run of the same job and queue in trouble
        while the stalest is fine (one past its timeout while the other is merely late).
        The sink counts the runs matching each predicate per job and queue
        (``chaperone_sink_runs_problem``, the same rule in SQL): the alert also fires from
        that count, unless the rendering already fires for the job.
        """
        counted = (
            f"max without ({PROBLEM}) "
            f'({sc.METRIC_SINK_RUNS_PROBLEM.prometheus}{{{PROBLEM}="{what}"}}) > 0'
        )
        return f"({_promql(promql(rule, self.name), what)}) or on ({BY_JOB}) ({counted})"


def _source(name: str) -> _Source:
    if name == "worker":
        return _Source(
            "worker",
            _live,
            WORKER_LABELS,
            sc.METRIC_JOB_RUNS_FINISHED.prometheus,
            REC_FINISHED_RATE,
            REC_FAILURE_RATIO,
            "on {{ $labels.instance }}",
        )
    if name == "sink":
        return _Source(
            "sink",
            _sink_live,
            SINK_RUN_LABELS,
            sc.METRIC_SINK_RUNS_FINISHED.prometheus,
            REC_SINK_FINISHED_RATE,
            REC_SINK_FAILURE_RATIO,
            "(from the sink's store)",
        )
    raise ValueError(f"unknown alert source {name!r}; choose from {', '.join(SOURCES)}")


def alerts(
    policy: HealthPolicy = DEFAULT_POLICY,
    settings: AlertSettings | None = None,
    source: str = "worker",
) -> list[Alert]:
    """Every alert, in rule-file order, reading the series of ``source`` (see :data:`SOURCES`)."""
    s = settings or AlertSettings()
    src = _source(source)
    r: Rules = rules(policy)
    lbl = "{{ $labels.%s }}"
    job = f"{lbl % NAME} (queue {lbl % QUEUE})"
    fin = src.finished
    live = src.live
    where = src.where
    k_lost = policy.lost_after
    # Promtool series notation: "a+bxN" is N+1 samples from a in steps of b, every interval.
    # At 15 s steps, "0x20" covers 5 minutes; heartbeat gauges hold a Unix time (0 = epoch).
    hb_fresh = "0+15x20"  # the job beats every scrape: heartbeat age stays ~0
    hb_frozen = "0x20"  # the last heartbeat was at t=0 and never again
    quiet_run = live(last_heartbeat=hb_fresh, heartbeat_interval="60x20")
    run_labels = {**src.run_labels}

    fin_labels = {**src.run_labels}
    ok = {**fin_labels, STATUS: "completed"}
    bad = {**fin_labels, STATUS: "failed"}
    if source == "worker":
        bad[ERROR_TYPE] = "ValueError"
    sink_job = {NAME: "etl.import", QUEUE: "default", **SINK_LABELS}
    if source == "worker":
        lost = Alert(
            "ChaperoneJobLost",
            f"{sc.METRIC_SINK_RUNS_LOST.prometheus} > 0 or "
            f"{sc.METRIC_SINK_SILENCE_RATIO.prometheus} > {k_lost!r}",
            "critical",
            f"Job {job} lost a run",
            f"A running run of {lbl % NAME} has sent nothing at all (not even liveness) for "
            f"more than {k_lost:g} heartbeat intervals: its process died or lost its network. "
            "Reported by the sink.",
            fire=Scenario(
                (
                    series(sc.METRIC_SINK_RUNS_LOST.prometheus, sink_job, "0 0 1 1 1"),
                    series(sc.METRIC_SINK_SILENCE_RATIO.prometheus, sink_job, "0.5 2 4 5 6"),
                ),
                "1m",
                sink_job,
            ),
            quiet=Scenario(
                (
                    series(sc.METRIC_SINK_RUNS_LOST.prometheus, sink_job, "0x8"),
                    series(sc.METRIC_SINK_SILENCE_RATIO.prometheus, sink_job, "0.5x8"),
                ),
                "1m",
            ),
        )
    else:
        # The sink outlives the run: the rule itself, over the run's last-seen gauge.
        lost = Alert(
            "ChaperoneJobLost",
            src.expr(r.lost, "lost"),
            "critical",
            f"Job {job} lost a run",
            f"A running run of {lbl % NAME} has sent nothing at all (not even liveness) for "
            f"more than {k_lost:g} heartbeat intervals: its process died or lost its network. "
            "Reported by the sink.",
            # Interval 10 s, nothing heard since t=0: lost after 30 s.
            fire=Scenario(
                live(last_heartbeat=hb_frozen, last_seen=hb_frozen, heartbeat_interval="10x20"),
                "1m",
                run_labels,
            ),
            quiet=Scenario(live(last_heartbeat=hb_frozen, heartbeat_interval="10x20"), "1m"),
        )

    return [
        Alert(
            "ChaperoneJobHeartbeatMissed",
            src.expr(r.heartbeat_missed, "heartbeat_missed"),
            "warning",
            f"Job {job} missed its heartbeat",
            f"A run of {lbl % NAME} {where} has not sent a heartbeat for more "
            "than one heartbeat interval; the process still reports it as running.",
            for_=s.heartbeat_missed_for,
            # Heartbeat at 0, interval 60 s: late from t=60 s, firing after the `for`.
            fire=Scenario(
                live(last_heartbeat=hb_frozen, heartbeat_interval="60x20"), "3m", run_labels
            ),
            quiet=Scenario(quiet_run, "3m"),
        ),
        Alert(
            "ChaperoneJobStuck",
            src.expr(r.stuck, "stuck"),
            "critical",
            f"Job {job} is stuck",
            f"A run of {lbl % NAME} {where} is alive but has sent no heartbeat "
            f"for more than {policy.stuck_after:g} heartbeat intervals, or is past its "
            "timeout.",
            # Interval 10 s, no heartbeat since t=0: stuck after 30 s while still scraped.
            fire=Scenario(
                live(last_heartbeat=hb_frozen, heartbeat_interval="10x20"), "1m", run_labels
            ),
            quiet=Scenario(live(last_heartbeat=hb_fresh, heartbeat_interval="10x20"), "1m"),
        ),
        lost,
        Alert(
            "ChaperoneJobOvertime",
            src.expr(r.overtime, "overtime"),
            "warning",
            f"Job {job} ran past its timeout",
            f"A run of {lbl % NAME} {where} is still running after its maximum runtime (timeout).",
            fire=Scenario(
                live(last_heartbeat=hb_fresh, heartbeat_interval="60x20", timeout_at="30x20"),
                "1m",
                run_labels,
            ),
            quiet=Scenario(
                live(last_heartbeat=hb_fresh, heartbeat_interval="60x20", timeout_at="3600x20"),
                "1m",
            ),
        ),
        Alert(
            "ChaperoneJobStalled",
            src.expr(r.stalled, "stalled"),
            "warning",
            f"Job {job} is alive but not progressing",
            f"A run of {lbl % NAME} {where} keeps sending heartbeats but its "
            "progress has not moved for longer than its stall budget.",
            fire=Scenario(
                live(last_heartbeat=hb_fresh, heartbeat_interval="60x20", stall_deadline="30x20"),
                "1m",
                run_labels,
            ),
            quiet=Scenario(
                live(last_heartbeat=hb_fresh, heartbeat_interval="60x20", stall_deadline="3600x20"),
                "1m",
            ),
        ),
        Alert(
            "ChaperoneJobFailureRatioHigh",
            f"{src.failure_ratio} > {s.failure_ratio!r}",
            "warning",
            f"Job {job} fails often",
            f"More than {s.failure_ratio:.0%} of the finished runs of {lbl % NAME} failed "
            "over the last 15 minutes.",
            fire=Scenario(
                (
                    series(fin, ok, "0+1x20"),
                    series(fin, bad, "0+1x20"),
                ),
                "5m",
                {NAME: "etl.import", QUEUE: "default"},
            ),
            quiet=Scenario(
                (
                    series(fin, ok, "0+10x20"),
                    series(fin, bad, "0+1x20"),
                ),
                "5m",
            ),
        ),
        Alert(
            "ChaperoneJobResourceLimitNear",
            src.expr(r.near_limit, "near_limit"),
            "warning",
            f"Job {job} is close to a resource limit",
            f"A run of {lbl % NAME} {where} uses at least "
            f"{policy.warn_ratio:.0%} of its memory, CPU or file descriptor limit.",
            for_=s.limit_near_for,
            # a live run group (the rule is gated on running, as the worker's gauges are)
            fire=Scenario(
                live(last_heartbeat=hb_fresh, memory="900x20", memory_limit="1000x20"),
                "4m",
                run_labels,
            ),
            quiet=Scenario(
                live(
                    last_heartbeat=hb_fresh, memory="500x20", memory_limit="1000x20", cpu="0.9x20"
                ),
                "4m",
            ),
        ),
        Alert(
            "ChaperoneJobResourceLimitViolated",
            src.expr(r.violated, "violated"),
            "warning",
            f"Job {job} exceeded a resource limit",
            f"A run of {lbl % NAME} {where} crossed its memory, CPU, file "
            "descriptor or time limit; its limit policy (record, warn or cancel) applied.",
            fire=Scenario(live(violation_count="0 0 1 1 1"), "1m", run_labels),
            quiet=Scenario(live(violation_count="0x8"), "1m"),
        ),
        Alert(
            "ChaperoneJobNoRecentSuccess",
            f"sum by ({BY_JOB}) (increase({fin}[{s.no_success_window}])) > 0 unless "
            f'sum by ({BY_JOB}) (increase({fin}{{{STATUS}="completed"}}[{s.no_success_window}]))'
            " > 0",
            "warning",
            f"Job {job} has not succeeded for {s.no_success_window}",
            f"Runs of {lbl % NAME} finished in the last {s.no_success_window} but none of them "
            "completed successfully.",
            fire=Scenario(
                (
                    series(fin, ok, "5x30"),
                    series(fin, bad, "0+1x30"),
                ),
                "26h",
                {NAME: "etl.import", QUEUE: "default"},
                interval="1h",
            ),
            quiet=Scenario(
                (
                    series(fin, ok, "0x20 1 1 1 1 1 1 1 1 1 1"),
                    series(fin, bad, "0+1x30"),
                ),
                "26h",
                interval="1h",
            ),
        ),
        Alert(
            "ChaperoneSinkDown",
            f'up{{job="{SINK_SCRAPE_JOB}"}} == 0',
            "critical",
            "The chaperone-otel sink {{ $labels.instance }} is down",
            "Prometheus cannot scrape the sink; workers' OTLP exports are being retried and "
            "will be lost when their queues fill.",
            for_=s.sink_down_for,
            fire=Scenario((series("up", SINK_LABELS, "1 1 0x10"),), "3m", {**SINK_LABELS}),
            quiet=Scenario((series("up", SINK_LABELS, "1x12"),), "3m"),
        ),
        Alert(
            "ChaperoneSinkRejecting",
            f"sum by (instance, {HTTP_STATUS}) "
            f"(increase({sc.METRIC_SINK_REQUESTS_REJECTED.prometheus}[5m])) > 0",
            "warning",
            "The chaperone-otel sink {{ $labels.instance }} rejects OTLP requests",
            f"The sink answered OTLP requests with HTTP {lbl % HTTP_STATUS} in the last 5 "
            "minutes (400 malformed, 401 token, 413 too large, 415 content type, 503 queue "
            "full).",
            fire=Scenario(
                (
                    series(
                        sc.METRIC_SINK_REQUESTS_REJECTED.prometheus,
                        {**SINK_LABELS, HTTP_STATUS: "503"},
                        "0 0 0 4 9 9",
                    ),
                ),
                "1m",
                {"instance": SINK_LABELS["instance"], HTTP_STATUS: "503"},
            ),
            quiet=Scenario(
                (
                    series(
                        sc.METRIC_SINK_REQUESTS_REJECTED.prometheus,
                        {**SINK_LABELS, HTTP_STATUS: "503"},
                        "3x30",
                    ),
                ),
                "6m",
            ),
        ),
        Alert(
            "ChaperoneSinkDroppingData",
            f"sum by (instance) (increase({sc.METRIC_SINK_RECORDS_DROPPED.prometheus}[5m])) > 0",
            "critical",
            "The chaperone-otel sink {{ $labels.instance }} is dropping records",
            "The sink's writer could not store records it accepted (a store failure, or data "
            "the store refuses). With ack=commit their senders were answered 503 (they retry) "
            "or 400 (they give up); with ack=queue they had been acknowledged and are lost.",
            fire=Scenario(
                (series(sc.METRIC_SINK_RECORDS_DROPPED.prometheus, SINK_LABELS, "0 0 0 2 2"),),
                "1m",
                {"instance": SINK_LABELS["instance"]},
            ),
            quiet=Scenario(
                (series(sc.METRIC_SINK_RECORDS_DROPPED.prometheus, SINK_LABELS, "0x8"),), "1m"
            ),
        ),
        Alert(
            "ChaperoneSinkQueueNearFull",
            f"{sc.METRIC_SINK_QUEUE_DEPTH.prometheus} / "
            f"{sc.METRIC_SINK_QUEUE_CAPACITY.prometheus} > {s.queue_full_ratio!r}",
            "warning",
            "The chaperone-otel sink {{ $labels.instance }} writer queue is nearly full",
            f"More than {s.queue_full_ratio:.0%} of the sink's writer queue is in use; it will "
            "soon answer 503 and clients will back off.",
            for_="5m",
            fire=Scenario(
                (
                    series(sc.METRIC_SINK_QUEUE_DEPTH.prometheus, SINK_LABELS, "900x40"),
                    series(sc.METRIC_SINK_QUEUE_CAPACITY.prometheus, SINK_LABELS, "1000x40"),
                ),
                "7m",
                {**SINK_LABELS},
            ),
            quiet=Scenario(
                (
                    series(sc.METRIC_SINK_QUEUE_DEPTH.prometheus, SINK_LABELS, "10x40"),
                    series(sc.METRIC_SINK_QUEUE_CAPACITY.prometheus, SINK_LABELS, "1000x40"),
                ),
                "7m",
            ),
        ),
        *schedule_alerts(Alert, Scenario, SINK_LABELS),  # issue 15: _schedule_alerts
    ]


def anchor(alert_name: str) -> str:
    """The Markdown heading anchor of an alert in docs/operations.md (GitHub slug)."""
    return alert_name.lower()


def recording_rules(source: str = "worker") -> list[dict[str, object]]:
    """Aggregations the dashboards and the failure-ratio alert share."""
    src = _source(source)
    fin = src.finished
    bucket = sc.METRIC_JOB_DURATION.prometheus + "_bucket"
    out: list[dict[str, object]] = [
        {"record": src.finished_rate, "expr": f"sum by ({BY_JOB}, {STATUS}) (rate({fin}[5m]))"},
        {
            "record": src.failure_ratio,
            # `or ... * 0`: a job with no failed series has ratio 0, not "no data".
            "expr": (
                f'(sum by ({BY_JOB}) (rate({fin}{{{STATUS}="failed"}}[15m])) '
                f"or sum by ({BY_JOB}) (rate({fin}[15m])) * 0) "
                f"/ sum by ({BY_JOB}) (rate({fin}[15m]))"
            ),
        },
    ]
    if source == "worker":  # the sink keeps no duration histogram
        out.extend(
            {
                "record": REC_DURATION_QUANTILE,
                "expr": f"histogram_quantile({q}, sum by ({BY_JOB}, le) (rate({bucket}[5m])))",
                "labels": {"quantile": q},
            }
            for q in DURATION_QUANTILES
        )
    return out


def alert_rule(alert: Alert, settings: AlertSettings) -> dict[str, object]:
    """The rule-file entry of one alert."""
    rule: dict[str, object] = {"alert": alert.name, "expr": alert.expr}
    if alert.for_ != "0s":
        rule["for"] = alert.for_
    rule["labels"] = {"severity": alert.severity, **alert.extra}
    rule["annotations"] = {
        "summary": alert.summary,
        "description": alert.description,
        "runbook_url": f"{settings.runbook_base}#{anchor(alert.name)}",
    }
    return rule


def rule_file(
    policy: HealthPolicy = DEFAULT_POLICY,
    settings: AlertSettings | None = None,
    source: str = "worker",
) -> dict[str, object]:
    """The whole rule file as data, for the series of ``source`` (see :data:`SOURCES`)."""
    s = settings or AlertSettings()
    return {
        "groups": [
            {
                "name": GROUP if source == "worker" else f"{GROUP}-{source}",
                "rules": [
                    *recording_rules(source),
                    *(alert_rule(a, s) for a in alerts(policy, s, source)),
                ],
            }
        ]
    }


_LABEL_REF = re.compile(r"\{\{ \$labels\.([a-zA-Z_][a-zA-Z0-9_]*) \}\}")


def expand(template: str, labels: Mapping[str, str]) -> str:
    """Render the ``{{ $labels.x }}`` references of an annotation (all the templates use)."""
    if "{{" in _LABEL_REF.sub("", template):
        raise ValueError(f"annotation uses template features the tests cannot expand: {template}")
    return _LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), template)


def rule_tests(
    policy: HealthPolicy = DEFAULT_POLICY,
    settings: AlertSettings | None = None,
    *,
    rule_file_name: str = "../chaperone.rules.yaml",
    source: str = "worker",
) -> dict[str, object]:
    """The promtool test file: for every alert, one case that fires and one that does not."""
    s = settings or AlertSettings()
    tests: list[dict[str, object]] = []
    for alert in alerts(policy, s, source):
        rule = alert_rule(alert, s)
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        cases = [(alert.fire, "fires"), (alert.quiet, "stays quiet")]
        counted = re.search(f'{PROBLEM}="([a-z_]+)"', alert.expr)
        if counted is not None:  # it also fires from the sink's count (_Source.expr) alone
            problem = series(
                sc.METRIC_SINK_RUNS_PROBLEM.prometheus,
                {**COUNTED_JOB, PROBLEM: counted.group(1)},
                "0 1x20",
            )
            also = Scenario((*alert.quiet.input_series, problem), alert.fire.eval_time, COUNTED_JOB)
            cases.insert(1, (also, "fires from the sink's count of its runs"))
        for scenario, case in cases:
            expected: list[dict[str, object]] = []
            if scenario.fires_with is not None:
                labels = {**scenario.fires_with, "severity": alert.severity, **alert.extra}
                expected.append(
                    {
                        "exp_labels": labels,
                        "exp_annotations": {
                            k: expand(v, {**labels, "alertname": alert.name})
                            for k, v in annotations.items()
                        },
                    }
                )
            tests.append(
                {
                    "name": f"{alert.name} {case}",
                    "interval": scenario.interval,
                    "input_series": list(scenario.input_series),
                    "alert_rule_test": [
                        {
                            "eval_time": scenario.eval_time,
                            "alertname": alert.name,
                            "exp_alerts": expected,
                        }
                    ],
                }
            )
    return {
        "rule_files": [rule_file_name],
        "evaluation_interval": "15s",
        "tests": tests,
    }


def alert_names(policy: HealthPolicy = DEFAULT_POLICY, source: str = "worker") -> Sequence[str]:
    """Names of every alert, in file order."""
    return [a.name for a in alerts(policy, source=source)]


__all__ = [
    "GROUP",
    "PROMQL_UNIVERSE",
    "SINK_SCRAPE_JOB",
    "SOURCES",
    "WORKER_SCRAPE_JOB",
    "Alert",
    "AlertSettings",
    "Scenario",
    "alert_names",
    "alerts",
    "rule_file",
    "rule_tests",
]
