"""alerts/: the committed rule file and its promtool suite are the generator's output, pass
promtool, cover every alert both ways, and render the single health definition."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from chaperone_otel import semconv as sc
from chaperone_otel._health import DEFAULT_POLICY, promql, rules
from chaperone_otel.artifacts import RULE_PATHS, render, stale
from chaperone_otel.artifacts._rules import GROUP, SOURCES, alerts, anchor, rule_file, rule_tests
from tests.yamlload import safe_load

pytestmark = pytest.mark.prometheus
both = pytest.mark.parametrize("source", SOURCES)

REQUIRED = {
    "ChaperoneJobHeartbeatMissed": "warning",
    "ChaperoneJobStuck": "critical",
    "ChaperoneJobLost": "critical",
    "ChaperoneJobOvertime": None,
    "ChaperoneJobStalled": None,
    "ChaperoneJobFailureRatioHigh": None,
    "ChaperoneJobResourceLimitNear": None,
    "ChaperoneJobResourceLimitViolated": None,
    "ChaperoneJobNoRecentSuccess": None,
    "ChaperoneSinkDown": None,
    "ChaperoneSinkRejecting": None,
    "ChaperoneSinkDroppingData": None,
}
METRIC_TOKEN = re.compile(r"\b(chaperone[a-z0-9_:]*)\b")


def _rules(repo: Path, source: str = "worker") -> list[dict[str, object]]:
    data = safe_load((repo / RULE_PATHS[source][0]).read_text())
    [group] = data["groups"]
    assert group["name"] == (GROUP if source == "worker" else f"{GROUP}-{source}")
    return list(group["rules"])


def test_committed_files_equal_generator_output(repo: Path) -> None:
    """`python -m chaperone_otel.artifacts --check` would pass: nothing is stale (both rule
    files, both suites, every dashboard)."""
    assert stale(repo) == []
    assert {p for pair in RULE_PATHS.values() for p in pair} <= set(render())


@both
def test_emitted_yaml_loads_back_to_the_generator_data(repo: Path, source: str) -> None:
    """The tiny YAML emitter is faithful (PyYAML reads back exactly the source data)."""
    rules_path, tests_path = RULE_PATHS[source]
    assert safe_load(render()[rules_path]) == rule_file(source=source)
    name = "../" + rules_path.rsplit("/", 1)[1]
    assert safe_load(render()[tests_path]) == rule_tests(rule_file_name=name,
                                                              source=source)


@both
def test_both_sources_ship_the_same_alerts(source: str) -> None:
    """Each rule file has every alert (a deployment loses none by choosing its file)."""
    assert [a.name for a in alerts(source=source)] == [a.name for a in alerts()]


@both
def test_required_alerts_have_severity_and_annotations(repo: Path, source: str) -> None:
    """Each required alert exists with a severity, summary, description and runbook_url."""
    by_name = {r["alert"]: r for r in _rules(repo, source) if "alert" in r}
    assert set(REQUIRED) <= set(by_name)
    for name, rule in by_name.items():
        assert re.fullmatch(r"Chaperone[A-Z][A-Za-z]+", name)
        assert rule["labels"]["severity"] in ("warning", "critical")
        if REQUIRED.get(name):
            assert rule["labels"]["severity"] == REQUIRED[name]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert annotations["runbook_url"].endswith("docs/operations.md#" + anchor(name))


@both
def test_runbook_anchors_exist_in_operations_doc(repo: Path, source: str) -> None:
    """Every runbook_url anchor is a heading of docs/operations.md."""
    doc = (repo / "docs" / "operations.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", doc, flags=re.MULTILINE)}
    for rule in _rules(repo, source):
        if "alert" in rule:
            assert anchor(str(rule["alert"])) in headings, rule["alert"]


def _or_counted(rendered: object, pred: str) -> str:
    """The alert of a per-run rule: its rendering over the run-group gauges (the stalest run
    of each group), or the sink's count of the job's runs matching it (any of them)."""
    return (
        f"({rendered}) or on (chaperone_job_name, chaperone_job_queue) "
        "(max without (chaperone_sink_problem) "
        f'(chaperone_sink_runs_problem{{chaperone_sink_problem="{pred}"}}) > 0)'
    )


def test_health_alerts_render_the_single_health_definition(repo: Path) -> None:
    """Stuck, overtime, stalled, limits and heartbeat-missed exprs are _health's PromQL, or
    the sink's count of runs matching the same predicate."""
    r = rules(DEFAULT_POLICY)
    by_name = {r_["alert"]: r_["expr"] for r_ in _rules(repo) if "alert" in r_}
    assert by_name["ChaperoneJobStuck"] == _or_counted(r.stuck.promql(), "stuck")
    assert by_name["ChaperoneJobOvertime"] == _or_counted(r.overtime.promql(), "overtime")
    assert by_name["ChaperoneJobStalled"] == _or_counted(r.stalled.promql(), "stalled")
    assert by_name["ChaperoneJobResourceLimitNear"] == _or_counted(
        r.near_limit.promql(), "near_limit"
    )
    assert by_name["ChaperoneJobResourceLimitViolated"] == _or_counted(
        r.violated.promql(), "violated"
    )
    assert by_name["ChaperoneJobHeartbeatMissed"] == _or_counted(
        r.heartbeat_missed.promql(), "heartbeat_missed"
    )
    lost = by_name["ChaperoneJobLost"]
    assert sc.METRIC_SINK_SILENCE_RATIO.prometheus in lost
    assert f"> {DEFAULT_POLICY.lost_after!r}" in lost


