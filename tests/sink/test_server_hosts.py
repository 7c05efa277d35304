"""DNS rebinding and cross-origin requests: a foreign ``Host`` gets 421 and a browser's
cross-origin request 403 on every route of both servers (``sink serve`` and the embedded
sink's query API), while the real OTLP exporter, RemoteSink and loopback/IP/--allowed-host
names keep working. Real servers on 127.0.0.1, bounded in time."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chaperone_otel.sink import open_sink
from chaperone_otel.sink._owner import RequestGuard, StoreOwner
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._server import SinkServer
from tests.cli._cli_helpers import invoke
from tests.stores import empty_store


@pytest.fixture(scope="module")
def sink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkServer]:
    path = tmp_path_factory.mktemp("hosts") / "serve.duckdb"
    with SinkServer(str(path), port=0, allowed_hosts=["sink.internal"]) as server:
        yield server


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreOwner]:
    owner = StoreOwner(empty_store(tmp_path_factory.mktemp("hosts") / "embedded.duckdb"))
    owner.serve()
    try:
        yield owner
    finally:
        owner.close()


def _request(
    port: int,
    method: str,
    path: str,
    *,
    host: str | None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    """One request with exactly the Host header given (None: no Host header at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host.replace("PORT", str(port)))
        for key, value in (headers or {}).items():
            conn.putheader(key, value.replace("PORT", str(port)))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}
SERVE_ROUTES = [
    ("GET", "/api/jobs", None),
    ("GET", "/api/info", None),
    ("POST", "/api/prune", b'{"older_than": "30d"}'),
    ("POST", "/api/schedules/forget", b'{"name": "nightly"}'),
    ("POST", "/api/query", b'{"steps": []}'),
    ("POST", "/v1/logs", b"{}"),
    ("POST", "/v1/traces", b"{}"),
    ("GET", "/healthz", None),
    ("GET", "/metrics", None),
    ("GET", "/no/such/route", None),
]
EMBEDDED_ROUTES = [r for r in SERVE_ROUTES if r[1].startswith("/api/")]

FOREIGN_HOSTS = [
    "attacker.example",
    "attacker.example:PORT",
    "localhost.attacker.example:PORT",
    "127.0.0.1.attacker.example",
    "sink.internal.evil:PORT",
    "[::1",
    "",
]
CROSS_ORIGIN = [
    {"Origin": "http://attacker.example"},
    {"Origin": "http://attacker.example:PORT"},
    {"Origin": "http://localhost:3000"},  # another local port is another origin
    {"Origin": "null"},  # sandboxed iframes, file:// pages
    {"Sec-Fetch-Site": "cross-site"},  # a no-cors GET carries no Origin
]


def _servers(sink_server: SinkServer, embedded: StoreOwner) -> list[tuple[str, int, Any]]:
    assert embedded.url is not None
    auth = {"Authorization": f"Bearer {embedded.token}"}
    return [
        ("serve", sink_server.port, {}),
        ("embedded", int(embedded.url.rsplit(":", 1)[1]), auth),
    ]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_is_421_on_every_route_of_both_servers(
    sink_server: SinkServer, embedded: StoreOwner, host: str
) -> None:
    """A name that is not this server's (what DNS rebinding sends) gets 421, whatever the
    route, and even with the right token; nothing is served."""
    for name, port, auth in _servers(sink_server, embedded):
        routes = SERVE_ROUTES if name == "serve" else EMBEDDED_ROUTES
        for method, path, body in routes:
            status, answer = _request(
                port, method, path, host=host, headers={**JSON, **auth}, body=body
            )
            assert status == 421, (name, method, path, host, answer)
            assert b"--allowed-host" in answer or b"Host header" in answer


