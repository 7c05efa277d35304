"""What a run's records keep in the embedded sink: odd values, reused ids, metadata history
(issue 12, items 2, 5 and 9)."""

from __future__ import annotations

import contextlib
import decimal
import fractions
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import chaperone_otel
from chaperone_otel import heartbeat, report_progress, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._safety import internal_error_counts, set_raise_internal_errors
from chaperone_otel.sink import JobRecord, open_sink
from tests.stores import empty_store
from tests.waiting import wait_until


@contextlib.contextmanager
def _runs(path: Path, name: str, count: int = 1) -> Iterator[list[JobRecord]]:
    """The runs named ``name`` (by attempt), once ``count`` of them have finished in the
    store; the store stays open inside the block (for ``heartbeats()``)."""
    assert chaperone_otel.flush(10)
    with open_sink(str(path)) as sink:
        query = sink.jobs.named(name).order_by("attempt")

        def finished() -> list[JobRecord] | None:
            runs = query.all()
            done = [r for r in runs if r.finished_at is not None]
            return runs if len(done) == len(runs) == count else None

        yield wait_until(finished, 20, f"{count} finished {name} run(s)")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = empty_store(tmp_path / "jobs.duckdb")
    chaperone_otel.configure(sink=str(path))
    return path


@pytest.fixture
def swallowed() -> Any:
    """Internal errors are swallowed and counted, as in production (not raised, as in tests)."""
    before = set_raise_internal_errors(False)
    yield
    set_raise_internal_errors(before)


# ---- item 9: a bad value never costs a run its finish ---------------------------------------


def test_decimal_progress_is_stored_as_float_and_the_run_finishes(store: Path) -> None:
    """report_progress(Decimal, Decimal) and a Fraction total: the run completes at 100 %."""
    with supervised("odd.decimal") as run:
        report_progress(decimal.Decimal(3), decimal.Decimal(10))
        assert run.progress_current == 3.0
        assert type(run.progress_current) is float
        run.report_progress(fractions.Fraction(10), fractions.Fraction(10))
    with _runs(store, "odd.decimal") as (done,):
        assert done.status == "completed"
        assert done.progress == 100


@pytest.mark.parametrize(
    ("current", "total"),
    [(1, fractions.Fraction(10**400)), (decimal.Decimal("NaN"), 10)],
    ids=["fraction-beyond-float", "decimal-nan"],
)
def test_progress_a_float_cannot_hold_is_refused_at_the_call(current: Any, total: Any) -> None:
    """A number no float can hold, or a Decimal NaN, is a ValueError at the call site (the
    module helper and the handle alike), and nothing is stored."""
    with supervised("odd.refused") as run:
        with pytest.raises(ValueError, match=r"progress|non-negative"):
            run.report_progress(current, total)
        with pytest.raises(ValueError, match=r"progress|non-negative"):
            report_progress(current, total)
        assert run.progress_current is None


def test_track_total_decimal_is_coerced(store: Path) -> None:
    """track(items, total=Decimal) reports float progress and the run completes."""
    with supervised("odd.track") as run:
        for _ in run.track(range(4), total=decimal.Decimal(4)):
            pass
        assert type(run.progress_total) is float
    with _runs(store, "odd.track") as (done,):
        assert done.status == "completed"
        assert done.progress == 100


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@pytest.mark.parametrize("value", [10**5000, _Unprintable()], ids=["huge-int", "str-raises"])
def test_unwritable_metadata_keeps_every_record_and_is_counted(
    store: Path, swallowed: None, value: object
) -> None:
    """A metadata value that cannot be written becomes a placeholder: the heartbeat and the
    finished record are stored, the other keys intact, and an internal error is counted."""
    with supervised("odd.meta"):
        heartbeat({"rows": value, "batch": 7})
    with _runs(store, "odd.meta") as (done,):
        assert done.status == "completed"
        assert done.metadata["batch"] == 7
        assert done.metadata["rows"].startswith("<unrepresentable ")
        (beat,) = [h for h in done.heartbeats() if h.kind == "heartbeat"]
        assert beat.metadata is not None
        assert beat.metadata["batch"] == 7
        assert internal_error_counts().get("record.metadata", 0) >= 1


def test_metadata_whose_str_raises_falls_back_to_repr(store: Path) -> None:
    """str() raising but repr() working: the repr is stored, no internal error."""

    class BadStr:
        def __str__(self) -> str:
            raise RuntimeError("boom")

        def __repr__(self) -> str:
            return "BadStr()"

    with supervised("odd.badstr"):
        heartbeat(thing=BadStr())
    with _runs(store, "odd.badstr") as (done,):
        assert done.metadata == {"thing": "BadStr()"}


# ---- item 2: a reused run id is the next attempt, never a lost run --------------------------


