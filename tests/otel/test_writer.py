"""The OTel writer writes each monitor event once, with one attribute set, to log and span."""

from __future__ import annotations

from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel.testing import Capture, FakeClock

MONITOR_EVENTS = {
    sc.EVENT_JOB_HEARTBEAT,
    sc.EVENT_JOB_PROGRESS,
    sc.EVENT_JOB_HEALTH,
    sc.EVENT_JOB_VIOLATION,
}


def test_span_event_and_log_record_say_the_same(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """For every monitor event, the span event carries the event's own attributes, with the
    log record's values, and the log record adds nothing but the run's state: no attribute
    of the event is written to one channel and not the other."""
    with supervised("one.set", heartbeat_interval=4, timeout=10) as run:
        run.heartbeat(batch=1)
        run.report_progress(5, 10, phase="load")
        chaperone.tick()
        chaperone.advance(12)  # past the deadline: a violation and a health change
        run.heartbeat(batch=2)
        chaperone.tick()
    captured = chaperone.run(run.id)
    started = captured.events(sc.EVENT_JOB_STARTED)[0].attributes
    finished = captured.events(sc.EVENT_JOB_FINISHED)[0].attributes
    state_keys = set(started) | set(finished)
    logs = [
        lr.log_record
        for lr in chaperone.log_records()
        if lr.log_record.event_name in MONITOR_EVENTS
    ]
    assert captured.span is not None
    seen: set[str] = set()
    for event in captured.span.events:
        if event.name not in MONITOR_EVENTS:
            continue
        span_attrs = dict(event.attributes or {})
        same = [
            dict(r.attributes or {})
            for r in logs
            if (r.event_name, r.timestamp) == (event.name, event.timestamp)
            and all((r.attributes or {}).get(k) == v for k, v in span_attrs.items())
        ]
        assert len(same) == 1, event.name  # the log record with the span event's values
        assert set(same[0]) - set(span_attrs) <= state_keys, event.name
        seen.add(event.name)
    assert seen == MONITOR_EVENTS


def test_liveness_beat_is_a_log_record_not_a_span_event(
    chaperone_clock: FakeClock, chaperone: Capture
) -> None:
    """A flush in which the job said nothing is a liveness record (live channel) but adds no
    span event: the span records what the job did."""
    with supervised("silent", heartbeat_interval=4) as run:
        chaperone.advance(5)  # past a flush period, not one heartbeat
    liveness = chaperone.run(run.id).liveness
    assert liveness
    span = chaperone.run(run.id).span
    assert not [e for e in span.events if e.name == sc.EVENT_JOB_HEARTBEAT]


def test_counters_follow_the_records(chaperone_clock: FakeClock, chaperone: Capture) -> None:
    """The heartbeats counter adds every call exactly once, flushed while running or at the
    finish; the violations counter counts the violation record."""
    with supervised("counted", heartbeat_interval=4, timeout=10) as run:
        for _ in range(3):
            run.heartbeat()
        chaperone.tick()
        chaperone.advance(12)
        run.heartbeat()
        run.heartbeat()  # not flushed before the end: counted at the finish
    labels = {sc.ATTR_JOB_NAME: "counted", sc.ATTR_JOB_QUEUE: "default"}
    metrics = chaperone.metrics()
    heartbeats = [v for a, v in metrics[sc.METRIC_JOB_HEARTBEATS.name] if a == labels]
    assert heartbeats == [5]
    violations = [
        v
        for a, v in metrics[sc.METRIC_JOB_VIOLATIONS.name]
        if a == {**labels, sc.ATTR_LIMIT_TYPE: "timeout"}
    ]
    assert violations == [1]
