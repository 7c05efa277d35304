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
from urllib.parse import urlsplit

from .._config import Config, validate_otlp_url
from ..exceptions import ConfigurationError

_logger = logging.getLogger("chaperone_otel")

_GRPC_PORT: Final = 4317
"""OTLP/gRPC's default port (the specification's; OTLP/HTTP's is 4318)."""

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

    An endpoint on OTLP/gRPC's port (the option's, or a variable's with no protocol
    declared) is warned of once, not refused (``_warn_of_the_grpc_port``).
    """
    if config.otlp_endpoint:
        declared = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip().lower()
        if not declared.startswith("http/"):
            _warn_of_the_grpc_port(config.otlp_endpoint, "otlp_endpoint")
        return
    as_json: list[str] = []
    on_grpc_port: dict[str, str] = {}
    for signal in sorted(signals):
        endpoint = _variable(signal, "ENDPOINT")
        protocol = _variable(signal, "PROTOCOL")
        if endpoint is not None:
            url = validate_otlp_url(os.environ[endpoint].strip(), endpoint)
            if protocol is None:
                on_grpc_port[endpoint] = url
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
    for name, url in sorted(on_grpc_port.items()):
        _warn_of_the_grpc_port(url, name)
    if as_json:
        _logger.info(
            "chaperone-otel: %s=http/json, but chaperone-otel sends OTLP/HTTP as protobuf "
            "(an OTLP/HTTP receiver, such as the Collector's, takes both)",
            "/".join(sorted(set(as_json))),
        )


def _warn_of_the_grpc_port(url: str, what: str) -> None:
    """Warn when ``url`` is on port 4317, OTLP/gRPC's by convention (4318 is OTLP/HTTP's).

    The endpoint of the SDK's gRPC exporters is commonly copied into an HTTP one: every
    export then fails against the gRPC receiver, reported only as failed batches after the
    exporter's retries. A warning, not an error: an OTLP/HTTP receiver may listen on 4317, and
    a protocol variable (``http/protobuf``) says so and silences it.
    """
    try:
        port = urlsplit(url).port
    except ValueError:  # validate_otlp_url has refused it already
        return
    if port == _GRPC_PORT:
        _logger.warning(
            "chaperone-otel: %s=%r is on port 4317, OTLP/gRPC's by convention, and "
            "chaperone-otel exports OTLP over HTTP: against a gRPC receiver every export "
            "fails. Use the receiver's OTLP/HTTP port (the Collector's is 4318), or set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf if 4317 serves OTLP/HTTP",
            what,
            url,
        )
