"""Exceptions raised by chaperone-otel.

Every exception derives from :class:`ChaperoneError`, so ``except ChaperoneError`` catches
anything this library raises on purpose. Misuse (bad arguments) raises early, at decoration
or ``configure()`` time, with a message that says what to do.

.. versionadded:: 0.1
"""

from __future__ import annotations


class ChaperoneError(Exception):
    """Base class of every chaperone-otel exception."""


class ConfigurationError(ChaperoneError, ValueError):
    """A decorator argument, ``configure()`` option or environment variable is invalid.

    Subclasses :class:`ValueError` so generic argument-validation handlers still catch it.
    """


class JobLimitExceeded(ChaperoneError):
    """Raised *inside* a run whose limit policy is ``cancel`` once a limit is crossed.

    It is raised cooperatively, at the run's next ``heartbeat()`` or ``report_progress()``
    call (an async run's task is cancelled and this exception replaces the
    :class:`asyncio.CancelledError`). The run is recorded as ``cancelled``.

    Attributes:
        limit: which limit was crossed (``memory``, ``cpu``, ``fds``, ``timeout``).
        value: the limit, in its unit.
        actual: the measured value.
    """

    def __init__(self, limit: str, value: float, actual: float) -> None:
        self.limit = limit
        self.value = value
        self.actual = actual
        # As many decimals as tell the two apart: a 1 s timeout crossed at 1.04 s read
        # "1.0 s > 1.0 s".
        for digits in (1, 2, 3):
            shown, limit_shown = _with_unit(limit, actual, digits), _with_unit(limit, value, digits)
            if shown != limit_shown:
                break
        super().__init__(f"{limit} limit exceeded: {shown} > {limit_shown}")

    def __reduce__(self) -> tuple[type[JobLimitExceeded], tuple[str, float, float]]:
        return (type(self), (self.limit, self.value, self.actual))


def _with_unit(limit: str, value: float, digits: int = 1) -> str:
    """A limit value in its unit: MiB for memory, % of a core for cpu, s for timeout."""
    if limit == "memory":
        return f"{value / 2**20:.{digits}f} MiB"
    if limit == "cpu":
        return f"{value:.{digits - 1}f} % of a core"
    if limit == "timeout":
        return f"{value:.{digits}f} s"
    return f"{value:g}"


class NoActiveJobError(ChaperoneError, RuntimeError):
    """``current_job()`` was called outside a supervised run (strict mode only)."""


class RunClosed(ChaperoneError):
    """The error recorded on a run closed by hand (``sink.close_run()``, ``chaperone-otel
    close``): its process is gone or will never finish it (lost, or stuck for good), so
    the run is ended in the store and its alerts resolve. Never raised: its type and
    message are what ``error_type``/``error_message`` show."""


class SinkError(ChaperoneError):
    """The job store failed (I/O, lock held by another process, bad query)."""


class SchemaVersionError(SinkError):
    """The store file was written by a newer chaperone-otel than this one."""


__all__ = [
    "ChaperoneError",
    "ConfigurationError",
    "JobLimitExceeded",
    "NoActiveJobError",
    "RunClosed",
    "SchemaVersionError",
    "SinkError",
]
