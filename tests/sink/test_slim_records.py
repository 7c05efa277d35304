"""Slim lifecycle records on the wire store the same rows as full ones (issue 16 goal 2).

The OTel log writer leaves out of a run's ``started`` and ``finished`` records what the sink
restores exactly (``chaperone_otel._implied``: defaults at a start, times equal to the start)
and, on ``finished``, the run's unchanged spec (kept by the store's ``sticky``
merge). Real runs (completed, failed, with heartbeats, progress, limits, a timeout and its
violation, the liveness lease) go through the real runtime and OTel SDK; their full in-process
records and their slim OTel log records, encoded with the real OTLP encoder and decoded by the
sink's decoder, are written to two real DuckDB stores, whose rows must be identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel._events import LifecycleRecord
from chaperone_otel._implied import SPEC_ON_FINISHED, restore, slim
from chaperone_otel.sink._otlp import decode_logs
from chaperone_otel.testing import Capture, FakeClock
from tests.sink.store_factory import store_writer, table, write_all

_SPEC_COLUMNS = (
    "heartbeat_interval",
    "lease",
    "limit_policy",
    "timeout",
    "stall_timeout",
    "memory_limit_bytes",
    "cpu_limit_percent",
    "fd_limit",
)


def _real_runs() -> tuple[list[LifecycleRecord], list[LifecycleRecord]]:
    """(full in-process records, slim records as the sink decodes them from OTLP)."""
    clock = FakeClock()
    with Capture(clock=clock, heartbeat_interval=10) as cap:

        @supervised(name="etl.plain")
        def plain() -> None:
            clock.advance(0.25)

        @supervised(name="etl.broken", queue="etl", timeout=60, on_limit="warn")
        def broken() -> None:
            clock.advance(1.5)
            raise ValueError("bad row 7")

        plain()
        with pytest.raises(ValueError, match="bad row 7"):
            broken()
        limited = supervised(
            "etl.load",
            queue="bulk",
            heartbeat_interval=5,
            timeout=20,
            stall_timeout=30,
            memory_limit="64GiB",
            cpu_limit=800.0,
            fd_limit=100_000,
            attributes={"tenant": "acme"},
        ).start()
        for i in range(3):
            clock.advance(4)
            limited.heartbeat()
            limited.report_progress(i + 1, 10)
            cap.tick()
        clock.advance(30)  # past its timeout: a timeout violation
        cap.tick()
        limited.finish()
        quiet = supervised("etl.quiet", lease="liveness", heartbeat_interval=30).start()
        clock.advance(2)
        quiet.finish()
        cap.tick()
        full = [r for r in cap.records if sc.ATTR_JOB_RUN_ID in r.attributes]
        body = encode_logs(cap.log_records()).SerializeToString()
    slim_records = decode_logs(body)
    # The OTLP decoder adds the resource's service name to each record; the in-process
    # records leave it to the store's own (none here): give the full ones the same.
    service = {sc.ATTR_SERVICE_NAME: slim_records[0].attributes[sc.ATTR_SERVICE_NAME]}
    for record in full:
        record.attributes = {**record.attributes, **service}
    return full, slim_records


def _rows(
    path: Path, records: Sequence[LifecycleRecord], batching: str = "one batch"
) -> dict[str, dict[str, Any]]:
    """The stored rows (by run id; ``errors``: the error table) after writing ``records``
    in one batch, one record per batch, or one per batch in reverse order."""
    if batching == "one batch":
        batches: list[Sequence[LifecycleRecord]] = [records]
    else:
        ordered = list(records) if batching == "one per batch" else list(reversed(records))
        batches = [[r] for r in ordered]
    with store_writer(path) as (writer, sink):
        for batch in batches:  # each committed before the next is submitted
            write_all(writer, batch)
        columns, rows = sink.sql("SELECT * EXCLUDE (ingested_at) FROM jobs")
        names = [c if isinstance(c, str) else c[0] for c in columns]
        by_id = {row[names.index("run_id")]: dict(zip(names, row, strict=True)) for row in rows}
        by_id["errors"] = {"rows": table(sink, "SELECT * EXCLUDE (run_id) FROM job_errors")}
        return by_id


@pytest.fixture(scope="module")
def runs() -> tuple[list[LifecycleRecord], list[LifecycleRecord]]:
    return _real_runs()


def test_the_wire_records_are_slim(runs: Any) -> None:
    _full, slim_records = runs
    started = [r for r in slim_records if r.event_name == sc.EVENT_JOB_STARTED]
    finished = [r for r in slim_records if r.event_name == sc.EVENT_JOB_FINISHED]
    assert len(started) == len(finished) == 4
    for record in started:
        for attribute in (sc.ATTR_JOB_HEALTH, sc.ATTR_JOB_STUCK, sc.ATTR_HEARTBEAT_LAST):
            assert attribute not in record.attributes
        assert sc.ATTR_HEARTBEAT_INTERVAL in record.attributes  # the spec goes with the start
    for record in finished:
        assert not SPEC_ON_FINISHED & set(record.attributes)
        assert sc.ATTR_JOB_DURATION in record.attributes  # what log backends chart
        assert sc.ATTR_JOB_HEALTH in record.attributes
        assert record.attributes[sc.ATTR_JOB_STATUS] in ("completed", "failed")


@pytest.mark.parametrize("batching", ["one batch", "one per batch", "reversed"])
def test_slim_and_full_records_store_identical_rows(
    runs: Any, tmp_path: Path, batching: str
) -> None:
    full, slim_records = runs
    from_full = _rows(tmp_path / "full.duckdb", full)
    from_slim = _rows(tmp_path / "slim.duckdb", slim_records, batching)
    assert len(from_full) == 5  # four runs and their errors
    load = next(r for r in from_full.values() if r.get("name") == "etl.load")
    assert (load["timeout"], load["fd_limit"], load["limit_policy"]) == (20, 100_000, "record")
    assert load["violation_count"] >= 1
    assert from_slim == from_full, _diff(from_slim, from_full)


def test_a_finished_record_alone_makes_a_whole_row(runs: Any, tmp_path: Path) -> None:
    """Its ``started`` record and every record before the finish lost: the row still has
    the run's identity, outcome, times and verdict; only the spec is unknown."""
    full, slim_records = runs
    finished = [r for r in slim_records if r.event_name == sc.EVENT_JOB_FINISHED]
    alone = _rows(tmp_path / "alone.duckdb", finished)
    whole = _rows(tmp_path / "whole.duckdb", full)
    for run_id, row in alone.items():
        if run_id == "errors":
            assert row == whole["errors"]
            continue
        expected = dict(whole[run_id])
        for column in _SPEC_COLUMNS:
            expected[column] = None
        expected["last_seen_at"] = row["last_seen_at"]  # its earlier records were not seen
        expected["heartbeat_rows"] = row["heartbeat_rows"]
        assert row == expected, run_id
        assert row["duration"] == pytest.approx(
            (row["finished_at"] - row["started_at"]).total_seconds(), abs=1e-6
        )


