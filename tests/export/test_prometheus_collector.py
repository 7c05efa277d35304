"""The worker's /metrics collector: the live-run gauges it builds from the live runs are the
series the OTel Prometheus exporter built from the SDK's collection, series for series
(names, labels, values, help, type, unit), each served once; finished runs' series go.

The reference is the exporter's own rendering of the same provider's collection, made with
the gauges' callbacks active (as every scrape was before the collector), on a fleet that
exercises every gauge: label-less groups of several runs (the stalest one reports), runs
past the long-run threshold (their id as a label), families that mix both (the exporter's
empty run-id backfill), runs with and without progress, limits, a violation, a liveness
lease and a thread-scoped CPU reading.
"""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import chaperone_otel._setup as setup_state
from chaperone_otel import semconv as sc
from chaperone_otel import supervised
from chaperone_otel._otel._metrics import LIVE_RUN_GAUGES
from chaperone_otel.export import _prometheus_reader
from chaperone_otel.export._prometheus import WorkerMetricReader
from chaperone_otel.testing import Capture, FakeClock, capture
from tests.waiting import wait_until

RUN_ID = sc.prometheus_label(sc.ATTR_JOB_RUN_ID)
GAUGE_NAMES = {spec.prometheus for spec, _ in LIVE_RUN_GAUGES}

Series = tuple[str, tuple[tuple[str, str], ...], float]


class Fixed:
    """A collector that yields given families (to render them with prometheus_client)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(families: Iterable[Metric], *, openmetrics: bool = False) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))
    text = (generate_openmetrics if openmetrics else generate_latest)(registry).decode()
    return sorted(text.splitlines())


def series(families: Iterable[Metric]) -> Counter[Series]:
    return Counter((s.name, tuple(sorted(s.labels.items())), s.value)
                   for family in families for s in family.samples)


def chaperone(families: Iterable[Metric]) -> list[Metric]:
    return [f for f in families if f.name.startswith("chaperone_")]


@pytest.fixture
def worker() -> Iterator[tuple[Capture, WorkerMetricReader]]:
    """A configured runtime with a FakeClock, its /metrics served on loopback."""
    with capture(clock=FakeClock(), prometheus_port=0, long_run_threshold=60,
                 sample_interval=0.05) as cap:
        reader = _prometheus_reader(cap.meter_provider)
        assert isinstance(reader, WorkerMetricReader)
        yield cap, reader


def _advance(cap: Capture, seconds: float) -> None:
    assert cap.clock is not None
    cap.clock.advance(seconds)
    cap.tick()


def _both(reader: WorkerMetricReader) -> tuple[list[Metric], list[Metric]]:
    """(what /metrics serves now, what the OTel exporter alone rendered before)."""
    ours = list(reader.worker_collector.collect())
    exporter = list(reader.otel_registry.collect())  # the gauges' callbacks active
    return ours, exporter


def test_live_run_series_equal_the_otel_exporters(
        worker: tuple[Capture, WorkerMetricReader]) -> None:
    cap, reader = worker
    release = threading.Event()
    started = threading.Event()
    holders: list[object] = []

    def own_thread() -> None:  # a run alone in its thread: its CPU is its own
        with supervised("fleet.threaded", queue="t", heartbeat_interval=30) as run:
            holders.append(run)
            started.set()
            release.wait(30)

    thread = threading.Thread(target=own_thread, name="fleet-threaded")
    thread.start()
    runs = []
    try:
        assert started.wait(10)
        # Past the 60 s threshold by the end: their ids become labels.
        old = supervised("fleet.old", queue="a", heartbeat_interval=10, timeout=1000,
                         stall_timeout=500, memory_limit="1KiB", cpu_limit=95,
                         fd_limit=100_000).start()
        old.report_progress(1, 10)
        old_liveness = supervised("fleet.old", queue="a", lease="liveness").start()
        runs += [old, old_liveness]
        _advance(cap, 5)
        old.report_progress(2, 10)  # a rate: the ETA gauge
        _advance(cap, 60)
        # Young: one series per job name and queue, the stalest run of each group.
        for i in range(3):
            young = supervised("fleet.young", queue="b", heartbeat_interval=10 + i).start()
            if i == 0:
                young.report_progress(1, 4)
            runs.append(young)
        _advance(cap, 3)
        runs[-1].heartbeat()
        # The same job name and queue as the old ones, young: a mixed family.
        runs.append(supervised("fleet.old", queue="a", heartbeat_interval=10).start())
        _advance(cap, 2)

        def cpu_sampled() -> bool:
            cap.tick()
            return any(r.cpu_percent is not None for r in holders)  # type: ignore[attr-defined]

        wait_until(cpu_sampled, 10, "a CPU sample of the threaded run", every=0.06)
        ours, exporter = _both(reader)

        assert series(chaperone(ours)) == series(chaperone(exporter))
        assert render(chaperone(ours)) == render(chaperone(exporter))
        assert render(chaperone(ours), openmetrics=True) == render(
            chaperone(exporter), openmetrics=True)
        served = {f.name for f in ours}
        assert served >= GAUGE_NAMES, GAUGE_NAMES - served  # every gauge was compared
        mixed = [dict(s.labels) for f in ours for s in f.samples
                 if f.name == sc.METRIC_JOB_LAST_HEARTBEAT.prometheus]
        assert {"", old.id} <= {labels.get(RUN_ID) for labels in mixed}
        assert len(mixed) == 5  # fleet.old x2 ids, fleet.old young, fleet.young, threaded
    finally:
        release.set()
        thread.join(10)
        for run in runs:
            run.finish()
    _advance(cap, 1)
    ours, exporter = _both(reader)
    assert series(ours) == series(exporter)
    assert not GAUGE_NAMES & {f.name for f in ours}  # finished: no live-run series left


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_the_endpoint_serves_each_series_once_and_finished_runs_disappear(
        worker: tuple[Capture, WorkerMetricReader]) -> None:
    """Over HTTP: one HELP per family and one line per series (the gauges' callbacks
    observed nothing for the Prometheus reader), and a finished run's series go. (Only the
    live-run families: an earlier test's provider keeps its reader, its target_info and
    its histogram, for the life of the process, as it always did.)"""
    cap, _reader = worker
    url = setup_state._setup.prometheus_url
    assert url is not None
    with supervised("once.job", queue="q") as first:
        second = supervised("once.job", queue="q").start()
        _advance(cap, 61)
        text = _scrape(url)
        second.finish()
        _advance(cap, 1)
        after_second = _scrape(url)
    _advance(cap, 1)
    after = _scrape(url)

    helps = Counter(line.split()[2] for line in text.splitlines()
                    if line.startswith("# HELP ") and line.split()[2] in GAUGE_NAMES)
    assert helps
    assert max(helps.values()) == 1, helps
    lines = [line for line in text.splitlines() if line.split("{")[0] in GAUGE_NAMES]
    assert lines
    assert len(lines) == len(set(lines))
    ids = {s.labels.get(RUN_ID) for family in text_string_to_metric_families(text)
           for s in family.samples if s.name == sc.METRIC_JOB_LAST_HEARTBEAT.prometheus}
    assert ids == {first.id, second.id}
    ids_after_second = {
        s.labels.get(RUN_ID) for family in text_string_to_metric_families(after_second)
        for s in family.samples if s.name == sc.METRIC_JOB_LAST_HEARTBEAT.prometheus}
    assert ids_after_second == {first.id}
    assert RUN_ID not in after
    assert not any(name in after for name in GAUGE_NAMES)


def test_other_readers_still_get_the_live_run_gauges(
        worker: tuple[Capture, WorkerMetricReader]) -> None:
    """The OTel instruments stay for OTLP and the like: a reader of the same provider
    (the capture's in-memory one) collects the gauges while /metrics is served."""
    cap, _reader = worker
    url = setup_state._setup.prometheus_url
    assert url is not None
    with supervised("otlp.job", queue="q"):
        _advance(cap, 1)
        _scrape(url)
        data = cap.metric_reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics if m.data.data_points}
    assert {spec.name for spec, _ in LIVE_RUN_GAUGES if spec.name in names}
    assert sc.METRIC_JOB_LAST_HEARTBEAT.name in names


