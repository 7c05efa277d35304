"""Fixtures for the CLI tests: real DuckDB stores written by real supervised runs.

``recorded_store`` is a closed store file (its owner has shut down), the state a user queries
after a batch of jobs. ``live_store`` is owned by this test process while a run is hung and
another is healthy, so ``stuck``/``health``/``wait``/``monitor`` see live verdicts; the CLI
(run in-process by click's CliRunner) shares this process's connection to the file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import chaperone_otel
from chaperone_otel import supervised
from chaperone_otel._safety import set_raise_internal_errors
from tests.cli._cli_helpers import Live, Recorded, _record_runs
from tests.stores import empty_store
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def recorded_store(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A closed store: 2 etl.import + 1 reports.build completed, 1 failed, 1 violation."""
    old = set_raise_internal_errors(True)
    try:
        return _record_runs(tmp_path_factory.mktemp("store") / "jobs.duckdb")
    finally:
        set_raise_internal_errors(old)


@pytest.fixture
def live_store(tmp_path: Path) -> Iterator[Live]:
    """A store owned by this process with one stuck run and one healthy running run."""
    path = empty_store(tmp_path / "live.duckdb")
    chaperone_otel.configure(sink=str(path), heartbeat_interval=0.3, sample_interval=0.05)
    stop = threading.Event()
    ids: dict[str, str] = {}
    ready = threading.Barrier(3)

    def hung() -> None:
        with supervised("payments.reconcile", queue="payments", heartbeat_interval=0.05) as run:
            ids["hung"] = run.id
            run.report_progress(3, 10)
            ready.wait()
            stop.wait(30)

    def healthy() -> None:
        with supervised("etl.stream", queue="imports", heartbeat_interval=2.0) as run:
            ids["healthy"] = run.id
            ready.wait()
            i = 0
            while not stop.wait(0.05):
                i += 1
                run.report_progress(min(i, 99), 100)

    threads = [threading.Thread(target=t, daemon=True) for t in (hung, healthy)]
    for t in threads:
        t.start()
    ready.wait(timeout=10)
    live = Live(path, ids["hung"], ids["healthy"], stop)
    from chaperone_otel.sink import open_sink

    def hung_is_stuck() -> bool:
        with open_sink(str(path)) as sink:
            return sink.jobs.stuck().count() == 1

    wait_until(hung_is_stuck, 10, "the hung run to be stuck in the store")
    try:
        yield live
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        chaperone_otel.reset()


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAPERONE_OTEL_SINK", raising=False)


