"""The worker's real /metrics endpoint: names equal semconv.prometheus_name, labels are
bounded (10,000 short runs leave a handful of series), only runs past the long-run
threshold carry their run id, and nothing we emit is labelled `job`."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import chaperone_otel._setup as setup_state
from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel._safety import record_internal_error, set_raise_internal_errors
from chaperone_otel.testing import Capture, FakeClock, capture

OTEL_SCOPE_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
RUN_ID = sc.prometheus_label(sc.ATTR_JOB_RUN_ID)

Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    """Our samples (chaperone_*) from the endpoint, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("chaperone_")]


def series_name(spec: sc.MetricSpec) -> str:
    """The sample name that proves ``spec`` is exposed under its derived name."""
    return spec.prometheus + ("_bucket" if spec.kind == "histogram" else "")


@pytest.fixture
def endpoint() -> Iterator[tuple[Capture, str]]:
    """A configured runtime with a FakeClock and a real Prometheus endpoint on loopback."""
    with capture(clock=FakeClock(), prometheus_port=0, long_run_threshold=60,
                 sample_interval=0.05) as cap:
        url = setup_state._setup.prometheus_url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        yield cap, url


def _advance(cap: Capture, seconds: float) -> None:
    assert cap.clock is not None
    cap.clock.advance(seconds)
    cap.tick()


def test_every_runtime_metric_is_exposed_under_its_semconv_name(
        endpoint: tuple[Capture, str]) -> None:
    """A workload that touches every instrument; each RUNTIME_METRICS spec appears on the
    real endpoint exactly as semconv.prometheus_name derives it, with only its labels."""
    cap, url = endpoint
    with supervised("names.long", queue="q", heartbeat_interval=10, timeout=1000,
                    stall_timeout=500, memory_limit="1KiB", cpu_limit=95,
                    fd_limit=100_000) as run:
        run.heartbeat()
        run.report_progress(1, 10)
        _advance(cap, 5)
        run.report_progress(2, 10)
        run.heartbeat()
        _advance(cap, 25)  # 2.5 intervals without a beat: missed heartbeats counted
        _advance(cap, 40)  # past the long-run threshold: the run id becomes a label
        # CPU needs two passes after the start (samples are due by the fake clock).
        deadline = time.monotonic() + 10
        while True:
            cap.tick()
            live = scrape(url)
            if any(n == sc.METRIC_JOB_CPU.prometheus for n, _, _ in live):
                break
            assert time.monotonic() < deadline, "no CPU sample within 10 s"
            time.sleep(0.06)
    with pytest.raises(ValueError, match="boom"), supervised("names.fails", queue="q"):
        raise ValueError("boom")
    old = set_raise_internal_errors(False)
    try:  # an internal error is counted by place, never raised into the job
        record_internal_error("test.probe", RuntimeError("probe"))
    finally:
        set_raise_internal_errors(old)
    _advance(cap, 1)
    samples = live + scrape(url)
    names = {name for name, _, _ in samples}
    for spec in sc.RUNTIME_METRICS:
        assert series_name(spec) in names, f"{spec.name} not exposed as {spec.prometheus}"
    by_name = {series_name(s): s for s in sc.RUNTIME_METRICS}
    for name, labels, _ in samples:
        base = next(n for n in (name, name.rsplit("_", 1)[0] + "_bucket") if n in by_name)
        allowed = {sc.prometheus_label(a) for a in by_name[base].labels} | OTEL_SCOPE_LABELS
        allowed |= {"le"} if by_name[base].kind == "histogram" else set()
        assert set(labels) <= allowed, (name, labels)
        assert "job" not in labels
    long_run = [labels for name, labels, _ in live
                if name == sc.METRIC_JOB_LAST_HEARTBEAT.prometheus]
    assert long_run == [{**long_run[0], RUN_ID: run.id}]


@pytest.mark.slow
def test_ten_thousand_short_runs_do_not_leave_ten_thousand_series(
        endpoint: tuple[Capture, str]) -> None:
    """Series depend on job names, queues and statuses, not on the number of runs: the
    count after 10,000 runs equals the count after 1,000, and no run id is a label."""
    cap, url = endpoint
    names, queues = ("etl.import", "etl.export", "report.daily", "cleanup"), ("a", "b")

    def batch(n: int) -> None:
        for i in range(n):
            name, queue = names[i % len(names)], queues[i % len(queues)]
            if i % 10 == 0:
                with pytest.raises(KeyError), supervised(name, queue=queue):
                    raise KeyError(i)
            else:
                with supervised(name, queue=queue):
                    pass
        _advance(cap, 1)

    def ours() -> list[Any]:
        # The process's prometheus_client registry keeps the collectors of earlier
        # captures' providers (a reader cannot leave its provider), with their runs'
        # series: counted here are this workload's jobs only.
        job = sc.prometheus_label(sc.ATTR_JOB_NAME)
        return [s for s in scrape(url) if s[1].get(job) in (*names, None)]

    batch(1_000)
    after_1k = ours()
    batch(9_000)
    after_10k = ours()
    started = sum(v for n, _, v in after_10k if n == sc.METRIC_JOB_RUNS_STARTED.prometheus)
    assert started == 10_000
    assert len(after_10k) == len(after_1k)
    assert len(after_10k) < 200
    assert not any(RUN_ID in labels for _, labels, _ in after_10k)


def test_only_runs_past_the_long_run_threshold_carry_their_run_id(
        endpoint: tuple[Capture, str]) -> None:
    """Under the threshold a live run is reported per job and queue; past it, with its id;
    once it ends, its run-id series disappear."""
    cap, url = endpoint
    lhb = sc.METRIC_JOB_LAST_HEARTBEAT.prometheus
    with supervised("slow.job", queue="q", heartbeat_interval=30) as run:
        _advance(cap, 10)
        young = [labels for name, labels, _ in scrape(url) if name == lhb]
        _advance(cap, 55)  # 65 s > the 60 s threshold
        old = [labels for name, labels, _ in scrape(url) if name == lhb]
    _advance(cap, 1)
    after = [labels for name, labels, _ in scrape(url) if RUN_ID in labels]
    assert len(young) == 1
    assert RUN_ID not in young[0]
    assert [labels.get(RUN_ID) for labels in old] == [run.id]
    assert after == []


def test_shutdown_does_not_wait_for_the_metrics_servers_poll() -> None:
    """``shutdown()`` with ``prometheus_port`` returns without waiting for the HTTP server's
    poll: the server looks for the request every 0.05 s. (Before: prometheus_client's
    ``start_http_server`` polls every 0.5 s, and shutting down 0.05 s after it started
    waited out the rest, ~0.45 s, every time.) The endpoint is closed after."""
    import chaperone_otel

    for _ in range(2):
        url = chaperone_otel.configure(prometheus_port=0).prometheus_url
        assert url is not None
        assert scrape(url) is not None  # serving
        time.sleep(0.05)  # inside the server loop's first wait
        started = time.monotonic()
        chaperone_otel.shutdown()
        took = time.monotonic() - started
        assert took < 0.3, f"shutdown() took {took:.2f} s"
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=2)