def test_sink_alerts_render_the_single_health_definition_over_the_sinks_series(
    repo: Path,
) -> None:
    """In the sink-derived file every per-run alert, lost included, is _health's PromQL over
    the sink's run gauges, and no alert reads a worker series (chaperone_job_*)."""
    r = rules(DEFAULT_POLICY)
    by_name = {r_["alert"]: r_["expr"] for r_ in _rules(repo, "sink") if "alert" in r_}
    for alert, pred in (("ChaperoneJobStuck", "stuck"), ("ChaperoneJobOvertime", "overtime"),
                        ("ChaperoneJobStalled", "stalled"), ("ChaperoneJobLost", "lost"),
                        ("ChaperoneJobResourceLimitNear", "near_limit"),
                        ("ChaperoneJobResourceLimitViolated", "violated"),
                        ("ChaperoneJobHeartbeatMissed", "heartbeat_missed")):
        assert by_name[alert] == _or_counted(promql(r.by_name(pred), "sink"), pred), alert
    labels = {sc.prometheus_label(a) for s in sc.all_metric_specs() for a in s.labels}
    for rule in _rules(repo, "sink"):
        for token in METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', str(rule["expr"]))):
            # The sink serves its own series and the schedules' (sink/_schedule_metrics.py).
            assert token in labels or token.startswith(
                ("chaperone_sink_", "chaperone:sink_", "chaperone_schedule_")), token


@both
def test_every_metric_name_in_the_rules_comes_from_semconv(repo: Path, source: str) -> None:
    """No hand-typed names: each chaperone_* token is a semconv Prometheus name (or a
    histogram series of one), and each chaperone:* token a recording rule of the file."""
    known = {s.prometheus for s in sc.all_metric_specs()}
    known |= {s.prometheus + sfx for s in sc.all_metric_specs() if s.kind == "histogram"
              for sfx in ("_bucket", "_sum", "_count")}
    recorded = {str(r["record"]) for r in _rules(repo, source) if "record" in r}
    labels = {sc.prometheus_label(a) for s in sc.all_metric_specs() for a in s.labels}
    for rule in _rules(repo, source):
        for token in METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', str(rule["expr"]))):
            assert token in known | recorded | labels, f"{token} in {rule.get('alert')}"


@both
def test_no_label_named_job_is_produced_by_the_rules(repo: Path, source: str) -> None:
    """Recording rules and alert labels never set a `job` label (Prometheus owns it)."""
    for rule in _rules(repo, source):
        assert "job" not in rule.get("labels", {})


@both
def test_every_alert_has_a_firing_and_a_quiet_case(source: str) -> None:
    """The promtool suite has, per alert, a case expecting alerts and one expecting none."""
    suite = rule_tests(source=source)
    cases: dict[str, list[int]] = {}
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            cases.setdefault(check["alertname"], []).append(len(check["exp_alerts"]))
    assert set(cases) == {a.name for a in alerts(source=source)}
    for name, expected in cases.items():
        assert any(n > 0 for n in expected), name
        assert 0 in expected, name