def test_restore_gives_back_exactly_what_slim_left_out(runs: Any) -> None:
    full, _slim = runs
    checked = 0
    for record in full:
        slimmed = slim(record.event_name, record.attributes)
        restored = dict(restore(record.event_name, slimmed))
        expected = dict(record.attributes)
        if record.event_name == sc.EVENT_JOB_FINISHED:
            expected = {k: v for k, v in expected.items() if k not in SPEC_ON_FINISHED}
            checked += 1
        assert {k: (type(v), v) for k, v in restored.items()} == {
            k: (type(v), v) for k, v in expected.items()
        }
    assert checked == 4


def test_a_value_is_left_out_only_when_it_equals_the_implied_one() -> None:
    attrs = {
        sc.ATTR_JOB_STARTED_AT: 100.0,
        sc.ATTR_HEARTBEAT_LAST: 100.5,  # not the start: kept
        sc.ATTR_HEARTBEAT_COUNT: False,  # a bool is not the count 0: kept
        sc.ATTR_VIOLATION_COUNT: 0,
        sc.ATTR_JOB_HEALTH: "degraded",
    }
    assert slim(sc.EVENT_JOB_STARTED, attrs) == {
        sc.ATTR_JOB_STARTED_AT: 100.0,
        sc.ATTR_HEARTBEAT_LAST: 100.5,
        sc.ATTR_HEARTBEAT_COUNT: False,
        sc.ATTR_JOB_HEALTH: "degraded",
    }
    heartbeat = {sc.ATTR_HEARTBEAT_COUNT: 0, sc.ATTR_HEARTBEAT_INTERVAL: 5.0}
    assert slim(sc.EVENT_JOB_HEARTBEAT, heartbeat) is heartbeat  # other events: as they are
    assert restore(sc.EVENT_JOB_HEARTBEAT, {}) == {}


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        run: {
            c: (a[run].get(c), b.get(run, {}).get(c))
            for c in a[run]
            if a[run].get(c) != b.get(run, {}).get(c)
        }
        for run in a
    }
