"""What ``configure()`` says about the application's own OTel providers it writes to.

chaperone-otel writes its spans, lifecycle records and metrics through the providers in use
(the ones passed, else the globals). One it did not create is the application's: its
resource and its limits are fixed, and two of their effects were silent:

* ``configure(service_name=...)`` names only the providers chaperone-otel creates (and the
  embedded store's rows): on an application's provider with another ``service.name`` the
  runs' telemetry carries the provider's name;
* the SDK's log record limits (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``,
  ``OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT`` …) cut lifecycle records: a truncated run id is
  another run in a store, cut metadata is not JSON, and past the count limit the SDK drops
  the oldest attributes first (the run id and name).

Each is said in one WARNING per ``configure()``. Only ``opentelemetry-api`` is imported:
the providers are read by duck typing (an SDK provider is already loaded when one is set).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, Final

from .. import semconv as sc
from .._config import Config
from .._fields import record_attributes

_logger = logging.getLogger("chaperone_otel")

RECORD_ATTRIBUTES: Final = len(record_attributes()) + 3
"""How many attributes a lifecycle record can carry before a run's own ``attributes=``: the
run's state, and the three process attributes a record repeats when its resource does not
say them (``service.instance.id``, ``host.name``, ``process.pid``)."""

_LENGTH_VARIABLES: Final = (
    "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)
_COUNT_VARIABLES: Final = ("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT")


def _applications(config: Config) -> Iterator[tuple[str, Any]]:
    """(signal, provider) for each provider in use that chaperone-otel did not create."""
    from opentelemetry import _logs, metrics, trace  # noqa: PLC0415 - the API only

    export = sys.modules.get("chaperone_otel.export._providers")  # loaded if it created any
    created = getattr(export, "_created_here", ())
    for signal, provider in (
        ("traces", config.tracer_provider or trace.get_tracer_provider()),
        ("logs", config.logger_provider or _logs.get_logger_provider()),
        ("metrics", config.meter_provider or metrics.get_meter_provider()),
    ):
        if not any(provider is ours for ours in created):
            yield signal, provider


def _service_name(provider: Any) -> object:
    resource = getattr(provider, "resource", None)  # tracer and logger providers
    if resource is None:  # the SDK's MeterProvider keeps it in its configuration
        resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    attributes = getattr(resource, "attributes", None)
    return attributes.get(sc.ATTR_SERVICE_NAME) if attributes is not None else None


def _source(value: int, variables: tuple[str, ...]) -> str:
    """The variable that set a limit of ``value`` (the first of ``variables`` that says
    it), else where else it came from."""
    for name in variables:
        if os.environ.get(name, "").strip() == str(value):
            return name
    return "the LogLimits the provider was created with"


def _cutting_limits(provider: Any) -> list[str]:
    """The log record limits of an SDK ``LoggerProvider`` that cut lifecycle records."""
    limits = getattr(provider, "_log_record_limits", None)
    if limits is None:
        return []
    found = []
    length = getattr(limits, "max_log_record_attribute_length", None)
    if isinstance(length, int):
        found.append(
            f"attribute values cut to {length} characters ({_source(length, _LENGTH_VARIABLES)})"
        )
    count = getattr(limits, "max_log_record_attributes", None)
    if isinstance(count, int) and count < RECORD_ATTRIBUTES:
        found.append(
            f"at most {count} attributes a record, of up to {RECORD_ATTRIBUTES} "
            f"({_source(count, _COUNT_VARIABLES)})"
        )
    return found


def check_providers(config: Config) -> None:
    """Log what the application's own providers do to chaperone-otel's telemetry (see the
    module doc): one WARNING for each finding, at ``configure()``. Never raises."""
    try:
        providers = dict(_applications(config))
        _check_service_name(config, providers)
        limits = _cutting_limits(providers.get("logs"))
    except Exception:  # a provider of an odd kind: nothing to say
        _logger.debug("chaperone-otel: could not inspect the providers", exc_info=True)
        return
    if limits:
        _logger.warning(
            "chaperone-otel: the application's LoggerProvider has attribute limits that "
            "cut chaperone-otel's lifecycle records: %s. Records may be cut: a truncated "
            "run id or name is another run in a store, cut metadata is not JSON, and past "
            "the count the SDK drops the run id first. Raise or unset the limit for the "
            "logger provider (or let configure() create the provider, which has none)",
            "; ".join(limits),
        )


def _check_service_name(config: Config, providers: dict[str, Any]) -> None:
    given = config.service_name
    if not given:
        return
    other = {
        signal: name
        for signal, provider in providers.items()
        if (name := _service_name(provider)) is not None and name != given
    }
    if other:
        said = ", ".join(f"{signal}: {name!r}" for signal, name in sorted(other.items()))
        _logger.warning(
            "chaperone-otel: configure(service_name=%r) does not rename the application's "
            "own OTel providers (%s): the runs' OTel telemetry carries the providers' "
            "service.name. Set the name where the providers are created (their Resource, "
            "or OTEL_SERVICE_NAME)%s",
            given,
            said,
            "; the embedded store records the given name" if config.sink else "",
        )


_INTENT: Final = (
    "CHAPERONE_OTEL_SINK",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
"""Variables that say the process means its runs to go somewhere: ``configure()`` reads
them, nothing else does."""


def unconfigured_hint() -> str | None:
    """What to tell a process whose first run starts before any ``configure()`` while the
    environment names a destination (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``CHAPERONE_OTEL_SINK``
    …) and the application has no OTel SDK providers of its own: its runs go nowhere, and
    a cron script with only the variable set recorded nothing, silently. None otherwise (a
    library's runs in an application that set up OTel itself go to its providers)."""
    named = [name for name in _INTENT if os.environ.get(name, "").strip()]
    if not named:
        return None
    from opentelemetry import _logs, trace  # noqa: PLC0415 - the API only

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
        if hasattr(provider, "add_span_processor") or hasattr(provider, "add_log_record_processor"):
            return None  # the application's own SDK provider: its runs are exported there
    return (
        f"chaperone-otel: a supervised run started, but configure() was never called: "
        f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} set, but only configure() "
        f"reads {'it' if len(named) == 1 else 'them'}, so this process's runs are recorded "
        "nowhere. Call "
        "chaperone_otel.configure() once at start-up, before the first run"
    )
