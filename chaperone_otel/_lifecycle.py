"""A run's start and finish, and running code as a run (current while it runs).

:func:`start_run` creates the run's state, has the OTel writer start its span (synchronously:
the span's context must be current in the job's code so user spans nest under it), registers
it with the monitor and publishes ``chaperone.job.started``. :func:`finish_run` records the
outcome, lets the monitor settle the run (final flush, verdict), publishes
``chaperone.job.finished``, has the writer end the span, and unregisters the run — each step
guarded on its own, the span's end and the unregistration whatever failed before.

:func:`call` and :func:`acall` run a function or coroutine as a run; the decorator, the
context manager and the ``Supervised`` base class all go through them (or through
:func:`activate`/:func:`deactivate` for generators and blocks).

Telemetry failures are swallowed with a bare ``try`` (:func:`_safety.internal_error`): free
until something fails, where a guard object costs on every run.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

from opentelemetry import context as otel_context

from . import semconv as sc
from ._cancel import inherit as inherit_cancel
from ._config import get_config
from ._current import current_run
from ._events import receivers
from ._process import flush_if_worker
from ._record import publish
from ._resources import thread_cpu_clock
from ._run import Run, Supervision
from ._runtime import runtime
from ._safety import internal_error
from ._spec import Spec, static_for
from .exceptions import JobLimitExceeded

R = TypeVar("R")

Tokens = tuple[contextvars.Token[Supervision | None], object]

_tls = threading.local()


def _after_fork_in_child() -> None:
    global _tls, _attempts_lock
    _tls = threading.local()  # per-thread CPU clocks: the child's thread has a new one
    _attempts_lock = threading.Lock()  # may have been held by a thread the child lacks


os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_cpu_clock() -> int | None:
    """The calling thread's CPU-time clock id, looked up once per thread (~0.5 us a call).

    Thread-local, so a thread that ends takes its entry with it (a new thread may reuse its
    ident, never its clock); a forked child starts with a fresh cache (its thread has a new
    kernel tid, hence a new clock).
    """
    try:
        clock: int | None = _tls.clock
        return clock
    except AttributeError:
        pass
    try:
        clock = thread_cpu_clock()
    except Exception as exc:
        internal_error("run.cpu_clock", exc)
        return None
    _tls.clock = clock
    return clock


_ATTEMPTS_KEPT: Final = 10_000
_attempts: dict[str, int] = {}
"""Explicit run id -> the highest attempt started with it in this process, the newest
:data:`_ATTEMPTS_KEPT` ids (generated uuid4 ids never repeat and are not kept)."""
_attempts_lock = threading.Lock()
_warned_names: set[str] = set()


def _claim_attempt(run: Run, *, execution_given: bool = False) -> int | None:
    """Make ``(run.id, run.attempt)`` one no other run of this process has used.

    The store keeps one row per (run id, attempt), from its highest-sequence record: a second
    run under a key already used (``supervision_id="my-job"`` twice, a retry without
    ``attempt=``) replaced or lost the first, silently (issue 12). A reused key becomes the
    next attempt of the id, whether the earlier run has finished or is still running, and
    the first reuse per job name is logged: returns the attempt asked for then, for
    :func:`start_run` to log once the run's span has started (the line is the new
    attempt's, in its trace), else None.

    ``execution_given``: the caller named this start's execution (a framework's delivery:
    ``start_run(execution_id=...)``). A second execution of the same attempt (a redelivered
    task run by the same process) is then what the caller means, and is stored as a row of
    its own: its attempt is kept, so it matches the ``pending_run`` and ``close_run`` that
    name it.
    """
    wanted = run.attempt
    with _attempts_lock:
        used = _attempts.pop(run.id, None)
        reused = used is not None and wanted <= used and not execution_given
        if reused:
            run.attempt = cast(int, used) + 1
        # Re-inserted: the newest ids are kept, with the highest attempt seen.
        _attempts[run.id] = max(run.attempt, used or 0)
        if len(_attempts) > _ATTEMPTS_KEPT:
            del _attempts[next(iter(_attempts))]
        warn = reused and run.name not in _warned_names and len(_warned_names) < 1000
        if warn:
            _warned_names.add(run.name)
    return wanted if warn else None


def forget_attempts() -> None:
    """Forget the run ids used so far (``reset()``: for test isolation)."""
    with _attempts_lock:
        _attempts.clear()
        _warned_names.clear()


def start_run(
    spec: Spec,
    *,
    run_id: str | None = None,
    attempt: int | None = None,
    execution_id: str | None = None,
    bind_thread: bool = True,
    links: tuple[Any, ...] = (),
) -> Run:
    """Create and start a run: span (linked to ``links``), monitor registration, started
    record."""
    config = get_config()
    run = Run(
        spec,
        static_for(spec, config),
        finish_run,
        run_id=run_id,
        attempt=attempt,
        execution_id=execution_id,
    )
    reused = None
    if run_id is not None or spec.supervision_id is not None:
        reused = _claim_attempt(run, execution_given=execution_id is not None)
    enclosing = current_run.get()
    if enclosing is not None and enclosing._run.pid == run.pid:  # not a forked parent's run
        run.parent = enclosing._run  # the run whose code started this one: its parent
        inherit_cancel(run)
    rt = runtime()
    try:
        run.span, run.otel_context, run.trace_id, run.span_id = rt.writer.start(
            run, spec.tracer_provider, links
        )
    except Exception as exc:
        internal_error("run.start", exc)
    if reused is not None:
        rt.writer.warning(
            run,
            "job %s: run id %r attempt %d was already used in this process; recorded as "
            "attempt %d. Pass a unique supervision_id per run, or attempt= for a retry "
            "(logged once per job name)",
            run.name,
            run.id,
            reused,
            run.attempt,
        )
    if bind_thread:
        run.cpu_clock = _thread_cpu_clock()
    run.status = "running"
    try:
        rt.started(run)
        to = receivers(sc.EVENT_JOB_STARTED)
        if to:
            publish(run, to, sc.EVENT_JOB_STARTED, run.started_at)
    except Exception as exc:
        # Only where internal errors are raised (the test mode): the start fails loudly,
        # and the run it never returns must not stay live with its span open.
        try:
            rt.writer.finish(run, exc, run.started_at)
        finally:
            rt.discard(run)
            run.detach()
        raise
    except BaseException as exc:  # Ctrl-C landing in the start: the run is cancelled
        finish_run(run, exc)
        raise
    return run


_CANCELLED: Final = (
    JobLimitExceeded,
    asyncio.CancelledError,
    KeyboardInterrupt,
    GeneratorExit,
)
"""What ends a run ``cancelled``. Not ``SystemExit``: ``sys.exit(0)`` (or ``sys.exit()``)
inside a run is a script ending well (``completed``), any other code one ending badly
(``failed``), as a shell reads an exit status (:func:`_clean_exit`)."""


def _clean_exit(exc: BaseException) -> bool:
    """``sys.exit()`` or ``sys.exit(0)``: the run completed."""
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


def _is_cancellation(exc: BaseException) -> bool:
    """A cancellation, or an exception group (a task group's, 3.11+ or the backport's)
    whose every exception is one: the group ``asyncio.TaskGroup`` or anyio raise when
    Ctrl-C or a cancel reaches their tasks is a cancelled run, not a failed one."""
    if isinstance(exc, _CANCELLED):
        return True
    split = getattr(exc, "split", None)  # BaseExceptionGroup.split: (matched, the rest)
    if not callable(split) or not isinstance(getattr(exc, "exceptions", None), tuple):
        return False
    try:
        matched, rest = split(_CANCELLED)
    except Exception:
        return False
    return matched is not None and rest is None


def finish_run(run: Run, exc: BaseException | None, status: str | None = None) -> None:
    """Record the outcome, publish the finished record, end the span. Never raises, but
    for an interrupt (Ctrl-C) landing in it, raised once the run is finished.

    The status follows from ``exc`` (none: ``completed``; a cancellation: ``cancelled``;
    otherwise ``failed``) unless ``status`` is given: a framework integration says
    ``retried`` for an attempt its framework runs again, with the retry's cause as ``exc``
    (checked by the public callers, :func:`_start.StartedRun.finish`).

    Each step is guarded on its own, and ending the span and unregistering the run happen
    whatever failed before: a run whose finish half-failed must not stay "live" for ever (its
    gauges reported, the sink calling it lost).

    In a forked child, a run inherited from the parent (the child left the parent's ``with
    supervised()`` block, returning or by ``sys.exit()``) is not finished: it is the
    parent's, still running there, and its records, span and hooks are the parent's to
    write. Nothing is published, the span is left open, the call does nothing.
    """
    if run.inherited:
        return
    try:
        now = run.clock()
    except Exception as error:
        internal_error("run.clock", error)
        now = time.time()
    rt = runtime()
    # An interrupt (Ctrl-C, an asynchronous exception) landing in a step below is kept and
    # raised once the run is finished: the guards catch only Exception, and a run left
    # half-finished stayed live in the runtime and "running" in the store for ever.
    interrupted: BaseException | None = None
    with run.lock:
        if run.finished_at is not None:
            return
        run.finished_at = now
        if status is not None:
            run.status = status
        elif exc is None or _clean_exit(exc):
            run.status = "completed"
        else:
            run.status = "cancelled" if _is_cancellation(exc) else "failed"
        actions: list[Callable[[], object]] = []
        try:
            ended_badly = run.status != "completed" and not isinstance(exc, GeneratorExit)
            if exc is not None and ended_badly:
                run.error_type = _error_type(exc)
                run.error_message = _safe_str(exc)
                if run.status == "failed":  # formatting a long traceback takes a while
                    run.error_stacktrace = _safe_traceback(exc)
            actions = rt.judge(run, now)  # in the same locked section: the monitor sees it judged
        except Exception as error:
            internal_error("run.judge", error)
        except BaseException as error:
            interrupted = error
    try:
        if actions:
            rt.dispatch(actions)
    except BaseException as error:
        interrupted = interrupted or error
    for _ in range(2):  # published again if an interrupt cut the first publish short
        try:
            to = receivers(sc.EVENT_JOB_FINISHED)
            if to:
                publish(
                    run,
                    to,
                    sc.EVENT_JOB_FINISHED,
                    now,
                    "ERROR" if run.status == "failed" else "INFO",
                )
            break
        except Exception as error:
            internal_error("run.finish", error)
            break
        except BaseException as error:
            interrupted = interrupted or error
    try:
        rt.writer.finish(run, exc, now)  # ends the span whatever else fails in it
    except Exception as error:
        internal_error("run.span_end", error)
    except BaseException as error:
        interrupted = interrupted or error
    finally:
        rt.finished(run)
        run.detach()  # no handle <-> state cycle: a finished run is freed at once
    if interrupted is not None:
        raise interrupted
    try:
        flush_if_worker()  # a pool worker may be gone (os._exit) right after this task
    except Exception as error:
        internal_error("run.worker_flush", error)


MAX_ERROR_TEXT: Final = 32 * 1024
"""Characters of an error message, and of a stack trace, a record carries at most. A
5,000,000-character message made one record over the sink's 8 MiB request limit, and the
batch it was in (every run's records of the process) could never be delivered."""


def _safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + f"... [{len(text) - MAX_ERROR_TEXT} characters cut]"
    return text


def _safe_traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        return f"{type(exc).__name__}: <traceback could not be formatted>"
    if len(text) > MAX_ERROR_TEXT:  # the end says what was raised: keep it
        text = f"[{len(text) - MAX_ERROR_TEXT} characters cut] ..." + text[-MAX_ERROR_TEXT:]
    return text


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "") else f"{module}.{cls.__qualname__}"


