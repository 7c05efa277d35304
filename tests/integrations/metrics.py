"""Reading a real ``/metrics`` endpoint in the integration tests."""

from __future__ import annotations

import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from chaperone_otel import semconv as sc


def finished_counts(url: str, metric: sc.MetricSpec, names: set[str]) -> Counter[tuple[str, str]]:
    """The finished-runs counter ``metric`` scraped from ``url``, by (job name, status),
    for the job ``names`` only."""
    series = sc.prometheus_name(metric)
    name_label = sc.prometheus_label(sc.ATTR_JOB_NAME)
    status_label = sc.prometheus_label(sc.ATTR_JOB_STATUS)
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == series and sample.labels.get(name_label) in names:
                counts[(sample.labels[name_label], sample.labels[status_label])] += int(
                    sample.value
                )
    return counts
