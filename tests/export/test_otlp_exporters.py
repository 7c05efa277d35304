"""``FastOTLPLogExporter`` and ``FastOTLPSpanExporter`` behave as the SDK's exporters they
subclass: the same HTTP requests (path, headers, compression, body), results, retries, size
limit and shutdown, against a real local HTTP receiver; and ``configure()`` installs them."""

from __future__ import annotations

import gzip
import http.server
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext

import chaperone_otel as chaperone
from chaperone_otel.export import CountingLogExporter, CountingSpanExporter, _otlp_http
from chaperone_otel.export._otlp_http import export_source_digest, fast_exporter_supported
from chaperone_otel.export._otlp_logs import FastOTLPLogExporter, encode_logs
from chaperone_otel.export._otlp_spans import FastOTLPSpanExporter, encode_spans
from tests.loopback import serving


class _Receiver(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], bytes]]
    statuses: list[int]  # answered in turn; 200 once exhausted

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests.append((self.path, headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any], list[int]]]:
    requests: list[Any] = []
    statuses: list[int] = []
    handler = type("H", (_Receiver,), {"requests": requests, "statuses": statuses})
    with serving(handler) as url:
        yield f"{url}/v1/logs", requests, statuses


def _batch(odd: bool = False) -> list[ReadableLogRecord]:
    resource = Resource({"service.name": "svc", "host.name": "h"})
    out = []
    for n in range(20):
        attributes: dict[str, Any] = {"chaperone.job.run.id": f"r{n}", "n": n, "f": n / 3}
        if odd and n == 7:
            attributes["odd"] = {1, 2}  # not a value the fast encoder writes
        record = LogRecord(
            timestamp=1_700_000_000_000_000_000 + n,
            observed_timestamp=1_700_000_000_000_000_001,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body="b",
            attributes=attributes,
            event_name="chaperone.job.started",
        )
        out.append(ReadableLogRecord(log_record=record, resource=resource))
    return out


def _both(url: str, **options: Any) -> list[OTLPLogExporter]:
    return [cls(endpoint=url, **options) for cls in (OTLPLogExporter, FastOTLPLogExporter)]


def _comparable(request: tuple[str, dict[str, str], bytes]) -> tuple[Any, ...]:
    path, headers, body = request
    return path, {k: v for k, v in headers.items() if k not in ("content-length", "host")}, body


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
@pytest.mark.parametrize("odd", [False, True], ids=["fast path", "fallback"])
def test_sends_what_the_sdk_exporter_sends(
    receiver: tuple[str, list[Any], list[int]], compression: Compression, odd: bool
) -> None:
    url, requests, _ = receiver
    batch = _batch(odd)
    assert (encode_logs(batch) is None) is odd
    results = []
    for exporter in _both(url, compression=compression, headers={"x-tenant": "t1"}):
        assert fast_exporter_supported(exporter, OTLPLogExporter)
        results.append(exporter.export(batch))
        exporter.shutdown()
    assert results == [LogRecordExportResult.SUCCESS] * 2
    sdk, fast = (_comparable(r) for r in requests)
    assert fast == sdk
    assert sdk[1]["x-tenant"] == "t1"
    assert (sdk[1].get("content-encoding") == "gzip") is (compression is Compression.Gzip)
    assert sdk[2] == sdk_encode(batch).SerializeToString()


def test_a_refused_request_fails_without_a_retry(
    receiver: tuple[str, list[Any], list[int]],
) -> None:
    url, requests, statuses = receiver
    statuses.extend([400, 400])
    results = [e.export(_batch()) for e in _both(url)]
    assert results == [LogRecordExportResult.FAILURE] * 2
    assert len(requests) == 2


