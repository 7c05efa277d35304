"""Test helpers and a pytest plugin for supervised jobs: no collector, no network.

The ``chaperone`` fixture (registered through the ``pytest11`` entry point) wires in-memory
OTel exporters, captures every lifecycle record, and hands you a :class:`Capture`. With
``chaperone_clock`` (a :class:`FakeClock`) the monitor thread stays off and you drive it
with ``capture.tick()``, so heartbeat ages and health transitions are deterministic; resource
samples are due by the fake clock too, and ``capture.set_resources()`` sets what they read
(limits, policies, memory gauges and peaks without allocating).

The seed's three tests of a job, in Python::

    def test_job_sends_heartbeats(chaperone):
        job = ProcessDataset()
        job.run()
        run = chaperone.run(job.supervision_id)
        assert run.heartbeats            # heartbeats were sent
        assert run.progress == 100       # progress reached 100 %
        assert run.completed             # the run completed

Inside the fixture, errors that chaperone-otel would swallow in production (a failing
exporter, hook or listener) are re-raised, so a broken telemetry path fails your test.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _setup as _setup_module
from . import semconv as sc
from ._events import LifecycleRecord
from ._events import add_listener as _add_listener
from ._events import remove_listener as _remove_listener
from ._fields import RUN_FIELDS as _RUN_FIELDS
from ._resources import ProcessSample as _ProcessSample
from ._resources import ProcessSampler as _ProcessSampler
from ._resources import read_thread_cpu as _read_thread_cpu
from ._safety import internal_error_counts as _internal_error_counts
from ._safety import reset_internal_errors as _reset_internal_errors
from ._safety import set_raise_internal_errors as _set_raise_internal_errors
from ._safety import take_background_errors as _take_background_errors
from ._schedule import declare as _declare_schedule
from ._schedule import declared as _declared_schedules
from ._units import parse_bytes as _parse_bytes


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, (int, float, str)) else 1


class FakeClock:
    """A settable Unix-seconds clock: ``configure(clock=FakeClock())``."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to ``now`` (Unix seconds)."""
        with self._lock:
            self._now = float(now)


class _FakeProcess:
    """The process as a capture with a :class:`FakeClock` samples it (``Runtime.sample_with``).

    A sample is due by the fake clock. What it reads is the real process until
    :meth:`Capture.set_resources` is first called, then only what that was given. CPU is
    kept as the seconds used so far, growing at the set percent per fake second: the
    monitor's rate over any window (a run's thread, or the process) is the percent, or its
    average across a change, by the monitor's own arithmetic.
    """

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._now = clock()
        self._real: _ProcessSampler | None = None
        self._faked = False
        self._rss: int | None = None
        self._fds: int | None = None
        self._cpu_percent = 0.0
        self._cpu_seconds = 0.0

    def _advance_locked(self) -> float:
        now = self._clock()
        if now > self._now:  # a monotonic clock never goes back; FakeClock.set() may
            self._cpu_seconds += self._cpu_percent / 100.0 * (now - self._now)
            self._now = now
        return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._advance_locked()

    def sample(self, now: float) -> _ProcessSample:
        with self._lock:
            if self._faked:
                self._advance_locked()
                return _ProcessSample(now, self._rss, self._fds, self._cpu_seconds)
            if self._real is None:
                self._real = _ProcessSampler()
            real = self._real
        return real.sample(now)

    def thread_cpu(self, clock: int | None) -> float | None:
        with self._lock:
            if self._faked:  # every thread's: each run reads the percent set
                self._advance_locked()
                return self._cpu_seconds
        return _read_thread_cpu(clock)

    def set(self, rss: int | None, cpu_percent: float | None, fds: int | None) -> None:
        with self._lock:
            self._advance_locked()  # the CPU used so far, at the percent set before
            self._faked = True
            if rss is not None:
                self._rss = rss
            if cpu_percent is not None:
                self._cpu_percent = cpu_percent
            if fds is not None:
                self._fds = fds


