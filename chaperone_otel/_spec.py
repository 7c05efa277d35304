"""A job's options, validated once: the spec of its runs, and what a run derives from it.

``supervised(...)``, the ``Supervised`` base class and ``with supervised(...)`` all turn their
keyword options into one frozen :class:`Spec` here, at decoration (or class definition)
time, so misuse raises :class:`~chaperone_otel.exceptions.ConfigurationError` before any run
(DESIGN §8). :class:`Static` is what every run of a spec shares under one configuration
(name, queue, interval, merged hooks, the static attributes): computed once per (spec,
configuration) and cached on the spec, because a run's start is on the job's thread.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, cast

from . import semconv as sc
from ._config import LIMIT_POLICIES, Config, Hooks, LimitPolicy, validate_interval
from ._events import AttributeValue
from ._units import EPOCH_MAX, EPOCH_MIN, parse_bytes, parse_duration
from .exceptions import ConfigurationError

Lease = Literal["heartbeat", "liveness"]
LEASES: Final = ("heartbeat", "liveness")
"""What keeps a run's lease: ``heartbeat`` (the default) is the job's own code (heartbeat or
progress within ``heartbeat_interval``); ``liveness`` is its process being alive, for code
that cannot heartbeat (then only ``timeout`` makes it stuck, and silence makes it lost)."""


@dataclass(frozen=True)
class Spec:
    """A job's validated options (see :func:`make_spec`); None means "the configured default"."""

    name: str | None = None
    queue: str | None = None
    attempt: int | None = None
    heartbeat_interval: float | None = None
    timeout: float | None = None
    stall_timeout: float | None = None
    memory_limit: int | None = None
    cpu_limit: float | None = None
    fd_limit: int | None = None
    on_limit: LimitPolicy | None = None
    supervision_id: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    hooks: Hooks = field(default_factory=Hooks)
    tracer_provider: Any = None
    schedule: str | None = None
    scheduled_for: float | None = None
    lease: Lease | None = None