def test_shutting_the_reader_down_takes_its_collector_out_of_the_default_registry() -> None:
    """A reader the provider shuts down (one passed to its constructor) leaves
    prometheus_client's default registry, so it stops serving that provider's series."""
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY

    provider = MeterProvider()
    reader = WorkerMetricReader(provider)
    provider = MeterProvider(metric_readers=[reader])
    assert reader.worker_collector in REGISTRY._collector_to_names
    provider.shutdown()
    assert reader.worker_collector not in REGISTRY._collector_to_names
    reader.shutdown()  # a second shutdown is harmless


def test_an_exporter_without_the_registry_argument_still_serves_each_series_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """opentelemetry-exporter-prometheus before 0.63b0 takes no ``registry=`` and always
    registers its collector in the default registry: the reader moves it to its private
    one, so the default registry still serves it once, through the WorkerCollector."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY

    newer = PrometheusMetricReader.__init__

    def older(self: PrometheusMetricReader, disable_target_info: bool = False,
              prefix: str = "") -> None:
        newer(self, disable_target_info=disable_target_info, prefix=prefix)

    monkeypatch.setattr(PrometheusMetricReader, "__init__", older)
    reader = WorkerMetricReader(MeterProvider())
    try:
        assert reader._collector not in REGISTRY._collector_to_names
        assert reader._collector in reader.otel_registry._collector_to_names
        assert reader.worker_collector in REGISTRY._collector_to_names
    finally:
        reader.shutdown()
    assert reader.worker_collector not in REGISTRY._collector_to_names
