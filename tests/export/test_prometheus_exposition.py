"""The worker's /metrics app (``export/_exposition``) serves, over real HTTP, byte for byte
what prometheus_client's ``make_wsgi_app`` serves over the same registry, under every
Accept / Accept-Encoding / ``name[]`` / method combination, for randomized live-run sets
(label values with quotes, backslashes, newlines and unicode, empty queues, groups with and
without a run id, NaN, infinities, huge, tiny and negative zero values, many groups), with
other collectors' families before and after the live-run ones. Broken copies of the writer
(escaping, float text, label order, headers, EOF, caching, negotiation, gzip) each fail the
comparison. The text is also read back by prometheus_client's two parsers.

Both apps run on stdlib threading servers on 127.0.0.1, as the worker's does; the gzip
bodies are compared byte for byte but for gzip's 4-byte modification time.
"""

from __future__ import annotations

import gzip
import http.client
import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

import chaperone_otel._setup as setup_state
from chaperone_otel import supervised
from chaperone_otel._otel._metrics import LIVE_RUN_GAUGES
from chaperone_otel._safety import internal_error_counts, set_raise_internal_errors
from chaperone_otel.export import _exposition, _prometheus, _prometheus_reader
from chaperone_otel.export._prometheus import LiveFamily, WorkerCollector
from chaperone_otel.testing import FakeClock, capture

ACCEPTS = [
    None,
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain;version=1.0.0",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=underscores",
    "text/plain; version=1.0.0; escaping=dots",
    "text/plain; version=1.0.0; escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=0.0.1",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0; escaping=dots",
    "application/openmetrics-text; version=1.0.0; escaping=values",
    "application/openmetrics-text; version=2.0.0",
    # Prometheus 2.x's scrape header, then 3.x's (UTF-8 names allowed).
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "image/png",
]
ENCODINGS = [None, "gzip", "br, GZIP;q=0.5", "identity"]
QUERIES = [
    "",
    "?name[]=chaperone_job_progress_ratio",
    "?name[]=chaperone_job_heartbeat_interval_seconds&name[]=other_requests_total",
    "?name[]=",
    "?name[]=nothing_here",
    "?unrelated=1",
]
REQUESTS = [  # (method, path) besides GET /metrics
    ("GET", "/"),
    ("GET", "/favicon.ico"),
    ("OPTIONS", "/metrics"),
    ("POST", "/metrics"),
    ("HEAD", "/metrics"),
]

ALPHABET = 'ab_Z09 "\\\n\t{}=,#é✓\U0001f600\\n'
POOL: list[float | int] = [
    0, -0.0, 0.0, 1, 3, -7, 10**20, 2**53 + 1, 1.5, 0.1, 1 / 3, 1234567.0, 12345678.9,
    1e300, -1e22, 5e-324, 2.2250738585072014e-308, 1e-7, 1e21, 1e16, 123456789012.0,
    1.7e9, 1765000000.123, math.nan, math.inf, -math.inf,
]


@dataclass(frozen=True)
class Run:
    """What a gauge reads of a run: a value per gauge (None: the gauge has none)."""

    values: tuple[float | int | None, ...]


