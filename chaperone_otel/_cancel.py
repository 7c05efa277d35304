"""The ``cancel`` limit policy's reach: a run and the runs started inside it.

A sync run is cancelled cooperatively, at its next ``heartbeat()``, ``report_progress()``
or ``track()`` item. A job that does its work through nested supervised functions calls
those on the nested runs' handles, never on its own: armed alone, the run it limits ran to
its end ``completed`` (an async run is cancelled through its task, which its nested runs'
coroutines share). So the cancellation is armed on the run and on every live run below
it, in this process; a nested run started after the arming is armed at its start
(:func:`inherit`). The first of them to heartbeat raises ``JobLimitExceeded``, which ends
it ``cancelled`` and, unless the job catches it, each run above it.
Layer 1: imports only the run state.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._run import Run
from .exceptions import JobLimitExceeded


def _below(run: Run, ancestor: Run) -> bool:
    parent = run.parent
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def arm(run: Run, error: JobLimitExceeded, live: Iterable[Run]) -> None:
    """Arm ``error`` on ``run`` and on every run of ``live`` started inside it."""
    run.arm_cancel(error)
    for other in live:
        if other is not run and other.cancel is None and _below(other, run):
            other.arm_cancel(error)


def inherit(run: Run) -> None:
    """At a nested run's start: armed if the run it was started in is (see the module)."""
    parent = run.parent
    if parent is not None and parent.cancel is not None and run.cancel is None:
        run.arm_cancel(parent.cancel)
