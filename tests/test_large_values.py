"""What a run carries is bounded: a huge error message, stack trace or metadata value cannot
put its records over the sink's request limit (8 MiB), where the batch they were in (every
run's records of the process) could never be delivered; a record still over it is dropped
alone, counted, by the process that forwards it."""

from __future__ import annotations

import json

import pytest
from opentelemetry.trace import StatusCode

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel._lifecycle import MAX_ERROR_TEXT
from chaperone_otel._record import MAX_METADATA_JSON, to_json
from chaperone_otel.export._sink import _within_limit
from chaperone_otel.sink._forward import FORWARD_MAX_BODY
from chaperone_otel.testing import capture


def test_a_huge_error_message_and_stack_trace_are_cut_keeping_what_matters() -> None:
    """A 5,000,000-character message keeps its head, the stack trace its end (what was
    raised); both say how much was cut."""

    @chaperone.supervised(name="huge.error")
    def job() -> None:
        raise ValueError("x" * 5_000_000)

    with capture() as cap, pytest.raises(ValueError) as raised:
        job()
    assert len(str(raised.value)) == 5_000_000  # the user's exception is untouched
    run = cap.last_run("huge.error")
    message = run.latest[sc.ATTR_ERROR_MESSAGE]
    assert message.startswith("x" * 1000)
    assert message.endswith("characters cut]")
    assert len(message) < MAX_ERROR_TEXT + 100
    trace = run.latest[sc.ATTR_ERROR_STACKTRACE]
    assert len(trace) < MAX_ERROR_TEXT + 100
    assert trace.startswith("[")
    assert trace.rstrip().endswith("x" * 100)  # "ValueError: xxx…", cut at its start


def test_huge_metadata_keeps_its_keys_with_values_cut() -> None:
    """A 9 MB value is cut, the others kept; thousands of values become one marker."""
    text = to_json({"blob": "x" * 9_000_000, "rows": 12, "ok": True})
    assert len(text) <= MAX_METADATA_JSON
    data = json.loads(text)
    assert (data["rows"], data["ok"]) == (12, True)
    assert data["blob"].endswith("characters cut]")
    many = json.loads(to_json({str(i): "y" * 100 for i in range(5000)}))
    assert list(many) == ["_cut"]
    assert to_json({"small": 1}) == '{"small":1}'
    circular: list[object] = []
    circular.append(circular)
    mixed = json.loads(to_json({"blob": "x" * 9_000_000, "loop": circular}))
    assert mixed["loop"] == "[[...]]"  # never raises: written as its text


def _record(size: int, run_id: str) -> LifecycleRecord:
    return LifecycleRecord(
        event_name=sc.EVENT_JOB_HEARTBEAT,
        timestamp=1.0,
        attributes={sc.ATTR_JOB_RUN_ID: run_id, "blob": "z" * size},
    )


def test_a_forwarded_batch_is_cut_to_the_owners_limit_and_a_record_over_it_goes_alone() -> None:
    """The forwarder sends the head of its queue that fits under the owner's limit; a
    record over it alone comes back without a body (dropped and counted by the caller).
    Before, the owner closed the connection on the over-large body, and the same batch was
    sent again for ever."""
    small = [_record(10, f"s{i}") for i in range(4)]
    big = _record(3 * 1024 * 1024, "big")
    batch, body = _within_limit([*small, big, big, big, *small])
    assert body is not None
    assert len(body) <= FORWARD_MAX_BODY
    assert batch == [*small, big, big][: len(batch)]
    assert len(batch) >= 4
    huge = _record(FORWARD_MAX_BODY + 1, "huge")
    assert _within_limit([huge, *small]) == ([huge], None)
    assert _within_limit(small)[0] == small


def test_a_failed_run_whose_exception_cannot_be_written_still_has_an_error_span() -> None:
    """``str(exc)`` raising must not leave the failed run's span UNSET: the status is set
    from the run's own safe text before the exception event is recorded."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    @chaperone.supervised(name="unprintable")
    def job() -> None:
        raise Unprintable

    with capture(raise_internal_errors=False) as cap, pytest.raises(Unprintable):
        job()
    (span,) = [s for s in cap.spans() if s.name == "unprintable"]
    assert span.status.status_code is StatusCode.ERROR
    assert cap.last_run("unprintable").status == "failed"
