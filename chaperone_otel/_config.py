"""The one frozen configuration object, and the environment variable table.

Precedence for every option: argument to ``configure()`` > environment variable > default.
Standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` …) are
honoured by the OTel SDK itself and never duplicated here.

=====================  ==========================================  =================
option                 environment variable                        default
=====================  ==========================================  =================
sink                   ``CHAPERONE_OTEL_SINK``                     none (no store)
prometheus_port        ``CHAPERONE_OTEL_PROMETHEUS_PORT``          none (no /metrics)
prometheus_host        ``CHAPERONE_OTEL_PROMETHEUS_HOST``          ``127.0.0.1``
heartbeat_interval     ``CHAPERONE_OTEL_HEARTBEAT_INTERVAL``       60 s
flush_period           ``CHAPERONE_OTEL_FLUSH_PERIOD``             min(interval/4, 15 s);
                                                                   at most interval/2
sample_interval        ``CHAPERONE_OTEL_SAMPLE_INTERVAL``          1 s
on_limit               ``CHAPERONE_OTEL_ON_LIMIT``                 ``record``
long_run_threshold     ``CHAPERONE_OTEL_LONG_RUN_THRESHOLD``       120 s
console                ``CHAPERONE_OTEL_CONSOLE``                  false
otlp                   ``CHAPERONE_OTEL_OTLP``                     true when an OTLP endpoint
                                                                   is set, else false
=====================  ==========================================  =================
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from ._health import DEFAULT_POLICY, HealthPolicy
from ._units import parse_duration
from .exceptions import ConfigurationError

LimitPolicy = Literal["record", "warn", "cancel"]
LIMIT_POLICIES: Final = ("record", "warn", "cancel")
HOOK_NAMES: Final = (
    "on_heartbeat_missed",
    "on_stuck",
    "on_timeout",
    "on_violation",
    "on_failure",
    "on_complete",
    "on_health_change",
)
"""Local hooks, the Python form of Chaperone's events. Each takes one ``JobState``
(``on_violation`` also gets the violation, ``on_health_change`` the old health)."""

Hook = Callable[..., object]

HOOK_ARGUMENTS: Final = {
    **dict.fromkeys(HOOK_NAMES, ("state",)),
    "on_violation": ("state", "violation"),
    "on_health_change": ("state", "old_health"),
}
"""What each hook is called with, positionally: the run's ``JobState``, then the
``Violation`` (``on_violation``) or the health before the change (``on_health_change``)."""


def _check_arity(name: str, hook: Hook) -> None:
    """Refuse, when it is given, a hook that cannot take the arguments it will be called
    with: called later on the hooks thread, its TypeError would only be logged and counted."""
    expected = HOOK_ARGUMENTS[name]
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        signature.bind(*expected)
    except TypeError as e:
        raise ConfigurationError(
            f"{name} is called as {name}({', '.join(expected)}), but "
            f"{getattr(hook, '__qualname__', repr(hook))}{signature} cannot take that ({e}); "
            f"give it {len(expected)} positional parameter(s)"
        ) from None


@dataclass(frozen=True)
class Hooks:
    """Local hook callables; run on the monitor thread, never able to crash it."""

    on_heartbeat_missed: tuple[Hook, ...] = ()
    on_stuck: tuple[Hook, ...] = ()
    on_timeout: tuple[Hook, ...] = ()
    on_violation: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_complete: tuple[Hook, ...] = ()
    on_health_change: tuple[Hook, ...] = ()

    @classmethod
    def from_kwargs(cls, values: Mapping[str, Hook | None]) -> Hooks:
        """Build from ``on_*=callable`` keyword arguments, checking each is callable."""
        built: dict[str, tuple[Hook, ...]] = {}
        for name, hook in values.items():
            if hook is None:
                continue
            if name not in HOOK_NAMES:
                what = "hook" if name.startswith("on_") else "option"
                raise ConfigurationError(
                    f"unknown {what} {name!r}; hooks are {', '.join(HOOK_NAMES)} (see "
                    "configure()'s docstring for the options)"
                )
            if not callable(hook):
                raise ConfigurationError(f"{name} must be callable, got {type(hook).__name__}")
            _check_arity(name, hook)
            built[name] = (hook,)
        return cls(**built)

    def merged(self, other: Hooks) -> Hooks:
        """Hooks of ``self`` then ``other`` (global hooks run before per-run hooks)."""
        return Hooks(**{n: getattr(self, n) + getattr(other, n) for n in HOOK_NAMES})

    def __post_init__(self) -> None:
        # Checked at every run start and end: compute once.
        object.__setattr__(self, "_any", any(getattr(self, n) for n in HOOK_NAMES))

    def __bool__(self) -> bool:
        return self._any  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class Config:
    """Process-wide settings. Build with :func:`chaperone_otel.configure`, never mutate.

    ``tracer_provider``, ``meter_provider`` and ``logger_provider`` default to the OTel
    globals at the time a run starts; ``clock`` returns Unix seconds and is injectable for
    tests (``chaperone_otel.testing.FakeClock``).
    """

    service_name: str | None = None
    sink: str | None = None
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"
    heartbeat_interval: float = 60.0
    flush_period: float | None = None
    sample_interval: float = 1.0
    on_limit: LimitPolicy = "record"
    long_run_threshold: float = 120.0
    console: bool = False
    otlp: bool | None = None
    otlp_endpoint: str | None = None
    health: HealthPolicy = DEFAULT_POLICY
    hooks: Hooks = field(default_factory=Hooks)
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        validate_interval(self.heartbeat_interval, "heartbeat_interval")
        if self.flush_period is not None:
            validate_interval(self.flush_period, "flush_period")
        validate_interval(self.sample_interval, "sample_interval")
        validate_interval(self.long_run_threshold, "long_run_threshold")
        if self.on_limit not in LIMIT_POLICIES:
            raise ConfigurationError(
                f"on_limit={self.on_limit!r}: choose one of {', '.join(LIMIT_POLICIES)}"
            )
        if self.prometheus_port is not None and not (
            isinstance(self.prometheus_port, int) and 0 <= self.prometheus_port < 65536
        ):
            raise ConfigurationError(
                f"prometheus_port must be an int in 0..65535 (0 picks a free port), got "
                f"{self.prometheus_port!r}"
            )
        if not callable(self.clock):
            raise ConfigurationError("clock must be a callable returning Unix seconds")
        if self.otlp_endpoint:  # "" is no endpoint, as before
            validate_otlp_url(self.otlp_endpoint, "otlp_endpoint")

    def flush_period_for(self, heartbeat_interval: float) -> float:
        """The flush period of a run: explicit, else ``min(interval / 4, 15 s)``; at most
        half the run's heartbeat interval either way.

        The store and any reader of the records judge a run by the age of its latest
        heartbeat record (degraded past 1.5 intervals by default), and a run sends at most
        one per flush period: a period longer than the interval (a global
        ``CHAPERONE_OTEL_FLUSH_PERIOD=6s`` and a run with a 1 s lease) made a run that
        heartbeats ten times a second look degraded, then unhealthy and stuck. With half
        an interval, the latest record is at most half a lease old (plus a monitor pass),
        a full lease short of ``degraded_after``; the default, a quarter, is within it."""
        period = (
            min(heartbeat_interval / 4.0, 15.0) if self.flush_period is None else self.flush_period
        )
        return min(period, heartbeat_interval / 2.0)


def validate_otlp_url(value: object, what: str) -> str:
    """An OTLP/HTTP endpoint: an ``http``/``https`` URL with a host (``what`` names the
    option or variable). Without a scheme (``127.0.0.1:4318``, the form gRPC endpoints are
    written in) every export failed later with "No connection adapters were found"."""
    text = value if isinstance(value, str) else ""
    try:
        parts = urlsplit(text.strip())
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        valid = False
    if not valid:
        suggestion = (
            f"http://{text.strip()}"
            if text.strip() and "://" not in text
            else "http://127.0.0.1:4318"
        )
        raise ConfigurationError(
            f"{what}={value!r} is not an http:// or https:// URL with a host: chaperone-otel "
            f"exports OTLP over HTTP; write it as a URL such as {suggestion!r}"
        )
    return text


def validate_interval(value: object, what: str) -> float:
    """A positive finite number of seconds (timedelta and '5m' accepted)."""
    return parse_duration(value, what=what)  # type: ignore[arg-type]


_BOOL_TRUE: Final = {"1", "true", "yes", "on"}
_BOOL_FALSE: Final = {"0", "false", "no", "off", ""}


def _env_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _BOOL_TRUE:
        return True
    if low in _BOOL_FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r}: use true/false (or 1/0)")


def _env_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: expected an integer") from None


ENV_VARS: Final[Mapping[str, tuple[str, Callable[[str, str], Any]]]] = {
    "sink": ("CHAPERONE_OTEL_SINK", lambda _n, v: v),
    "prometheus_port": ("CHAPERONE_OTEL_PROMETHEUS_PORT", _env_int),
    "prometheus_host": ("CHAPERONE_OTEL_PROMETHEUS_HOST", lambda _n, v: v),
    "heartbeat_interval": (
        "CHAPERONE_OTEL_HEARTBEAT_INTERVAL",
        lambda n, v: parse_duration(v, what=n),
    ),
    "flush_period": ("CHAPERONE_OTEL_FLUSH_PERIOD", lambda n, v: parse_duration(v, what=n)),
    "sample_interval": ("CHAPERONE_OTEL_SAMPLE_INTERVAL", lambda n, v: parse_duration(v, what=n)),
    "on_limit": ("CHAPERONE_OTEL_ON_LIMIT", lambda _n, v: v.strip().lower()),
    "long_run_threshold": (
        "CHAPERONE_OTEL_LONG_RUN_THRESHOLD",
        lambda n, v: parse_duration(v, what=n),
    ),
    "console": ("CHAPERONE_OTEL_CONSOLE", _env_bool),
    "otlp": ("CHAPERONE_OTEL_OTLP", _env_bool),
}
"""Option → (environment variable, parser). The single env table (docs/configuration.md)."""


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options set by ``CHAPERONE_OTEL_*`` variables (unset and empty ones are skipped)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for option, (var, parse) in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw != "":
            out[option] = parse(var, raw)
    return out


def build_config(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, overridden by the environment, overridden by explicit ``options``."""
    known = {f.name for f in fields(Config)}
    unknown = set(options) - known
    if unknown:
        raise ConfigurationError(
            f"unknown configure() option(s): {', '.join(sorted(unknown))}; valid options are "
            f"{', '.join(sorted(known))}"
        )
    from_environment = from_env(environ)
    given = {k: v for k, v in options.items() if v is not None}
    merged: dict[str, Any] = {**from_environment, **given}
    for name in ("heartbeat_interval", "flush_period", "sample_interval", "long_run_threshold"):
        if merged.get(name) is not None:
            merged[name] = validate_interval(merged[name], name)
    try:
        return replace(Config(), **merged)
    except ConfigurationError as error:
        # A value checked here (on_limit, prometheus_port …) that came from a variable: say
        # which one, as the variables' own parse errors do.
        text = str(error)
        named = [
            ENV_VARS[k][0]
            for k in from_environment
            if k not in given and text.startswith((f"{k}=", f"{k} "))
        ]
        if named:
            raise ConfigurationError(f"{named[0]}: {text}") from None
        raise


_current: Config = Config()


def get_config() -> Config:
    """The configuration in force (defaults until ``configure()``)."""
    return _current


def set_config(config: Config) -> None:
    """Install ``config`` (used by ``configure()`` and ``reset()`` only)."""
    global _current, _ever_set
    _current = config
    _ever_set = True


_ever_set = False


def configured_before() -> bool:
    """Whether ``configure()`` (or ``reset()``) ran in this process, ever."""
    return _ever_set