def require_id(value: Any, what: str) -> str:
    """``value`` if it is a non-empty string (a run or execution id, a scope's name), else a
    :class:`ConfigurationError` naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    return value


def require_attempt(attempt: Any) -> int:
    """``attempt`` if it is an attempt number (an int from 1; not a bool), else a
    :class:`ConfigurationError`."""
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ConfigurationError(f"attempt must be an int >= 1, got {attempt!r}")
    return attempt


def make_spec(
    name: str | None,
    *,
    queue: str | None,
    attempt: int | None,
    heartbeat_interval: Any,
    timeout: Any,
    stall_timeout: Any = None,
    memory_limit: Any = None,
    cpu_limit: Any = None,
    fd_limit: Any = None,
    on_limit: Any = None,
    supervision_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    hooks: Mapping[str, Any] | None = None,
    tracer_provider: Any = None,
    schedule: Any = None,
    scheduled_for: Any = None,
    lease: Any = None,
) -> Spec:
    """Validate every option now: misuse fails at decoration time (DESIGN §8). An option
    not given is unset (no limit, no hook, the global tracer provider)."""
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise ConfigurationError(f"queue must be a non-empty string, got {queue!r}")
    if attempt is not None:
        require_attempt(attempt)
    if supervision_id is not None and (not isinstance(supervision_id, str) or not supervision_id):
        raise ConfigurationError("supervision_id must be a non-empty string")
    if cpu_limit is not None and (
        isinstance(cpu_limit, bool)
        or not isinstance(cpu_limit, (int, float))
        or not math.isfinite(cpu_limit)
        or cpu_limit <= 0
    ):
        raise ConfigurationError(
            f"cpu_limit is percent of one core (e.g. 80, or 200 for two cores), got {cpu_limit!r}"
        )
    if fd_limit is not None and (
        isinstance(fd_limit, bool) or not isinstance(fd_limit, int) or fd_limit <= 0
    ):
        raise ConfigurationError(f"fd_limit must be a positive int, got {fd_limit!r}")
    if on_limit is not None and on_limit not in LIMIT_POLICIES:
        raise ConfigurationError(
            f"on_limit={on_limit!r}: choose one of {', '.join(LIMIT_POLICIES)}"
        )
    if lease is not None and lease not in LEASES:
        raise ConfigurationError(
            f"lease={lease!r}: choose 'heartbeat' (the job's code must heartbeat within "
            "heartbeat_interval) or 'liveness' (its process being alive is enough)"
        )
    attrs: dict[str, AttributeValue] = {}
    for key, value in (attributes or {}).items():
        if not isinstance(key, str) or not isinstance(value, (str, bool, int, float)):
            raise ConfigurationError(
                f"attributes[{key!r}]: keys must be str and values str, bool, int or float"
            )
        attrs[key] = value
    return Spec(
        name=name.strip() if name else None,
        queue=queue.strip() if queue else None,
        attempt=attempt,
        heartbeat_interval=(
            validate_interval(heartbeat_interval, "heartbeat_interval")
            if heartbeat_interval is not None
            else None
        ),
        timeout=parse_duration(timeout, what="timeout") if timeout is not None else None,
        stall_timeout=(
            parse_duration(stall_timeout, what="stall_timeout")
            if stall_timeout is not None
            else None
        ),
        memory_limit=parse_bytes(memory_limit) if memory_limit is not None else None,
        cpu_limit=float(cpu_limit) if cpu_limit is not None else None,
        fd_limit=fd_limit,
        on_limit=on_limit,
        supervision_id=supervision_id,
        attributes=attrs,
        hooks=Hooks.from_kwargs(hooks or {}),
        tracer_provider=tracer_provider,
        schedule=schedule_name(schedule),
        scheduled_for=moment(scheduled_for),
        lease=lease,
    )


def schedule_name(schedule: Any) -> str | None:
    """The schedule a job's runs belong to: a name, or anything with a ``name`` (the
    :class:`~chaperone_otel.Schedule` that ``chaperone_otel.schedule()`` returns)."""
    if schedule is None:
        return None
    name = schedule if isinstance(schedule, str) else getattr(schedule, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            "schedule= takes a schedule's name or what chaperone_otel.schedule() returned, "
            f"got {schedule!r}"
        )
    return name.strip()


def moment(value: Any, what: str = "scheduled_for") -> float | None:
    """A due time as Unix seconds (a number or an aware datetime); None stays None.

    Raises:
        ConfigurationError: anything else (a naive datetime: its zone is unknown).
    """
    if value is None:
        return None
    if hasattr(value, "timestamp") and getattr(value, "tzinfo", None) is not None:
        value = value.timestamp()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not EPOCH_MIN <= value <= EPOCH_MAX  # also NaN
    ):
        raise ConfigurationError(
            f"{what} must be Unix seconds (years 1 to 9999) or an aware datetime, got {value!r}"
        )
    return float(value)


def overrun_limit(value: Any) -> float | None:
    """``close_run(timeout=...)``: the time limit a run ran past, in seconds (a number,
    a timedelta or ``"2h"``, as ``timeout=`` everywhere); 0 when the closer knows the run
    ran past its limit but not the limit's value. None stays None.

    Raises:
        ConfigurationError: not a duration, negative, or not finite.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    return parse_duration(value, what="timeout")


def qualified_name(func: Callable[..., Any]) -> str:
    """The default job name of a function or class: ``module.QualName``.

    In a script (``__main__``) the module is what it was run as: ``python -m etl.nightly``
    gives ``etl.nightly.QualName``, ``python nightly_import.py`` gives
    ``nightly_import.QualName``, so same-named functions of two scripts do not share a name
    (and their metrics and alerts). Only code with no file (``python -c``, a REPL) keeps
    the bare ``QualName``."""
    while isinstance(func, functools.partial):  # the function it binds, not functools'
        func = func.func
    if not hasattr(func, "__qualname__") and not hasattr(func, "__name__"):
        func = type(func)  # a callable instance: its class (not one "job" for every one)
    module = getattr(func, "__module__", None) or ""
    qualname = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "job"))
    if module in _MAIN_NAMES:
        module = _main_module_name()
    return f"{module}.{qualname}" if module else qualname


_MAIN_NAMES: Final = frozenset({"__main__", "__mp_main__"})
"""What the main script's module is called: ``__mp_main__`` in a child that multiprocessing
*spawned*, which runs the parent's script again under that name (a ``spawn`` pool's runs
of ``score`` were ``__mp_main__.score``, the parent's and a fork pool's ``pool.score``)."""


def _main_module_name() -> str:
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(spec_name, str) and spec_name and spec_name not in _MAIN_NAMES:
        return spec_name.removesuffix(".__main__")
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path:
        return os.path.splitext(os.path.basename(path))[0]
    return ""