def test_a_reused_supervision_id_becomes_the_next_attempt(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The guide's "bad" fixed id, three runs in a row: all three are in the store (attempts
    1, 2, 3, each with its own progress), and one warning says why."""
    for done in (5, 10, 7):
        with supervised("reuse.fixed", supervision_id="my-job") as run:
            report_progress(done, 10)
    assert run.attempt == 3
    with _runs(store, "reuse.fixed", 3) as runs:
        assert [(r.id, r.attempt, r.progress) for r in runs] == [
            ("my-job", 1, 50),
            ("my-job", 2, 100),
            ("my-job", 3, 70),
        ]
        assert all(r.status == "completed" for r in runs)
    warnings = [r for r in caplog.records if "already used" in r.getMessage()]
    assert len(warnings) == 1
    assert "my-job" in warnings[0].getMessage()


def test_a_retry_without_a_new_attempt_is_recorded_beside_the_first(store: Path) -> None:
    """A failed run and its retry under the same id and attempt= both stay; an explicit
    later attempt is kept as given."""
    with pytest.raises(RuntimeError), supervised("reuse.retry", supervision_id="task-1", attempt=1):
        raise RuntimeError("first try")
    with supervised("reuse.retry", supervision_id="task-1", attempt=1):
        pass
    with supervised("reuse.retry", supervision_id="task-1", attempt=5):
        pass
    with _runs(store, "reuse.retry", 3) as runs:
        assert [(r.attempt, r.status) for r in runs] == [
            (1, "failed"),
            (2, "completed"),
            (5, "completed"),
        ]


def test_concurrent_runs_with_one_id_are_separate_attempts(store: Path) -> None:
    """Two threads running the same id at the same time get attempts 1 and 2, both stored
    with their own heartbeats."""
    barrier = threading.Barrier(2)

    def work(beats: int) -> int:
        with supervised("reuse.concurrent", supervision_id="shared") as run:
            barrier.wait(20)  # both runs are live at once
            for _ in range(beats):
                run.heartbeat()
            barrier.wait(20)
            return run.attempt

    with ThreadPoolExecutor(2) as pool:
        attempts = sorted(pool.map(work, (3, 4)))
    assert attempts == [1, 2]
    with _runs(store, "reuse.concurrent", 2) as runs:
        assert sorted(r.heartbeat_count for r in runs) == [3, 4]
        assert {r.status for r in runs} == {"completed"}


# ---- item 5: metadata semantics --------------------------------------------------------------


def test_none_removes_a_metadata_key(store: Path) -> None:
    """A failed attempt's keys are gone once the job sets them to None: the completed run
    shows only what is still true, on the handle and in the store."""
    with supervised("meta.none") as run:
        heartbeat(http_status=500, retry=1, step="fetch")
        heartbeat({"http_status": None, "retry": None}, step="done")
        assert run.metadata == {"step": "done"}
    with _runs(store, "meta.none") as (done,):
        assert done.metadata == {"step": "done"}


def test_removing_every_key_leaves_no_metadata(store: Path) -> None:
    """Setting the only key to None: the run's stored metadata is empty, not the old value."""
    with supervised("meta.none_all") as run:
        heartbeat(retry=1)
        heartbeat(retry=None)
        assert run.metadata == {}
    with _runs(store, "meta.none_all") as (done,):
        assert not done.metadata


def test_a_replaced_status_stays_in_the_heartbeat_history(store: Path) -> None:
    """The guide's heartbeat(status="started") followed at once by status="done": the run's
    metadata is the latest, and the heartbeat history still holds "started", in order,
    with the calls split between the two records."""
    with supervised("meta.history") as run:
        heartbeat({"status": "started"})
        report_progress(5, 10)
        heartbeat({"status": "done"}, rows=10)
        assert run.metadata == {"status": "done", "rows": 10}
    with _runs(store, "meta.history") as (done,):
        assert done.metadata == {"status": "done", "rows": 10}
        beats = [h for h in done.heartbeats() if h.kind == "heartbeat"]
        assert [h.metadata for h in beats] == [
            {"status": "started"},
            {"status": "done", "rows": 10},
        ]
        assert [h.calls for h in beats] == [1, 1]
        assert [h.count for h in beats] == [1, 2]


def test_a_value_changing_every_call_adds_one_record_per_flush(
    chaperone_clock: Any, chaperone: Any
) -> None:
    """heartbeat(i=n) 1,000 times in one flush period: two heartbeat records (the first
    replaced state and the latest), not one per call; the calls add up."""
    with supervised("meta.churn") as run:
        for i in range(1000):
            heartbeat(i=i)
    beats = chaperone.run(run.id).heartbeats
    assert len(beats) == 2
    assert [json.loads(b.attributes[sc.ATTR_METADATA])["i"] for b in beats] == [0, 999]
    assert sum(b.attributes[sc.ATTR_HEARTBEAT_CALLS] for b in beats) == 1000


def test_a_finish_whose_state_cannot_be_written_is_still_recorded(
    store: Path, swallowed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever value slips through to a record, the finished record is stored (with the
    state the runtime set: status, times, outcome) and an internal error is counted."""
    with supervised("odd.unwritable") as run:
        heartbeat(step=1)

        def broken(_value: object) -> str:
            raise RuntimeError("cannot write this state")

        monkeypatch.setattr("chaperone_otel._record.to_json", broken)
    monkeypatch.undo()
    with _runs(store, "odd.unwritable") as (done,):
        assert done.id == run.id
        assert done.status == "completed"
        assert done.duration is not None
    assert internal_error_counts().get("record:chaperone.job.finished", 0) == 1
