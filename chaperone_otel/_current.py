"""The current run of a thread or task, and the module-level helpers that act on it.

``heartbeat()``, ``report_progress()`` and ``track()`` at module level let library code
report without holding the handle: they find the caller's run in a ``ContextVar`` (one per
thread and per asyncio task; a task created inside a run inherits it), which the lifecycle
sets while a run's code runs. Outside any run they do nothing (``report_progress`` still
validates its arguments, so a bug shows in tests that run without supervision).

In a forked child, a run the parent was running when it forked is not the child's: the
context still holds its handle, but these helpers treat it as no run at all (``current_job()``
is None, ``heartbeat()`` returns False), so a child never beats for its parent's run.

A thread does not inherit its creator's context: a ``ThreadPoolExecutor`` worker (or a
``threading.Thread``) started inside a run sees no run. :func:`wrap` carries it there::

    with ThreadPoolExecutor() as pool:
        pool.map(chaperone.wrap(process), items)   # process() may call heartbeat()
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from . import _process, _values
from ._run import Supervision
from ._values import not_a_mapping
from .exceptions import NoActiveJobError

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

current_run: contextvars.ContextVar[Supervision | None] = contextvars.ContextVar(
    "chaperone_otel_current_job", default=None
)
"""The handle of the run whose code is running in this context (set by ``_lifecycle``)."""


def current_job(*, required: bool = False) -> Supervision | None:
    """The run of the calling thread or asyncio task, or None outside any run (or after
    it ended, in a thread or task that outlived it).

    Each thread and each asyncio task sees its own run (contextvars); a task created inside
    a run inherits it.

    Raises:
        NoActiveJobError: ``required=True`` and there is no current run.
    """
    run = current_run.get()
    if run is not None and (run._run.pid != _process.pid or run._run.finished_at is not None):
        run = None  # the parent's run, in a forked child; or a run that ended (a thread or
        # task that outlived it carries it on in its context)
    if run is None and required:
        raise NoActiveJobError(
            "current_job(required=True) called outside a supervised run: decorate the job "
            "with @supervised or wrap it in `with supervised(name):`"
        )
    return run


def heartbeat(metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> bool:
    """``heartbeat()`` on the current run. Outside a run (or after it ended: a thread that
    outlived it) it does nothing and returns False, so library code can call it
    unconditionally; inside, it returns True."""
    run = current_run.get()
    # No run, the parent's (forked), or one that ended (a thread or task outliving it).
    if run is None or run._run.pid != _process.pid or run._run.finished_at is not None:
        if metadata is not None and not isinstance(metadata, Mapping):
            not_a_mapping(metadata)  # the misuse fails here too, not only inside a run
        return False
    run.heartbeat(metadata, **fields)
    return True


def report_progress(
    current: float, total: float, metadata: Mapping[str, Any] | None = None, /, **fields: Any
) -> bool:
    """``report_progress()`` on the current run; outside a run it validates its arguments,
    does nothing else and returns False."""
    run = current_run.get()
    if run is None or run._run.pid != _process.pid or run._run.finished_at is not None:
        _values.checked_progress(current, total)  # the same checks as in a run
        if metadata is not None and not isinstance(metadata, Mapping):
            not_a_mapping(metadata)
        return False
    run.report_progress(current, total, metadata, **fields)
    return True


def track(
    iterable: Iterable[T], total: float | None = None, *, phase: str | None = None
) -> Iterator[T]:
    """``track()`` on the current run; outside a run it yields the items unchanged."""
    run = current_run.get()
    if run is None or run._run.pid != _process.pid or run._run.finished_at is not None:
        return iter(iterable)
    return run.track(iterable, total, phase=phase)


def wrap(fn: Callable[P, R], /) -> Callable[P, R]:
    """``fn``, carrying the caller's current run (and its OTel span) to wherever it is called.

    Threads start with an empty context, so in a ``ThreadPoolExecutor`` worker (or a
    ``threading.Thread``) started inside a run, ``heartbeat()`` and ``report_progress()``
    find no run and return False. Wrap the function you hand to the thread::

        @chaperone.supervised
        def import_all(paths):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(chaperone.wrap(import_file), paths))

    The context is captured when ``wrap`` is called (like ``contextvars.copy_context()``)
    and each call runs in its own copy of it, so one wrapped function may run in many
    threads at once. ``asyncio.to_thread`` already does this; ``loop.run_in_executor`` does
    not. Outside a run, ``wrap`` changes nothing: the module helpers still return False.

    .. versionadded:: 0.1
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def carried(*args: P.args, **kwargs: P.kwargs) -> R:
        # A Context may be entered by one thread at a time: each call gets its own copy.
        return context.copy().run(fn, *args, **kwargs)

    return carried
