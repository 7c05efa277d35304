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

A third: the HTTP session itself. ``requests`` pools connections in a urllib3 ``PoolManager``
whose container holds an ``RLock`` while a request looks up its pool, and whose pools hold
the keep-alive sockets. A fork in the middle of an export gave the child a held copy of that
lock (its ``shutdown()`` export hung for ever: 4 of 1,800 children under load), and a fork
between exports gave it the parent's idle socket, on which parent and child would then
interleave requests. :func:`session` makes the session each OTLP exporter uses (the
exporters' public ``session=`` argument), and a fork handler mounts new adapters on each in
the child: new pools, new locks, new connections. The inherited pools are not used again,
but urllib3 closes each pool's connections in a ``weakref.finalize`` (when the pool is
collected, or at exit), which takes the lock of the pool's connection queue: held by the
parent's exporter taking or returning a connection at the fork, it hung the child's exit
(about 1 child in 3,000 in a loaded fork storm on Python 3.10). The handler gives each
inherited queue new locks first, so that close runs, on the child's copies of the sockets.
"""

from __future__ import annotations

import importlib
import os
import queue
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


_sessions: weakref.WeakSet[Any] = weakref.WeakSet()

CREDENTIAL_PROVIDER_VARIABLES: Final = {
    "traces": "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    "logs": "OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER",
    "metrics": "OTEL_PYTHON_EXPORTER_OTLP_HTTP_METRICS_CREDENTIAL_PROVIDER",
}
"""The exporters' own way to get a session (an entry point named by the variable); where
one is set, the exporter makes its session and :func:`session` stays out of the way."""


def session(signal: str) -> Any:
    """A ``requests.Session`` for the OTLP exporter of ``signal``, renewed in forked
    children (see the module doc); None where a credential provider variable asks the
    exporter to make its own."""
    if os.environ.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER") or os.environ.get(
        CREDENTIAL_PROVIDER_VARIABLES[signal]
    ):
        return None
    import requests  # noqa: PLC0415 - only with OTLP export, which depends on it

    made = requests.Session()
    _sessions.add(made)
    return made


def _renew_queue_locks(connections: queue.Queue[Any]) -> None:
    """New locks for a queue whose lock a thread that is gone may hold (a forked child)."""
    connections.mutex = threading.Lock()
    connections.not_empty = threading.Condition(connections.mutex)
    connections.not_full = threading.Condition(connections.mutex)
    connections.all_tasks_done = threading.Condition(connections.mutex)


def _inherited_pools(adapter: Any) -> list[Any]:
    """The connection pools of a ``requests`` adapter, read without taking its managers'
    locks (a thread that is gone may hold them): urllib3's ``RecentlyUsedContainer`` keeps
    them in ``_container``, as it has since urllib3 1.x."""
    managers = [getattr(adapter, "poolmanager", None)]
    managers += list((getattr(adapter, "proxy_manager", None) or {}).values())
    pools: list[Any] = []
    for manager in managers:
        container = getattr(getattr(manager, "pools", None), "_container", None)
        if container is not None:
            pools += list(container.values())
    return pools


def _new_http_pools_in_child() -> None:
    if not _sessions:
        return
    from requests.adapters import HTTPAdapter  # noqa: PLC0415 - loaded already

    for made in list(_sessions):
        for prefix, adapter in list(made.adapters.items()):
            for pool in _inherited_pools(adapter):
                connections = getattr(pool, "pool", None)
                if isinstance(connections, queue.Queue):
                    _renew_queue_locks(connections)
            made.mount(prefix, HTTPAdapter())


def _in_child() -> None:
    for renew in (_new_export_locks_in_child, _new_http_pools_in_child):
        try:
            renew()
        except Exception as exc:  # never break the child over it
            record_internal_error("export:fork", exc)


os.register_at_fork(after_in_child=_in_child)

__all__ = [
    "CREDENTIAL_PROVIDER_VARIABLES",
    "LAZY_EXPORT_IMPORTS",
    "preload",
    "session",
    "track_metric_reader",
]
