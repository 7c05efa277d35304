"""The SDK's attribute limits (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``,
``OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT`` …) do not cut the lifecycle records of the
``LoggerProvider`` ``configure()`` creates, on the direct path and the SDK's; on an
application's own provider that would cut them, and on one whose ``service.name`` differs
from ``configure(service_name=...)``, configure() says so once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from tests.conftest import REPO
from tests.loopback import Request, recording
from tests.processes import CLEAN_ENV

NAME = "billing.nightly.reconcile_invoices"
METADATA = {"file": "s3://bucket/exports/2024/06/invoices-0001.csv"}


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Request]]]:
    with recording() as received:
        yield received


_CHILD = """
import json, sys
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
import chaperone_otel as c
setup = c.configure(otlp_endpoint=sys.argv[1])
name, metadata = sys.argv[2], json.loads(sys.argv[3])

@c.supervised(name=name, queue="billing", timeout="1h")
def job():
    c.heartbeat(metadata=metadata)

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
spans = InMemorySpanExporter()
setup.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
job()  # chaperone's processor only: the direct path
memory = InMemoryLogRecordExporter()
setup.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
job()  # a processor of someone else's: the SDK's logger.emit
assert c.flush(10)
print(json.dumps([dict(s.attributes) for s in spans.get_finished_spans()]))
print(json.dumps([dict(r.log_record.attributes) for r in memory.get_finished_logs()]))
"""


def _exported(requests: list[Request]) -> list[dict[str, object]]:
    out = []
    for path, _, body, _ in requests:
        if path != "/v1/logs":
            continue
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    out.append(
                        {a.key: a.value.string_value or a.value.int_value for a in record.attributes}
                    )
    return out


def _assert_whole(records: list[dict[str, object]], runs: int) -> None:
    ids = {r.get(sc.ATTR_JOB_RUN_ID) for r in records}
    assert len(ids) == runs, ids
    for record in records:
        assert record[sc.ATTR_JOB_NAME] == NAME
        assert len(str(record[sc.ATTR_JOB_RUN_ID])) == 36  # a whole UUID
        if sc.ATTR_METADATA in record:
            assert json.loads(str(record[sc.ATTR_METADATA]))["metadata"] == METADATA
    assert any(sc.ATTR_METADATA in r for r in records)


ENV_LIMITS = [
    {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "32"},
    {"OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT": "20"},
    {"OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT": "10"},
    {"OTEL_ATTRIBUTE_COUNT_LIMIT": "5"},
]
"""The SDK's attribute limits a developer's or a deployment's environment may set, one at a
time (``tests/test_testing.py`` checks a test capture against the same)."""


@pytest.mark.parametrize("limits", ENV_LIMITS)
def test_the_sdk_limits_do_not_cut_the_records_of_the_provider_configure_creates(
    receiver: tuple[str, list[Request]], limits: dict[str, str]
) -> None:
    """A fresh interpreter (the provider is created once per process) with the limit set:
    the records that reach the OTLP receiver (direct path, then the SDK's) and an in-memory
    exporter keep the whole run id and name and valid metadata JSON. With the limits the
    SDK read from the environment, the run id was cut to 32 characters (another run in the
    sink), the metadata was not JSON, and at 10 attributes the run id and name were gone."""
    url, requests = receiver
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, url, NAME, json.dumps(METADATA)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**CLEAN_ENV, "PYTHONPATH": str(REPO), **limits},
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    in_memory = json.loads(proc.stdout.strip().splitlines()[-1])
    _assert_whole(in_memory, runs=1)
    spans = json.loads(proc.stdout.strip().splitlines()[-2])  # the spans' attributes too
    assert [len(s[sc.ATTR_JOB_RUN_ID]) for s in spans] == [36, 36]
    assert {s[sc.ATTR_JOB_NAME] for s in spans} == {NAME}
    _assert_whole(_exported(requests), runs=2)


def test_an_applications_logger_provider_with_cutting_limits_is_said_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its limits are the application's to set, but records cut by them are wrong, not
    merely short: one WARNING at configure() names each limit and its variable."""
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "32")
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "10")
    provider = LoggerProvider()
    with caplog.at_level(logging.WARNING, logger="chaperone_otel"):
        chaperone.configure(logger_provider=provider)
    said = [r.getMessage() for r in caplog.records if "LoggerProvider" in r.getMessage()]
    assert len(said) == 1
    assert "32 characters (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT)" in said[0]
    assert "at most 10 attributes" in said[0]
    assert "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT" in said[0]
    assert "may be cut" in said[0]


def test_limits_that_cut_nothing_are_not_said(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's default (128 attributes, no length limit), or limits set in code above what
    a record carries: nothing to say."""
    unset = LogRecordLimits.UNSET
    roomy = LogRecordLimits(max_log_record_attributes=500, max_attribute_length=unset,
                            max_log_record_attribute_length=unset)
    with caplog.at_level(logging.WARNING, logger="chaperone_otel"):
        for provider in (LoggerProvider(log_record_limits=roomy), LoggerProvider()):
            chaperone.configure(logger_provider=provider)
    assert not [r for r in caplog.records if "LoggerProvider" in r.getMessage()]


def test_a_service_name_the_applications_providers_do_not_carry_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``configure(service_name=...)`` cannot rename the application's providers (their
    resource is fixed): the runs' telemetry carries the providers' name, while the store
    records the given one. One WARNING says so; a provider with the same name says
    nothing."""
    traces = TracerProvider(resource=Resource.create({"service.name": "app"}))
    logs = LoggerProvider(resource=Resource.create({"service.name": "billing-worker"}))
    with caplog.at_level(logging.WARNING, logger="chaperone_otel"):
        chaperone.configure(service_name="billing-worker", tracer_provider=traces, logger_provider=logs)
    said = [r.getMessage() for r in caplog.records if "service_name" in r.getMessage()]
    assert len(said) == 1
    assert "'billing-worker'" in said[0]
    assert "traces: 'app'" in said[0]
    assert "logs:" not in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chaperone_otel"):
        same = {
            "tracer_provider": traces,
            "logger_provider": LoggerProvider(resource=traces.resource),
            "meter_provider": MeterProvider(resource=traces.resource),
        }
        chaperone.configure(service_name="app", **same)
        chaperone.configure(**same)  # no name given: nothing to say
    assert not [r for r in caplog.records if "service_name" in r.getMessage()]