def activate(run: Run) -> Tokens:
    """Make ``run`` current (``current_job()``) and its span current (OTel context)."""
    token = current_run.set(run.handle)
    otel_token = otel_context.attach(run.otel_context) if run.otel_context is not None else None
    return token, otel_token


def still_current(run: Run) -> bool:
    """Whether ``run``'s span context is the current OTel context (see
    :meth:`_start.StartedRun.detach`: a layer around the run may have restored its own)."""
    return otel_context.get_current() is run.otel_context


def deactivate(tokens: Tokens) -> None:
    """Undo :func:`activate`."""
    token, otel_token = tokens
    if otel_token is not None:
        otel_context.detach(otel_token)  # type: ignore[arg-type]  # the API never raises here
    try:
        current_run.reset(token)
    except ValueError as error:  # exited in another context than entered: user code's doing
        internal_error("run.context", error)
        current_run.set(None)


_left: weakref.WeakKeyDictionary[Supervision, tuple[Supervision | None, object, object]] = (
    weakref.WeakKeyDictionary()
)
"""Runs whose ``with`` block ended while a run entered after it was still current: (what
was current before the run, its OTel context then, the run's own OTel context)."""


def otel_current() -> object:
    """The current OTel context (what :func:`leave` restores past an ended run)."""
    return otel_context.get_current()


