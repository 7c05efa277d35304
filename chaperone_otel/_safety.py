"""Telemetry never breaks the job (DESIGN §8).

Every code path that runs *for telemetry* — record emission, span events, heartbeat flushes,
resource sampling, hooks, exporters, sink writes — runs under :func:`handle_internal_errors`.
A failure there is logged once per (place, exception type), counted, and swallowed.

Tests flip :func:`set_raise_internal_errors` (an explicit switch, never by sniffing
``PYTEST_CURRENT_TEST``) so a swallowed error fails the test that caused it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger("chaperone_otel")

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # The parent's lock may have been held by another thread at fork: a copy held forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
_counts: Counter[str] = Counter()
_logged: set[tuple[str, str]] = set()
_raise = False
_listeners: list[Callable[[str], None]] = []


def set_raise_internal_errors(enabled: bool) -> bool:
    """Make swallowed internal errors re-raise (for test suites). Returns the old value."""
    global _raise
    old, _raise = _raise, enabled
    return old


def internal_error_counts() -> dict[str, int]:
    """Internal errors swallowed so far, by place. Also exported as a metric."""
    with _lock:
        return dict(_counts)


def reset_internal_errors() -> None:
    """Forget counts and the once-only log memory (for tests and ``reset()``)."""
    with _lock:
        _counts.clear()
        _logged.clear()


def add_error_listener(listener: Callable[[str], None]) -> None:
    """Call ``listener(where)`` on every swallowed error (the metrics layer counts them)."""
    _listeners.append(listener)


def remove_error_listener(listener: Callable[[str], None]) -> None:
    """Undo :func:`add_error_listener` (no error if absent)."""
    if listener in _listeners:
        _listeners.remove(listener)


def record_internal_error(where: str, exc: BaseException) -> None:
    """Log (once per place and type), count, and notify listeners of a swallowed error."""
    key = (where, type(exc).__qualname__)
    with _lock:
        _counts[where] += 1
        first = key not in _logged
        _logged.add(key)
    if first:
        # A logging filter or handler that raises (logging itself swallows only handler
        # errors) must not carry the error it reports into the job: counted, not logged.
        with contextlib.suppress(Exception):
            logger.warning(
                "chaperone-otel internal error in %s (further %s errors here are counted, "
                "not logged)",
                where,
                type(exc).__name__,
                exc_info=exc,
            )
    for listener in list(_listeners):
        # A listener must not recurse into the error path it reports on.
        with contextlib.suppress(Exception):
            listener(where)


_background: list[BaseException] = []


def raised_in_background(exc: BaseException) -> None:
    """Keep ``exc``, an error the test switch re-raised on one of chaperone's own threads
    (a hook on the hooks thread, a monitor pass): there it would only end the thread, and
    the test that caused it would pass. ``testing``'s capture raises it at its end."""
    with _lock:
        if len(_background) < 100:
            _background.append(exc)


class kept_in_background:
    """On one of chaperone's own threads: an ``Exception`` out of the block (only the test
    switch lets one out) is kept by :func:`raised_in_background`, and the thread goes on."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if isinstance(exc, Exception):
            raised_in_background(exc)
            return True
        return False


def take_background_errors() -> list[BaseException]:
    """The errors :func:`raised_in_background` kept since the last call, oldest first."""
    with _lock:
        taken = list(_background)
        _background.clear()
    return taken


def internal_error(where: str, exc: Exception) -> None:
    """Handle ``exc`` caught by a bare ``try/except Exception`` on a per-run path.

    The same policy as :class:`handle_internal_errors` (log once, count, swallow; re-raise
    when the test switch is on) for code that runs on every run's start and end, where a
    ``try`` costs nothing until something fails but a context manager costs ~0.3 us a use
    (an object, ``__enter__`` and ``__exit__`` calls), and ``where`` is only formatted when
    it is needed.
    """
    record_internal_error(where, exc)
    if _raise:
        raise exc


class handle_internal_errors:
    """Swallow (log once, count) any ``Exception`` raised in the block.

    ``BaseException`` (KeyboardInterrupt, SystemExit, CancelledError) passes through. A
    class rather than ``@contextmanager``: it guards every run's start and end, and the
    generator-based form cost ~3 us a use.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        record_internal_error(self.where, exc)
        return not _raise


def safe(where: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Decorator form of :func:`handle_internal_errors`; the call returns None on failure."""

    def decorate(func: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                record_internal_error(where, exc)
                if _raise:
                    raise
                return None

        return wrapper

    return decorate


def guarded_call(
    hook: Callable[..., object], *args: Any, where: str | None = None
) -> Callable[[], object]:
    """``hook(*args)`` as a call of no arguments that never raises: an ``Exception`` is an
    internal error (re-raised under the test switch); any other ``BaseException`` (a hook
    calling ``sys.exit()``) is recorded as one too, as it would otherwise end the hooks
    thread and with it every later hook of the process."""
    label = where or f"hook:{getattr(hook, '__name__', 'hook')}"

    def call() -> object:
        try:
            return hook(*args)
        except Exception as error:
            internal_error(label, error)
        except BaseException as error:  # sys.exit(): see above
            record_internal_error(label, error)
        return None

    return call
