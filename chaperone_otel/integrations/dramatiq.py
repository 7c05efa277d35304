"""Supervise Dramatiq actors: every processing of a message is a run, recorded by attempt.

Add the middleware with :func:`instrument` in the module that creates the broker, after
``configure()`` and before the actors are declared (their ``supervision=`` option must be
known to the broker)::

    # proj/tasks.py   (dramatiq proj.tasks)
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    import chaperone_otel as chaperone
    from chaperone_otel.integrations.dramatiq import instrument

    chaperone.configure(sink="jobs.duckdb")
    broker = RedisBroker(url="redis://localhost:6379/0")
    instrument(broker)
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=3, time_limit=600_000, supervision={"stall_timeout": 300})
    def import_file(path):
        for row in chaperone.track(load(path)):
            save(row)

What a run gets from Dramatiq:

==============  ===================================================================
run id          the message id
attempt         ``message.options["retries"] + 1``
name            the actor name
queue           the message's queue (without the delay queue's ``.DQ``)
timeout         the time limit: the message's, the actor's, else the ``TimeLimit``
                middleware's (none without that middleware or for ``inf``)
span links      the run span links to the span of the message's processing before (a
                retry's attempt to the attempt it repeats), kept in the message option
                ``chaperone_otel_span``
==============  ===================================================================

Outcomes: a return is ``completed``; an exception is ``retried`` (terminal, not a failure)
with the exception as the cause when the ``Retries`` middleware sends the message again,
``failed`` with its own type when it does not (retries spent, ``throws=``, no ``Retries``
middleware); the ``TimeLimit`` middleware's ``TimeLimitExceeded`` is such an exception
(``retried`` while retries are left, ``failed`` when they are spent), with a ``timeout``
violation either way; a skipped message (``SkipMessage``, e.g. ``AgeLimit``) is
``cancelled``.

Leases: a run is alive while its worker process is (``lease="liveness"``), so actors that
never call ``heartbeat()`` are healthy until their time limit; an actor that promises
heartbeats opts in with ``supervision={"lease": "heartbeat", "heartbeat_interval": 30}``
and is stuck after three silent intervals.

The actor option ``supervision`` takes ``False`` (not supervised) or a dict of
:func:`chaperone_otel.start_run` options (``heartbeat_interval``, ``lease``,
``stall_timeout``, ``timeout``, ``attributes``); a wrong key or value raises
``ConfigurationError`` where the actor is declared. A message's own ``supervision=``
(``send_with_options``) replaces the actor's; a wrong key or value there is logged (once per
actor and mistake) and left out, and the run is supervised with the rest. The run is current
while the actor runs: ``current_job()``, ``heartbeat()``, ``report_progress()`` and
``track()`` reach it, and spans the actor opens nest under the run span.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from .._safety import handle_internal_errors as _guard
from .._setup import flush as _flush
from .._setup import shutdown as _shutdown
from .._spec import Lease as _Lease
from .._spec import make_spec as _make_spec
from .._start import StartedRun as _StartedRun
from .._start import start_run as _start_run
from .._start import stored_links as _stored_links
from ..exceptions import ConfigurationError as _ConfigurationError
from ._framework import framework_import_error as _framework_import_error
from ._options import check_options as _check_options

try:
    import dramatiq
    from dramatiq.common import q_name
    from dramatiq.middleware import Middleware, MiddlewareError, Retries, SkipMessage, TimeLimit
except ImportError as _error:  # pragma: no cover - exercised only without dramatiq
    raise _framework_import_error("dramatiq", _error) from _error

OPTION: Final = "supervision"
"""The actor (and message) option: ``False``, or a dict of run options."""

SPAN_OPTION: Final = "chaperone_otel_span"
"""The message option holding the run span of the message's last processing (W3C
``traceparent``), which the next processing's span links to: set before the actor runs, so
the copy ``Retries`` enqueues carries it (Dramatiq carries no trace context, so each attempt
is a root span in a trace of its own)."""

_RUN_OPTIONS: Final = frozenset(
    {"heartbeat_interval", "lease", "stall_timeout", "timeout", "attributes"}
)
_WARNED_KEPT: Final = 1000

_logger = logging.getLogger("chaperone_otel")


class WorkerShutdown(Exception):
    """The error of a run still open when its worker process shut down.

    .. versionadded:: 0.1
    """


class _ActorOptionError(_ConfigurationError, MiddlewareError):
    """An actor's invalid ``supervision=`` option: a :class:`MiddlewareError`, the one kind
    of error Dramatiq raises from a middleware's ``before_declare_actor`` (it logs others
    and declares the actor)."""


class Supervision(Middleware):
    """The middleware: each message an actor processes is a run (see the module).

    Add it with :func:`instrument` (first in the broker's list: its ``after`` hooks then
    see what ``Retries`` decided, and its run starts before ``TimeLimit``'s clock).

    Args:
        include: supervise only the actors for which it returns True (default: all but
            those declared with ``supervision=False``).
        heartbeat_interval: the runs' default lease (default: ``configure()``'s).
        lease: ``"liveness"`` (default): a run is alive while its worker process is, so
            an actor that never heartbeats is not stuck (only past its time limit);
            ``"heartbeat"``: alive while its code heartbeats. An actor's own
            ``supervision={"lease": ...}`` wins.
        flush_timeout: seconds the worker waits for records to be sent at shutdown.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        include: Callable[[dramatiq.Actor[Any, Any]], bool] | None = None,
        heartbeat_interval: Any = None,
        lease: _Lease = "liveness",
        flush_timeout: float = 5.0,
    ) -> None:
        _check_options(
            "Supervision(...)",
            include=include,
            heartbeat_interval=heartbeat_interval,
            lease=lease,
            flush_timeout=flush_timeout,
        )
        self.include = include
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.flush_timeout = flush_timeout
        # id(message proxy) -> (proxy, run, tokens): before and after of one delivery run on
        # one worker thread, with the same proxy. Keyed per delivery, not by message id: two
        # deliveries of one id (a redelivery, ids the application chose) can run at once on
        # two threads, each finishing its own run. The proxy is kept so its id is not reused.
        self.open: dict[int, tuple[Any, _StartedRun, Any]] = {}
        self.lock = threading.Lock()
        self.warned: set[tuple[str, str]] = set()  # (actor, mistake) of message options
        self.booted = False  # a worker process of Dramatiq's CLI (after_process_boot)

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def before_declare_actor(self, broker: Any, actor: Any) -> None:
        """Check the actor's ``supervision=`` option where it is declared, with the checks
        :func:`~chaperone_otel.start_run` applies: a wrong key or value raises there (the
        actor is not declared), rather than each message running unsupervised."""
        options = actor.options.get(OPTION)
        _, problems = _run_options(options)
        if problems:
            raise _ActorOptionError(
                f"actor {actor.actor_name!r}: {OPTION}={options!r}: {'; '.join(problems)}. "
                f"{OPTION}= takes False or a dict with keys {', '.join(sorted(_RUN_OPTIONS))}"
            )

    # ---- process lifecycle ---------------------------------------------------------------

    def after_process_boot(self, broker: Any) -> None:
        """A worker process booted: runs open in the process it was forked from are not its.
        (Dramatiq's CLI sends it in each worker process it starts: such a process shuts
        chaperone down at its worker's shutdown, see :meth:`after_worker_shutdown`.)"""
        with self.lock:
            self.open.clear()
            self.booted = multiprocessing.parent_process() is not None

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """Send the finished runs' records before the worker threads are stopped."""
        with _guard("dramatiq.shutdown_flush"):
            _flush(self.flush_timeout)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """The worker threads are stopped: runs still open (a thread that did not stop in
        time dies with the process) end ``cancelled``; flush before the process exits.

        In a worker process of Dramatiq's CLI (a ``multiprocessing`` child that booted as a
        worker process, which ends with ``os._exit``: ``atexit`` never runs) chaperone is
        shut down too, so the store the process owns is closed and its sidecar removed (it
        was left naming a dead process). A ``Worker`` stopped anywhere else (the main
        process, tests, a ``multiprocessing`` child of the application's own that runs
        workers in process) only flushes: the process goes on."""
        with self.lock:
            left = list(self.open.values())
            self.open.clear()
        with _guard("dramatiq.shutdown"):
            for _, run, _ in left:
                error = WorkerShutdown("the worker shut down while the message ran")
                run.finish(error, status="cancelled")
            _flush(self.flush_timeout)
            if self.booted:
                _shutdown()

    # ---- one message ---------------------------------------------------------------------

    def before_process_message(self, broker: Any, message: Any) -> None:
        with _guard("dramatiq.before_process_message"):
            actor = broker.get_actor(message.actor_name)
            options = message.options.get(OPTION, actor.options.get(OPTION))
            if options is False or (self.include is not None and not self.include(actor)):
                return
            run_options: dict[str, Any] = {}
            if OPTION in message.options:  # checked here: the job runs whatever is wrong
                run_options, problems = _run_options(options)
                if problems:
                    self._warn_message_options(message, options, problems)
            elif isinstance(options, Mapping):  # an actor's were checked at declaration
                run_options = {k: v for k, v in options.items() if k in _RUN_OPTIONS}
            run_options.setdefault("heartbeat_interval", self.heartbeat_interval)
            run_options.setdefault("lease", self.lease)
            run_options.setdefault("timeout", _time_limit(broker, actor, message))
            run = _start_run(
                message.actor_name,
                run_id=message.message_id,
                attempt=int(message.options.get("retries", 0) or 0) + 1,
                queue=q_name(message.queue_name),
                links=_stored_links(message.options.get(SPAN_OPTION)),
                **run_options,
            )
            tokens = run.attach()
            with self.lock:  # first: whatever fails after this, the run is finished
                self.open[id(message)] = (message, run, tokens)
            span = run.traceparent
            if span is not None:
                message.options[SPAN_OPTION] = span

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        entry = self._pop(message)
        if entry is None:
            return
        run, tokens = entry
        with _guard("dramatiq.after_process_message"):
            try:
                run.detach(tokens)
            finally:
                _finish(broker, run, message, exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        entry = self._pop(message)
        if entry is None:
            return
        run, tokens = entry
        with _guard("dramatiq.after_skip_message"):
            try:
                run.detach(tokens)
            finally:
                error = getattr(message, "_exception", None)
                if not isinstance(error, BaseException):
                    error = SkipMessage("message skipped")
                run.finish(error, status="cancelled")

    def _warn_message_options(self, message: Any, options: Any, problems: list[str]) -> None:
        """A message's own ``supervision=`` (``send_with_options``) is wrong: its run is
        supervised without the wrong keys and values, and that is logged once per actor
        and mistake (no middleware hook can refuse a message that is already sent)."""
        key = (message.actor_name, "; ".join(problems))
        with self.lock:
            if key in self.warned or len(self.warned) >= _WARNED_KEPT:
                return
            self.warned.add(key)
        _logger.warning(
            "chaperone-otel: actor %r: the message option %s=%r: %s; ignored, its run is "
            "supervised without it. %s= takes False or a dict with keys %s (logged once per "
            "actor and mistake)",
            message.actor_name,
            OPTION,
            options,
            key[1],
            OPTION,
            ", ".join(sorted(_RUN_OPTIONS)),
        )

    def _pop(self, message: Any) -> tuple[_StartedRun, Any] | None:
        with self.lock:
            entry = self.open.get(id(message))
            if entry is None or entry[0] is not message:
                return None
            del self.open[id(message)]
            return entry[1], entry[2]


def _run_options(options: Any) -> tuple[dict[str, Any], list[str]]:
    """The run options a ``supervision=`` value gives (``False``: none) that
    :func:`~chaperone_otel.start_run` accepts, and what is wrong with the others."""
    if options is None or isinstance(options, bool):
        return {}, []
    if not isinstance(options, Mapping):
        return {}, ["not a dict"]
    valid: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in options.items():
        if key not in _RUN_OPTIONS:
            problems.append(f"unknown key {key!r}")
            continue
        try:
            if key == "attributes" and not isinstance(value, Mapping):
                raise _ConfigurationError(f"attributes={value!r}: expected a dict")
            _make_spec(
                None,
                queue=None,
                attempt=None,
                **{"heartbeat_interval": None, "timeout": None, key: value},
            )
        except Exception as error:  # the same as start_run: its message says what to pass
            problems.append(str(error))
            continue
        valid[key] = value
    return valid, problems


def _finish(broker: Any, run: _StartedRun, message: Any, exception: BaseException | None) -> None:
    if exception is None:
        if message.failed:  # a middleware failed the message before the actor ran
            run.finish(RuntimeError("the message was failed before its actor ran"))
        else:
            run.finish()
    elif not message.failed and _has(broker, Retries):
        run.finish(exception, status="retried")  # Retries sent the message again
    else:
        run.finish(exception, status="failed")


def _has(broker: Any, kind: type[Any]) -> bool:
    return any(isinstance(m, kind) for m in broker.middleware)


def _time_limit(broker: Any, actor: Any, message: Any) -> float | None:
    """The message's time limit in seconds, as the ``TimeLimit`` middleware applies it."""
    middleware = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
    if middleware is None:
        return None
    limit = message.options.get("time_limit") or actor.options.get(
        "time_limit", middleware.time_limit
    )
    if not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
        return None
    return float(limit) / 1000.0


def instrument(
    broker: Any,
    *,
    include: Callable[[dramatiq.Actor[Any, Any]], bool] | None = None,
    heartbeat_interval: Any = None,
    lease: _Lease = "liveness",
    flush_timeout: float = 5.0,
) -> Supervision:
    """Add the :class:`Supervision` middleware to ``broker``, first in its list.

    Idempotent per broker (the middleware already there is returned; a second call with
    other options raises). Call it before the actors are declared, where every worker
    process runs it: the module that creates the broker, after ``chaperone.configure()``.

    Args:
        broker: the Dramatiq broker.
        include: supervise only the actors for which it returns True (default: all but
            those declared with ``supervision=False``).
        heartbeat_interval: the runs' default lease (default: ``configure()``'s).
        lease: ``"liveness"`` (default) or ``"heartbeat"``: see :class:`Supervision`.
        flush_timeout: seconds a worker waits for its records to be sent at shutdown.

    Returns:
        The middleware.

    Raises:
        ConfigurationError: an option that is not valid, or other options than those of the
            ``Supervision`` middleware already in the broker's list.

    .. versionadded:: 0.1
    """
    _check_options(
        "instrument(broker)",
        include=include,
        heartbeat_interval=heartbeat_interval,
        lease=lease,
        flush_timeout=flush_timeout,
    )
    for existing in broker.middleware:
        if isinstance(existing, Supervision):
            given = {
                "include": include,
                "heartbeat_interval": heartbeat_interval,
                "lease": lease,
                "flush_timeout": flush_timeout,
            }
            other = [
                f"{k}={v!r} (kept: {getattr(existing, k)!r})"
                for k, v in given.items()
                if v != getattr(existing, k)
            ]
            if other:
                raise _ConfigurationError(
                    f"instrument(broker) was called already with other options: "
                    f"{', '.join(other)}; call it once per broker, with the options you want"
                )
            return existing
    middleware = Supervision(
        include=include,
        heartbeat_interval=heartbeat_interval,
        lease=lease,
        flush_timeout=flush_timeout,
    )
    if broker.middleware:
        broker.add_middleware(middleware, before=type(broker.middleware[0]))
    else:
        broker.add_middleware(middleware)
    return middleware


__all__ = ["OPTION", "SPAN_OPTION", "Supervision", "WorkerShutdown", "instrument"]