def leave(run: Run, tokens: Tokens, prior_otel: object) -> None:
    """Undo :func:`activate` for a ``with supervised()`` block, which may end out of order:
    blocks in two generators advanced in turn (or chained: one reading the other) end in
    any order, and a context variable reset by an older token restores what was current
    before the *older* block, dropping the newer run that is still open; the newer one's
    reset later restores the older run, ended by then, for the rest of the thread.

    So a block ending while a newer run is current leaves the current run (and OTel
    context) alone and is remembered; a reset that restores a remembered run restores
    what was current before it instead (``prior_otel``: the OTel context before the block).
    """
    token = tokens[0]
    if current_run.get() is not run.handle:
        before = token.old_value
        try:
            _left[run.handle] = (
                None if before is contextvars.Token.MISSING else before,
                prior_otel,
                run.otel_context,
            )
        except Exception as error:
            internal_error("run.context", error)
        return
    deactivate(tokens)
    handle = current_run.get()
    while handle is not None and handle in _left:
        handle, otel_before, otel_own = _left[handle]
        current_run.set(handle)
        if otel_own is not None and otel_context.get_current() is otel_own:
            otel_context.attach(otel_before)  # type: ignore[arg-type]  # a Context


def limit_error(run: Run, exc: BaseException | None) -> BaseException | None:
    """The exception a run ends with: a cancellation caused by its limit policy is the
    ``JobLimitExceeded`` the caller will see, not the ``CancelledError`` that carried it."""
    cancel = run.cancel
    if isinstance(exc, asyncio.CancelledError) and cancel is not None:
        return JobLimitExceeded(cancel.limit, cancel.value, cancel.actual)
    return exc


