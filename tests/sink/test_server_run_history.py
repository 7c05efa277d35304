"""The parent run link and the stuck history over OTLP to a real ``chaperone-otel sink serve``
process (issue 12, items 10 and 21): what the embedded store keeps, a server keeps too."""

from __future__ import annotations

from pathlib import Path

import pytest

import chaperone_otel
from chaperone_otel import supervised
from chaperone_otel.sink import JobRecord, open_sink
from tests.sink.serve_process import ServeProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def test_parent_link_and_stuck_history_travel_over_otlp(tmp_path: Path) -> None:
    """Nested runs and a run stuck for a while then completed, exported by this process over
    OTLP/HTTP to ``sink serve``: the inner run's ``parent_run_id`` is the outer run's id
    (``children_of()`` finds it), and the recovered run has its ``stuck_since`` and
    ``stuck_seconds`` (``was_stuck()`` finds it, not the others)."""
    path = tmp_path / "jobs.duckdb"
    with ServeProcess(path) as server:
        chaperone_otel.configure(otlp_endpoint=server.url, service_name="history")
        with supervised("otlp.outer") as outer, supervised("otlp.inner") as inner:
            inner.heartbeat()
        with supervised("otlp.hung", heartbeat_interval=0.1) as hung:
            wait_until(lambda: hung.stuck, 20, "the silent run to be judged stuck")
            hung.heartbeat()
            wait_until(lambda: not hung.stuck, 20, "the run to beat again")
        assert chaperone_otel.flush(20)
        with open_sink(str(path)) as sink:

            def stored() -> dict[str, JobRecord] | None:
                runs = {r.name or "": r for r in sink.jobs.completed().all()}
                return runs if len(runs) == 3 else None

            runs: dict[str, JobRecord] = wait_until(stored, 30, "3 completed runs on the server")
            assert runs["otlp.inner"].parent_run_id == outer.id
            assert runs["otlp.outer"].parent_run_id is None
            assert [r.id for r in sink.jobs.children_of(outer.id).all()] == [inner.id]
            recovered = runs["otlp.hung"]
            assert recovered.stuck_since is not None
            assert recovered.started_at is not None
            assert recovered.stuck_since > recovered.started_at
            assert recovered.stuck_seconds is not None
            assert recovered.stuck_seconds > 0
            assert [r.id for r in sink.jobs.was_stuck().all()] == [hung.id]
