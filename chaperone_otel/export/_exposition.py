"""A worker's ``/metrics`` WSGI app: prometheus_client's exposition, with the sample lines of
the live-run gauges written here.

Why: at 1,000 live runs prometheus_client's text formatting of the ~7,000 live-run samples
(six labels each, escaped and joined for every sample of every scrape) was most of a
scrape's cost, 1.2x the CPU of a prometheus_client scrape of as many three-label series
(``bench/bench_monitor.py``, docs/performance.md). Those samples share their label sets:
16 gauges per group of runs, and a group's labels are its key, so
:class:`~._prometheus.WorkerCollector` makes each group's label text once and keeps it
while the group lives, and only the values are formatted per scrape.

What stays prometheus_client's, so that this app cannot serve what its ``make_wsgi_app``
would not have served (``tests/export/test_prometheus_exposition.py`` compares the two
over HTTP, byte for byte, and breaks copies of this writer to show it would notice):

* every request but a plain ``GET`` of the metrics (``OPTIONS``, other methods, the
  favicon, a ``name[]`` restriction) is answered by prometheus_client's own app;
* the format is what its ``choose_encoder`` picks from the ``Accept`` header, and only
  the picks verified here (:func:`_verified`: the 0.0.4 and 1.0.0 text formats and
  OpenMetrics 1.0.0, each with the ``underscores`` or ``allow-utf-8`` escaping) are
  written here; any other (``dots``, ``values``, another OpenMetrics version, an encoder
  of a future prometheus_client) goes to its app;
* every family but the live-run ones (the OTel reader's counters, histogram and
  ``target_info``, process collectors, the application's own metrics) is rendered by that
  encoder, in the registry's order, and the OpenMetrics ``# EOF`` is its, once, last;
* of each live-run family, the ``HELP``/``TYPE``/``UNIT`` lines and the first sample are
  rendered by that encoder too, and the first sample line written here must equal
  prometheus_client's, else the whole scrape is rendered by prometheus_client;
* the status, the ``Content-Type`` (its encoder's) and gzip (its ``gzip_accepted``).

A failure of this writer (or that mismatch) is an internal error (``_safety``: logged once,
counted) and the scrape is served by prometheus_client's encoder from the same collection.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qs

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client import exposition as _text
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.openmetrics import exposition as _openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .._safety import internal_error
from ._prometheus import LEGACY_LABEL_NAMES, LiveFamily

Encoder = Callable[[Collector], bytes]
_go_float: Final[Callable[[Any], str]] = floatToGoString
"""prometheus_client's float text (``+Inf``, ``NaN``, Go's exponent rules) of every value."""

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_VERIFIED: Final = frozenset(
    {
        (_text.generate_latest, _openmetrics.UNDERSCORES, None),
        (_text.generate_latest, _openmetrics.ALLOWUTF8, None),
        (_openmetrics.generate_latest, _openmetrics.UNDERSCORES, "1.0.0"),
        (_openmetrics.generate_latest, _openmetrics.ALLOWUTF8, "1.0.0"),
    }
)
"""(encoder, escaping, OpenMetrics version) of ``choose_encoder``'s picks whose sample line
is ``name{labels} value``, with legacy names and label names written as they are and label
values escaped as :func:`~._prometheus.label_text` escapes them (prometheus_client 0.26)."""

_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
"""A family name every verified escaping writes unchanged (no colon: OpenMetrics' sample
lines escape a metric name with the label-name rules)."""


def _verified(encoder: Any) -> bool:
    """Whether ``encoder`` (from ``choose_encoder``) is one whose lines are written here."""
    if encoder is _text.generate_latest:  # no version asked: 0.0.4, underscores
        return True
    if type(encoder) is not partial or encoder.args:
        return False
    keywords = encoder.keywords
    if not set(keywords) <= {"escaping", "version"}:
        return False
    return (encoder.func, keywords.get("escaping"), keywords.get("version")) in _VERIFIED


class _Fixed:
    """A collector of given families: what an encoder renders a part of a scrape from."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def make_app(registry: Collector = REGISTRY) -> WsgiApp:
    """The ``/metrics`` WSGI app over ``registry`` (see the module's docstring)."""
    theirs = make_wsgi_app(registry)

    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") != "/favicon.ico":
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            params = parse_qs(environ.get("QUERY_STRING", ""))
            if "name[]" not in params and _verified(encoder):
                output = render(registry, encoder)
                headers = [("Content-Type", content_type)]
                if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                    output = gzip.compress(output)
                    headers.append(("Content-Encoding", "gzip"))
                start_response("200 OK", headers)
                return [output]
        return theirs(environ, start_response)

    return metrics_app


def render(registry: Collector, encoder: Encoder) -> bytes:
    """What ``encoder(registry)`` renders, the live-run sample lines written here.

    A failure in another collector's families raises as it does in prometheus_client (the
    server answers 500); a failure of this writer is counted and the collection rendered by
    ``encoder`` alone.
    """
    metrics = list(registry.collect())
    try:
        return _compose(metrics, encoder)
    except Exception as exc:
        # prometheus_client's own rendering: raises if a family it renders is broken ...
        served = encoder(_Fixed(metrics))
        # ... so what failed was this writer.
        internal_error("prometheus.exposition", exc)
        return served


def _compose(metrics: list[Metric], encoder: Encoder) -> bytes:
    tail = encoder(_Fixed([]))  # what ends a scrape: nothing, or OpenMetrics' "# EOF"
    chunks: list[bytes] = []
    others: list[Metric] = []
    for metric in metrics:
        if (
            type(metric) is LiveFamily
            and metric.pristine
            and metric.values
            and LEGACY_LABEL_NAMES
            and _LEGACY_NAME.match(metric.name)
        ):
            if others:
                chunks.append(_without(encoder(_Fixed(others)), tail))
                others = []
            chunks.append(_live(metric, encoder, tail))
        else:
            others.append(metric)
    if others:
        chunks.append(_without(encoder(_Fixed(others)), tail))
    chunks.append(tail)
    return b"".join(chunks)


def _without(output: bytes, tail: bytes) -> bytes:
    if not output.endswith(tail):
        raise ValueError(f"prometheus_client's output does not end with {tail!r}")
    return output[: len(output) - len(tail)]


def _live(family: LiveFamily, encoder: Encoder, tail: bytes) -> bytes:
    """The family's lines: its header and first sample by ``encoder``, the rest here."""
    name = family.name
    first = GaugeMetricFamily(name, family.documentation, unit=family.unit)
    first.samples = [Sample(name, family.labels[0], family.values[0])]
    head = _without(encoder(_Fixed([first])), tail)
    lines = [
        f"{name}{{{text}}} {_go_float(value)}\n"
        for text, value in zip(family.label_texts, family.values, strict=True)
    ]
    if not head.endswith(lines[0].encode()):
        raise ValueError(f"{name}: {lines[0]!r} is not prometheus_client's line")
    return head + "".join(lines[1:]).encode()
