"""The span writer: a run's span — start, span events, end attributes, status, exception, end.

The run span is the post-hoc record for tracing backends (DESIGN §2). It is started
synchronously at the run's start (:meth:`SpanWriter.start` returns it with its context, which
the lifecycle makes current while the job's code runs, so user spans nest under it); the
monitor's events become its span events, with the event's one attribute set (the one its
lifecycle record also carries, ``LifecycleRecord.event_attributes``); and
:meth:`SpanWriter.finish` ends it with the outcome — in a ``finally``, so the span ends
whatever else failed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import semconv as sc
from .._events import AttributeValue
from .._safety import internal_error
from .._version import __version__
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._run import Run

Started = tuple[Any, Any, int, int]
"""(span, the OTel context holding it, trace id, span id), as :meth:`SpanWriter.start` gives."""


class SpanWriter:
    """Starts, annotates and ends run spans on a tracer provider."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self._provider = tracer_provider
        self._tracers: dict[int, tuple[Any, Any]] = {}

    def _tracer(self, provider: Any) -> Any:
        """The provider's tracer for our scope, cached (the SDK builds a new one per call)."""
        cached = self._tracers.get(id(provider))
        if cached is not None and cached[0] is provider:
            return cached[1]
        tracer = provider.get_tracer(sc.INSTRUMENTATION_SCOPE, __version__)
        if len(self._tracers) > 64:  # providers come and go in test suites; never grow
            self._tracers.clear()
        self._tracers[id(provider)] = (provider, tracer)
        return tracer

    def start(self, run: Run, tracer_provider: Any = None, links: tuple[Any, ...] = ()) -> Started:
        """Start ``run``'s span (job thread; may raise: the lifecycle guards it).

        ``tracer_provider`` is the run's own (``supervised(tracer_provider=...)``); else the
        configured one, else the global one, looked up per run (it may be set later).
        ``links``: W3C ``traceparent`` strings, ``SpanContext``s or ``Link``s the span links
        to (an earlier attempt's span); a string that is not a valid ``traceparent`` is
        skipped.
        """
        provider = tracer_provider or self._provider or trace.get_tracer_provider()
        start_attrs: dict[str, AttributeValue] = {
            sc.ATTR_JOB_NAME: run.name,
            sc.ATTR_JOB_QUEUE: run.queue,
            sc.ATTR_JOB_RUN_ID: run.id,
            sc.ATTR_JOB_ATTEMPT: run.attempt,
            sc.ATTR_JOB_EXECUTION_ID: run.execution_id,
            sc.ATTR_HEARTBEAT_INTERVAL: run.heartbeat_interval,
        }
        tail = run.static.tail
        if tail:
            if run.timeout_at is not None:
                start_attrs[sc.ATTR_JOB_TIMEOUT] = tail[sc.ATTR_JOB_TIMEOUT]
                start_attrs[sc.ATTR_LIMIT_POLICY] = run.on_limit
                start_attrs[sc.ATTR_JOB_TIMEOUT_AT] = run.timeout_at
            start_attrs.update(tail)
        span = self._tracer(provider).start_span(
            run.name,
            kind=SpanKind.INTERNAL,
            attributes=start_attrs,
            start_time=int(run.started_at * 1e9),
            links=to_links(links) if links else None,
        )
        ctx = span.get_span_context()
        return span, trace.set_span_in_context(span), ctx.trace_id, ctx.span_id

    @staticmethod
    def event(run: Run, event_name: str, event: Mapping[str, AttributeValue], now: float) -> None:
        """Add a monitor event to ``run``'s span, with the event's attribute set (monitor
        thread, or the job's at the run's final flush)."""
        span = run.span
        if span is not None and span.is_recording():
            span.add_event(event_name, event, int(now * 1e9))

    @staticmethod
    def finish(run: Run, exc: BaseException | None, now: float) -> None:
        """Write the outcome on ``run``'s span and end it (job thread). Never raises."""
        span = run.span
        if span is None:
            return
        try:
            if span.is_recording():
                # One set_attributes call (the SDK validates per call), and only what the
                # span's own fields (start, end, status) do not already say.
                handle = run.handle
                end_attrs: dict[str, AttributeValue] = {
                    sc.ATTR_JOB_STATUS: run.status,
                    sc.ATTR_JOB_HEALTH: run.health,
                    sc.ATTR_HEARTBEAT_COUNT: handle.heartbeat_count,
                    sc.ATTR_PROGRESS_RATIO: handle.progress_ratio,
                }
                if run.violations:
                    end_attrs[sc.ATTR_VIOLATION_COUNT] = len(run.violations)
                if run.memory_peak is not None:
                    end_attrs[sc.ATTR_MEMORY_PEAK] = run.memory_peak
                if run.error_type is not None:
                    end_attrs[sc.ATTR_ERROR_TYPE] = run.error_type
                span.set_attributes(end_attrs)
                if exc is not None and run.status == "failed":
                    # The status first, from the run's own (safe) text: record_exception()
                    # calls str(exc), which may raise, and the span was left UNSET so.
                    span.set_status(
                        Status(StatusCode.ERROR, f"{run.error_type}: {run.error_message}")
                    )
                    span.record_exception(exc)
                elif run.status == "cancelled" and run.error_type is not None:
                    span.set_status(Status(StatusCode.ERROR, f"cancelled: {run.error_message}"))
        except Exception as error:
            internal_error("run.finish", error)
        finally:
            try:
                span.end(end_time=int(now * 1e9))
            except Exception as error:
                internal_error("run.span_end", error)