_PARTIAL: frozenset[str] = frozenset({sc.EVENT_JOB_CLOSED, sc.EVENT_JOB_PENDING})
"""Records that carry part of a run's state (the others carry all of it)."""

_ATTR: dict[str, str] = {f.name: f.attribute for f in _RUN_FIELDS if f.attribute is not None}
"""Run field → the record attribute holding it: what :class:`CapturedRun` reads."""


@dataclass
class CapturedRun:
    """Everything captured about one run, from its lifecycle records and its span."""

    id: str
    records: list[LifecycleRecord] = field(default_factory=list)
    span: Any = None

    @property
    def latest(self) -> Mapping[str, Any]:
        """The run's latest state: the latest full-state record's attributes, with what a
        later ``closed`` record says on top (another process's word on the outcome, which
        carries no name or progress), as the store merges them."""
        records = self.records
        full = next(
            (i for i in range(len(records) - 1, -1, -1) if records[i].event_name not in _PARTIAL),
            None,
        )
        if full == len(records) - 1:
            return records[-1].attributes
        merged: dict[str, Any] = {} if full is None else dict(records[full].attributes)
        for record in records[0 if full is None else full + 1 :]:
            merged.update(record.attributes)
        return merged

    def events(self, name: str) -> list[LifecycleRecord]:
        """Records with this event name (e.g. ``semconv.EVENT_JOB_VIOLATION``)."""
        return [r for r in self.records if r.event_name == name]

    @property
    def name(self) -> str:
        return str(self.latest.get(_ATTR["name"], ""))

    @property
    def status(self) -> str:
        return str(self.latest.get(_ATTR["status"], ""))

    @property
    def health(self) -> str:
        return str(self.latest.get(_ATTR["reported_health"], ""))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def finished_at(self) -> float | None:
        """Unix seconds the run finished (any outcome), None while it runs."""
        value = self.latest.get(_ATTR["finished_at"])
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def completed_at(self) -> float | None:
        """Unix seconds the run completed (the guide's ``completed_at``), else None."""
        return self.finished_at if self.completed else None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, None while it runs."""
        value = self.latest.get(_ATTR["duration"])
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def heartbeats(self) -> list[LifecycleRecord]:
        """Flushed heartbeat records in which the job's code beat (liveness excluded)."""
        return [
            r
            for r in self.events(sc.EVENT_JOB_HEARTBEAT)
            if r.attributes.get(sc.ATTR_HEARTBEAT_KIND) == "heartbeat"
        ]

    @property
    def liveness(self) -> list[LifecycleRecord]:
        """Records in which only the process vouched for the run (the job was silent)."""
        return [
            r
            for r in self.events(sc.EVENT_JOB_HEARTBEAT)
            if r.attributes.get(sc.ATTR_HEARTBEAT_KIND) == "liveness"
        ]

    @property
    def heartbeat_count(self) -> int:
        """Total ``heartbeat()`` calls, as the latest record says."""
        return int(self.latest.get(_ATTR["heartbeat_count"], 0))

    @property
    def progress(self) -> float:
        """Progress 0..100, as the latest record says."""
        return 100.0 * float(self.latest.get(_ATTR["progress"], 0.0))

    @property
    def metadata(self) -> dict[str, Any]:
        raw = self.latest.get(_ATTR["metadata"])
        return json.loads(raw) if isinstance(raw, str) else {}

    @property
    def violations(self) -> list[Mapping[str, Any]]:
        return [r.attributes for r in self.events(sc.EVENT_JOB_VIOLATION)]

    @property
    def error_type(self) -> str | None:
        value = self.latest.get(_ATTR["error_type"])
        return None if value is None else str(value)


class InternalErrorInBackground(Exception):
    """Raised at a capture's end (the fixture's teardown) when, with internal errors
    raised (``capture()``'s default), one was raised on one of chaperone-otel's own
    threads: a hook failing on the hooks thread, a monitor pass. There it could only end
    that thread; the test that caused it fails instead. Its cause is the first error."""


