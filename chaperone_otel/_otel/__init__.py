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
span for the run to carry, opaque), :meth:`~OTelWriter.on_record`,
:meth:`~OTelWriter.heartbeats_missed` and :meth:`~OTelWriter.finish`.

Only ``opentelemetry-api`` is used (the SDK, when installed, implements it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import semconv as sc
from .._events import LifecycleRecord
from ._logs import LogWriter
from ._metrics import LiveRuns, RunCounters, instruments_for, reset_instruments
from ._spans import SPAN_EVENTS, SpanWriter, Started

if TYPE_CHECKING:
    from .._config import Config
    from .._run import Run


class OTelWriter:
    """Writes runs to OTel: spans, span events, log records and metrics.

    A record listener (``on_record``, ``wants``) for the lifecycle records, plus the three
    calls the runtime makes directly: a run's span must exist before its started record
    (so the record can name it), must end even when no record was built, and missed
    heartbeats are counted without a record of their own.
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

    def _drain(self) -> None:
        self.counters.drain()

    def adopt(self, old: OTelWriter) -> None:
        """Take over ``old``'s queue of uncounted run starts and ends (``configure()``
        replaced the runtime while runs were alive: their ends are counted here)."""
        self.counters.ledger = old.counters.ledger

    # ---- the runtime's calls -------------------------------------------------------------

    def start(self, run: Run, tracer_provider: Any = None) -> Started:
        """Count ``run``'s start and start its span (job thread); see
        :meth:`SpanWriter.start`. The count is queued first: a span that fails to start
        must not make the run uncounted."""
        self.counters.started(run.name, run.queue)
        return self.spans.start(run, tracer_provider)

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

    def flush_metrics(self) -> None:
        """Count queued run starts and ends and record their durations now."""
        self.counters.drain()

    # ---- record listener -----------------------------------------------------------------

    def wants(self, event_name: str) -> bool:
        """Every monitor record (span events and counters need them); a started or
        finished record when the logger would keep it."""
        return event_name in SPAN_EVENTS or self.logs.wants(event_name)

    def on_record(self, record: LifecycleRecord) -> None:
        """Write ``record``: its span event, its counts, its log record."""
        name = record.event_name
        if name in SPAN_EVENTS:
            self.spans.event(record)
            self._count(record)
            if not self.logs.wants(name):
                return
        self.logs.on_record(record)

    def _count(self, record: LifecycleRecord) -> None:
        event = record.event_attributes
        if event is None:
            return
        attrs = record.attributes
        if record.event_name == sc.EVENT_JOB_HEARTBEAT:
            calls = event.get(sc.ATTR_HEARTBEAT_CALLS)
            if isinstance(calls, int) and calls > 0:
                self.instruments.heartbeats.add(
                    calls,
                    {
                        sc.ATTR_JOB_NAME: str(attrs[sc.ATTR_JOB_NAME]),
                        sc.ATTR_JOB_QUEUE: str(attrs[sc.ATTR_JOB_QUEUE]),
                    },
                )
        elif record.event_name == sc.EVENT_JOB_VIOLATION:
            self.instruments.violations.add(
                1,
                {
                    sc.ATTR_JOB_NAME: str(attrs[sc.ATTR_JOB_NAME]),
                    sc.ATTR_JOB_QUEUE: str(attrs[sc.ATTR_JOB_QUEUE]),
                    sc.ATTR_LIMIT_TYPE: str(event[sc.ATTR_LIMIT_TYPE]),
                },
            )

    def close(self) -> None:
        """The runtime closed: stop counting its internal errors until the next writer."""
        self.instruments.unbind()

    def after_fork(self) -> None:
        """Fresh locks and an empty queue in a forked child."""
        self.instruments.after_fork()
        self.counters.after_fork()


__all__ = ["OTelWriter", "reset_instruments"]
