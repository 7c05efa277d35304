"""The direct path of lifecycle log records (``export/_fast_logs.py``) exports exactly what
the SDK's ``Logger.emit`` exports.

The records of real ``@supervised`` runs (a success, a failure with its stacktrace, user
attributes, metadata, progress, heartbeats) and of odd variants (no span context, unicode,
int64 extremes and beyond, values the direct path leaves to the SDK) go through two
identical pipelines of the kind ``configure()`` installs (``LifecycleLogProcessor``,
``CountingLogExporter``, ``FastOTLPLogExporter``) to a real local HTTP receiver: one whose
processor takes light records, one whose processor does not (so every record goes through
the SDK's ``logger.emit``). The request bodies must be identical, byte for byte, under
several ``LogRecordLimits``; copies of the module with one deliberate fault each must fail
that comparison. The observed timestamp (the clock at emit, on both paths) comes from one
deterministic counter on both paths. Real OTel SDK throughout.
"""

from __future__ import annotations

import http.server
import inspect
import itertools
import types
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry import _logs as api_logs
from opentelemetry import trace
from opentelemetry._logs._internal import LogRecord as _ApiLogRecord
from opentelemetry.context import Context
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import chaperone_otel as chaperone
from chaperone_otel import _process
from chaperone_otel import semconv as sc
from chaperone_otel._events import LifecycleRecord
from chaperone_otel._otel._logs import LogWriter
from chaperone_otel._safety import internal_error_counts, set_raise_internal_errors
from chaperone_otel.export import CountingLogExporter, _fast_logs, _otlp_logs, _remove_log_processor
from chaperone_otel.export._otlp_logs import FastOTLPLogExporter
from chaperone_otel.testing import Capture, FakeClock
from tests.loopback import serving

_API_LOGS_INTERNAL = _ApiLogRecord.__module__

# The SDK path warns when limits drop attributes (once per process, outside pytest).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:opentelemetry.sdk._logs._internal")


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    bodies: dict[str, list[bytes]] = {}
    with serving(type("H", (_Receiver,), {"bodies": bodies})) as url:
        yield url, bodies


def _run_records() -> list[LifecycleRecord]:
    """The lifecycle records of real supervised runs, as the runtime publishes them."""
    clock = FakeClock()
    capture = Capture(clock=clock, heartbeat_interval=5, flush_period=1).start()
    try:

        @chaperone.supervised(name="diff.ok", attributes={"team": "data", "big": 2**63 - 1})
        def ok() -> None:
            run = chaperone.current_job()
            assert run is not None
            run.heartbeat(rows=3, note="ünïcødé 日本 🦆")
            run.report_progress(5, 10, phase="load")
            clock.advance(2)
            capture.tick()

        @chaperone.supervised(name="diff.fails", attributes={"small": -(2**63)})
        def fails() -> None:
            raise ValueError("boom: " + "x" * 300)

        @chaperone.supervised(name="diff.ünïcødé")
        def unicode_name() -> None:
            return None

        ok()
        with pytest.raises(ValueError):
            fails()
        unicode_name()
        capture.tick()
        records = list(capture.records)
    finally:
        capture.stop()
    events = {r.event_name for r in records}
    assert {sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED, sc.EVENT_JOB_HEARTBEAT} <= events
    assert sc.EVENT_JOB_PROGRESS in events
    assert any(sc.ATTR_ERROR_STACKTRACE in r.attributes for r in records)
    assert any(sc.ATTR_METADATA in r.attributes for r in records)
    assert all(r.context is not None for r in records)
    return records


def _variants(records: list[LifecycleRecord]) -> list[LifecycleRecord]:
    """Odd records made from real ones: what the direct path must get right or leave to the
    SDK to clean."""
    finished = next(r for r in records if r.event_name == sc.EVENT_JOB_FINISHED)

    def but(**attributes: Any) -> LifecycleRecord:
        return replace(finished, attributes={**finished.attributes, **attributes})

    return [
        replace(finished, context=None),  # no span context: the current one (none here)
        replace(finished, severity="ERROR", body="ünïcødé body 🦆"),
        but(**{"chaperone.job.attr.list": ["a", "b"]}),  # a sequence: the SDK path
        but(**{"": "an empty key"}),  # dropped (and counted) by the SDK
        but(**{"chaperone.job.attr.none": None}),
        but(**{"chaperone.job.attr.extremes": -(2**63), "chaperone.job.attr.f": -0.0}),
        replace(finished, attributes={}),
    ]


