"""semconv is the one source of names: docs, Prometheus derivation and code agree with it."""

from __future__ import annotations

import ast
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
    events = [v for k, v in vars(sc).items() if k.startswith("EVENT_JOB_")]
    assert len(set(events)) == len(events) == len(sc.LIFECYCLE_EVENTS)


_NAMESPACES = sorted(
    set(
        re.findall(
            r"[\"']chaperone\.([a-z_]+)\.", (ROOT / "chaperone_otel" / "semconv.py").read_text()
        )
    )
)
_NAME = re.compile(rf"(?<![\w/.-])chaperone\.({'|'.join(_NAMESPACES)})\b")
"""A chaperone name in any of the namespaces semconv uses (``chaperone.job.``, ...)."""


def _typed_names(source: str) -> list[tuple[int, str]]:
    """String constants (docstrings aside) that spell a ``chaperone.*`` name."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _NAME.search(node.value)
    ]


def test_no_module_types_a_chaperone_name() -> None:
    """Every module of the package (all of them, not only the runtime's) takes each
    chaperone.* name from semconv, never a string literal of its own."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in sorted((ROOT / "chaperone_otel").rglob("*.py"))
        if path.name != "semconv.py"
        for line, value in _typed_names(path.read_text())
    ]
    assert not offenders, offenders


def test_the_scan_finds_a_typed_name_anywhere_but_in_docstrings() -> None:
    """The scan can fail: a literal in a nested function or an f-string is found; a
    docstring that mentions a name is not."""
    source = (
        '"""Emits chaperone.job.started."""\n'
        "def f():\n"
        '    """Reads chaperone.job.name."""\n'
        '    return {"chaperone.sink.from_span": 1}, f"chaperone.job.{1}"\n'
    )
    assert [v for _, v in _typed_names(source)] == ["chaperone.sink.from_span", "chaperone.job."]
