"""This process's identity as lifecycle records and resources state it: host, pid, instance.

One place for the three values, because two layers need them: every record carries them
(``_run``), and the SDK resource that ``configure()`` builds (``export``) states them once
so the OTel log writer can leave them off each record. They are module attributes, read as
``_process.pid`` at use, because a forked child gets new ones (a new pid and a new service
instance: a Celery prefork child is its own instance).

Whether this process is a ``multiprocessing`` child, which must flush each run's records
as the run finishes (:func:`flush_if_worker`), is a property of the process too, and is
cached per pid here.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Callable
from typing import Final

HOST: Final = socket.gethostname()


def _new_instance_id() -> str:
    return str(uuid.uuid4())


instance_id = _new_instance_id()
"""``service.instance.id``: a uuid4 per process, new in a forked child."""

pid = os.getpid()
"""``process.pid``, cached: ``getpid()`` is a system call, and records read it twice per run."""


_finish_flush: Callable[[], object] | None = None
_pool_worker: tuple[int, bool] = (0, False)  # (pid, is a multiprocessing child)


def set_finish_flush(flush: Callable[[], object] | None) -> None:
    """What :func:`flush_if_worker` calls (``_setup`` gives ``chaperone.flush``)."""
    global _finish_flush
    _finish_flush = flush


def flush_if_worker() -> None:
    """After a run finished, flush if this process is a ``multiprocessing`` child.

    A pool worker ends with ``os._exit`` (after its task loop) or is killed by
    ``Pool.terminate()`` (which ``with Pool() as pool:`` calls), so neither ``atexit`` nor
    the SDK's shutdown runs there: a run's records still queued in a batch processor at
    that moment are lost, and the run stays ``running`` in the store for ever. So a run
    that finishes in such a process is flushed before the task returns its result. The
    check is made once per process (``multiprocessing.parent_process()``, set for fork and
    spawn children alike) and costs a tuple compare per run elsewhere.
    """
    global _pool_worker
    seen, worker = _pool_worker
    if seen != pid:
        mp = sys.modules.get("multiprocessing")
        parent_process = getattr(mp, "parent_process", None)
        if mp is not None and parent_process is None:
            # Being imported on another thread right now (a partly initialised module):
            # judged at a later run. A pool worker imported it before its first task.
            return
        worker = parent_process is not None and parent_process() is not None
        _pool_worker = (pid, worker)
    flush = _finish_flush
    if worker and flush is not None:
        flush()


def _after_fork_in_child() -> None:
    global instance_id, pid
    instance_id = _new_instance_id()
    pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
