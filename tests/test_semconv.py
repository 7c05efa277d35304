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


_SEMCONV_FILES = frozenset(
    pathlib.Path(module.__file__ or "").resolve() for module in (sc, *sc._PARTS)
)
"""The registry: ``semconv.py`` and the private parts it re-exports (split for length)."""

_NAMESPACES = sorted(
    {
        namespace
        for path in _SEMCONV_FILES
        for namespace in re.findall(r"[\"']chaperone\.([a-z_]+)\.", path.read_text())
    }
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
        if path.resolve() not in _SEMCONV_FILES
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


def _defined(source: str) -> set[str]:
    """Public names a module's own top-level code defines (not the ones it imports)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_only_the_registry_is_exempt_from_the_scan() -> None:
    """The scan skips semconv.py and its parts only, and a part is the registry: every
    public name it defines is semconv's (in ``__all__``, the same object), it spells
    chaperone names the scan would otherwise report, and the namespaces come from all of
    them (``chaperone.sink.`` is only in a part)."""
    package = (ROOT / "chaperone_otel").resolve()
    assert package / "semconv.py" in _SEMCONV_FILES
    assert len(_SEMCONV_FILES) == 1 + len(sc._PARTS) >= 3
    for part in sc._PARTS:
        path = pathlib.Path(part.__file__ or "").resolve()
        assert path.parent == package, path
        assert path.name.startswith("_semconv"), path
        own = _defined(path.read_text())
        assert own, part.__name__
        assert own <= set(sc.__all__), sorted(own - set(sc.__all__))
        assert all(getattr(sc, n) is getattr(part, n) for n in own)
        assert _typed_names(path.read_text()), f"{path.name} names nothing: why exempt it?"
    assert {"internal", "job", "limit", "schedule", "sink"} <= set(_NAMESPACES)
