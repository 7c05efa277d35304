"""exporters/: configs parse, pipelines reference defined components, ports agree across
files and with the library defaults, everything binds loopback, and promtool accepts the
Prometheus config."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel.artifacts import SINK_RULES_PATH
from chaperone_otel.artifacts._rules import SINK_SCRAPE_JOB, WORKER_SCRAPE_JOB, alert_names
from chaperone_otel.sink._server import DEFAULT_PORT as SINK_DEFAULT_PORT
from tests.yamlload import safe_load

EXPORTERS = "exporters"


def _load(repo: Path, rel: str) -> Any:
    return safe_load((repo / EXPORTERS / rel).read_text())


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


def test_every_yaml_file_parses(repo: Path) -> None:
    """All YAML under exporters/ parses to a mapping."""
    files = sorted((repo / EXPORTERS).rglob("*.y*ml"))
    assert len(files) >= 7
    for path in files:
        assert isinstance(safe_load(path.read_text()), dict), path


def test_collector_pipelines_reference_defined_components(repo: Path) -> None:
    """Each pipeline's receivers/processors/exporters are declared; logs and traces go to
    the sink, metrics to Prometheus."""
    cfg = _load(repo, "otel-collector/config.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"logs", "traces", "metrics"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in cfg[kind], f"{component} not defined under {kind}"
    assert pipelines["logs"]["exporters"] == ["otlphttp/sink"]
    assert pipelines["traces"]["exporters"] == ["otlphttp/sink"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]


def test_everything_binds_loopback(repo: Path) -> None:
    """No 0.0.0.0 anywhere, and every listen address in the configs is 127.0.0.1."""
    for path in (repo / EXPORTERS).rglob("*"):
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(), path
    cfg = _load(repo, "otel-collector/config.yaml")
    for proto in cfg["receivers"]["otlp"]["protocols"].values():
        assert proto["endpoint"].startswith("127.0.0.1:")
    assert cfg["exporters"]["prometheus"]["endpoint"].startswith("127.0.0.1:")
    compose = _load(repo, "compose.yaml")
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
    listen = [a for s in compose["services"].values() for a in s.get("command", [])
              if isinstance(a, str) and "listen-address=" in a and a.split("=", 1)[1]]
    assert listen
    assert all("=127.0.0.1:" in a for a in listen)


def test_ports_agree_across_files_and_defaults(repo: Path) -> None:
    """The sink port of the Collector's exporter, the compose command and the scrape job
    agree; the Collector's OTLP/HTTP port is the OTel default 4318; Prometheus scrapes the
    Collector's exporter port; Grafana's datasource is Prometheus's listen address."""
    collector = _load(repo, "otel-collector/config.yaml")
    prom = _load(repo, "prometheus/prometheus.yml")
    compose = _load(repo, "compose.yaml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    targets = {name: j["static_configs"][0]["targets"][0] for name, j in jobs.items()}

    sink_port = _port(collector["exporters"]["otlphttp/sink"]["endpoint"])
    assert _port(targets[SINK_SCRAPE_JOB]) == sink_port
    sink_cmd = " ".join(compose["services"]["sink"]["command"])
    assert f"--port {sink_port}" in sink_cmd
    assert "--host 127.0.0.1" in sink_cmd
    assert _port(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]) == 4318
    assert _port(targets["chaperone-collector"]) == _port(
        collector["exporters"]["prometheus"]["endpoint"])
    assert _port(targets[WORKER_SCRAPE_JOB]) == 9464  # the documented worker port

    prom_listen = next(a for a in compose["services"]["prometheus"]["command"]
                       if a.startswith("--web.listen-address="))
    datasource = _load(repo, "grafana/provisioning/datasources/chaperone.yaml")["datasources"][0]
    assert datasource["url"] == "http://" + prom_listen.split("=", 1)[1]
    am_listen = next(a for a in compose["services"]["alertmanager"]["command"]
                     if a.startswith("--web.listen-address="))
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        am_listen.split("=", 1)[1]]


def test_prometheus_config_loads_the_generated_rules(repo: Path) -> None:
    """rule_files points at alerts/chaperone.rules.yaml, relative to the config."""
    prom = _load(repo, "prometheus/prometheus.yml")
    [rule_file] = prom["rule_files"]
    assert (repo / EXPORTERS / "prometheus" / rule_file).resolve() == (
        repo / "alerts" / "chaperone.rules.yaml").resolve()


def test_grafana_provisioning_points_at_the_dashboards_mount(repo: Path) -> None:
    """The dashboard provider path is where compose mounts dashboards/."""
    provider = _load(repo, "grafana/provisioning/dashboards/chaperone.yaml")["providers"][0]
    mounts = _load(repo, "compose.yaml")["services"]["grafana"]["volumes"]
    assert f"../dashboards:{provider['options']['path']}:ro" in mounts


def test_alertmanager_has_a_webhook_receiver_and_valid_inhibitions(repo: Path) -> None:
    """The route's receiver is defined with a webhook; inhibitions name real alerts."""
    am = _load(repo, "alertmanager/alertmanager.yml")
    receivers = {r["name"]: r for r in am["receivers"]}
    assert am["route"]["receiver"] in receivers
    assert receivers[am["route"]["receiver"]]["webhook_configs"][0]["url"].startswith(
        "http://127.0.0.1:")
    names = set(alert_names())
    for rule in am["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            for alert in re.findall(r"Chaperone[A-Za-z]+", matcher):
                assert alert in names, alert


def test_readme_explains_each_config(repo: Path) -> None:
    """exporters/README.md mentions every config file."""
    readme = (repo / EXPORTERS / "README.md").read_text()
    for path in (repo / EXPORTERS).rglob("*.y*ml"):
        rel = path.relative_to(repo / EXPORTERS).as_posix()
        assert f"`{rel}`" in readme, rel


def test_sink_only_config_scrapes_only_the_sink_and_loads_the_sink_rules(repo: Path) -> None:
    """prometheus-sink-only.yml: one scrape job, the sink on its default port (workers send
    OTLP to it directly), and rule_files the sink-derived rule file."""
    prom = _load(repo, "prometheus/prometheus-sink-only.yml")
    [job] = prom["scrape_configs"]
    assert job["job_name"] == SINK_SCRAPE_JOB
    assert [_port(t) for t in job["static_configs"][0]["targets"]] == [SINK_DEFAULT_PORT]
    [rule_file] = prom["rule_files"]
    assert (repo / EXPORTERS / "prometheus" / rule_file).resolve() == (
        repo / SINK_RULES_PATH).resolve()
    assert prom["alerting"] == _load(repo, "prometheus/prometheus.yml")["alerting"]


@pytest.mark.prometheus
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-sink-only.yml"])
def test_promtool_check_config(promtool: str, repo: Path, config: str) -> None:
    """`promtool check config exporters/prometheus/<config>` passes (rules included)."""
    out = subprocess.run([promtool, "check", "config",
                          str(repo / EXPORTERS / "prometheus" / config)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