def bind_task(run: Run) -> None:
    """Remember the asyncio task running ``run``, so a ``cancel`` limit policy can cancel it,
    and its loop thread's CPU clock."""
    try:
        run.task = asyncio.current_task()
        run.loop = asyncio.get_running_loop()
    except RuntimeError:
        run.task = None
    else:
        # The loop's thread runs the task: its CPU clock measures the run (shared with the
        # loop's other runs, which the monitor tells apart: see _resources.cpu_scopes).
        run.cpu_clock = _thread_cpu_clock()


def uncancel(run: Run) -> None:
    """Take back the cancellation a limit caused (the caller sees ``JobLimitExceeded``)."""
    task = run.task
    if task is not None and sys.version_info >= (3, 11):
        task.uncancel()


def call(run: Run, func: Callable[..., R], args: Any, kwargs: Any) -> R:
    """Run ``func`` as ``run``: current while it runs, finished however it ends."""
    # activate/deactivate inlined: this wraps every call of a decorated sync function.
    token = otel_token = None
    try:
        token = current_run.set(run.handle)  # in the try: a Ctrl-C here ends the run too
        ctx = run.otel_context
        otel_token = otel_context.attach(ctx) if ctx is not None else None
        result = func(*args, **kwargs)
    except BaseException as exc:
        try:
            if token is not None:
                deactivate((token, otel_token))
        finally:
            finish_run(run, exc)
        raise
    try:
        # deactivate inlined for the normal return (every call of a decorated function).
        if otel_token is not None:
            otel_context.detach(otel_token)
        try:
            current_run.reset(token)
        except ValueError as error:  # exited in another context than entered
            internal_error("run.context", error)
            current_run.set(None)
    finally:
        finish_run(run, None)
    return result


async def acall(run: Run, func: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    """Await ``func`` as ``run``; a cancellation caused by a limit becomes JobLimitExceeded."""
    bind_task(run)
    tokens = activate(run)
    try:
        result = await func(*args, **kwargs)
    except BaseException as exc:
        outcome = limit_error(run, exc)
        try:
            deactivate(tokens)
        finally:
            finish_run(run, outcome)
        if outcome is not exc:
            uncancel(run)
            raise cast(BaseException, outcome) from exc
        raise
    try:
        deactivate(tokens)
    finally:
        finish_run(run, None)
    return result
