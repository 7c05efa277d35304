"""dashboards/: committed JSON is the generator's output and imports by construction."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chaperone_otel import semconv as sc
from chaperone_otel._config import Config
from chaperone_otel.artifacts import DASHBOARDS_DIR, RULES_PATH, SINK_RULES_PATH, render
from chaperone_otel.artifacts._dashboards import SCHEMA_VERSION, TAG, dashboards
from tests.yamlload import safe_load

METRIC_TOKEN = re.compile(r"\b(chaperone[a-z0-9_:]*)\b")


def _committed(repo: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((repo / DASHBOARDS_DIR).glob("*.json"))}


def _targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in board["panels"] for t in panel["targets"]]


def test_committed_json_equals_generator_output(repo: Path) -> None:
    """Each dashboards/*.json is byte-for-byte what the generator writes, and no extra file."""
    generated = {k: v for k, v in render().items() if k.startswith(DASHBOARDS_DIR + "/")}
    committed = {f"{DASHBOARDS_DIR}/{p.name}": p.read_text()
                 for p in (repo / DASHBOARDS_DIR).glob("*.json")}
    assert committed == generated


def test_required_dashboards_with_stable_uids_tag_and_schema(repo: Path) -> None:
    """overview and run (worker- and sink-sourced) and sink exist with uid chaperone-<slug>,
    the tag and a schemaVersion."""
    boards = _committed(repo)
    assert {b["uid"] for b in boards.values()} == {
        "chaperone-overview", "chaperone-run", "chaperone-sink", "chaperone-overview-sink",
        "chaperone-run-sink"}
    for name, board in boards.items():
        assert name == board["uid"] + ".json"
        assert TAG in board["tags"]
        assert board["schemaVersion"] == SCHEMA_VERSION
        assert "id" not in board  # a numeric id would clash on import


def test_every_panel_uses_the_datasource_variable(repo: Path) -> None:
    """A `datasource` variable exists and every panel and target selects it."""
    for board in _committed(repo).values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["expr"]


def test_panels_have_units_thresholds_ids_and_fit_the_grid(repo: Path) -> None:
    """Units and thresholds are set, ids are unique, and panels fit Grafana's 24 columns."""
    for board in _committed(repo).values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults["unit"]
            assert defaults["thresholds"]["steps"][0]["value"] is None
            pos = panel["gridPos"]
            assert pos["x"] >= 0
            assert pos["x"] + pos["w"] <= 24


def test_overview_covers_the_required_panels(repo: Path) -> None:
    """The overview has running, finish rate, failure ratio, durations, health, stuck/lost,
    memory and CPU panels; the run dashboard has progress, heartbeat, memory, CPU and ETA."""
    boards = _committed(repo)
    overview = " | ".join(p["title"].lower() for p in boards["chaperone-overview.json"]["panels"])
    for word in ("running", "finished", "failure ratio", "duration", "health", "stuck", "lost",
                 "memory", "cpu"):
        assert word in overview, word
    run = " | ".join(p["title"].lower() for p in boards["chaperone-run.json"]["panels"])
    for word in ("progress", "heartbeat age against its interval", "memory against its limit",
                 "cpu", "eta"):
        assert word in run, word
    sink = " | ".join(p["title"].lower() for p in boards["chaperone-sink.json"]["panels"])
    for word in ("ingest", "rejected", "queue", "store size"):
        assert word in sink, word
    # the sink-sourced twins: the same panels, the duration replaced by the last success
    overview = " | ".join(p["title"].lower()
                          for p in boards["chaperone-overview-sink.json"]["panels"])
    for word in ("running", "finished", "failure ratio", "last success", "health", "stuck",
                 "lost", "memory", "cpu"):
        assert word in overview, word
    assert [p["title"] for p in boards["chaperone-run-sink.json"]["panels"]] == \
        [p["title"] for p in boards["chaperone-run.json"]["panels"]]


def test_sink_sourced_dashboards_read_only_the_sinks_series(repo: Path) -> None:
    """No target of a -sink dashboard names a worker series (chaperone_job_*) or a worker
    recording rule: a fleet that sends OTLP only to the sink has data for every panel."""
    labels = {sc.prometheus_label(a) for s in sc.all_metric_specs() for a in s.labels}
    for name in ("chaperone-overview-sink.json", "chaperone-run-sink.json"):
        board = _committed(repo)[name]
        exprs = [t["expr"] for t in _targets(board)]
        exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
        for expr in exprs:
            tokens = METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', expr))
            assert tokens, expr
            for token in tokens:
                assert token.startswith(("chaperone_sink_", "chaperone:sink_")) or \
                    token in labels, token


def test_every_metric_in_every_panel_exists_in_semconv_or_the_rules(repo: Path) -> None:
    """Each chaperone_* name is a semconv Prometheus name (histogram series included) and
    each chaperone:* name a recording rule of alerts/chaperone.rules.yaml or
    alerts/chaperone-sink.rules.yaml."""
    known = {s.prometheus for s in sc.all_metric_specs()}
    known |= {s.prometheus + sfx for s in sc.all_metric_specs() if s.kind == "histogram"
              for sfx in ("_bucket", "_sum", "_count")}
    labels = {sc.prometheus_label(a) for s in sc.all_metric_specs() for a in s.labels}
    recorded = set()
    for path in (RULES_PATH, SINK_RULES_PATH):
        rule_data = safe_load((repo / path).read_text())
        recorded |= {r["record"] for g in rule_data["groups"] for r in g["rules"] if "record" in r}
    seen = set()
    for board in _committed(repo).values():
        exprs = [t["expr"] for t in _targets(board)]
        exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
        for expr in exprs:
            for token in METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', expr)):
                assert token in known | recorded | labels, token
                seen.add(token)
    assert recorded <= seen  # every recording rule feeds a panel


def test_generator_is_deterministic() -> None:
    """Two renders are identical (no dict-order or time dependence)."""
    assert dashboards() == dashboards()
    assert render() == render()


def _units(panel: dict[str, Any]) -> list[str]:
    """The panel's default unit and every unit a field override sets."""
    config = panel["fieldConfig"]
    units = [config["defaults"].get("unit", "")]
    units += [p["value"] for o in config["overrides"] for p in o["properties"]
              if p["id"] == "unit"]
    return units


def test_no_date_unit_reads_a_seconds_value() -> None:
    """Grafana's date units (dateTimeAsIso, dateTimeFromNow ...) read milliseconds since the
    epoch; every chaperone timestamp is in seconds, so a panel may use one only on an
    expression scaled by 1000 (else a 2026 heartbeat shows as January 1970)."""
    checked = 0
    for board in dashboards().values():
        for panel in board["panels"]:
            for unit in _units(panel):
                checked += 1
                if unit.startswith("dateTime"):
                    for target in panel["targets"]:
                        assert "1000" in target["expr"], (panel["title"], unit)
    assert checked > 50


def test_problem_tables_show_the_heartbeat_age_or_the_run_count() -> None:
    """The worker-view stuck/degraded tables show seconds since the last heartbeat (unit s,
    column "Heartbeat age"), the sink-view ones the number of running runs; both as one
    table frame whose value column is renamed."""
    boards = dashboards()
    for name, unit, column in (("chaperone-overview.json", "s", "Heartbeat age"),
                               ("chaperone-overview-sink.json", "short", "Running runs")):
        tables = [p for p in boards[name]["panels"] if p["title"].endswith("runs now " + (
            "(worker view)" if unit == "s" else "(sink view)"))]
        assert [p["title"].split()[0] for p in tables] == ["Stuck", "Degraded"]
        for panel in tables:
            assert panel["fieldConfig"]["defaults"]["unit"] == unit
            [target] = panel["targets"]
            assert target["format"] == "table"
            assert target["instant"]
            assert target["expr"].startswith("time() - (") == (unit == "s")
            [override] = panel["fieldConfig"]["overrides"]
            assert override["matcher"] == {"id": "byName", "options": "Value"}
            assert override["properties"] == [{"id": "displayName", "value": column}]


def test_every_series_of_the_sink_dashboard_is_filtered_by_its_instance_variable() -> None:
    """Each series selector in each target of the sink dashboard (the schedule counts, which
    render the alert expressions, included) carries instance=~"$instance", as the variable
    promises: choosing one sink shows that sink's numbers only."""
    labels = {sc.prometheus_label(a) for s in sc.all_metric_specs() for a in s.labels}
    selector = re.compile(r"\b(chaperone[a-z0-9_:]*|up)\b(\{[^}]*\})?")
    board = dashboards()["chaperone-sink.json"]
    assert "instance" in {v["name"] for v in board["templating"]["list"]}
    seen = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            for match in selector.finditer(target["expr"]):
                name, matchers = match.groups()
                if name in labels:  # a by (...) label
                    continue
                seen += 1
                assert matchers, (panel["title"], name)
                assert 'instance=~"$instance"' in matchers, (panel["title"], name)
    assert seen > 20


def test_readme_states_the_default_long_run_threshold(repo: Path) -> None:
    """dashboards/README.md (written by hand) gives the long-run threshold's default as
    Config has it."""
    text = " ".join((repo / DASHBOARDS_DIR / "README.md").read_text().split())
    found = re.findall(r"`CHAPERONE_OTEL_LONG_RUN_THRESHOLD`, default (\d+(?:\.\d+)?) s", text)
    assert found
    assert {float(x) for x in found} == {Config().long_run_threshold}