_SDK_PATH_VARIANTS = 2
"""How many of :func:`_variants` the direct path leaves to the SDK (the list, the empty key)."""


@pytest.fixture(scope="module")
def records() -> list[list[LifecycleRecord]]:
    """Two batches: real runs' records and odd ones (chaperone's encoder writes the batch),
    and real runs' records with one value beyond int64 (the SDK's encoder writes that batch,
    given the light records converted)."""
    real = _run_records()
    finished = next(r for r in real if r.event_name == sc.EVENT_JOB_FINISHED)
    huge = replace(finished, attributes={**finished.attributes, "chaperone.job.attr.huge": 2**64})
    return [real + _variants(real), [*real, huge]]


_RESOURCE = Resource.create(
    {
        "service.name": "diff",
        sc.ATTR_HOST_NAME: _process.HOST,
        sc.ATTR_PROCESS_PID: _process.pid,
        sc.ATTR_SERVICE_INSTANCE_ID: _process.instance_id,
    }
)

_LIMITS = {
    "default": None,
    "few attributes": LogRecordLimits(max_log_record_attributes=8),
    "short values": LogRecordLimits(max_log_record_attribute_length=12),
}


def _pipeline(module: Any, url: str, *, direct: bool, limits: Any) -> tuple[LogWriter, Any]:
    """A logger provider with the processor ``configure()`` installs (of ``module``), and the
    OTel log writer on it, its direct emitter that of ``module``."""
    provider = LoggerProvider(resource=_RESOURCE, shutdown_on_exit=False, log_record_limits=limits)
    processor = module.LifecycleLogProcessor(
        CountingLogExporter(FastOTLPLogExporter(endpoint=url)),
        takes_light_records=direct,
        schedule_delay_millis=600_000,  # exported at the flush only: one request each
        max_export_batch_size=1_024,
        max_queue_size=16_384,
    )
    provider.add_log_record_processor(processor)
    writer = LogWriter(provider)
    logger = writer._get_logger()
    writer._direct = module.direct_emitter(logger)
    return writer, processor


def _send(
    module: Any,
    batches: list[list[LifecycleRecord]],
    url: str,
    bodies: dict[str, list[bytes]],
    *,
    direct: bool,
    limits: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[bytes], list[list[type]]]:
    """The request bodies ``batches`` make through one pipeline (one request a batch), and
    what was queued of each."""
    clock = itertools.count(1_800_000_000_000_000_000, 1_000)

    def observed() -> int:
        return next(clock)

    monkeypatch.setattr(f"{_API_LOGS_INTERNAL}.time_ns", observed)
    monkeypatch.setattr(module, "time_ns", observed)
    path = f"/v1/logs/{'direct' if direct else 'sdk'}/{len(bodies)}"
    writer, processor = _pipeline(module, url + path, direct=direct, limits=limits)
    queued = []
    for batch in batches:
        for record in batch:
            writer.on_record(record)
        queued.append(_queued_types(processor))
        assert processor.force_flush(10_000)
    processor.shutdown()
    sent = bodies[path]
    assert len(sent) == len(batches)
    return sent, queued


def _both(
    module: Any,
    batches: list[list[LifecycleRecord]],
    receiver: tuple[str, dict[str, list[bytes]]],
    limits: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[bytes], list[bytes], list[list[type]]]:
    url, bodies = receiver
    sdk, sdk_queued = _send(
        module, batches, url, bodies, direct=False, limits=limits, monkeypatch=monkeypatch
    )
    assert {t for q in sdk_queued for t in q} == {ReadableLogRecord}
    direct, queued = _send(
        module, batches, url, bodies, direct=True, limits=limits, monkeypatch=monkeypatch
    )
    return sdk, direct, queued