def test_a_request_without_host_is_421(sink_server: SinkServer) -> None:
    """HTTP/1.0 allows leaving Host out; the guard does not guess."""
    with socket.create_connection(("127.0.0.1", sink_server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 421")


@pytest.mark.parametrize("headers", CROSS_ORIGIN)
def test_cross_origin_browser_request_is_403_on_both_servers(
    sink_server: SinkServer, embedded: StoreOwner, headers: dict[str, str]
) -> None:
    """A page's fetch (an Origin that is not the server, or Sec-Fetch-Site cross-site) gets
    403 on every route, reads included, with an allowed Host."""
    for name, port, auth in _servers(sink_server, embedded):
        routes = SERVE_ROUTES if name == "serve" else EMBEDDED_ROUTES
        for method, path, body in routes:
            status, _ = _request(
                port,
                method,
                path,
                host="127.0.0.1:PORT",
                headers={**JSON, **auth, **headers},
                body=body,
            )
            assert status == 403, (name, method, path, headers)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:PORT",
        "localhost:PORT",
        "[::1]:PORT",
        "LOCALHOST",
        "10.1.2.3:PORT",
        "sink.internal:PORT",
    ],
)
def test_allowed_hosts_are_served(sink_server: SinkServer, host: str) -> None:
    """Loopback names, IP literals (no rebinding can send one) and --allowed-host names."""
    assert _request(sink_server.port, "GET", "/healthz", host=host)[0] == 200
    status, body = _request(
        sink_server.port,
        "GET",
        "/api/jobs?count=1",
        host=host,
        headers={"Origin": f"http://{host}"},
    )
    assert (status, json.loads(body)) == (200, {"count": 0})  # same origin is fine


def test_the_embedded_api_serves_its_own_names(embedded: StoreOwner) -> None:
    """The embedded API answers loopback names (but not sink serve's --allowed-host)."""
    assert embedded.url is not None
    port = int(embedded.url.rsplit(":", 1)[1])
    auth = {"Authorization": f"Bearer {embedded.token}"}
    assert _request(port, "GET", "/api/info", host="localhost:PORT", headers=auth)[0] == 200
    assert _request(port, "GET", "/api/info", host="sink.internal", headers=auth)[0] == 421


def test_refusals_are_counted_in_fleet_metrics(sink_server: SinkServer) -> None:
    """The guard's refusals show in the rejected counters (/metrics)."""
    before = sink_server.stats().rejected.get(421, 0)
    _request(sink_server.port, "GET", "/healthz", host="attacker.example")
    assert sink_server.stats().rejected.get(421, 0) == before + 1


def test_real_otlp_exporter_remote_sink_and_cli_keep_working(
    sink_server: SinkServer, embedded: StoreOwner
) -> None:
    """The OTel SDK's OTLP/HTTP exporter, RemoteSink and the CLI send no Origin and a
    loopback Host: all pass the guard."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("hosts").start_as_current_span("plain.span"):
        pass
    provider.shutdown()
    exporter = OTLPSpanExporter(endpoint=sink_server.url + "/v1/traces", timeout=10)
    try:
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    with open_sink(sink_server.url) as remote:
        assert isinstance(remote, RemoteSink)
        assert remote.jobs.count() == 0
    with open_sink(embedded.path) as own:  # this process owns it: shares the connection
        assert own.jobs.count() == 0
    assert embedded.url is not None
    with RemoteSink(embedded.url) as remote:  # the token this process's owner wrote
        assert remote.jobs.count() == 0
    shown = invoke("jobs", "--url", sink_server.url, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == []


@pytest.mark.slow
def test_a_bad_allowed_host_is_a_usage_error(tmp_path: Path) -> None:
    """--allowed-host takes a name; a URL is refused before anything is opened."""
    with pytest.raises(ValueError, match="not a host name"):
        RequestGuard(None, allowed_hosts=["http://sink.internal/"])
    result = subprocess.run(  # a subprocess: a serve that is not refused times out
        [
            sys.executable,
            "-m",
            "chaperone_otel.cli",
            "sink",
            "serve",
            "--db",
            str(tmp_path / "x.duckdb"),
            "--port",
            "0",
            "--allowed-host",
            "http://sink.internal/",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "not a host name" in result.stderr
    assert not (tmp_path / "x.duckdb").exists()
