"""The spans a real worker ended, as the integration tests read them: a file every process
of the worker appends to, and one assertion on a run's span.

A worker's app module calls :func:`install` at import (the module is on the worker's path,
as the checkout is): every span any of its processes ends is appended to the file as a JSON
line by a synchronous processor, so a pool child or work-horse that exits with
``os._exit`` right after its task has written its spans already. A process killed with
SIGKILL never ends its open spans: they are never written, as they are never exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaperone_otel import semconv as sc
from tests.waiting import wait_until


def install(path: str) -> None:
    """Append every span ended in this process (and in its forks) to ``path``."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class SpanFile(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            lines = "".join(json.dumps(_row(s)) + "\n" for s in spans)
            with open(path, "a") as f:
                f.write(lines)
            return SpanExportResult.SUCCESS

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # before configure(): the SDK's own
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(SpanFile()))


def _row(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "status": span.status.status_code.name,
        "description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "links": [
            [format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")]
            for link in span.links
        ],
        "events": [
            {
                "name": e.name,
                "type": (e.attributes or {}).get("exception.type"),
                "message": (e.attributes or {}).get("exception.message"),
            }
            for e in span.events
        ],
    }


def read(path: Path) -> list[dict[str, Any]]:
    """The spans written to ``path`` so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def run_span(
    path: Path,
    job: Any,
    *,
    status: str = "UNSET",
    exception: str | None = None,
    parent: str | None = None,
    outcome: tuple[str, str | None] | None = None,
    timeout: float = 20,
) -> dict[str, Any]:
    """Wait for the span of ``job`` (a stored run: its span id) in ``path`` and assert what
    a run span says of its outcome; return it.

    - It is the run's: its name, trace and run id, attempt and status attributes are the
      stored row's.
    - ``status``: the OTel status code. ``UNSET`` for ``completed`` and ``retried`` (a
      retried attempt is handled by its framework: OTel's error conventions leave it
      unset, as the OTel Celery instrumentation leaves its own span), ``ERROR`` for
      ``failed`` and ``cancelled`` with a cause.
    - ``exception``: the ``exception.type`` of its one exception event (failures only), or
      None for no exception event.
    - ``outcome``: the span's (status, error type) attributes when they are not the stored
      row's (a run the worker's main process closed with the real reason, after its child
      ended the span with what it saw).
    - ``parent``: the name of its parent span (e.g. the OTel Celery instrumentation's
      ``run/<task>``, which is then in the same trace), or None for a root span.
    """

    def found() -> Any:
        spans = read(path)
        mine = [s for s in spans if s["span_id"] == job.span_id]
        return (mine[0], spans) if mine else None

    span, spans = wait_until(found, timeout, f"the span of {job.name} {job.id} in {path.name}")
    attrs = span["attributes"]
    assert span["name"] == job.name
    assert span["trace_id"] == job.trace_id
    assert attrs[sc.ATTR_JOB_RUN_ID] == job.id
    assert attrs[sc.ATTR_JOB_ATTEMPT] == job.attempt
    said = (attrs[sc.ATTR_JOB_STATUS], attrs.get(sc.ATTR_ERROR_TYPE))
    assert said == (outcome or (job.status, job.error_type)), span
    assert span["status"] == status, span
    types = [e["type"] for e in span["events"] if e["name"] == "exception"]
    assert types == ([exception] if exception else []), span
    if parent is None:
        assert span["parent_id"] is None, span
    else:
        parents = [s for s in spans if s["span_id"] == span["parent_id"]]
        assert [p["name"] for p in parents] == [parent], (span, parents)
        assert parents[0]["trace_id"] == span["trace_id"]
    return span


def no_span(path: Path, job: Any) -> None:
    """Assert that the run ``job`` has no span (its process died before ending it)."""
    assert not [s for s in read(path) if s["span_id"] == job.span_id]