_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""W3C Trace Context's ``traceparent``, version 00 (lower-case hex, as the spec writes it)."""


LinkTarget = str | trace.SpanContext | trace.Link
"""What a run's span can link to (``start_run(links=...)``)."""


def check_links(links: object) -> tuple[LinkTarget, ...]:
    """``start_run(links=...)`` checked: a sequence (list, tuple, …) of traceparent
    strings, span contexts or links. A bare string is refused (it would be read letter by
    letter), and so is a bare ``SpanContext`` (a tuple of its ids).

    Raises:
        ConfigurationError: anything else.
    """
    if (
        not isinstance(links, Sequence)
        or isinstance(links, (str, bytes, bytearray, trace.SpanContext))
        or not all(isinstance(link, (str, trace.SpanContext, trace.Link)) for link in links)
    ):
        raise ConfigurationError(
            f"links={links!r}: expected a list of W3C traceparent strings, OTel SpanContexts "
            "or Links, e.g. links=[previous.traceparent]"
        )
    return tuple(links)


def to_links(links: tuple[Any, ...]) -> list[trace.Link]:
    """``links`` as OTel span links: a ``Link`` as it is, a ``SpanContext`` linked, a
    ``traceparent`` string parsed (skipped when it is not one, or names the invalid all-zero
    trace or span: it comes from a framework's stored job data, and a bad one must not cost
    the run its span)."""
    out: list[trace.Link] = []
    for link in links:
        if isinstance(link, trace.Link):
            out.append(link)
        elif isinstance(link, trace.SpanContext):
            out.append(trace.Link(link))
        else:
            match = _TRACEPARENT.fullmatch(link.strip())
            if match is None:
                continue
            trace_id, span_id = int(match[1], 16), int(match[2], 16)
            if trace_id and span_id:
                context = trace.SpanContext(
                    trace_id,
                    span_id,
                    is_remote=True,
                    trace_flags=trace.TraceFlags(int(match[3], 16)),
                )
                out.append(trace.Link(context))
    return out


def traceparent(span: Any) -> str | None:
    """``span``'s W3C ``traceparent`` (what a later attempt links to), or None when it has no
    valid context (no span was started, an invalid one)."""
    if span is None:
        return None
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