@both
def test_promtool_check_rules(promtool: str, repo: Path, source: str) -> None:
    """`promtool check rules` accepts the rule file."""
    out = subprocess.run([promtool, "check", "rules", str(repo / RULE_PATHS[source][0])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
@both
def test_promtool_test_rules(promtool: str, repo: Path, source: str) -> None:
    """`promtool test rules` passes: every alert fires in its scenario and stays quiet in
    the other."""
    test_file = repo / RULE_PATHS[source][1]
    out = subprocess.run([promtool, "test", "rules", test_file.name], cwd=test_file.parent,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@both
def test_promtool_suite_catches_a_broken_rule(promtool: str, repo: Path,
                                              tmp_path: Path, source: str) -> None:
    """The suite can fail: with the stuck threshold changed from 3x to 30x the interval,
    the stuck case stops firing and promtool reports it. Only the suite's cases that check
    the stuck alert run (the whole suite is `test_promtool_test_rules`'s job)."""
    rules_path, tests_path = RULE_PATHS[source]
    prefix = "chaperone_job_heartbeat" if source == "worker" else "chaperone_sink_run_heartbeat"
    broken = (repo / rules_path).read_text().replace(f"(3.0 * {prefix}", f"(30.0 * {prefix}")
    assert broken != (repo / rules_path).read_text(), "the stuck rule no longer has that shape"
    suite = safe_load((repo / tests_path).read_text())
    suite["tests"] = [case for case in suite["tests"]
                      if any(check["alertname"] == "ChaperoneJobStuck"
                             for check in case["alert_rule_test"])]
    assert suite["tests"], "the suite has no case for ChaperoneJobStuck"
    (tmp_path / "tests").mkdir()
    (tmp_path / rules_path.rsplit("/", 1)[1]).write_text(broken)
    (tmp_path / "tests" / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = subprocess.run([promtool, "test", "rules", "suite.yaml"], cwd=tmp_path / "tests",
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0
    assert "ChaperoneJobStuck" in out.stdout + out.stderr


def test_generator_option_selects_the_source(tmp_path: Path) -> None:
    """`python -m chaperone_otel.artifacts --source sink` writes only the sink-derived rule
    file, its suite and the sink-sourced dashboards (plus the sink server's), and `--check`
    then passes for that source and fails for the other."""
    from chaperone_otel.artifacts.__main__ import main

    assert main(["--root", str(tmp_path), "--source", "sink"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([*RULE_PATHS["sink"], "dashboards/chaperone-overview-sink.json",
                              "dashboards/chaperone-run-sink.json",
                              "dashboards/chaperone-sink.json"])
    assert main(["--root", str(tmp_path), "--check", "--source", "sink"]) == 0
    assert main(["--root", str(tmp_path), "--check", "--source", "worker"]) == 1


def test_generator_writes_anywhere_with_a_runbook_base(promtool: str, tmp_path: Path) -> None:
    """A pip user's copy: `--root` a directory that does not exist yet and `--runbook-base`
    a URL give rule files whose every runbook_url is the URL plus the alert's anchor, whose
    promtool suites pass, and which `--check` with the same base finds current (without it,
    stale: the defaults' relative URL differs)."""
    from chaperone_otel.artifacts.__main__ import main

    root = tmp_path / "ops" / "chaperone"
    base = "https://runbooks.internal/chaperone/operations.md"
    assert main(["--root", str(root), "--runbook-base", base]) == 0
    for source in SOURCES:
        rules_path, tests_path = RULE_PATHS[source]
        data = safe_load((root / rules_path).read_text())
        urls = {r["alert"]: r["annotations"]["runbook_url"]
                for group in data["groups"] for r in group["rules"] if "alert" in r}
        assert urls
        assert all(url == f"{base}#{anchor(name)}" for name, url in urls.items()), urls
        out = subprocess.run([promtool, "test", "rules", Path(tests_path).name],
                             cwd=root / Path(tests_path).parent, capture_output=True, text=True,
                             timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    assert main(["--root", str(root), "--check", "--runbook-base", base]) == 0
    assert main(["--root", str(root), "--check"]) == 1
