"""The ``Request`` class the Celery integration gives each supervised task in the worker's
main process (Celery's documented hook for per-task failure handling, ``Task.Request``):
it tells the integration about the ends Celery sends no signal for, or sends without the
request in place. It does not import Celery: :mod:`.celery` passes the base class."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .._safety import handle_internal_errors as _guard

_closing: dict[tuple[type, int], type] = {}
_handled = threading.local()


@contextlib.contextmanager
def _handling(request: Any) -> Iterator[None]:
    """While Celery's main process handles ``request``'s end (``on_failure``,
    ``on_timeout``), the ``task_failure`` it sends means that delivery: before Celery 5.7
    it sends it without the request in place, and a worker may hold two deliveries of one
    task id (a redelivery), so the receiver could otherwise only guess the newest."""
    before = getattr(_handled, "request", None)
    _handled.request = request
    try:
        yield
    finally:
        _handled.request = before


def handled_request() -> Any:
    """The main process's ``Request`` whose failure or hard time limit Celery is handling
    on this thread (None: none)."""
    return getattr(_handled, "request", None)


def closing_request(base: Any, inst: Any) -> Any:
    """``base`` (a Celery ``Request`` class) whose ``on_failure``, ``on_timeout`` and
    ``cancel`` also tell ``inst`` (the integration's ``_Instrumentation``), so the worker's
    main process can close a run Celery requeues, retries or cancels without a signal, and
    the ``task_failure`` Celery sends from them names its own delivery (:func:`handled_request`).
    One class per (base, instrumentation)."""
    if getattr(base, "_chaperone_otel", None) is inst:
        return base
    key = (base, id(inst))
    found = _closing.get(key)
    if found is None:

        def on_failure(self: Any, exc_info: Any, *args: Any, **kwargs: Any) -> Any:
            # The task_failure Celery sends from here (a lost child; billiard's hard time
            # limit, which comes here before on_timeout) has the request in place only
            # from Celery 5.7: name the delivery for the receiver on every version.
            try:
                with _handling(self):
                    return base.on_failure(self, exc_info, *args, **kwargs)
            finally:
                with _guard("celery.requeued"):
                    inst.requeued(self, exc_info)

        def cancel(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Raises on pools that cannot stop a task (threads, solo): nothing is closed.
            result = base.cancel(self, *args, **kwargs)
            with _guard("celery.cancelled"):
                inst.cancelled(self)
            return result

        def on_timeout(self: Any, soft: bool, timeout: Any) -> Any:
            # At the hard limit Celery 5.7 sends task_failure without the request in place:
            # name it, so the receiver closes this delivery's execution, not the newest
            # one of the task id (a redelivery may run too).
            if soft:
                return base.on_timeout(self, soft, timeout)
            with _handling(self):
                return base.on_timeout(self, soft, timeout)

        found = type(
            base.__name__,
            (base,),
            {
                "on_failure": on_failure,
                "on_timeout": on_timeout,
                "cancel": cancel,
                "_chaperone_otel": inst,
            },
        )
        _closing[key] = found
    return found
