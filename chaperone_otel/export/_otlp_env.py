"""What the ``OTEL_EXPORTER_OTLP_*`` environment says about the OTLP export chaperone-otel
installs itself, checked at ``configure()``.

chaperone-otel's exporters are the SDK's OTLP/HTTP ones (protobuf): they read the endpoint
variables but not ``OTEL_EXPORTER_OTLP_PROTOCOL``. A user who declared ``grpc`` (and a gRPC
endpoint, port 4317) got protobuf over HTTP posted to it and every export failing, silently
until the first flush. An endpoint variable without a scheme failed every export with
"No connection adapters were found". Both now fail at ``configure()``, naming the variable.
Only the signals chaperone-otel exports itself are checked (a signal left to the
application's own providers uses the application's exporters, which read these variables
their own way).

Layer: ``export``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Final

from .._config import Config, validate_otlp_url
from ..exceptions import ConfigurationError

_logger = logging.getLogger("chaperone_otel")

PROTOCOLS: Final = ("http/protobuf", "http/json", "grpc")
"""The values of ``OTEL_EXPORTER_OTLP_PROTOCOL`` the specification defines."""


def _variable(signal: str, what: str) -> str | None:
    """The variable that sets ``what`` (``ENDPOINT``, ``PROTOCOL``) for ``signal``: its own
    (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``), else the common one, when set (not empty)."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{what}", f"OTEL_EXPORTER_OTLP_{what}"):
        if os.environ.get(name, "").strip():
            return name
    return None


def check_otlp_environment(config: Config, signals: Iterable[str]) -> None:
    """Check the endpoint and protocol variables of ``signals``, the ones chaperone-otel
    exports over OTLP itself.

    With ``otlp_endpoint`` given, the exporters use it (already checked by ``Config``) and
    not the environment's endpoints: the variables are not chaperone-otel's then (an
    application's own gRPC exporters may be what they describe).

    Raises:
        ConfigurationError: an endpoint variable that is not an ``http``/``https`` URL with
            a host, or a protocol other than ``http/protobuf`` and ``http/json``.
    """
    if config.otlp_endpoint:
        return
    as_json: list[str] = []
    for signal in sorted(signals):
        endpoint = _variable(signal, "ENDPOINT")
        if endpoint is not None:
            validate_otlp_url(os.environ[endpoint].strip(), endpoint)
        protocol = _variable(signal, "PROTOCOL")
        if protocol is None:
            continue
        value = os.environ[protocol].strip().lower()
        if value == "grpc":
            raise ConfigurationError(
                f"{protocol}={os.environ[protocol]!r}: chaperone-otel exports OTLP over HTTP "
                "only (protobuf). Point the endpoint at the collector's OTLP/HTTP port (4318) "
                f"and set {protocol}=http/protobuf, or unset it"
            )
        if value == "http/json":
            as_json.append(protocol)
        elif value != "http/protobuf":
            raise ConfigurationError(
                f"{protocol}={os.environ[protocol]!r}: expected one of "
                f"{', '.join(PROTOCOLS)} (chaperone-otel exports http/protobuf)"
            )
    if as_json:
        _logger.info(
            "chaperone-otel: %s=http/json, but chaperone-otel sends OTLP/HTTP as protobuf "
            "(an OTLP/HTTP receiver, such as the Collector's, takes both)",
            "/".join(sorted(set(as_json))),
        )
