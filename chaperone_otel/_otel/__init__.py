"""The OTel writer: every span, span event, log record and metric the runtime writes.

The runtime produces lifecycle records and run state; this package is the one place that
turns them into OTel API calls (DESIGN §3: the OTel writer is a listener beside the sink
listener and test captures, all fed the same records). It is split by signal:

* :mod:`._spans` — the run span: started synchronously at the run's start (its context
  must be current in the job's code), span events from the monitor's records, end
  attributes, status and exception, and the end itself whatever else failed;
* :mod:`._logs` — lifecycle records as OTel log records with an event name (the live
  channel);
* :mod:`._metrics` — counters, the duration histogram and the live-run gauges.

:class:`OTelWriter` is what the runtime holds and registers as a record listener. Its
interface is the runtime's whole contract with OTel: :meth:`~OTelWriter.start` (returns the
span for the run to carry, opaque), :meth:`~OTelWriter.on_event` (a monitor event: span
event and counts), :meth:`~OTelWriter.on_record` (a lifecycle record: log record),
:meth:`~OTelWriter.heartbeats_missed`, :meth:`~OTelWriter.finish`, and
:meth:`~OTelWriter.warning` (a log line about a run, in the run's span context).

Only ``opentelemetry-api`` is used (the SDK, when installed, implements it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

from .. import semconv as sc
from .._events import AttributeValue, LifecycleRecord
from .._safety import internal_error
from ._logs import LogWriter
from ._metrics import LiveRuns, RunCounters, instruments_for, reset_instruments
from ._spans import SpanWriter, Started

if TYPE_CHECKING:
    from .._config import Config
    from .._run import Run

_logger = logging.getLogger("chaperone_otel")


class OTelWriter:
    """Writes runs to OTel: spans, span events, log records and metrics.

    A record listener (``on_record``, ``wants``: the log writer's) for the lifecycle
    records, plus the calls the runtime makes directly: a run's span must exist before its
    started record (so the record can name it) and must end even when no record was
    built; a monitor event goes to the span and the counters even when no listener wants
    its full record; missed heartbeats are counted without a record of their own.
    """

    def __init__(self, config: Config, live_runs: LiveRuns) -> None:
        self.spans = SpanWriter(config.tracer_provider)
        self.logs = LogWriter(config.logger_provider)
        self.instruments = instruments_for(
            config.meter_provider,
            live_runs,
            config.long_run_threshold,
            config.clock,
            before_collect=self._drain,
        )
        self.counters = RunCounters(self.instruments)
        # The record-listener part is the log writer's own: bound here, not wrapped, so a
        # record costs no extra call (receivers() asks wants() twice per run).
        self.wants: Callable[[str], bool] = self.logs.wants
        self.on_record: Callable[[LifecycleRecord], None] = self.logs.on_record

    def _drain(self) -> None:
        self.counters.drain()

    def adopt(self, old: OTelWriter) -> None:
        """Take over ``old``'s queue of uncounted run starts, ends and heartbeats
        (``configure()`` replaced the runtime while runs were alive: their ends are
        counted here)."""
        self.counters.ledger = old.counters.ledger

    # ---- the runtime's calls -------------------------------------------------------------

    def start(self, run: Run, tracer_provider: Any = None, links: tuple[Any, ...] = ()) -> Started:
        """Count ``run``'s start and start its span (job thread); see
        :meth:`SpanWriter.start`. The count is queued first: a span that fails to start
        must not make the run uncounted."""
        self.counters.started(run.name, run.queue)
        return self.spans.start(run, tracer_provider, links)

    def finish(self, run: Run, exc: BaseException | None, now: float) -> None:
        """End ``run``'s span with its outcome and count its end (job thread). Never raises
        (each part guarded; the count is queued whatever the span did)."""
        try:
            self.spans.finish(run, exc, now)
        finally:
            self.counters.finished(
                run.name,
                run.queue,
                run.status,
                run.error_type or "",
                max(0.0, (run.finished_at or run.started_at) - run.started_at),
            )

    def heartbeats_missed(self, run: Run, count: int) -> None:
        """Count ``count`` more missed heartbeats of ``run`` (monitor thread)."""
        self.instruments.heartbeats_missed.add(
            count, {sc.ATTR_JOB_NAME: run.name, sc.ATTR_JOB_QUEUE: run.queue}
        )

    @staticmethod
    def warning(run: Run, msg: str, *args: object) -> None:
        """Log a WARNING about ``run`` (``msg % args``) to the ``chaperone_otel`` logger, in
        the run's span context (on any thread).

        An application that bridges Python logging to OTel (the SDK's ``LoggingHandler``,
        opentelemetry-instrumentation-logging's ``otelTraceID``) reads the trace and span
        ids from the current context when a line is logged: the monitor thread's has none,
        and a finishing job's thread has left the run's (it has its caller's). The line
        names the caller of this method as where it was logged. A logging filter or handler
        that raises is an internal error, never the run's (it is called at a run's start)."""
        ctx = run.otel_context
        token = None if ctx is None else otel_context.attach(ctx)
        try:
            _logger.warning(msg, *args, stacklevel=2)
        except Exception as exc:
            internal_error("log.warning", exc)
        finally:
            if token is not None:
                otel_context.detach(token)

    def flush_metrics(self) -> None:
        """Count queued run starts and ends and record their durations now."""
        self.counters.drain()

    def on_event(
        self, run: Run, event_name: str, event: Mapping[str, AttributeValue], now: float
    ) -> None:
        """Write a monitor event of ``run`` (heartbeat, progress, violation, health) to the
        span and the counters, with ``event``, the event's own attribute set — the same
        set its lifecycle record carries to the log writer (:meth:`on_record`).

        Called for every event, whether or not a full record is built for it: a span event
        and a count need no full-state record, and building one costs more than both.
        """
        if event_name == sc.EVENT_JOB_HEARTBEAT:
            calls = event.get(sc.ATTR_HEARTBEAT_CALLS)
            if event.get(sc.ATTR_HEARTBEAT_KIND) != "heartbeat":
                return  # a liveness beat: the job did nothing to put on its span or count
            if isinstance(calls, int) and calls > 0:
                self.counters.heartbeats(run.name, run.queue, calls)
        elif event_name == sc.EVENT_JOB_VIOLATION:
            self.instruments.violations.add(
                1,
                {
                    sc.ATTR_JOB_NAME: run.name,
                    sc.ATTR_JOB_QUEUE: run.queue,
                    sc.ATTR_LIMIT_TYPE: str(event[sc.ATTR_LIMIT_TYPE]),
                },
            )
        self.spans.event(run, event_name, event, now)

    def close(self) -> None:
        """The runtime closed: stop counting its internal errors until the next writer."""
        self.instruments.unbind()

    def after_fork(self) -> None:
        """Fresh locks and an empty queue in a forked child."""
        self.instruments.after_fork()
        self.counters.after_fork()


__all__ = ["OTelWriter", "reset_instruments"]
