"""``configure()``, ``shutdown()`` and ``reset()``: the process-wide entry points.

``configure()`` validates every option first (misuse raises before anything changes), then
installs the configuration, restarts the runtime with it, and — only when the options ask
for exporters (OTLP, console, Prometheus, sink) — imports the ``export`` layer to wire the
OTel SDK. A library that only decorates jobs never needs to call it: runs then use the
application's global OTel providers (or the API's no-ops).

This module sits above the runtime and reaches the ``export`` layer only through a lazy
import inside ``configure()``, so ``import chaperone_otel`` stays SDK-free.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ._config import Config, Hooks, build_config, get_config, set_config
from ._health import HealthPolicy
from ._lifecycle import finish_run, forget_attempts
from ._otel import reset_instruments
from ._otel._providers import check_providers
from ._process import set_finish_flush
from ._runtime import close_runtime, current_runtime, replace_runtime
from ._safety import handle_internal_errors, reset_internal_errors
from ._schedule import forget_all as forget_schedules
from ._schedule import redeclare_all

logger = logging.getLogger("chaperone_otel")

_lock = threading.Lock()
_setup: Any = None
_atexit_registered = False
capturing = False
"""True while a ``testing.Capture`` is active (it configures through :func:`configure_from`):
a ``configure()`` then replaces it, which a test rarely means."""


_FORK_WAIT = 5.0
"""Seconds a fork waits for a ``configure()``/``shutdown()`` running on another thread."""
_held_for_fork = False


def _wait_for_configure_before_fork() -> None:
    # A configure() on another thread imports the SDK and the exporters under this lock. A
    # fork in the middle gives the child those modules' import locks, held by a thread that
    # does not exist there: its own configure() (Celery's worker_process_init) then hangs
    # for ever on the first of those imports (CPython re-creates only the global import
    # lock after fork). So a fork waits, bounded, for configure() to finish, as the OTel
    # SDK's processors and logging take their locks around fork.
    global _held_for_fork
    _held_for_fork = _lock.acquire(timeout=_FORK_WAIT)


def _release_after_fork_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork:
        _held_for_fork = False
        _lock.release()


def _new_lock_after_fork() -> None:
    # A new lock, whatever the fork found: if the wait above timed out, the parent's
    # configure() still holds its copy, and the child's own configure() must not wait on it.
    global _lock, _held_for_fork
    _lock = threading.Lock()
    _held_for_fork = False


os.register_at_fork(
    before=_wait_for_configure_before_fork,
    after_in_parent=_release_after_fork_in_parent,
    after_in_child=_new_lock_after_fork,
)


def _needs_export(config: Config) -> bool:
    from os import environ  # noqa: PLC0415

    return bool(
        config.sink
        or config.console
        or config.prometheus_port is not None
        or config.otlp
        or config.otlp_endpoint
        or (
            config.otlp is None
            and any(
                environ.get(f"OTEL_EXPORTER_OTLP_{signal}ENDPOINT")
                for signal in ("", "TRACES_", "LOGS_", "METRICS_")  # export.otlp_signals
            )
        )
    )


def configure(
    *,
    service_name: str | None = None,
    sink: str | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
    otlp: bool | None = None,
    otlp_endpoint: str | None = None,
    console: bool | None = None,
    heartbeat_interval: Any = None,
    flush_period: Any = None,
    sample_interval: Any = None,
    on_limit: str | None = None,
    long_run_threshold: Any = None,
    health: HealthPolicy | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    logger_provider: Any = None,
    clock: Callable[[], float] | None = None,
    **hooks: Callable[..., object],
) -> Any:
    """Configure chaperone-otel for this process.

    Each call starts from the defaults and the ``CHAPERONE_OTEL_*`` environment, then applies
    its arguments; a second call replaces the first (flushing and removing what the first
    installed). Live runs carry on under the new configuration.

    Args:
        service_name: ``service.name`` (else ``OTEL_SERVICE_NAME``).
        sink: path of a DuckDB file to record every run in, while it runs (embedded sink).
        prometheus_port: serve ``/metrics`` on this port (0 picks a free one).
        prometheus_host: address for ``/metrics`` (default 127.0.0.1).
        otlp: export traces, logs and metrics over OTLP/HTTP (default: when an endpoint is set).
        otlp_endpoint: base URL, e.g. ``http://127.0.0.1:4318`` (else ``OTEL_EXPORTER_OTLP_*``).
        console: print spans and lifecycle logs to stdout (debugging).
        heartbeat_interval: default lease of runs (60 s).
        flush_period: records per run at most this often (default min(interval/4, 15 s);
            at most half of each run's heartbeat interval).
        sample_interval: resource sampling period (1 s).
        on_limit: default limit policy (``record``, ``warn``, ``cancel``).
        long_run_threshold: runs older than this get their run id as a metric label (120 s;
            keep it below 3 leases, so a stuck run is named before its alert fires).
        health: thresholds of the health rules.
        tracer_provider, meter_provider, logger_provider: use these instead of the globals.
        clock: Unix-seconds clock (tests).
        **hooks: global ``on_stuck=`` … hooks, run before each run's own hooks.

    Returns:
        The export setup (``.prometheus_url``, ``.sink``, providers), or None when no
        exporter was asked for.

    Raises:
        ConfigurationError: an option or environment variable is invalid.

    .. versionadded:: 0.1
    """
    options: dict[str, Any] = {
        "service_name": service_name,
        "sink": sink,
        "prometheus_port": prometheus_port,
        "prometheus_host": prometheus_host,
        "otlp": otlp,
        "otlp_endpoint": otlp_endpoint,
        "console": console,
        "heartbeat_interval": heartbeat_interval,
        "flush_period": flush_period,
        "sample_interval": sample_interval,
        "on_limit": on_limit,
        "long_run_threshold": long_run_threshold,
        "health": health,
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "logger_provider": logger_provider,
        "clock": clock,
    }
    if capturing:
        warnings.warn(
            "configure() inside a testing capture replaces it (its providers, clock and "
            "listener): pass the options to capture(...) instead",
            RuntimeWarning,
            stacklevel=2,
        )
    return configure_from(options, hooks, warn_moved=True)


def _destinations(config: Config) -> tuple[Any, ...]:
    """Where a configuration sends a run's records: two configurations that differ here
    send a run's later records somewhere its earlier ones did not go."""
    return (
        config.sink,
        config.otlp,
        config.otlp_endpoint,
        config.console,
        config.tracer_provider,
        config.logger_provider,
    )


def configure_from(
    options: dict[str, Any],
    hooks: Mapping[str, Callable[..., object]],
    environ: Mapping[str, str] | None = None,
    *,
    warn_moved: bool = False,
) -> Any:
    """:func:`configure` with its options in a dict and the environment given: ``{}`` is
    what ``testing.capture()`` passes, so a test suite never writes to the store or
    ``/metrics`` port that the environment names for the application.

    Runs live at the call go on under the new configuration. Their pending heartbeats and
    progress are published to the old one first, so what it keeps is their latest state;
    when the records' destinations change, ``warn_moved`` (``configure()``) says which runs
    moved: the old store or backend sees them no more, and will call them *lost*.
    """
    global _setup, _atexit_registered
    if hooks:
        options["hooks"] = Hooks.from_kwargs(hooks)
    config = build_config(options, environ)
    with _lock:
        rt = current_runtime()
        live = [r for r in rt.live_runs() if r.finished_at is None] if rt is not None else []
        if rt is not None and live:
            with handle_internal_errors("configure.live_runs"):
                rt.flush_pending(1.0)  # their latest state, to where it went so far
        before = _destinations(get_config())
        _teardown_locked()
        set_config(config)
        replace_runtime(config)
        if _needs_export(config):
            from .export import setup  # noqa: PLC0415 - the SDK loads only when asked for

            _setup = setup(config)
        check_providers(config)  # after setup: the providers it created are not the app's
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
        configured = _setup
    redeclare_all()  # the schedules declared before: to the new listeners (the store)
    if warn_moved and live and _destinations(config) != before:
        names = sorted({run.name for run in live})
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.warn(
            f"configure() changed where records go while {len(live)} run(s) were running "
            f"({shown}): their later records, their end included, go to the new "
            "configuration; the store or backend of the old one keeps their last state and "
            "will call them lost. Call configure() once, before runs start",
            RuntimeWarning,
            stacklevel=3,
        )
    return configured


def _teardown_locked() -> None:
    global _setup
    if _setup is not None:
        from .export import teardown  # noqa: PLC0415

        teardown(_setup)
        _setup = None


EXIT_MESSAGE = "the process exited while the run was running"


def _at_exit() -> None:
    """At interpreter exit: the runs still live in this process (in a daemon thread, a
    generator never finished, a ``start()`` never finished) end ``cancelled``, then
    :func:`shutdown`. Left alone, their ``finished`` record came (if at all) after the
    exporters and the store had closed: ``running`` in the store for ever, then lost, a
    false alert for every process that exits with such a run."""
    rt = current_runtime()
    for run in rt.live_runs() if rt is not None else ():
        if not run.inherited:  # a forked parent's run is the parent's to end
            with handle_internal_errors("exit.live_runs"):
                finish_run(run, SystemExit(EXIT_MESSAGE), status="cancelled")
    shutdown()


def shutdown() -> None:
    """Flush everything and stop the monitor thread and exporters. Safe to call twice.

    Registered with :mod:`atexit` by ``configure()``; call it yourself at the end of a
    worker (Celery ``worker_process_shutdown``) to flush before the process exits.
    """
    with _lock, handle_internal_errors("shutdown"):
        close_runtime()
        _teardown_locked()


WORKER_FLUSH_TIMEOUT = 2.0
"""Seconds a ``multiprocessing`` worker waits for a finished run's records to be sent
before its task returns (see ``_process.flush_if_worker``)."""


def flush(timeout: float = 5.0) -> bool:
    """Send every record this process has pending, now, and wait for it (bounded).

    In order: the monitor's pending heartbeats and progress of live runs and the queued run
    counts; the span and log batch processors and the metric readers that ``configure()``
    installed (their exporters send); the embedded sink's writer (committed to DuckDB). Call
    it where a process may end without ``atexit`` or ``shutdown()``: before ``os._exit``, at
    the end of a task in a worker that is killed or recycled. ``multiprocessing`` pool
    workers do not need it: a run that finishes in one is flushed for you.

    Processors of your own (on providers you created) are not flushed: call their
    ``force_flush()``. In a forked child, what is inherited from the parent (its embedded
    sink) is not the child's to flush and counts as flushed.

    Args:
        timeout: seconds to wait in all, at most.

    Returns:
        True if everything was sent (and committed, for the embedded sink) within
        ``timeout``; False if something was still pending, or failed (counted in
        ``chaperone.internal.errors``). Never raises for a telemetry failure.

    Raises:
        ValueError: ``timeout`` is negative or not a number.

    .. versionadded:: 0.1
    """
    if not (isinstance(timeout, (int, float)) and timeout >= 0):  # also rejects NaN
        raise ValueError(f"flush(timeout={timeout!r}): timeout must be seconds >= 0")
    deadline = time.monotonic() + timeout
    with handle_internal_errors("flush"):
        rt = current_runtime()
        done = rt.flush_pending(timeout) if rt is not None else True
        state = _setup  # read once: a concurrent configure() may replace it
        if state is not None:
            from .export import flush as flush_export  # noqa: PLC0415

            done = flush_export(state, deadline) and done
        return done
    return False


WORKER_FLUSH_BACKOFF = 30.0
"""Seconds a ``multiprocessing`` worker stops flushing per run after a flush that did not
finish in time (the endpoint is slow or down)."""

_worker_flush_paused_until = 0.0
_monotonic = time.monotonic  # the backoff's clock (tests replace it, never time.monotonic)


def _flush_worker() -> None:
    """Flush a finished run's records in a pool worker, unless the last flush timed out
    recently: the records still go out in the background, but short tasks must not wait
    :data:`WORKER_FLUSH_TIMEOUT` each while the endpoint is down."""
    global _worker_flush_paused_until
    if _monotonic() < _worker_flush_paused_until:
        return
    if not flush(WORKER_FLUSH_TIMEOUT):
        _worker_flush_paused_until = _monotonic() + WORKER_FLUSH_BACKOFF


set_finish_flush(_flush_worker)


def reset() -> None:
    """Back to defaults: shut down, forget the configuration, internal-error counts and the
    run counters' totals (a counter reset, as after a restart; for test isolation)."""
    shutdown()
    with _lock:
        set_config(Config())
    reset_internal_errors()
    reset_instruments()
    forget_attempts()
    forget_schedules()
