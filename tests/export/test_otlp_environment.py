"""``configure()`` checks what it will export OTLP with: the endpoint (``otlp_endpoint`` or
the ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables) must be an http(s) URL with a host, and the
``OTEL_EXPORTER_OTLP_*PROTOCOL`` of a signal it exports itself must be one it speaks
(OTLP/HTTP). Real exporters to a real loopback receiver, in process."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

import chaperone_otel as chaperone
from chaperone_otel import ConfigurationError, supervised
from tests.loopback import serving

_OTLP_VARIABLES = [
    f"OTEL_EXPORTER_OTLP_{signal}{what}"
    for signal in ("", "TRACES_", "LOGS_", "METRICS_")
    for what in ("ENDPOINT", "PROTOCOL")
]


class _Receiver(http.server.BaseHTTPRequestHandler):
    paths: list[str]
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.lock:
            self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A loopback OTLP/HTTP receiver, and an environment with no OTLP variable of the
    developer's."""
    for name in _OTLP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    paths: list[str] = []
    with serving(type("Handler", (_Receiver,), {"paths": paths})) as url:
        yield url, paths


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"ENDPOINT": "", "PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"TRACES_ENDPOINT": "/v1/traces", "TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"ENDPOINT": "", "PROTOCOL": "http/protobuf", "LOGS_PROTOCOL": "GRPC"}, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"),
        ({"ENDPOINT": "", "METRICS_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
    ],
)
def test_a_grpc_protocol_for_a_signal_chaperone_exports_fails_configure(
    receiver: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    named: str,
) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` (or a signal's own) was ignored: chaperone-otel
    posted OTLP/HTTP protobuf to what the user declared a gRPC endpoint and every export
    failed. Now configure() refuses it, naming the variable, and installs nothing."""
    url, paths = receiver
    for suffix, value in variables.items():
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{suffix}", url + value if "ENDPOINT" in suffix else value)
    with pytest.raises(ConfigurationError, match=rf"^{named}=.*exports OTLP over HTTP only.*4318"):
        chaperone.configure()
    with supervised("not.exported"):
        pass
    assert chaperone.flush(5)
    assert paths == []


def test_a_protocol_for_a_signal_chaperone_does_not_export_is_not_checked(
    receiver: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol of a signal chaperone-otel leaves alone is not its business: a logs
    protocol of grpc with only a traces endpoint (logs not exported), and the environment's
    grpc for traces when the application's own TracerProvider exports them."""
    url, paths = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")
    setup = chaperone.configure()
    assert setup.span_processors
    assert not setup.log_processors
    with supervised("traces.only"):
        pass
    assert chaperone.flush(10)
    assert "/v1/traces" in paths
    chaperone.reset()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    setup = chaperone.configure(tracer_provider=TracerProvider())
    assert not setup.span_processors  # the application's pipeline exports its spans


def test_http_json_is_accepted_and_said_once(
    receiver: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``http/json``: the receiver's OTLP/HTTP endpoint takes protobuf too, so the export
    works; one INFO line says protobuf is what is sent."""
    url, paths = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with caplog.at_level(logging.INFO, logger="chaperone_otel"):
        chaperone.configure()
    said = [r for r in caplog.records if "http/json" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.INFO
    assert "protobuf" in said[0].getMessage()
    with supervised("json.declared"):
        pass
    assert chaperone.flush(10)
    assert {"/v1/traces", "/v1/logs"} <= set(paths)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "localhost:4318", "grpc://h:4317", "http://"])
def test_an_otlp_endpoint_without_an_http_scheme_fails_configure(endpoint: str) -> None:
    """``configure(otlp_endpoint="127.0.0.1:4318")`` was accepted, then every export failed
    with "No connection adapters were found"."""
    with pytest.raises(ConfigurationError, match=r"^otlp_endpoint=.*http://") as raised:
        chaperone.configure(otlp_endpoint=endpoint)
    if endpoint == "127.0.0.1:4318":
        assert "'http://127.0.0.1:4318'" in str(raised.value)


@pytest.mark.parametrize(
    "variable",
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"],
)
def test_an_endpoint_variable_without_an_http_scheme_fails_configure(
    receiver: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "127.0.0.1:4318")
    with pytest.raises(ConfigurationError, match=rf"^{variable}='127.0.0.1:4318'.*'http://127.0.0.1:4318'"):
        chaperone.configure()


def test_the_option_wins_over_the_environments_endpoint_and_protocol(
    receiver: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``otlp_endpoint`` the exporters use it, not the variables (which may describe
    the application's own gRPC exporters): they are not checked, and the export works."""
    url, paths = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    chaperone.configure(otlp_endpoint=url)
    with supervised("explicit"):
        pass
    assert chaperone.flush(10)
    assert "/v1/logs" in paths


def _port_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "4317" in r.getMessage() and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("variables", "option", "warned"),
    [
        ({}, "http://127.0.0.1:4317", "otlp_endpoint"),
        ({"PROTOCOL": "grpc"}, "http://127.0.0.1:4317", "otlp_endpoint"),  # the app's exporters
        ({"PROTOCOL": "http/protobuf"}, "http://127.0.0.1:4317", None),  # said to be OTLP/HTTP
        ({}, "http://127.0.0.1:4318", None),
        ({"ENDPOINT": "http://127.0.0.1:4317"}, None, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"LOGS_ENDPOINT": "https://collector.example:4317/v1/logs"}, None, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
        ({"ENDPOINT": "http://127.0.0.1:4317", "PROTOCOL": "http/protobuf"}, None, None),
        ({"ENDPOINT": "http://127.0.0.1:4318"}, None, None),
    ],
)
def test_an_endpoint_on_the_grpc_port_is_warned_of_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variables: dict[str, str],
    option: str | None,
    warned: str | None,
) -> None:
    """An endpoint on 4317, OTLP/gRPC's port (often the gRPC exporter's endpoint copied),
    got OTLP/HTTP posted to it and every export failed, reported only as failed batches
    after the retries. configure() now warns once, naming the option or variable and the
    OTLP/HTTP port; a protocol variable saying http/* silences it. No run is exported (the
    endpoint may be anything)."""
    for name in _OTLP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for suffix, value in variables.items():
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{suffix}", value)
    with caplog.at_level(logging.INFO, logger="chaperone_otel"):
        chaperone.configure(otlp_endpoint=option)
    said = _port_warnings(caplog)
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].getMessage().startswith(f"chaperone-otel: {warned}=")
        assert "4318" in said[0].getMessage()