class LiveRuns:
    """The live-run families of a :class:`WorkerCollector`, made per collect from fixed
    groups (``WorkerCollector._families``: its label texts, their cache across scrapes,
    the run-id backfill), with the real gauges' names, help and units."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, str, str, Run]] = []
        self.reset()

    def reset(self) -> None:
        """A new collector: no label texts cached."""
        self.collector = WorkerCollector(_Provider(), CollectorRegistry())
        self.collector._gauges = [  # reading the test's runs, not real ones
            (name, unit, doc, _reader(i))  # type: ignore[misc]
            for i, (name, unit, doc, _read) in enumerate(self.collector._gauges)
        ]

    def collect(self) -> Iterable[Metric]:
        return list(self.collector._families(self.groups, 0.0))


class _Provider:
    """A stand-in the collector keeps a weak reference to (its families come from
    :attr:`LiveRuns.groups` here)."""


def _reader(i: int) -> Callable[[Run, float], float | int | None]:
    return lambda run, _now: run.values[i]


class Steady:
    """Other collectors' families (static, so two scrapes are equal)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _text(rng: random.Random, most: int = 8) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def random_groups(rng: random.Random, count: int) -> list[tuple[str, str, str, Run]]:
    gauges = len(LIVE_RUN_GAUGES)
    absent = rng.random()  # how often a gauge has no value for a run, this scenario
    keys: dict[tuple[str, str, str], Run] = {}
    while len(keys) < count:
        if keys and rng.random() < 0.3:  # another run id of a group's job name and queue
            name, queue, _ = rng.choice(list(keys))
        else:
            name, queue = _text(rng), "" if rng.random() < 0.3 else _text(rng)
        key = (name, queue, "" if rng.random() < 0.5 else f"run-{_text(rng, 4)}")
        values = tuple(None if rng.random() < absent else rng.choice(POOL)
                       for _ in range(gauges))
        keys[key] = Run(values)
    return [(*key, run) for key, run in keys.items()]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LiveRuns, str, str]]:
    """(the live runs, our app's address, prometheus_client's app's address), both over
    one registry: other collectors' families (target_info, a labelled counter, an info, a
    histogram, a gauge whose help has quotes, a backslash and a newline) before and after
    the live-run ones."""
    counter = Counter("other_requests", "Requests.", ["path"], registry=None)
    counter.labels('/a"b\\c\nd').inc(3)
    info = Info("other_build", "Build.", registry=None)
    info.info({"version": "1.2.3"})
    histogram = Histogram("other_latency_seconds", "Latency.", registry=None)
    histogram.observe(0.3)
    odd = GaugeMetricFamily("other_odd", 'Help with "quotes", a \\ and a\nnewline.',
                            labels=["k"])
    odd.add_metric(["v"], 1.0)
    registry = CollectorRegistry(auto_describe=False, target_info={"service": "t\"e\\st"})
    live = LiveRuns()
    registry.register(Steady([*counter.collect(), *info.collect()]))
    registry.register(live)
    registry.register(Steady([*histogram.collect(), odd]))
    servers = [_serve(_exposition.make_app(registry)), _serve(make_wsgi_app(registry))]
    try:
        yield live, *(f"127.0.0.1:{s.server_port}" for s in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def _serve(app: Any) -> _Server:
    server = make_server("127.0.0.1", 0, app, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


Response = tuple[int, list[tuple[str, str]], bytes]


def fetch(address: str, method: str, path: str, accept: str | None,
          encoding: str | None) -> Response:
    """(status, headers but Date, body) of one request; a gzip body with its
    modification time zeroed (the two servers compress at different instants)."""
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        if accept is not None:
            connection.putheader("Accept", accept)
        if encoding is not None:
            connection.putheader("Accept-Encoding", encoding)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        headers = [(k, v) for k, v in response.getheaders() if k != "Date"]
    finally:
        connection.close()
    if ("Content-Encoding", "gzip") in headers:
        gzip.decompress(body)  # a whole gzip stream
        body = body[:4] + b"\0\0\0\0" + body[8:]
    return response.status, headers, body


def differences(live: LiveRuns, ours: str, theirs: str, seed: int,
                combinations: Iterable[tuple[str, str, str | None, str | None]]) -> list[str]:
    """Where our app's response differs from prometheus_client's, for each request."""
    found = []
    for method, path, accept, encoding in combinations:
        mine = fetch(ours, method, path, accept, encoding)
        reference = fetch(theirs, method, path, accept, encoding)
        if mine != reference:
            found.append(f"seed {seed}: {method} {path} Accept={accept!r} "
                         f"Accept-Encoding={encoding!r}: {_first_difference(mine, reference)}")
    return found


def _first_difference(mine: Response, reference: Response) -> str:
    if mine[:2] != reference[:2]:
        return f"{mine[:2]} != {reference[:2]}"
    a, b = mine[2], reference[2]
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
              min(len(a), len(b)))
    return f"body at byte {at}: {a[at - 40:at + 40]!r} != {b[at - 40:at + 40]!r}"


def every_combination() -> list[tuple[str, str, str | None, str | None]]:
    out: list[tuple[str, str, str | None, str | None]] = [
        ("GET", "/metrics" + query, accept, encoding)
        for accept in ACCEPTS for encoding in ENCODINGS for query in QUERIES]
    out += [(method, path, accept, None) for method, path in REQUESTS for accept in ACCEPTS[:3]]
    return out


SCRAPES = [  # what a scrape of the randomized scenarios asks (the fast paths, and a few more)
    ("GET", "/metrics", accept, encoding)
    for accept in [None, ACCEPTS[4], ACCEPTS[9], ACCEPTS[11], ACCEPTS[15], ACCEPTS[16]]
    for encoding in [None, "gzip"]
]


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The encoders of the live-run families whose lines were written here."""
    calls: list[Any] = []
    original = _exposition._live

    def spy(family: LiveFamily, encoder: Any, tail: bytes) -> bytes:
        calls.append(encoder)
        return original(family, encoder, tail)

    monkeypatch.setattr(_exposition, "_live", spy)
    return calls


def test_every_request_is_answered_as_prometheus_client_answers_it(
        served: tuple[LiveRuns, str, str], written: list[Any]) -> None:
    live, ours, theirs = served
    live.groups = random_groups(random.Random(0), 40)
    assert not differences(live, ours, theirs, 0, every_combination())
    # Written here: the 0.0.4 and 1.0.0 texts and OpenMetrics 1.0.0, with the underscores
    # or allow-utf-8 escaping, and nothing else.
    assert {_pick(encoder) for encoder in written} == {
        ("generate_latest", "underscores", None),
        ("generate_latest", "allow-utf-8", None),
        ("openmetrics", "underscores", "1.0.0"),
        ("openmetrics", "allow-utf-8", "1.0.0"),
    }


def _pick(encoder: Any) -> tuple[str, str, str | None]:
    func = getattr(encoder, "func", encoder)
    keywords = getattr(encoder, "keywords", {})
    kind = "openmetrics" if "openmetrics" in func.__module__ else func.__name__
    return kind, keywords.get("escaping", "underscores"), keywords.get("version")


@pytest.mark.parametrize("seed", range(1, 31))
def test_randomized_live_runs_are_served_byte_for_byte(
        served: tuple[LiveRuns, str, str], seed: int, written: list[Any]) -> None:
    live, ours, theirs = served
    rng = random.Random(seed)
    live.groups = random_groups(rng, rng.choice([1, 2, 5, 30, 150] if seed % 10 else [1_000]))
    assert not differences(live, ours, theirs, seed, SCRAPES)
    assert written
    # Scraped again, from the label texts cached by the first scrape.
    assert not differences(live, ours, theirs, seed, SCRAPES[:2])
    _parse_both(live, ours)


def test_no_live_run_families_is_served_as_well(served: tuple[LiveRuns, str, str]) -> None:
    live, ours, theirs = served
    live.groups = []
    assert not differences(live, ours, theirs, -1, SCRAPES)


def _parse_both(live: LiveRuns, ours: str) -> None:
    """prometheus_client's parsers read the served texts back to the live runs' samples."""
    expected = _samples(live.collect())
    text = fetch(ours, "GET", "/metrics", None, None)[2].decode()
    openmetrics = fetch(ours, "GET", "/metrics", ACCEPTS[9], None)[2].decode()
    assert _samples(parse_text(text)) == expected
    assert _samples(parse_openmetrics(openmetrics)) == expected  # type: ignore[no-untyped-call]


def _samples(families: Iterable[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
    """The chaperone_* samples: value as text (NaN equal to NaN, -0.0 apart from 0.0)."""
    return {(s.name, tuple(sorted(s.labels.items()))): repr(float(s.value))
            for family in families for s in family.samples if s.name.startswith("chaperone_")}


# -- Mutants: broken copies of the writer, each of which the comparison must catch. ------------

def _escaped_no_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _escaped_wrong_order(value: str) -> str:
    return value.replace("\n", "\\n").replace("\\", "\\\\").replace('"', '\\"')


def _escaped_no_backslash(value: str) -> str:
    return value.replace("\n", "\\n").replace('"', '\\"')


def _label_text_unsorted(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_prometheus._escaped(v)}"' for k, v in labels.items())


def _label_text_spaced(labels: dict[str, str]) -> str:
    return ", ".join(f'{k}="{_prometheus._escaped(v)}"' for k, v in sorted(labels.items()))


def _live_no_header(family: LiveFamily, encoder: Any, tail: bytes) -> bytes:
    return "".join(f"{family.name}{{{t}}} {_exposition._go_float(v)}\n"
                   for t, v in zip(family.label_texts, family.values, strict=True)).encode()


def _live_own_header(family: LiveFamily, encoder: Any, tail: bytes) -> bytes:
    head = f"# HELP {family.name} {family.documentation}\n# TYPE {family.name} gauge\n"
    return head.encode() + _live_no_header(family, encoder, tail)


def _compose_no_eof(metrics: list[Metric], encoder: Any) -> bytes:
    body = ORIGINAL_COMPOSE(metrics, encoder)
    return body.removesuffix(b"# EOF\n")


def _compose_eof_per_part(metrics: list[Metric], encoder: Any) -> bytes:
    chunks = []
    for metric in metrics:
        if type(metric) is LiveFamily and metric.values:
            chunks.append(_exposition._live(metric, encoder, b"") + encoder(_exposition._Fixed([])))
        else:
            chunks.append(encoder(_exposition._Fixed([metric])))
    return b"".join(chunks)


def _compose_live_last(metrics: list[Metric], encoder: Any) -> bytes:
    others = [m for m in metrics if type(m) is not LiveFamily]
    return ORIGINAL_COMPOSE(others + [m for m in metrics if type(m) is LiveFamily], encoder)


def _label_texts_cached_without_the_run_id(self: WorkerCollector, groups: list[Any]) -> Any:
    """The label texts cached by job name and queue alone (the label dicts right)."""
    texts = self.__dict__.setdefault("mutant_texts", {})
    out = []
    for (name, queue, _, _), (plain, filled, *made) in zip(
            groups, ORIGINAL_LABELLED(self, groups), strict=True):
        out.append((plain, filled, *texts.setdefault((name, queue), tuple(made))))
    return out


def _label_texts_swapped(self: WorkerCollector, groups: list[Any]) -> Any:
    """The run-id backfill's text where the plain one belongs and vice versa."""
    return [(p, f, ft, pt) for p, f, pt, ft in ORIGINAL_LABELLED(self, groups)]


def _no_gzip(value: str) -> bool:
    return False


def _dots_too(encoder: Any) -> bool:
    return ORIGINAL_VERIFIED(encoder) or getattr(encoder, "keywords", {}).get(
        "escaping") == "dots"


ORIGINAL_COMPOSE = _exposition._compose
ORIGINAL_LABELLED = WorkerCollector._labelled
ORIGINAL_VERIFIED = _exposition._verified

MUTANTS: dict[str, tuple[Any, str, Any]] = {
    "escaping without the quote": (_prometheus, "_escaped", _escaped_no_quote),
    "escaping newline before backslash": (_prometheus, "_escaped", _escaped_wrong_order),
    "escaping without the backslash": (_prometheus, "_escaped", _escaped_no_backslash),
    "float as repr": (_exposition, "_go_float", lambda v: repr(float(v))),
    "float as str": (_exposition, "_go_float", str),
    "float as %g": (_exposition, "_go_float", lambda v: f"{float(v):g}"),
    "labels in insertion order": (_prometheus, "label_text", _label_text_unsorted),
    "labels joined with a space": (_prometheus, "label_text", _label_text_spaced),
    "no HELP/TYPE/UNIT lines": (_exposition, "_live", _live_no_header),
    "hand-made HELP/TYPE lines": (_exposition, "_live", _live_own_header),
    "no # EOF": (_exposition, "_compose", _compose_no_eof),
    "# EOF after every part": (_exposition, "_compose", _compose_eof_per_part),
    "live-run families last": (_exposition, "_compose", _compose_live_last),
    "label texts cached without the run id": (
        WorkerCollector, "_labelled", _label_texts_cached_without_the_run_id),
    "run-id backfill texts swapped": (WorkerCollector, "_labelled", _label_texts_swapped),
    "gzip never": (_exposition, "gzip_accepted", _no_gzip),
    "dots escaping written here too": (_exposition, "_verified", _dots_too),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_each_broken_writer_is_caught(served: tuple[LiveRuns, str, str], mutant: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each mutant, swapped in, makes some response differ from prometheus_client's (a
    different body or headers, or a 500 where the writer's self-check raised under the
    tests' raise-internal-errors switch), on the randomized scenarios' scrapes."""
    live, ours, theirs = served
    owner, name, broken = MUTANTS[mutant]
    monkeypatch.setattr(owner, name, broken)
    found: list[str] = []
    combos = [*SCRAPES, ("GET", "/metrics", ACCEPTS[6], None), ("GET", "/metrics", ACCEPTS[12],
                                                                 None)]
    for seed in range(1, 6):
        live.reset()
        rng = random.Random(seed)
        live.groups = random_groups(rng, 30)
        found += differences(live, ours, theirs, seed, combos)
        found += differences(live, ours, theirs, seed, combos[:2])  # from the cache
        if found:
            break
    assert found, f"mutant {mutant!r} served what prometheus_client serves"
    monkeypatch.undo()


def test_a_failing_writer_is_counted_and_prometheus_client_renders_the_scrape(
        served: tuple[LiveRuns, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry never breaks the job: with the writer broken (production's switch: errors
    swallowed), the scrape is prometheus_client's rendering, and the failure is counted."""
    live, ours, theirs = served
    live.groups = random_groups(random.Random(7), 20)

    def broken(*_args: Any) -> bytes:
        raise RuntimeError("writer broke")

    monkeypatch.setattr(_exposition, "_live", broken)
    set_raise_internal_errors(False)
    before = internal_error_counts().get("prometheus.exposition", 0)
    assert not differences(live, ours, theirs, 7, SCRAPES[:4])
    assert internal_error_counts().get("prometheus.exposition", 0) == before + 4


def test_another_collectors_failure_is_answered_as_prometheus_client_answers_it() -> None:
    """A collector of the application that raises: both apps answer 500, and the failure
    is not counted as chaperone's."""

    class Broken:
        def collect(self) -> Iterable[Metric]:
            family = GaugeMetricFamily("broken_value", "Broken.")
            family.add_metric([], "not a number")  # type: ignore[arg-type]
            return [family]

    registry = CollectorRegistry(auto_describe=False)
    live = LiveRuns()
    live.groups = random_groups(random.Random(3), 5)
    registry.register(live)
    registry.register(Broken())
    servers = [_serve(_exposition.make_app(registry)), _serve(make_wsgi_app(registry))]
    try:
        ours, theirs = (f"127.0.0.1:{s.server_port}" for s in servers)
        for accept in (None, ACCEPTS[9]):
            mine = fetch(ours, "GET", "/metrics", accept, None)
            reference = fetch(theirs, "GET", "/metrics", accept, None)
            assert mine[0] == reference[0] == 500
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert "prometheus.exposition" not in internal_error_counts()


def test_the_workers_endpoint_serves_what_prometheus_client_serves(
        written: list[Any], still_registry: None) -> None:
    """The real worker endpoint (``configure(prometheus_port=)``, the default registry with
    the OTel reader's counters, histogram and target_info, and the platform collector)
    against prometheus_client's app over the same default registry, with runs whose names
    and queues need escaping, some past the long-run threshold."""
    from prometheus_client import REGISTRY

    with capture(clock=FakeClock(), prometheus_port=0, long_run_threshold=60,
                 sample_interval=3600) as cap:
        url = setup_state._setup.prometheus_url
        assert url is not None
        ours = url.removeprefix("http://").removesuffix("/metrics")
        runs = [supervised('odd "name"\\x', queue="q\nq").start(),
                supervised("unicode.é✓", queue="ü").start()]
        assert cap.clock is not None
        cap.clock.advance(61)
        cap.tick()
        runs += [supervised('odd "name"\\x', queue="q\nq").start(),
                 supervised("plain.job", queue="default", timeout=3600).start()]
        runs[-1].report_progress(3, 7)
        cap.tick()
        server = _serve(make_wsgi_app(REGISTRY))
        theirs = f"127.0.0.1:{server.server_port}"
        try:
            for _, path, accept, encoding in [*SCRAPES, *(
                    ("GET", "/metrics?name[]=" + n, None, None) for n in (
                        "chaperone_job_progress_ratio", "target_info"))]:
                mine = fetch(ours, "GET", path, accept, encoding)
                assert mine == fetch(theirs, "GET", path, accept, encoding), path
            text = fetch(ours, "GET", "/metrics", None, None)[2].decode()
            assert 'chaperone_job_name="odd \\"name\\"\\\\x"' in text
            assert 'chaperone_job_queue="q\\nq"' in text
            assert "chaperone_job_progress_ratio{" in text
            assert "target_info{" in text
            assert written  # the worker's app wrote the live-run lines
        finally:
            server.shutdown()
            server.server_close()
            for run in runs:
                run.finish()
            # Out of the default registry: its histogram of these runs would stay there
            # for the life of the process (and count in other tests' scrapes).
            _prometheus_reader(cap.meter_provider).shutdown()


@pytest.fixture
def still_registry() -> Iterator[None]:
    """The default registry without the process and gc collectors for the test: their
    values move between two scrapes (CPU, memory, collections), and both apps hand them
    to prometheus_client's encoder (the other tests show that with collectors of their
    own); put back afterwards."""
    from prometheus_client import GC_COLLECTOR, PROCESS_COLLECTOR, REGISTRY

    moving = [c for c in (PROCESS_COLLECTOR, GC_COLLECTOR) if c in REGISTRY._collector_to_names]
    for collector in moving:
        REGISTRY.unregister(collector)
    try:
        yield
    finally:
        for collector in moving:
            REGISTRY.register(collector)
