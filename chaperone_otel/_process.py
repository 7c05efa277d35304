"""This process's identity as lifecycle records and resources state it: host, pid, instance.

One place for the three values, because two layers need them: every record carries them
(``_run``), and the SDK resource that ``configure()`` builds (``export``) states them once
so the OTel log writer can leave them off each record. They are module attributes, read as
``_process.pid`` at use, because a forked child gets new ones (a new pid and a new service
instance: a Celery prefork child is its own instance).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Final

HOST: Final = socket.gethostname()


def _new_instance_id() -> str:
    return str(uuid.uuid4())


instance_id = _new_instance_id()
"""``service.instance.id``: a uuid4 per process, new in a forked child."""

pid = os.getpid()
"""``process.pid``, cached: ``getpid()`` is a system call, and records read it twice per run."""


def _after_fork_in_child() -> None:
    global instance_id, pid
    instance_id = _new_instance_id()
    pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