@pytest.mark.parametrize("limits", sorted(_LIMITS))
def test_the_direct_path_sends_what_the_sdk_path_sends(
    records: list[list[LifecycleRecord]],
    receiver: tuple[str, dict[str, list[bytes]]],
    limits: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sdk, direct, queued = _both(_fast_logs, records, receiver, _LIMITS[limits], monkeypatch)
    assert direct == sdk
    for body, batch in zip(sdk, records, strict=True):
        sent = [
            record
            for rl in ExportLogsServiceRequest.FromString(body).resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]
        assert [r.event_name for r in sent] == [r.event_name for r in batch]
        assert [bool(r.trace_id) for r in sent] == [r.context is not None for r in batch]
    light = [q.count(_fast_logs.LightLogRecord) for q in queued]
    if limits == "default":  # every record but those the SDK must clean
        assert light == [len(records[0]) - _SDK_PATH_VARIANTS, len(records[1])]
    else:  # the limits cut most records: those go through the SDK, the others do not
        assert sum(light) > 0
        assert all(n < len(q) for n, q in zip(light, queued, strict=True))


MUTANTS = {
    # name: (a line of _fast_logs, what a broken copy has instead)
    "observed timestamp from the record's": (
        "            time_ns(),\n",
        "            timestamp,\n",
    ),
    "context ignored": (
        "        if not context:  # as",
        "        context = None\n        if not context:  # as",
    ),
    "flags left out": (
        "self.trace_flags = span_context.trace_flags",
        "self.trace_flags = 0",
    ),
    "span id of the trace": (
        "self.span_id = span_context.span_id",
        "self.span_id = span_context.trace_id & 0xFFFFFFFFFFFFFFFF",
    ),
    "severity text as the event name": (
        "self.severity_text = severity_text",
        "self.severity_text = event_name",
    ),
    "a resource of its own": (
        "        resource = logger._resource\n",
        "        resource = type(logger._resource).create({})\n",
    ),
    "no scope": (
        "            logger._instrumentation_scope,\n",
        "            None,\n",
    ),
    "attribute count limit ignored": (
        "if most is not None and len(attributes) > most:",
        "if False:",
    ),
    "value length limit ignored": (
        "if longest is not None and any(",
        "if False and any(",
    ),
    "an empty key taken": (
        'if "" in attributes or not',
        "if not",
    ),
    "converted record without its span": (
        "        record.span_id = self.span_id\n",
        "",
    ),
    "converted record without its scope": (
        "            instrumentation_scope=self.instrumentation_scope,\n            limits",
        "            instrumentation_scope=None,\n            limits",
    ),
}


def _mutant(old: str, new: str) -> Any:
    """A copy of ``_fast_logs`` with ``old`` replaced by ``new`` (not registered)."""
    source = inspect.getsource(_fast_logs)
    assert source.count(old) == 1, old
    source = source.replace(old, new).replace("\nadd_direct_emitter(direct_emitter)\n", "\n")
    module = types.ModuleType("_fast_logs_mutant")
    module.__package__ = _fast_logs.__package__
    exec(compile(source, "<mutant>", "exec"), module.__dict__)
    return module


def _disagree(
    module: Any,
    records: list[list[LifecycleRecord]],
    receiver: tuple[str, dict[str, list[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> bool:
    # The SDK's encoder of an odd batch converts the module's own light records.
    monkeypatch.setattr(_otlp_logs, "_readable", module.readable)
    for limits in _LIMITS.values():
        with monkeypatch.context() as patch:
            sdk, direct, _ = _both(module, records, receiver, limits, patch)
        if sdk != direct:
            return True
    return False


def test_an_unchanged_copy_agrees(
    records: list[list[LifecycleRecord]],
    receiver: tuple[str, dict[str, list[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The harness itself: a copy with nothing replaced agrees."""
    assert not _disagree(
        _mutant("def direct_emitter(", "def direct_emitter("), records, receiver, monkeypatch
    )


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_comparison_fails_when_the_direct_path_is_broken(
    records: list[list[LifecycleRecord]],
    receiver: tuple[str, dict[str, list[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    mutant: str,
) -> None:
    assert _disagree(_mutant(*MUTANTS[mutant]), records, receiver, monkeypatch), mutant


# ---- when the direct path is not taken ---------------------------------------------------


def _configured_logger(url: str) -> tuple[Any, Any, Any]:
    """configure() with OTLP to ``url``: its logger provider, log processor and the log
    writer of the runtime, which has resolved its logger."""
    from chaperone_otel._runtime import runtime

    setup = chaperone.configure(otlp_endpoint=url, service_name="diff")
    assert setup is not None
    (processor,) = setup.log_processors
    writer = runtime().writer.logs
    writer._get_logger()
    return setup.logger_provider, processor, writer


def _queued_types(processor: Any) -> list[type]:
    """The types of the records queued in ``processor``, oldest first."""
    return [type(r) for r in reversed(processor._batch_processor._queue)]


def _one_run(name: str) -> None:
    @chaperone.supervised(name=name)
    def job() -> None:
        return None

    job()


def test_configure_takes_the_direct_path(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    url, _ = receiver
    try:
        _, processor, writer = _configured_logger(url + "/direct")
        assert type(writer._direct) is _fast_logs.DirectEmitter
        assert processor.takes_light_records is True
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.direct")
        assert _queued_types(processor) == [_fast_logs.LightLogRecord] * 2
    finally:
        chaperone.shutdown()


def test_a_processor_of_the_users_gets_every_record_through_the_sdk(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """A processor added to the provider after configure(): the records are the SDK's again
    (for it and for chaperone's processor alike), none is lost on either."""
    url, _ = receiver
    try:
        provider, processor, _ = _configured_logger(url + "/user")
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.before")
        users = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        users_processor = SimpleLogRecordProcessor(users)
        provider.add_log_record_processor(users_processor)
        _one_run("diff.after")
        assert _queued_types(processor) == [_fast_logs.LightLogRecord] * 2 + [ReadableLogRecord] * 2
        assert [r.log_record.body for r in users.get_finished_logs()] == [
            "diff.after started",
            "diff.after finished",
        ]
    finally:
        chaperone.shutdown()
        # The global provider outlives this test (OTel sets it once): the next test's
        # configure() must find only chaperone's processors on it.
        _remove_log_processor(provider, users_processor)


def test_an_unchecked_sdk_takes_the_sdk_path(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK whose pieces are not the ones checked: no direct emitter at all."""
    monkeypatch.setattr(_fast_logs, "CHECKED_PIPELINE_SOURCES", frozenset())
    url, _ = receiver
    try:
        _, processor, writer = _configured_logger(url + "/unchecked")
        assert writer._direct is None
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.unchecked")
        assert _queued_types(processor) == [ReadableLogRecord] * 2
    finally:
        chaperone.shutdown()


def test_records_the_limits_would_cut_take_the_sdk_path(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """With limits the record exceeds, the SDK cuts it (and counts what it dropped)."""
    url, _ = receiver
    writer, processor = _pipeline(
        _fast_logs, url + "/limits", direct=True, limits=LogRecordLimits(max_attributes=2)
    )
    record = LifecycleRecord(
        event_name=sc.EVENT_JOB_HEARTBEAT, timestamp=1.0, attributes={"a": 1, "b": 2, "c": 3}
    )
    writer.on_record(record)
    (queued,) = processor._batch_processor._queue
    assert type(queued) is ReadableLogRecord
    assert queued.dropped_attributes == 1
    assert processor.force_flush(10_000)
    processor.shutdown()


def test_a_disabled_logger_gets_nothing(receiver: tuple[str, dict[str, list[bytes]]]) -> None:
    url, _ = receiver
    writer, processor = _pipeline(_fast_logs, url + "/disabled", direct=True, limits=None)
    logger = writer._get_logger()
    assert writer.wants(sc.EVENT_JOB_STARTED)
    logger._logger_config.is_enabled = False
    assert not writer.wants(sc.EVENT_JOB_STARTED)
    writer.on_record(LifecycleRecord(sc.EVENT_JOB_STARTED, 1.0, {"a": 1}))
    assert list(processor._batch_processor._queue) == []
    processor.shutdown()


def test_a_record_without_context_takes_the_current_span(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """As the API's ``LogRecord``: a record with no context, or an empty one, names the
    current span."""
    url, _ = receiver
    writer, processor = _pipeline(_fast_logs, url + "/current", direct=True, limits=None)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("outer") as span:
        for context in (None, Context()):
            record = LifecycleRecord(sc.EVENT_JOB_STARTED, 1.0, {"a": 1}, context=context)
            writer.on_record(record)
    queued = list(processor._batch_processor._queue)
    assert [type(r) for r in queued] == [_fast_logs.LightLogRecord] * 2
    ids = span.get_span_context().trace_id, span.get_span_context().span_id
    assert [(r.trace_id, r.span_id) for r in queued] == [ids, ids]
    processor.shutdown()


def test_the_installed_sdks_log_pipeline_is_the_one_the_direct_path_reproduces() -> None:
    """The direct path stands in for pieces of the SDK (and API); it is used only with an SDK
    whose pieces are ones it was checked against. When this fails after an upgrade, compare
    the pieces ``_fast_logs._pieces()`` names with ``DirectEmitter``, then add the digest."""
    digest = _fast_logs.pipeline_digest()
    assert digest in _fast_logs.CHECKED_PIPELINE_SOURCES, (
        f"the SDK's log pipeline changed (sha256 {digest}): compare it with "
        "chaperone_otel/export/_fast_logs.DirectEmitter, then add the digest"
    )
    assert _fast_logs.pipeline_supported()


def test_an_api_logger_has_no_direct_path() -> None:
    assert _fast_logs.direct_emitter(api_logs.NoOpLogger("x")) is None
    assert _fast_logs.direct_emitter(trace.NoOpTracer()) is None


def test_a_queued_record_does_not_change_with_the_mapping_it_came_from(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """A record whose mapping the writer does not slim (a heartbeat's: the listeners' shared
    mapping) is queued with its own copy, as the SDK copies attributes at emit."""
    url, _ = receiver
    writer, processor = _pipeline(_fast_logs, url + "/copy", direct=True, limits=None)
    shared: dict[str, Any] = {"chaperone.job.heartbeat.count": 1}
    writer.on_record(LifecycleRecord(sc.EVENT_JOB_HEARTBEAT, 1.0, shared))
    shared["chaperone.job.heartbeat.count"] = 2
    shared["later"] = "x"
    (queued,) = processor._batch_processor._queue
    assert type(queued) is _fast_logs.LightLogRecord
    assert queued.attributes == {"chaperone.job.heartbeat.count": 1}
    processor.shutdown()


def test_with_the_console_processor_every_record_goes_through_the_sdk(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """``configure(console=True)`` adds the SDK's console processor: chaperone's OTLP
    processor then gets the SDK's records too."""
    from chaperone_otel._runtime import runtime

    url, _ = receiver
    try:
        setup = chaperone.configure(otlp_endpoint=url + "/console", console=True)
        assert setup is not None
        processor = next(
            p for p in setup.log_processors if type(p) is _fast_logs.LifecycleLogProcessor
        )
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.console")
        assert runtime().writer.logs._direct is not None
        assert _queued_types(processor) == [ReadableLogRecord] * 2
    finally:
        chaperone.shutdown()


def test_with_the_sdks_own_exporter_every_record_goes_through_the_sdk(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK whose exporter ``export()`` was not checked: ``configure()`` installs the
    SDK's exporter, which does not take light records, so none is queued."""
    from chaperone_otel.export import _otlp_http

    monkeypatch.setattr(_otlp_http, "CHECKED_EXPORT_SOURCES", frozenset())
    url, _ = receiver
    try:
        _, processor, writer = _configured_logger(url + "/sdk-exporter")
        assert processor.takes_light_records is False
        assert writer._direct is not None
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.sdk.exporter")
        assert _queued_types(processor) == [ReadableLogRecord] * 2
    finally:
        chaperone.shutdown()


def test_a_failing_direct_path_is_counted_and_the_sdk_sends_the_record(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telemetry never breaks the job, nor loses the record: a direct path that raises is
    counted (``logs.direct``) and the SDK's ``logger.emit`` sends the record."""
    url, _ = receiver
    writer, processor = _pipeline(_fast_logs, url + "/failing", direct=True, limits=None)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken clock")

    # Not one of the SDK pieces the direct path checks (patching one of those makes it
    # stand aside before it can fail): the observed timestamp's clock.
    monkeypatch.setattr(_fast_logs, "time_ns", broken)
    old = set_raise_internal_errors(False)  # as in production
    try:
        writer.on_record(LifecycleRecord(sc.EVENT_JOB_STARTED, 1.0, {"a": 1}))
    finally:
        set_raise_internal_errors(old)
    (queued,) = processor._batch_processor._queue
    assert type(queued) is ReadableLogRecord
    assert internal_error_counts().get("logs.direct") == 1
    processor.shutdown()



def test_a_wrapper_put_on_logger_emit_later_sees_every_record(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application or an instrumentation that wraps the SDK's ``Logger.emit`` (here with
    ``functools.wraps``, whose source reads as the SDK's own) after the first run: from then
    on every record goes through it, the direct path stands aside; a wrapper on one logger
    only (an instance attribute) likewise."""
    import functools

    from opentelemetry.sdk._logs import Logger

    url, _ = receiver
    seen: list[str] = []
    original = Logger.emit

    @functools.wraps(original)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(kwargs.get("event_name")))  # the OTel log writer passes keywords
        return original(self, *args, **kwargs)

    try:
        _, processor, writer = _configured_logger(url + "/wrapped")
        processor._batch_processor._schedule_delay = 600
        _one_run("diff.unwrapped")
        monkeypatch.setattr(Logger, "emit", wrapped)
        _one_run("diff.wrapped")
        assert seen == [sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED]
        monkeypatch.undo()
        _one_run("diff.unwrapped.again")
        logger = writer._logger
        logger.emit = functools.partial(wrapped, logger)  # this logger only
        _one_run("diff.wrapped.instance")
        del logger.emit
        assert seen == [sc.EVENT_JOB_STARTED, sc.EVENT_JOB_FINISHED] * 2
        light, sdk = _fast_logs.LightLogRecord, ReadableLogRecord
        assert _queued_types(processor) == [light] * 2 + [sdk] * 2 + [light] * 2 + [sdk] * 2
    finally:
        chaperone.shutdown()


def test_a_pipeline_wrapped_before_the_digest_is_not_the_checked_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``inspect.getsource`` reads through ``functools.wraps``: a wrapped piece must not
    hash as the SDK's own, and a piece replaced after the digest is not the one checked."""
    import functools

    from opentelemetry.sdk._logs import Logger

    assert _fast_logs.pipeline_supported()
    original = Logger.emit

    @functools.wraps(original)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Logger, "emit", wrapped)
    assert not _fast_logs.pipeline_supported()  # replaced after the digest was taken
    _fast_logs.pipeline_digest.cache_clear()
    try:
        assert _fast_logs.pipeline_digest() is None  # a wrapper: no digest at all
        assert not _fast_logs.pipeline_supported()
    finally:
        monkeypatch.undo()
        _fast_logs.pipeline_digest.cache_clear()
    assert _fast_logs.pipeline_supported()


def test_a_failing_direct_enabled_is_counted_and_the_sdk_sends_the_records(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path's ``enabled()`` reads the SDK's private state first: should that
    fail, the error is counted (``logs.direct``), the logger's own ``enabled()`` answers
    and the records take the SDK's path: none is lost."""
    url, _ = receiver

    def broken(self: Any, processors: Any) -> Any:
        raise RuntimeError("private state moved")

    old = set_raise_internal_errors(False)  # as in production
    try:
        _, processor, _ = _configured_logger(url + "/failing-enabled")
        processor._batch_processor._schedule_delay = 600
        before = internal_error_counts().get("logs.direct", 0)
        monkeypatch.setattr(_fast_logs.DirectEmitter, "_targets", broken)
        _one_run("diff.failing.enabled")
        assert _queued_types(processor) == [ReadableLogRecord] * 2
        assert internal_error_counts().get("logs.direct", 0) - before == 4  # 2 asks, 2 emits
    finally:
        set_raise_internal_errors(old)
        chaperone.shutdown()


def test_configure_checks_the_sdks_pipeline_before_any_run(
    receiver: tuple[str, dict[str, list[bytes]]],
) -> None:
    """The digest of the SDK's pipeline (reading ~19 pieces' source files) is taken by
    ``configure()``, not on the first run's job thread."""
    url, _ = receiver
    _fast_logs.pipeline_digest.cache_clear()
    try:
        chaperone.configure(otlp_endpoint=url + "/warm", service_name="diff")
        assert _fast_logs.pipeline_digest.cache_info().currsize == 1
    finally:
        chaperone.shutdown()
