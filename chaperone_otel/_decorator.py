"""``@supervised`` and ``with supervised(...)``: one object, four kinds of callable.

:class:`supervised` validates its options once (:func:`_spec.make_spec`), then either wraps a
function — dispatching on sync function, coroutine function, generator function and async
generator function, each wrapper starting a run per call through ``_lifecycle`` — or serves
as a (sync or async) context manager whose block is one run. ``start()`` begins a run
without entering it, for frameworks whose start and end are separate callbacks.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from ._config import LimitPolicy
from ._lifecycle import (
    acall,
    activate,
    bind_task,
    call,
    deactivate,
    finish_run,
    leave,
    limit_error,
    otel_current,
    start_run,
    uncancel,
)
from ._run import Run, Supervision
from ._spec import Lease, Spec, make_spec, qualified_name, replace_spec
from .exceptions import ConfigurationError, JobLimitExceeded

P = ParamSpec("P")
R = TypeVar("R")


def _refuse_method_wrapper(func: Any) -> None:
    """``@supervised`` above ``@staticmethod``/``@classmethod`` wraps the descriptor, not
    the function: a staticmethod was then called with ``self``, a classmethod refused as a
    name. Say where the decorator goes instead."""
    if isinstance(func, (staticmethod, classmethod)):
        kind = type(func).__name__
        raise ConfigurationError(
            f"@supervised is above @{kind}: put it below (@{kind} first, then @supervised, "
            "then def), so that it wraps the function"
        )


class supervised:
    """Supervise a function, coroutine, generator or block as a job run.

    Use it bare (``@supervised``), with options (``@supervised(queue="etl", timeout="1h")``)
    or as a context manager (``with supervised("name") as run:``, also ``async with``).

    Args:
        name: the job name (default: the function's qualified name). Bounded: a metric label.
        queue: the queue or pool the run belongs to (default ``"default"``).
        heartbeat_interval: the lease in seconds (default from ``configure()``, 60 s).
        timeout: max runtime (seconds, ``timedelta`` or ``"2h"``); past it the run is overtime.
        stall_timeout: flat progress this long while alive means *stalled* (degraded).
        memory_limit: bytes or ``"512MiB"`` (process RSS).
        cpu_limit: percent of one core.
        fd_limit: open file descriptors.
        on_limit: ``"record"`` (default), ``"warn"`` (also logs) or ``"cancel"``
            (``JobLimitExceeded`` inside the run at its next heartbeat/progress call; an async
            run's task is cancelled).
        supervision_id: the run id (default uuid4; pass a Celery task id to correlate).
        attempt: the attempt number (default 1).
        attributes: static span/record attributes (``chaperone.job.attr.<key>``).
        tracer_provider: a provider to use instead of the global one.
        schedule: the schedule the runs belong to (its name, or what
            :func:`chaperone_otel.schedule` returned): the store matches each run to the
            slot it started in, so a slot without a run is found missed.
        lease: ``"heartbeat"`` (default): the job's code keeps the run alive by calling
            ``heartbeat()``/``report_progress()`` within ``heartbeat_interval``, and is stuck
            after 3 silent intervals. ``"liveness"``: for code that cannot heartbeat (one long
            blocking call), the process being alive is enough; then only ``timeout`` makes it
            stuck, and a silent process makes it lost.
        on_heartbeat_missed, on_stuck, on_timeout, on_violation, on_failure, on_complete,
        on_health_change: local hooks, called on the ``chaperone-hooks`` thread with a ``JobState``.

    Raises:
        ConfigurationError: an option is invalid (at decoration time, not at run time).

    .. versionadded:: 0.1
    """

    @overload
    def __new__(cls, func: Callable[P, R], /) -> Callable[P, R]: ...  # type: ignore[misc]

    @overload
    def __new__(cls, name: str | None = None, /, **options: Any) -> supervised: ...

    def __new__(cls, func_or_name: Any = None, /, **options: Any) -> Any:
        _refuse_method_wrapper(func_or_name)
        if callable(func_or_name) and not isinstance(func_or_name, str):
            if options:
                raise ConfigurationError(
                    "use @supervised(...) with keyword options, or bare @supervised"
                )
            return cls(None)(func_or_name)
        return super().__new__(cls)

    def __init__(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        heartbeat_interval: Any = None,
        timeout: Any = None,
        stall_timeout: Any = None,
        memory_limit: Any = None,
        cpu_limit: float | None = None,
        fd_limit: int | None = None,
        on_limit: LimitPolicy | None = None,
        supervision_id: str | None = None,
        attempt: int | None = None,
        attributes: Mapping[str, Any] | None = None,
        tracer_provider: Any = None,
        schedule: Any = None,
        lease: Lease | None = None,
        on_heartbeat_missed: Callable[..., object] | None = None,
        on_stuck: Callable[..., object] | None = None,
        on_timeout: Callable[..., object] | None = None,
        on_violation: Callable[..., object] | None = None,
        on_failure: Callable[..., object] | None = None,
        on_complete: Callable[..., object] | None = None,
        on_health_change: Callable[..., object] | None = None,
    ) -> None:
        self._spec = make_spec(
            name,
            queue=queue,
            attempt=attempt,
            heartbeat_interval=heartbeat_interval,
            timeout=timeout,
            stall_timeout=stall_timeout,
            memory_limit=memory_limit,
            cpu_limit=cpu_limit,
            fd_limit=fd_limit,
            on_limit=on_limit,
            supervision_id=supervision_id,
            attributes=attributes,
            hooks={
                "on_heartbeat_missed": on_heartbeat_missed,
                "on_stuck": on_stuck,
                "on_timeout": on_timeout,
                "on_violation": on_violation,
                "on_failure": on_failure,
                "on_complete": on_complete,
                "on_health_change": on_health_change,
            },
            lease=lease,
            tracer_provider=tracer_provider,
            schedule=schedule,
        )
        # Which run this object entered, per thread and per task: one `supervised(...)`
        # object may be entered concurrently (a module-level context manager used by many
        # workers), so the stack of entered runs lives in a ContextVar, not on the object.
        self._entered: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
            "chaperone_otel_entered", default=None
        )

    # ---- decorator ------------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        _refuse_method_wrapper(func)
        if not callable(func):
            raise ConfigurationError(f"@supervised decorates a callable, got {func!r}")
        spec = self._spec
        if spec.name is None:
            spec = replace_spec(spec, name=qualified_name(func))
        if spec.supervision_id is not None:
            # One fixed id for every call would merge unrelated runs (REFERENCE: "Use Unique
            # Supervision IDs"); a fixed id belongs on `with supervised(...)` for one run.
            raise ConfigurationError(
                "supervision_id= on a decorator would give every call the same run id; pass "
                "it to `with supervised(name, supervision_id=...)` or use the Supervised class"
            )
        wrapper: Callable[..., Any]
        # An object whose __call__ is ``async def`` is called like a coroutine function.
        call = None if inspect.isroutine(func) else inspect.getattr_static(type(func), "__call__")
        if inspect.isasyncgenfunction(func):
            wrapper = _wrap_async_generator(func, spec)
        elif inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call):
            wrapper = _wrap_coroutine(cast(Any, func), spec)
        elif inspect.isgeneratorfunction(func):
            wrapper = _wrap_generator(func, spec)
        else:
            wrapper = _wrap_function(func, spec)
        functools.update_wrapper(wrapper, func)
        setattr(wrapper, "__chaperone_spec__", spec)  # noqa: B010 - a marker for introspection
        return cast(Callable[P, R], wrapper)

    def start(self) -> Supervision:
        """Start a run now without entering it; end it with :meth:`Supervision.finish`.

        The run is not made current (``current_job()``); use the handle it returns.
        """
        return start_run(self._require_name()).handle

    # ---- context manager -----------------------------------------------------------------

    def _require_name(self) -> Spec:
        if self._spec.name is None:
            raise ConfigurationError(
                'with supervised(...) needs a job name: `with supervised("etl.import") as run:`'
            )
        return self._spec

    def _push(self, run: Run) -> Supervision:
        entry: list[Any] = [run, None, None, otel_current()]
        entry[1] = activate(run)
        entry[2] = self._entered.set(entry)
        return run.handle

    def _pop(self, exc: BaseException | None) -> Run:
        entry = self._entered.get()
        if entry is None:
            raise RuntimeError("supervised.__exit__ without a matching __enter__ in this context")
        run, tokens, token, prior_otel = entry
        self._entered.reset(token)
        try:
            leave(run, tokens, prior_otel)
        finally:
            finish_run(run, limit_error(run, exc))
        return cast(Run, run)

    def __enter__(self) -> Supervision:
        run = start_run(self._require_name())
        try:  # a Ctrl-C landing as _push begins must not leave the run live
            return self._push(run)
        except BaseException as exc:
            finish_run(run, exc)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        self._pop(exc)
        return False

    async def __aenter__(self) -> Supervision:
        run = start_run(self._require_name(), bind_thread=False)
        try:  # as __enter__
            bind_task(run)
            return self._push(run)
        except BaseException as exc:
            finish_run(run, exc)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        run = self._pop(exc)
        outcome = limit_error(run, exc)
        if outcome is not exc:
            uncancel(run)
            raise cast(BaseException, outcome) from exc
        return False


def _wrap_function(func: Callable[..., R], spec: Spec) -> Callable[..., R]:
    def wrapper(*args: Any, **kwargs: Any) -> R:
        run = start_run(spec)
        try:  # a Ctrl-C landing as call() begins, before its own try: the run ends
            return call(run, func, args, kwargs)
        except BaseException as exc:
            finish_run(run, exc)  # nothing when call() finished it (the usual case)
            raise

    return wrapper


def _wrap_coroutine(func: Callable[..., Awaitable[R]], spec: Spec) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        run = start_run(spec, bind_thread=False)
        try:  # as for a function
            return await acall(run, func, args, kwargs)
        except BaseException as exc:
            finish_run(run, exc)
            raise

    return wrapper


def _wrap_generator(
    func: Callable[..., Generator[Any, Any, R]], spec: Spec
) -> Callable[..., Generator[Any, Any, R]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, R]:
        gen = func(*args, **kwargs)
        run = start_run(spec)
        error: BaseException | None = None
        try:
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                # The run is current only while the generator's own code runs, never in the
                # consumer between items.
                tokens = activate(run)
                try:
                    item = gen.throw(to_throw) if to_throw is not None else gen.send(to_send)
                except StopIteration as stop:
                    return cast(R, stop.value)
                finally:
                    deactivate(tokens)
                to_throw = None
                try:
                    to_send = yield item
                except GeneratorExit:
                    tokens = activate(run)  # its cleanup (finally:) runs as the run too
                    try:
                        gen.close()
                    finally:
                        deactivate(tokens)
                    raise
                except BaseException as thrown:
                    to_throw = thrown
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish_run(run, error)

    return wrapper


def _wrap_async_generator(
    func: Callable[..., AsyncGenerator[Any, Any]], spec: Spec
) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        agen = func(*args, **kwargs)
        run = start_run(spec, bind_thread=False)
        bind_task(run)
        # The task is the run's only while the generator's body runs: between items it runs
        # the consumer's code, which a `cancel` limit must not cancel. A limit crossed then
        # is raised into the body when the consumer asks for the next item.
        run.task = None
        error: BaseException | None = None
        try:
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                cancel = run.cancel
                if cancel is not None and to_throw is None:
                    to_throw = JobLimitExceeded(cancel.limit, cancel.value, cancel.actual)
                tokens = activate(run)
                run.task = asyncio.current_task()
                try:
                    if to_throw is not None:
                        item = await agen.athrow(to_throw)
                    else:
                        item = await agen.asend(to_send)
                except StopAsyncIteration:
                    return
                finally:
                    run.task = None
                    deactivate(tokens)
                to_throw = None
                try:
                    to_send = yield item
                except GeneratorExit:
                    tokens = activate(run)  # its cleanup (finally:) runs as the run too
                    try:
                        await agen.aclose()
                    finally:
                        deactivate(tokens)
                    raise
                except BaseException as thrown:
                    to_throw = thrown
        except BaseException as exc:
            # As for a coroutine run (acall): a cancellation caused by the run's limit
            # policy is the JobLimitExceeded the caller sees, and the task is uncancelled.
            error = limit_error(run, exc)
            if error is not exc:
                run.task = asyncio.current_task()
                uncancel(run)
                raise cast(BaseException, error) from exc
            raise
        finally:
            finish_run(run, error)

    return wrapper
