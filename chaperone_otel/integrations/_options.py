"""The integrations' common options, checked where they are given (``instrument()``, a
middleware's constructor, a task's own options at the worker's start): misuse raises at
once, rather than being swallowed at each task's start as an internal error while every
task runs unsupervised."""

from __future__ import annotations

import math
from typing import Any

from .._spec import LEASES
from .._units import parse_duration
from ..exceptions import ConfigurationError


def check_options(
    where: str,
    *,
    include: Any = None,
    heartbeat_interval: Any = None,
    lease: Any = None,
    flush_timeout: Any = 0.0,
    prefix: str = "",
) -> None:
    """Raise if an option is not valid (None: not given, nothing to check).

    Args:
        where: the call, for the message (``"instrument(app)"``, ``"task 'x'"``).
        include: a function of the task or actor.
        heartbeat_interval: a positive duration (seconds, a timedelta, ``"30s"``).
        lease: one of :data:`~chaperone_otel._spec.LEASES`.
        flush_timeout: seconds >= 0, finite.
        prefix: how the options are spelled there (a task's ``chaperone_`` options).

    Raises:
        ConfigurationError: naming ``where`` and the option.
    """
    try:
        if include is not None and not callable(include):
            raise ConfigurationError(f"include={include!r}: expected a function of the task")
        if heartbeat_interval is not None:
            parse_duration(heartbeat_interval, what=f"{prefix}heartbeat_interval")
        if lease is not None and lease not in LEASES:
            raise ConfigurationError(f"{prefix}lease={lease!r}: choose one of {', '.join(LEASES)}")
        if (
            isinstance(flush_timeout, bool)
            or not isinstance(flush_timeout, (int, float))
            or not math.isfinite(flush_timeout)
            or flush_timeout < 0
        ):
            raise ConfigurationError(f"flush_timeout={flush_timeout!r}: expected seconds >= 0")
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from None
