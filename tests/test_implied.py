"""``_implied.slim`` leaves out exactly what it left out before it was made cheaper.

The reference below is ``slim`` as it was (a comprehension for the finished record's spec,
one helper call per default); the current one must give the same mapping, in the same
order, for real runs' records and for random variations of them (each default equal, of
another type, absent; the start-time copies; resource values repeated or not; other
events).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

import chaperone_otel as chaperone
from chaperone_otel import _process
from chaperone_otel import semconv as sc
from chaperone_otel._implied import DEFAULTS, SPEC_ON_FINISHED, START_TIME_COPIES, slim
from chaperone_otel.testing import Capture, FakeClock


def _same(value: Any, implied: Any) -> bool:
    return type(value) is type(implied) and value == implied


def reference_slim(
    event_name: str, attributes: Mapping[str, Any], resource: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    defaults = DEFAULTS.get(event_name)
    if defaults is None:
        if resource and any(attributes.get(k) == v for k, v in resource.items()):
            return {k: v for k, v in attributes.items() if k not in resource or resource[k] != v}
        return attributes
    if event_name == sc.EVENT_JOB_FINISHED:
        out = {k: v for k, v in attributes.items() if k not in SPEC_ON_FINISHED}
    else:
        out = dict(attributes)
    for key, implied in defaults.items():
        value = out.get(key)
        if value is not None and _same(value, implied):
            del out[key]
    started_at = out.get(sc.ATTR_JOB_STARTED_AT)
    if started_at is not None:
        for key in START_TIME_COPIES:
            value = out.get(key)
            if value is not None and _same(value, started_at):
                del out[key]
    if resource:
        for key, implied in resource.items():
            if key in out and out[key] == implied:
                del out[key]
    return out


@pytest.fixture(scope="module")
def real() -> list[tuple[str, dict[str, Any]]]:
    clock = FakeClock()
    capture = Capture(clock=clock, heartbeat_interval=5, flush_period=1).start()
    try:

        @chaperone.supervised(name="slim.job", attributes={"team": "a"}, timeout=60)
        def job(fail: bool) -> None:
            run = chaperone.current_job()
            assert run is not None
            run.report_progress(1, 4)
            clock.advance(2)
            capture.tick()
            if fail:
                raise RuntimeError("no")

        job(fail=False)
        with pytest.raises(RuntimeError):
            job(fail=True)
        return [(r.event_name, dict(r.attributes)) for r in capture.records]
    finally:
        capture.stop()


_RESOURCE = {
    sc.ATTR_HOST_NAME: _process.HOST,
    sc.ATTR_PROCESS_PID: _process.pid,
    sc.ATTR_SERVICE_INSTANCE_ID: _process.instance_id,
}


def _vary(rng: random.Random, event: str, attributes: dict[str, Any]) -> dict[str, Any]:
    out = dict(attributes)
    keys = [*DEFAULTS.get(event, {}), *START_TIME_COPIES, *SPEC_ON_FINISHED, *_RESOURCE]
    for key in rng.sample(keys, rng.randrange(len(keys))):
        choice = rng.randrange(6)
        implied = DEFAULTS.get(event, {}).get(key, attributes.get(sc.ATTR_JOB_STARTED_AT))
        if choice == 0:
            out.pop(key, None)
        elif choice == 1:
            out[key] = implied
        elif choice == 2 and isinstance(implied, (int, float)) and not isinstance(implied, bool):
            out[key] = float(implied) if isinstance(implied, int) else int(implied)
        elif choice == 3:
            out[key] = "other"
        elif choice == 4:
            out[key] = _RESOURCE.get(key, 1)
    if rng.random() < 0.3:
        out = dict(reversed(list(out.items())))
    return out


def test_slim_leaves_out_what_it_left_out(real: list[tuple[str, dict[str, Any]]]) -> None:
    rng = random.Random(16)
    events = {event for event, _ in real}
    assert {sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED} <= events
    cases = 0
    for event, attributes in real:
        for _ in range(300):
            varied = _vary(rng, event, attributes)
            for resource in (None, {}, _RESOURCE):
                expected = reference_slim(event, varied, resource)
                got = slim(event, varied, resource)
                assert list(got.items()) == list(expected.items())
                assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
                assert (got is varied) == (expected is varied)
                cases += 1
    assert cases > 3_000
