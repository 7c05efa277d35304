"""What keeps a forked child of a process that exports over OTLP/HTTP from hanging.

``requests`` imports ``netrc`` (and with it ``shlex``) lazily, inside every request
(``requests.utils.get_netrc_auth``). The first export does that import on the batch
processor's thread; a fork at that moment gives the child a copy of the module's import
lock, held by a thread that does not exist there, and the child's own first export (its
``shutdown()`` at exit, its first batch) waits on it for ever: CPython re-creates only the
global import lock after fork, not the per-module ones. A fork storm at the first export hung
8 of 180 children this way. :func:`preload` imports those modules in ``configure()``, before
any exporter thread starts. ``tests/export/test_forksafe.py`` checks that an export imports
nothing new, so a new lazy import in a later ``requests`` shows up as a failing test, not as
a hang in production.

A second inherited lock: the SDK's ``PeriodicExportingMetricReader`` holds ``_export_lock``
while it exports (its ticker thread every interval, and ``force_flush()``, which
``chaperone.flush()`` calls), and its fork handler restarts the ticker thread but keeps that
lock (opentelemetry-sdk 1.45). A fork during a metrics export gave the child a held copy,
and its own flush or ``shutdown()`` hung for ever (2 of 25 forks during ``flush()``).
:func:`track_metric_reader` registers each reader ``configure()`` installs, and a fork
handler gives each a new lock in the child.
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
from typing import Any, Final

from .._safety import record_internal_error

LAZY_EXPORT_IMPORTS: Final = ("netrc", "shlex")
"""Modules the OTLP/HTTP export path imports lazily, on the exporter's thread (see above)."""


def preload() -> None:
    """Import what the OTLP/HTTP export path would import on its first export."""
    for name in LAZY_EXPORT_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # pragma: no cover - stdlib modules
            record_internal_error("export:preload", exc)


_metric_readers: weakref.WeakSet[Any] = weakref.WeakSet()


def track_metric_reader(reader: Any) -> None:
    """Give ``reader`` a new export lock in forked children (see the module doc)."""
    _metric_readers.add(reader)


def _new_export_locks_in_child() -> None:
    for reader in list(_metric_readers):
        if isinstance(getattr(reader, "_export_lock", None), type(threading.Lock())):
            reader._export_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_export_locks_in_child)

__all__ = ["LAZY_EXPORT_IMPORTS", "preload", "track_metric_reader"]
