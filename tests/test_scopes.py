"""One scope registry (``chaperone_otel._scopes``) drives all four surfaces of the scopes.

The Python API (``JobQuery`` methods), the CLI's flags, the HTTP query parameters and the
replay of a remote query's steps must each offer exactly the registry's scopes, and a scope
must select the same runs whichever surface asked for it.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chaperone_otel import semconv as sc
from chaperone_otel._scopes import SCOPES, ScopeSpec
from chaperone_otel.cli import cli
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import JobQuery, open_sink
from chaperone_otel.sink._api import apply_scopes
from tests.sink.store_factory import T0, record, store_writer, write_all

NAMES = {spec.name for spec in SCOPES}

# What a JobQuery has besides scopes: shaping, terminals, rendering.
NOT_SCOPES = {"order_by", "limit", "at", "all", "first", "count", "to_arrow", "sql", "render",
              "replay", "steps", "now"}
# Options of `jobs` that are not scopes.
JOBS_OPTIONS = {"db", "url", "limit", "order_by", "desc", "as_json", "as_csv"}

NOW = T0 + 1000.0
MiB = 1024 * 1024

# Python argument(s), CLI argument(s) and HTTP value(s) per kind of argument.
ARGS = {
    "text": (("etl.import",), ("etl.import",), ("etl.import",)),
    "class": (("etl",), ("etl",), ("etl",)),
    "since": (("400d",), ("400d",), ("400d",)),
    "range": ((T0 - 10, T0 + 10), ("2025-12-31T23:59:50Z", "2026-01-01T00:00:10Z"),
              ("2025-12-31T23:59:50Z", "2026-01-01T00:00:10Z")),
    "bytes": (("1MiB",), ("1MiB",), ("1MiB",)),
    "percent": ((50.0,), ("50",), ("50",)),
}


def _python_args(spec: ScopeSpec) -> tuple[object, ...]:
    if spec.name == "with_id":
        return ("hog",)
    return () if spec.arg == "none" else ARGS[spec.arg][0]


def _cli_args(spec: ScopeSpec) -> list[str]:
    if spec.name == "with_id":
        return [spec.flag, "hog"]
    return [spec.flag] if spec.arg == "none" else [spec.flag, *ARGS[spec.arg][1]]


def _http_params(spec: ScopeSpec) -> dict[str, list[str]]:
    if spec.arg == "none":
        return {"scope": [spec.name]}
    if spec.name == "with_id":
        return {spec.params[0]: ["hog"]}
    values = ARGS[spec.arg][2]
    return {param: [value] for param, value in zip(spec.params, values, strict=True)}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A few runs every scope can tell apart (evaluated at wall-clock now: all long ago)."""
    def run(run_id, **attrs):
        return record(run_id=run_id, seq=5, ts=NOW, started_at=T0, last_heartbeat=NOW, **attrs)

    path = tmp_path_factory.mktemp("scopes") / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, [
            run("hog", **{sc.ATTR_MEMORY_USAGE: 600 * MiB, sc.ATTR_LIMIT_MEMORY: 700 * MiB,
                          sc.ATTR_CPU_PERCENT: 95.0}),
            run("done", status="completed", name="etl.report"),
            run("other", name="billing.run", queue="high"),
        ])
    return path


def test_python_api_has_exactly_the_registry_scopes():
    """Every registry scope is a JobQuery method, and JobQuery has no scope the registry
    lacks (so the CLI and HTTP API, generated from it, cannot fall behind)."""
    public = {n for n in dir(JobQuery) if not n.startswith("_")}
    assert public - NOT_SCOPES == NAMES


def test_cli_has_exactly_the_registry_scopes():
    """`jobs` has one flag per registry scope, spelled as the registry says."""
    jobs = cli.commands["jobs"]
    options = {p.name: p for p in jobs.params if p.name not in JOBS_OPTIONS}
    assert set(options) == NAMES
    for spec in SCOPES:
        assert spec.flag in options[spec.name].opts


def test_http_api_has_exactly_the_registry_scopes(store_path):
    """/api/jobs accepts each registry scope's parameters (and adds its step), and refuses
    a scope or parameter the registry does not have."""
    with open_sink(store_path) as sink:
        for spec in SCOPES:
            query = apply_scopes(sink.jobs, _http_params(spec))
            assert [s[0] for s in query.steps] == [spec.step], spec.name
        with pytest.raises(ValueError, match="unknown scope"):
            apply_scopes(sink.jobs, {"scope": ["bogus"]})
        with pytest.raises(ValueError, match="unknown parameter"):
            apply_scopes(sink.jobs, {"bogus": ["1"]})


def test_replay_accepts_exactly_the_registry_steps(store_path):
    """A remote query's steps replay on the owner for every scope; a step kind no scope
    makes is refused."""
    with open_sink(store_path) as sink:
        for spec in SCOPES:
            query = getattr(sink.jobs, spec.name)(*_python_args(spec))
            wire = json.loads(json.dumps([list(s) for s in query.steps]))
            assert JobQuery.replay(sink, wire).steps == query.steps, spec.name
        with pytest.raises(SinkError, match="unknown query step"):
            JobQuery.replay(sink, [["bogus", 1]])
        with pytest.raises(SinkError, match="malformed"):
            JobQuery.replay(sink, [["health", "running"]])  # a status is no health scope


def test_every_surface_selects_the_same_runs(store_path):
    """For each scope, the CLI flag, the HTTP parameters and the Python method select the
    same runs (and the SQL of each runs)."""
    runner = CliRunner()
    with open_sink(store_path) as sink:
        for spec in SCOPES:
            python = {r.id for r in getattr(sink.jobs, spec.name)(*_python_args(spec)).all()}
            http = {r.id for r in apply_scopes(sink.jobs, _http_params(spec)).all()}
            result = runner.invoke(
                cli, ["jobs", "--db", str(store_path), *_cli_args(spec), "--json"],
                env={"CHAPERONE_OTEL_SINK": None},
            )
            assert result.exit_code == 0, (spec.name, result.output)
            assert {r["id"] for r in json.loads(result.stdout)} == python == http, spec.name


def test_heartbeat_missed_is_a_real_scope(tmp_path):
    """heartbeat_missed: running runs whose heartbeat is older than one interval, even
    while they are still healthy (1.5 intervals)."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, [
            record(run_id="late", seq=2, ts=NOW, last_heartbeat=NOW - 12, interval=10.0),
            record(run_id="fresh", seq=2, ts=NOW, last_heartbeat=NOW - 5, interval=10.0),
            record(run_id="ended", seq=2, ts=NOW, last_heartbeat=NOW - 50, interval=10.0,
                   status="completed"),
        ])
    with open_sink(path) as sink:
        jobs = sink.jobs.at(NOW)
        assert {r.id for r in jobs.heartbeat_missed().all()} == {"late"}
        assert {r.id for r in jobs.heartbeat_missed().healthy().all()} == {"late"}
