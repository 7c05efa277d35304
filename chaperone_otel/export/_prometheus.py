"""A worker's Prometheus ``/metrics``: the live-run gauges straight from the live runs, the
rest through the OTel Prometheus exporter.

Why not everything through the exporter: at 1,000 live runs a scrape served by the OTel
``PrometheusMetricReader`` alone cost 6.6x a prometheus_client scrape of as many series
(``bench/bench_monitor.py``). Per scrape the SDK called each of the 16 live-run gauges'
callbacks (each grouping every live run again), built a measurement, an aggregation and a
data point per run and gauge, and the exporter then translated every point into a
prometheus_client sample (a label dict per point, the label union re-sorted, the rows
rebuilt). Those series are a pure function of the live runs, so :class:`WorkerCollector`
builds them as prometheus_client metric families directly: one grouping pass per scrape,
one label dict per group shared by its 16 samples, samples made in bulk. The counters, the
duration histogram and ``target_info`` (a few series per job name and queue, whatever the
number of runs) still come from the exporter, collected with the gauges' callbacks switched
off for that collection (:func:`~chaperone_otel._otel._metrics.prometheus_scrape`), so no
series is served twice and the gauges' SDK collection is not paid during a scrape. The OTel
instruments stay registered for every other reader (OTLP export, in-memory tests).

The exposition is the exporter's, series for series: the family name, help, unit and type
are derived as the exporter derives them, every sample carries the scope labels
(``otel_scope_name``, ``otel_scope_version``, ``otel_scope_schema_url``) and, as the
exporter backfills a family's label union, an empty run-id label where a family mixes
groups with and without a run id (``tests/export/test_prometheus_collector.py`` compares
the two renderings). One departure: the SDK caps a metric stream at 2,000 points per
collection (overflow goes to one ``otel_metric_overflow`` series); this collector serves
every group, so more than 2,000 live runs past the long-run threshold are each named.

The live-run families are :class:`LiveFamily` objects: their samples are made only when read,
and each carries its samples' label texts, made once per group and kept while the group is
live, from which the worker's ``/metrics`` app (:mod:`._exposition`) writes their lines.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import repeat
from typing import Any, Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .. import semconv as sc
from .._otel._metrics import LIVE_RUN_GAUGES, Read, instruments_on, prometheus_scrape
from .._safety import handle_internal_errors
from .._version import __version__

_NAME: Final = sc.prometheus_label(sc.ATTR_JOB_NAME)
_QUEUE: Final = sc.prometheus_label(sc.ATTR_JOB_QUEUE)
_RUN_ID: Final = sc.prometheus_label(sc.ATTR_JOB_RUN_ID)
_SCOPE: Final = {
    # The OTel exporter's scope labels for the runtime's meter (no schema URL, no scope
    # attributes): the same on every series, so the series stay the exporter's.
    "otel_scope_name": sc.INSTRUMENTATION_SCOPE,
    "otel_scope_schema_url": "",
    "otel_scope_version": __version__,
}
LEGACY_LABEL_NAMES: Final = all(
    re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) for name in (_NAME, _QUEUE, _RUN_ID, *_SCOPE)
)
"""Whether every label name is a legacy Prometheus label name (written unchanged by every
escaping scheme): :func:`label_text` writes them as they are."""

_NONE: Final = (repeat(None),) * (len(Sample._fields) - 3)
_sample: Final = partial(tuple.__new__, Sample)
"""``Sample`` from a tuple (name, labels, value, then None for the timestamp, exemplar and,
in prometheus_client >= 0.21, native histogram): built in bulk, without the namedtuple's
keyword-argument constructor (half the cost per sample)."""

_Gauge = tuple[str, str, str, Read]
"""(family name, its unit suffix, help, how a run is read)."""


def _gauges() -> list[_Gauge]:
    out: list[_Gauge] = []
    for spec, read in LIVE_RUN_GAUGES:
        unit = sc.prometheus_unit(spec.unit)
        # The exporter passes the name and the unit apart and prometheus_client appends the
        # unit; passing the derived full name with the unit gives the same family.
        out.append((sc.prometheus_name(spec), unit, spec.description, read))
    return out


class WorkerCollector(Collector):
    """The prometheus_client collector a worker's ``/metrics`` serves: the live-run gauges
    of the runtime bound to ``meter_provider``, plus what ``otel_registry`` (the private
    registry of the provider's OTel ``PrometheusMetricReader``) yields for everything else.
    """

    def __init__(self, meter_provider: Any, otel_registry: Collector) -> None:
        self._provider = weakref.ref(meter_provider)
        self._otel = otel_registry
        self._gauges = _gauges()
        self._known: dict[tuple[str, str, str], _Labelled] = {}

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not collect (the reader is not on its provider yet),
        and the exporter's collector registered no names either."""
        return []

    def collect(self) -> Iterable[Metric]:
        with prometheus_scrape():
            # Materialized inside: the exporter collects lazily, at the first next().
            others = list(self._otel.collect())
        yield from others
        yield from self.live_run_families()

    def live_run_families(self) -> list[Metric]:
        """The live-run gauges as metric families (none for a gauge without samples)."""
        with handle_internal_errors("prometheus.live_runs"):
            provider = self._provider()
            instruments = None if provider is None else instruments_on(provider)
            if instruments is None:
                return []
            now = instruments.now()
            groups = instruments.live_groups(now)
            if not groups:
                return []
            return list(self._families(groups, now))
        return []

    def _families(self, groups: list[Any], now: float) -> Iterator[LiveFamily]:
        runs = [group[3] for group in groups]
        labelled = self._labelled(groups)
        plain = [entry[0] for entry in labelled]  # each group's labels as the exporter writes
        filled = [entry[1] for entry in labelled]  # ... in a family where a group has a run id
        plain_text = [entry[2] for entry in labelled]
        filled_text = [entry[3] for entry in labelled]
        with_id = [bool(group[2]) for group in groups]
        any_id = any(with_id)
        for family_name, unit, doc, read in self._gauges:
            values = list(map(read, runs, repeat(now)))
            if None in values:
                present = [i for i, value in enumerate(values) if value is not None]
                if not present:
                    continue
                some_id = any(with_id[i] for i in present)
                labels, texts = (filled, filled_text) if some_id else (plain, plain_text)
                yield LiveFamily(
                    family_name,
                    doc,
                    unit,
                    [labels[i] for i in present],
                    [texts[i] for i in present],
                    [values[i] for i in present],
                )
            else:
                labels, texts = (filled, filled_text) if any_id else (plain, plain_text)
                yield LiveFamily(family_name, doc, unit, labels, texts, values)

    def _labelled(self, groups: list[Any]) -> list[_Labelled]:
        """Each group's label dicts and label texts, from the previous scrape's when the
        group was already there (a group's labels never change: they are its key)."""
        known = self._known
        current: dict[tuple[str, str, str], _Labelled] = {}
        out: list[_Labelled] = []
        for name, queue, run_id, _run in groups:
            key = (name, queue, run_id)
            entry = known.get(key)
            if entry is None:
                plain = {_NAME: name, _QUEUE: queue, **_SCOPE}
                if run_id:
                    plain[_RUN_ID] = run_id
                    filled = plain
                else:
                    filled = {**plain, _RUN_ID: ""}
                plain_text = label_text(plain)
                filled_text = plain_text if filled is plain else label_text(filled)
                entry = (plain, filled, plain_text, filled_text)
            current[key] = entry
            out.append(entry)
        self._known = current  # only the live groups' (a concurrent scrape's is as good)
        return out


_Labelled = tuple[dict[str, str], dict[str, str], str, str]
"""A group's (labels, labels with the run-id label filled, and their label texts)."""


def label_text(labels: dict[str, str]) -> str:
    """The text between the braces of a sample line: ``name="value"`` pairs sorted by name,
    the values escaped (backslash, newline, double quote), as both of prometheus_client's
    text formats write label values. The names must be legacy Prometheus label names (ours
    are; the exposition checks it), which every escaping scheme leaves as they are."""
    return ",".join([f'{key}="{_escaped(value)}"' for key, value in sorted(labels.items())])


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class LiveFamily(GaugeMetricFamily):
    """One live-run gauge: a prometheus_client gauge family whose samples are made only
    when someone reads them (prometheus_client's own rendering, ``name[]`` restriction,
    other readers), and which carries each sample's label text, made once per group and
    reused across scrapes, for the worker's ``/metrics`` to write its sample lines
    (:mod:`._exposition`). Samples assigned from outside make it an ordinary family:
    :attr:`pristine` turns false and the exposition hands it to prometheus_client."""

    def __init__(
        self,
        name: str,
        documentation: str,
        unit: str,
        labels: list[dict[str, str]],
        texts: list[str],
        values: list[Any],
    ) -> None:
        super().__init__(name, documentation, unit=unit)
        self.labels = labels
        self.label_texts = texts
        self.values = values
        self._samples: list[Sample] | None = None
        self.pristine = True

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            rows = zip(repeat(self.name), self.labels, self.values, *_NONE, strict=False)
            self._samples = list(map(_sample, rows))
        return self._samples

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        self._samples = samples
        self.pristine = False


class WorkerMetricReader(PrometheusMetricReader):
    """The OTel Prometheus reader of a worker's ``/metrics``: its own collector goes to a
    private registry, and the default registry (the one ``start_http_server`` serves) gets
    a :class:`WorkerCollector` over it, so every series is served once, by one collector.
    Shutting the reader down (the provider's shutdown) removes both."""

    def __init__(self, meter_provider: Any) -> None:
        registry = CollectorRegistry(auto_describe=False)
        try:
            super().__init__(registry=registry)  # type: ignore[call-arg, unused-ignore]
        except TypeError:  # exporters before 0.63b0 always register in the default one
            super().__init__()
            REGISTRY.unregister(self._collector)
            registry.register(self._collector)
        self.otel_registry = registry
        self.worker_collector = WorkerCollector(meter_provider, registry)
        REGISTRY.register(self.worker_collector)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with contextlib.suppress(KeyError):  # a second shutdown finds them gone
            self.otel_registry.unregister(self._collector)
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.worker_collector)
