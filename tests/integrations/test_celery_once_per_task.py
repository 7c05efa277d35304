"""``integrations.celery`` resolves a task's options once per task, not at every run.

A trivial task's run is dominated by per-run work (issue 13's throughput bench): reading the
app's configuration (~6 us a key) and validating the same spec at every run were a fifth of
what the signal receivers cost the job thread. These tests pin that the work is done once
and that what a later run records is what a first run records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel.integrations import celery as integration
from chaperone_otel.integrations.celery import instrument, uninstrument
from chaperone_otel.sink import open_sink
from chaperone_otel.testing import Capture
from tests.stores import empty_store
from tests.waiting import wait_until

_PER_RUN = {
    sc.ATTR_JOB_RUN_ID,
    sc.ATTR_JOB_EXECUTION_ID,
    sc.ATTR_JOB_STARTED_AT,
    sc.ATTR_JOB_FINISHED_AT,
    sc.ATTR_JOB_DURATION,
    sc.ATTR_HEARTBEAT_LAST,
    sc.ATTR_PROGRESS_UPDATED_AT,
    sc.ATTR_JOB_TIMEOUT_AT,
    sc.ATTR_JOB_SEQUENCE,
    # resource samples: taken when the monitor last sampled the process, not per run
    sc.ATTR_CPU_PERCENT,
    sc.ATTR_MEMORY_USAGE,
    sc.ATTR_MEMORY_PEAK,
    sc.ATTR_OPEN_FDS,
}

_PER_RUN_COLUMNS = {
    "run_id",
    "execution_id",
    "started_at",
    "finished_at",
    "duration",
    "last_heartbeat_at",
    "last_seen_at",
    "progress_updated_at",
    "timeout_at",
    "ingested_at",
    "trace_id",
    "span_id",
    "cpu_percent",
    "memory_bytes",
    "memory_peak_bytes",
    "open_fds",
    "cpu_scope",
}


@pytest.fixture
def app() -> Iterator[Celery]:
    celery_app = Celery("once", broker="memory://", backend="cache+memory://")
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_soft_time_limit = 60
    instrument(celery_app)
    try:
        yield celery_app
    finally:
        uninstrument(celery_app)


def _same_every_run(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k not in _PER_RUN}


def test_later_runs_of_a_task_reuse_its_spec_and_record_what_the_first_run_did(
    app: Celery, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five runs of one task: one spec validated, and the records of runs 2-5 carry the
    same name, queue, attempt, lease, heartbeat interval, timeout (the app's soft limit,
    below the task's hard one) as run 1's, at the start and at the finish."""
    made: list[str] = []
    real = integration._make_spec

    def counting(name: Any, **options: Any) -> Any:
        made.append(str(name))
        return real(name, **options)

    monkeypatch.setattr(integration, "_make_spec", counting)

    @app.task(name="once.pack", time_limit=90, chaperone_heartbeat_interval=7)
    def pack(n: int) -> int:
        return n

    ids = [pack.apply(args=(i,)).id for i in range(5)]
    assert made == ["once.pack"]
    runs = [cap.run(run_id) for run_id in ids]
    first = runs[0]
    assert first.latest[sc.ATTR_JOB_TIMEOUT] == 60.0
    assert first.latest[sc.ATTR_HEARTBEAT_INTERVAL] == 7.0
    assert first.latest[sc.ATTR_JOB_LEASE] == "liveness"
    for event in (sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED):
        want = _same_every_run(dict(first.events(event)[0].attributes))
        for run in runs[1:]:
            assert _same_every_run(dict(run.events(event)[0].attributes)) == want


def test_runs_from_the_reused_spec_store_the_row_a_public_start_run_stores(
    app: Celery, tmp_path: Path
) -> None:
    """In a real store: the rows of a task's first and later runs (a spec made, then reused)
    equal, column for column, the row of a run started through the public ``start_run`` with
    the options the integration resolved per run before (what a run's own moment makes
    differ aside)."""
    path = empty_store(tmp_path / "jobs.duckdb")
    chaperone.configure(sink=str(path))

    @app.task(name="once.ship", time_limit=90, chaperone_heartbeat_interval=7)
    def ship(n: int) -> int:
        return n

    ids = [ship.apply(args=(i,)).id for i in range(3)]
    public = chaperone.start_run(
        "once.ship",
        run_id="public-run",
        attempt=1,
        timeout=60.0,  # the app's soft limit, below the task's hard one
        heartbeat_interval=7,
        lease="liveness",
    )
    public.finish()
    assert chaperone.flush(10)
    with open_sink(str(path)) as sink:
        wait_until(
            lambda: sum(r.finished_at is not None for r in sink.jobs.named("once.ship").all()) == 4,
            20,
            "4 stored runs",
        )
        result = sink.sql("SELECT * FROM jobs WHERE name = 'once.ship'")
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    by_id = {row["run_id"]: _stored(row) for row in rows}
    want = by_id.pop("public-run")
    assert want["timeout"] == 60.0
    assert want["heartbeat_interval"] == 7.0
    assert want["lease"] == "liveness"
    assert want["status"] == "completed"
    for run_id in ids:
        assert by_id[run_id] == want


def _stored(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row's columns, without those a run's own moment, id or process sets."""
    return {name: value for name, value in row.items() if name not in _PER_RUN_COLUMNS}