class Static:
    """What a run's start derives from its spec and the configuration alone, computed once
    per (spec, configuration) instead of at every run (see :func:`static_for`)."""

    __slots__ = (
        "absent",
        "config",
        "flush_period",
        "heartbeat_interval",
        "hooks",
        "lease",
        "name",
        "on_limit",
        "queue",
        "tail",
    )

    def __init__(self, spec: Spec, config: Config) -> None:
        self.config = config
        self.name = cast(str, spec.name)
        self.queue = spec.queue or "default"
        self.heartbeat_interval = spec.heartbeat_interval or config.heartbeat_interval
        self.flush_period = config.flush_period_for(self.heartbeat_interval)
        self.on_limit: str = spec.on_limit or config.on_limit
        self.lease: Lease = spec.lease or "heartbeat"
        self.hooks = (
            config.hooks.merged(spec.hooks)
            if config.hooks and spec.hooks
            else spec.hooks or config.hooks
        )
        # The run's static attributes (limits with their policy, user attributes), in the
        # order the span's start attributes always had them after the per-run ones: the
        # span writer appends them as they are (it inserts the per-run timeout_at).
        tail: dict[str, AttributeValue] = {}
        limits: tuple[tuple[str, float | None], ...] = (
            (sc.ATTR_JOB_TIMEOUT, spec.timeout),
            (sc.ATTR_LIMIT_MEMORY, spec.memory_limit),
            (sc.ATTR_LIMIT_CPU, spec.cpu_limit),
            (sc.ATTR_LIMIT_FDS, spec.fd_limit),
        )
        for key, limit in limits:
            if limit is not None:
                tail[key] = limit
                tail[sc.ATTR_LIMIT_POLICY] = self.on_limit
        for key, user_value in spec.attributes.items():
            tail[sc.ATTR_USER_PREFIX + key] = user_value
        self.tail = tail
        # The health signals no run of this spec has (see Rules.settled).
        optional_signals: tuple[tuple[str, float | None], ...] = (
            ("timeout_at", spec.timeout),
            ("stall_deadline", spec.stall_timeout),
            ("memory_limit", spec.memory_limit),
            ("cpu_limit", spec.cpu_limit),
            ("fd_limit", spec.fd_limit),
        )
        self.absent = frozenset(name for name, value in optional_signals if value is None)


def static_for(spec: Spec, config: Config) -> Static:
    """The spec's :class:`Static` for ``config``, cached on the (frozen) spec itself."""
    static: Static | None = spec.__dict__.get("_static")
    if static is None or static.config is not config:
        static = Static(spec, config)
        object.__setattr__(spec, "_static", static)
    return static


def replace_spec(spec: Spec, **changes: Any) -> Spec:
    """A copy of ``spec`` with ``changes`` (the decorator fills in the function's name)."""
    return replace(spec, **changes)


def phase_ranges(
    spec: Mapping[str, float | tuple[float, float]] | None, weights: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """Declared phases (``Supervision.phases``) as shares of 0..1, validated.

    Either all weights (each phase gets its share in declaration order) or all explicit
    ``(start, end)`` percent ranges.

    Raises:
        ConfigurationError: no phase, a bad range, negative or all-zero weights, or a mix.
    """
    items = dict(spec or {}, **weights)
    if not items:
        raise ConfigurationError("phases(): declare at least one phase")
    ranges: dict[str, tuple[float, float]] = {}
    if all(isinstance(v, tuple) for v in items.values()):
        for name, value in items.items():
            lo, hi = cast(tuple[float, float], value)
            if not 0 <= lo < hi <= 100:
                raise ConfigurationError(
                    f"phase {name!r}: range {value!r} must satisfy 0 <= start < end <= 100"
                )
            ranges[name] = (lo / 100.0, hi / 100.0)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items.values()):
        total = float(sum(cast(float, v) for v in items.values()))
        if total <= 0 or any(cast(float, v) < 0 for v in items.values()):
            raise ConfigurationError("phases(): weights must be non-negative, not all zero")
        acc = 0.0
        for name, value in items.items():
            share = cast(float, value) / total
            ranges[name] = (acc, min(1.0, acc + share))
            acc += share
    else:
        raise ConfigurationError(
            "phases(): give all weights (numbers) or all (start, end) percent ranges"
        )
    return ranges
