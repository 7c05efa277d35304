"""Counting what a batch processor drops because its queue is full.

The SDK's batch processors drop a record or span when their queue is full (an endpoint
down for longer than the queue lasts, an exporter slower than the runs): a lifecycle record
lost that way makes a run look lost or never started in the store, yet the SDK only logs
"Queue full, dropping Log." and counts it nowhere unless its experimental self-metrics are
switched on (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``). The design's
error policy is that telemetry lost on the way out is logged once and *counted*, so a
processor ``configure()`` installs reports every drop as
``chaperone.internal.errors{chaperone_internal_where="export"}``, like a failed export.

How: the SDK's ``BatchProcessor`` calls its processor-metrics object's ``drop_items`` at
exactly the places it drops (its own accounting, not a guess from the queue's length);
:func:`count_queue_drops` puts a forwarding object in front of it. A processor without that
object (another SDK version) is left as it is, uncounted (the SDK still logs).

Layer: ``export``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .._safety import record_internal_error

_PROTOCOL: Final = ("register_queue_size", "drop_items", "finish_items")
"""The SDK's ``ProcessorMetricsT``: what the forwarding object must answer."""


class QueueFullError(RuntimeError):
    """A record or span dropped by a batch processor whose queue was full."""


class _CountedDrops:
    """The SDK's processor metrics, plus chaperone's count of every queue-full drop."""

    __slots__ = ("_inner", "_message", "_where")

    def __init__(self, inner: Any, where: str, message: str) -> None:
        self._inner = inner
        self._where = where
        self._message = message

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self._inner.register_queue_size(get_queue_size)

    def finish_items(self, count: int) -> None:
        self._inner.finish_items(count)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._inner.drop_items(count, error_type)
        if error_type == "queue_full":  # not "already_shutdown": nothing left to report to
            for _ in range(count):
                record_internal_error(self._where, QueueFullError(self._message))


def count_queue_drops(processor: Any, signal: str) -> bool:
    """Count ``processor``'s queue-full drops under ``export:<signal>`` (``spans``,
    ``logs``); False when its SDK version keeps no processor-metrics object to stand in
    front of."""
    batch: Any = getattr(processor, "_batch_processor", None)
    inner = getattr(batch, "_metrics", None)
    if inner is None or not all(callable(getattr(inner, name, None)) for name in _PROTOCOL):
        return False
    spans = signal == "spans"
    variable = "OTEL_BSP_MAX_QUEUE_SIZE" if spans else "OTEL_BLRP_MAX_QUEUE_SIZE"
    size = getattr(batch, "_max_queue_size", None)
    message = (
        f"a {'span' if spans else 'log record'} was dropped: the batch processor's queue "
        f"{f'of {size} ' if isinstance(size, int) else ''}was full (its endpoint down for "
        "longer than the queue lasts, or slower than what comes in). "
        f"Records dropped here never reach the store; raise {variable} or put a "
        "Collector with a sending queue in front of the sink"
    )
    batch._metrics = _CountedDrops(inner, f"export:{signal}", message)
    return True


__all__ = ["QueueFullError", "count_queue_drops"]