class Capture:
    """In-memory OTel pipelines plus every lifecycle record, for assertions."""

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        background: bool | None = None,
        **configure_options: Any,
    ) -> None:
        from opentelemetry.sdk._logs import LoggerProvider  # noqa: PLC0415
        from opentelemetry.sdk._logs.export import (  # noqa: PLC0415
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
            InMemorySpanExporter,
        )

        from .export._providers import no_record_limits, no_span_limits  # noqa: PLC0415

        self.clock = clock
        self.span_exporter = InMemorySpanExporter()
        # The limits of the providers configure() creates (none), not the SDK's defaults
        # read from the developer's environment: OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=32 cut
        # the captured run ids (a run's span was not found) and metadata JSON.
        self.tracer_provider = TracerProvider(span_limits=no_span_limits())
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.log_exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self.logger_provider = LoggerProvider(log_record_limits=no_record_limits())
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])
        self.records: list[LifecycleRecord] = []
        self._records_lock = threading.Lock()
        self._background = (clock is None) if background is None else background
        self._process = None if clock is None else _FakeProcess(clock)
        self._options = configure_options
        self._declared_before: tuple[Any, ...] = ()

    # listener protocol
    def on_record(self, record: LifecycleRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def start(self) -> Capture:
        """Configure chaperone-otel for the capture only. The ``CHAPERONE_OTEL_*``
        environment is not read and OTLP is off unless asked for here: a test suite run
        where the application's variables are set (``CHAPERONE_OTEL_SINK``, an OTLP
        endpoint) must not write its runs into that store or collector, or wait on it."""
        import inspect  # noqa: PLC0415

        from ._runtime import runtime  # noqa: PLC0415
        from ._setup import configure, configure_from  # noqa: PLC0415

        options = dict(self._options)
        if self.clock is not None:
            options["clock"] = self.clock
        # Explicit providers win (e.g. a deliberately broken one in a robustness test).
        options.setdefault("tracer_provider", self.tracer_provider)
        options.setdefault("meter_provider", self.meter_provider)
        options.setdefault("logger_provider", self.logger_provider)
        options.setdefault("otlp", False)
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            warnings.warn(
                "OTEL_SDK_DISABLED=true: the OTel SDK records nothing, so the capture has no "
                "spans or metrics; unset it for the tests",
                RuntimeWarning,
                stacklevel=2,
            )
        named = set(inspect.signature(configure).parameters) - {"hooks"}
        hooks = {k: v for k, v in options.items() if k not in named}
        # Listening first: configure() publishes the schedules declared before (at import)
        # again, and the capture sees them; stop() gives them back after its reset().
        self._declared_before = _declared_schedules()
        _reset_internal_errors()  # internal_errors() counts this capture's only
        _take_background_errors()  # and stop() raises this capture's only
        _add_listener(self)
        try:
            configure_from({k: v for k, v in options.items() if k in named}, hooks, environ={})
        except BaseException:
            _remove_listener(self)
            raise
        rt = runtime()
        rt.background = self._background
        if self._process is not None:  # sampling is due by the fake clock, too
            rt.sample_with(self._process)
        _setup_module.capturing = True
        return self

    def stop(self) -> None:
        from ._runtime import current_runtime  # noqa: PLC0415
        from ._setup import reset  # noqa: PLC0415

        _remove_listener(self)
        rt = current_runtime()
        left = self._left_running(rt.live_runs()) if rt is not None else []
        _setup_module.capturing = False
        reset()
        for spec in self._declared_before:  # the application's, declared at import
            _declare_schedule(spec)
        for provider in (self.tracer_provider, self.logger_provider, self.meter_provider):
            with contextlib.suppress(Exception):
                provider.shutdown()
        # Last: neither must skip the reset.
        errors = _take_background_errors()
        if errors:
            raise InternalErrorInBackground(
                f"{len(errors)} error(s) raised on chaperone-otel's own threads during the "
                f"capture (a hook on the hooks thread, a monitor pass); the first: "
                f"{type(errors[0]).__name__}: {errors[0]}"
            ) from errors[0]
        self._warn_left_running(left)

    def _left_running(self, live: Sequence[Any]) -> list[Any]:
        """The runs of ``live`` that this capture saw start (still running at its end).

        Such a run (its thread still working, its generator never finished) outlives the
        capture: its later records, its finish included, go to whatever captures next, and
        appear there as a run of another test; :meth:`stop` warns about them."""
        with self._records_lock:
            seen = {
                r.attributes.get(sc.ATTR_JOB_RUN_ID)
                for r in self.records
                if r.event_name == sc.EVENT_JOB_STARTED
            }
        return [run for run in live if run.id in seen]

    @staticmethod
    def _warn_left_running(left: Sequence[Any]) -> None:
        if left:
            names = ", ".join(f"{run.name} ({run.id})" for run in left[:5])
            more = f" and {len(left) - 5} more" if len(left) > 5 else ""
            warnings.warn(
                f"{len(left)} run(s) still running at the end of the capture: {names}{more}; "
                "their later records go to the next capture. End them in the test "
                "(join the thread that runs them, exhaust or close their generator)",
                RuntimeWarning,
                stacklevel=3,
            )

    def tick(self, times: int = 1) -> None:
        """Run the monitor ``times`` times in this thread (flush, sample, judge, hooks)."""
        from ._runtime import runtime  # noqa: PLC0415

        for _ in range(times):
            runtime().tick()

    def advance(self, seconds: float) -> None:
        """Advance the fake clock, then tick once."""
        if self.clock is None:
            raise RuntimeError("advance() needs Capture(clock=FakeClock())")
        self.clock.advance(seconds)
        self.tick()

    def set_resources(
        self,
        *,
        memory: int | str | None = None,
        cpu_percent: float | None = None,
        fds: int | None = None,
    ) -> None:
        """Set what the process reads at the monitor's next samples (needs a FakeClock).

        With a :class:`FakeClock`, a sample is due by the fake clock: the first pass with a
        run live takes one, then a pass once ``sample_interval`` (1 s by default) of fake
        time has gone by since the last. A run is judged only on samples taken after it
        started, so its first reading comes at the first sample after its start, as in
        production. Until this is first called the samples read the real process; from
        then on, only what was set here: memory and fds not set read as unmeasured, CPU as
        0 %. A value not given keeps the one set before::

            def test_cancelled_over_memory(chaperone, chaperone_clock):
                chaperone.set_resources(memory="900MiB")
                with pytest.raises(JobLimitExceeded):
                    with supervised("etl", memory_limit="512MiB", on_limit="cancel") as job:
                        chaperone.advance(1)  # a sample: 900 MiB > 512 MiB
                        job.heartbeat()       # raises here

        Args:
            memory: the process's RSS, in bytes or a size such as ``"900MiB"`` (a run's
                memory gauge; its peak is the largest sampled).
            cpu_percent: CPU use in percent of one core, from now on, of every run's
                thread and of the process (a reading is the average over its window).
            fds: open file descriptors.

        Raises:
            RuntimeError: the capture has no FakeClock.
            ValueError: a value is negative or not a number (``ConfigurationError`` for a
                size that is not one).

        .. versionadded:: 0.2
        """
        if self._process is None:
            raise RuntimeError("set_resources() needs capture(clock=FakeClock())")
        rss = None if memory is None else _parse_bytes(memory, what="memory")
        if cpu_percent is not None and not (
            isinstance(cpu_percent, (int, float))
            and not isinstance(cpu_percent, bool)
            and math.isfinite(cpu_percent)
            and cpu_percent >= 0
        ):
            raise ValueError(f"set_resources(cpu_percent={cpu_percent!r}): a percent >= 0")
        if fds is not None and not (
            isinstance(fds, int) and not isinstance(fds, bool) and fds >= 0
        ):
            raise ValueError(f"set_resources(fds={fds!r}): a number of descriptors >= 0")
        self._process.set(rss, None if cpu_percent is None else float(cpu_percent), fds)

    # ---- queries ------------------------------------------------------------------------

    def runs(self) -> list[CapturedRun]:
        """Captured runs in start order."""
        by_id: dict[tuple[str, int], CapturedRun] = {}
        with self._records_lock:
            records = list(self.records)
        for record in records:
            if sc.ATTR_JOB_RUN_ID not in record.attributes:  # a schedule's record, no run
                continue
            key = (
                str(record.attributes.get(sc.ATTR_JOB_RUN_ID)),
                _as_int(record.attributes.get(sc.ATTR_JOB_ATTEMPT, 1)),
            )
            by_id.setdefault(key, CapturedRun(key[0])).records.append(record)
        spans = {
            (
                str(s.attributes.get(sc.ATTR_JOB_RUN_ID)),
                _as_int(s.attributes.get(sc.ATTR_JOB_ATTEMPT, 1)),
            ): s
            for s in self.span_exporter.get_finished_spans()
            if s.attributes and sc.ATTR_JOB_RUN_ID in s.attributes
        }
        for key, run in by_id.items():
            run.span = spans.get(key)
        return list(by_id.values())

    def run(self, run_id: str) -> CapturedRun:
        """The latest attempt of run ``run_id``. Raises KeyError if none was captured."""
        matches = [r for r in self.runs() if r.id == run_id]
        if not matches:
            raise KeyError(f"no captured run {run_id!r}; captured: {[r.id for r in self.runs()]}")
        return matches[-1]

    def last_run(self, name: str | None = None) -> CapturedRun:
        """The most recently started run (of job ``name`` if given)."""
        captured = self.runs()
        runs = [r for r in captured if name is None or r.name == name]
        if not runs:
            names = sorted({r.name for r in captured})
            raise LookupError(
                f"no captured run{' named ' + repr(name) if name else ''}; captured: {names}"
            )
        return runs[-1]

    def spans(self) -> list[Any]:
        """Finished spans (``ReadableSpan``)."""
        return list(self.span_exporter.get_finished_spans())

    def log_records(self) -> list[Any]:
        """Exported OTel log records (``ReadableLogRecord``)."""
        return list(self.log_exporter.get_finished_logs())

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Collected metric points: ``{name: [(attributes, value), ...]}``."""
        from ._runtime import current_runtime  # noqa: PLC0415

        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        rt = current_runtime()
        if rt is not None:
            rt.flush_metrics()  # durations are recorded on the monitor thread
        data = self.metric_reader.get_metrics_data()
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = getattr(point, "sum", None), getattr(point, "count", None)
                        points.append((dict(point.attributes or {}), value))
        return out

    @staticmethod
    def internal_errors() -> dict[str, int]:
        """Internal errors swallowed since the capture started, by place."""
        return _internal_error_counts()

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def capture(
    *,
    clock: FakeClock | None = None,
    background: bool | None = None,
    raise_internal_errors: bool = True,
    **configure_options: Any,
) -> Iterator[Capture]:
    """Context manager form of the ``chaperone`` fixture."""
    old = _set_raise_internal_errors(raise_internal_errors)
    try:
        with Capture(clock=clock, background=background, **configure_options) as cap:
            yield cap
    finally:
        _set_raise_internal_errors(old)


# --------------------------------------------------------------------------------------------
# pytest plugin (pytest11 entry point "chaperone_otel").
# --------------------------------------------------------------------------------------------

try:  # the plugin part only when pytest is importable; the helpers work without it
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def chaperone_clock() -> FakeClock:
        """A fake clock; with it, the ``chaperone`` fixture turns the monitor thread off."""
        return FakeClock()

    @pytest.fixture
    def chaperone(request: pytest.FixtureRequest) -> Iterator[Capture]:
        """A :class:`Capture` active for the test (uses ``chaperone_clock`` if requested)."""
        clock = (
            request.getfixturevalue("chaperone_clock")
            if "chaperone_clock" in request.fixturenames
            else None
        )
        with capture(clock=clock) as cap:
            yield cap


__all__ = [
    "Capture",
    "CapturedRun",
    "FakeClock",
    "InternalErrorInBackground",
    "LifecycleRecord",
    "capture",
]