def test_a_failed_export_says_what_was_dropped_and_where(
    receiver: tuple[str, list[Any], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose sink refused or was down logged only "log export FAILURE": the error
    now names the batch's size and the endpoint, and why a batch is dropped."""
    from chaperone_otel import export

    url, _requests, statuses = receiver
    seen: list[tuple[str, BaseException]] = []
    monkeypatch.setattr(export, "_record_internal_error", lambda w, e: seen.append((w, e)))
    statuses.append(400)
    batch = _batch()
    assert CountingLogExporter(FastOTLPLogExporter(endpoint=url)).export(batch) == (
        LogRecordExportResult.FAILURE
    )
    ((where, error),) = seen
    assert where == "export:logs"
    assert str(error).startswith(
        f"log export FAILURE: a batch of {len(batch)} log item(s) not delivered to {url}, dropped"
    )
    assert "OTEL_EXPORTER_OTLP_TIMEOUT" in str(error)


@pytest.mark.slow  # the SDK backs off ~1 s before its retry
def test_a_transient_failure_is_retried(receiver: tuple[str, list[Any], list[int]]) -> None:
    url, requests, statuses = receiver
    results = []
    for exporter in _both(url):
        statuses.append(503)
        results.append(exporter.export(_batch()))
    assert results == [LogRecordExportResult.SUCCESS] * 2
    assert len(requests) == 4
    assert requests[2][2] == requests[3][2] == requests[0][2]


def test_size_limit_and_shutdown_as_the_sdk(receiver: tuple[str, list[Any], list[int]]) -> None:
    url, requests, _ = receiver
    small = _both(url, max_request_size=100)
    assert [e.export(_batch()) for e in small] == [LogRecordExportResult.FAILURE] * 2
    closed = _both(url)
    for exporter in closed:
        exporter.shutdown()
    assert [e.export(_batch()) for e in closed] == [LogRecordExportResult.FAILURE] * 2
    assert requests == []


def _exporters_of_a_run(url: str) -> tuple[Any, Any]:
    """The log and span exporters ``configure()`` installs for ``url`` (the receiver's), after
    one supervised run through them and a shutdown (everything sent)."""
    setup = chaperone.configure(otlp_endpoint=url.removesuffix("/v1/logs"))
    try:
        (processor,) = setup.log_processors
        (span_processor,) = setup.span_processors

        @chaperone.supervised(name="enc.job")
        def job() -> None:
            return None

        job()
    finally:
        chaperone.shutdown()
    return processor._batch_processor._exporter, span_processor._batch_processor._exporter


def test_configure_installs_the_fast_exporter(
    receiver: tuple[str, list[Any], list[int]],
) -> None:
    url, requests, _ = receiver
    logs, spans = _exporters_of_a_run(url)
    assert isinstance(logs, CountingLogExporter)
    assert type(logs.inner) is FastOTLPLogExporter
    assert isinstance(spans, CountingSpanExporter)
    assert type(spans.inner) is FastOTLPSpanExporter
    logs_sent = [
        record.event_name
        for body in _bodies(requests, "/v1/logs")
        for rl in ExportLogsServiceRequest.FromString(body).resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]
    assert logs_sent == ["chaperone.job.started", "chaperone.job.finished"]
    spans_sent = [
        span.name
        for body in _bodies(requests, "/v1/traces")
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert spans_sent == ["enc.job"]


def _bodies(requests: list[Any], path: str) -> list[bytes]:
    return [body for sent_to, _, body in requests if sent_to == path]


def _spans(odd: bool = False) -> list[ReadableSpan]:
    resource = Resource({"service.name": "svc"})
    return [
        ReadableSpan(
            name=f"s{n}",
            context=SpanContext(trace_id=n + 1, span_id=n + 2, is_remote=False),
            resource=resource,
            attributes={"n": n, "odd": {1, 2}} if odd and n == 3 else {"n": n},
            start_time=n,
            end_time=n + 10,
        )
        for n in range(10)
    ]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
@pytest.mark.parametrize("odd", [False, True], ids=["fast path", "fallback"])
def test_span_exporter_sends_what_the_sdk_exporter_sends(
    receiver: tuple[str, list[Any], list[int]], compression: Compression, odd: bool
) -> None:
    url, requests, statuses = receiver
    url = url.replace("/v1/logs", "/v1/traces")
    spans = _spans(odd)
    assert (encode_spans(spans) is None) is odd
    results = []
    for cls in (OTLPSpanExporter, FastOTLPSpanExporter):
        exporter = cls(endpoint=url, compression=compression, headers={"x-tenant": "t1"})
        assert fast_exporter_supported(exporter, OTLPSpanExporter)
        results.append(exporter.export(spans))
        statuses.append(400)
        results.append(exporter.export(spans))  # refused: no retry
        exporter.shutdown()
        results.append(exporter.export(spans))  # after shutdown: nothing sent
    expected = [SpanExportResult.SUCCESS, SpanExportResult.FAILURE, SpanExportResult.FAILURE]
    assert results == expected * 2
    sdk, sdk_refused, fast, fast_refused = (_comparable(r) for r in requests)
    assert (fast, fast_refused) == (sdk, sdk_refused)
    assert sdk[2] == sdk_spans(spans).SerializePartialToString()


def test_the_installed_sdks_export_is_the_one_the_fast_exporters_copy() -> None:
    """The fast exporters' ``export()`` copies the SDK's; they are used only with an SDK whose
    ``export()`` is one the copy was checked against. When this fails after an SDK upgrade,
    compare the SDK's new ``export()`` with ``_otlp_http.send`` and add its digest."""
    for sdk_class in (OTLPLogExporter, OTLPSpanExporter):
        digest = export_source_digest(sdk_class.export)
        assert digest in _otlp_http.CHECKED_EXPORT_SOURCES, (
            f"{sdk_class.__name__}.export changed (sha256 {digest}): compare it with "
            "chaperone_otel/export/_otlp_http.send, then add the digest"
        )


def test_configure_installs_the_sdks_exporters_with_an_sdk_it_was_not_checked_against(
    receiver: tuple[str, list[Any], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK whose ``export()`` is not one the fast exporters copy: its own exporters, which
    still send every record (the session they are given still works)."""
    monkeypatch.setattr(_otlp_http, "CHECKED_EXPORT_SOURCES", frozenset())
    url, requests, _ = receiver
    logs, spans = _exporters_of_a_run(url)
    assert type(logs.inner) is OTLPLogExporter
    assert type(spans.inner) is OTLPSpanExporter
    paths = {path for path, _, _ in requests}
    assert {"/v1/logs", "/v1/traces"} <= paths
