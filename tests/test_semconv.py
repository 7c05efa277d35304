"""semconv is the one source of names: docs, Prometheus derivation and code agree with it."""

from __future__ import annotations

import pathlib
import re

from chaperone_otel import semconv as sc
from chaperone_otel._telemetry_doc import render

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_telemetry_doc_is_generated_from_semconv() -> None:
    """docs/telemetry.md equals the rendering of semconv (regenerate it if this fails)."""
    committed = (ROOT / "docs" / "telemetry.md").read_text()
    assert committed == render(), (
        "docs/telemetry.md is stale: run `python -m chaperone_otel._telemetry_doc > "
        "docs/telemetry.md`"
    )


def test_prometheus_names_follow_the_exporter_rules() -> None:
    """Units become suffixes, counters get _total, dots become underscores."""
    assert (
        sc.METRIC_JOB_LAST_HEARTBEAT.prometheus == "chaperone_job_last_heartbeat_timestamp_seconds"
    )
    assert sc.METRIC_JOB_RUNS_FINISHED.prometheus == "chaperone_job_runs_finished_total"
    assert sc.METRIC_JOB_MEMORY.prometheus == "chaperone_job_memory_usage_bytes"
    assert sc.METRIC_JOB_PROGRESS.prometheus == "chaperone_job_progress_ratio"
    assert sc.METRIC_JOB_DURATION.prometheus == "chaperone_job_duration_seconds"
    assert sc.prometheus_label(sc.ATTR_JOB_NAME) == "chaperone_job_name"


def test_names_are_unique_and_wellformed() -> None:
    """No two constants share a name; OTel names are lowercase and dot-namespaced."""
    specs = sc.all_metric_specs()
    assert len({s.name for s in specs}) == len(specs)
    assert len({s.prometheus for s in specs}) == len(specs)
    for spec in specs:
        assert re.fullmatch(r"chaperone\.[a-z0-9_.]+", spec.name), spec.name
        assert "job" not in [sc.prometheus_label(label) for label in spec.labels]
    events = [v for k, v in vars(sc).items() if k.startswith("EVENT_")]
    assert len(set(events)) == len(events) == len(sc.LIFECYCLE_EVENTS)


def test_runtime_code_types_no_chaperone_names() -> None:
    """Runtime modules take every chaperone.* name from semconv, never a string literal."""
    offenders = []
    package = ROOT / "chaperone_otel"
    for path in [*package.glob("_*.py"), *package.glob("_otel/*.py")]:
        if path.name == "_telemetry_doc.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\"']chaperone\.(job|sink|internal|limit)\.", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders
