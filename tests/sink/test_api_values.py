"""Every numeric and time parameter of the query API: a value no scope or ``datetime`` can
take is a 400 with a message (never a 500 from an OverflowError), and an ``/api/*`` body over
the limit is a 413 before it is read whole. Against a real sink server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel.sink._api import MAX_BODY
from chaperone_otel.sink._server import SinkServer
from tests.cli._cli_helpers import invoke


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkServer]:
    path = tmp_path_factory.mktemp("values") / "values.duckdb"
    with SinkServer(str(path), port=0, advertise=False) as running:
        yield running


def _call(server: SinkServer, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


BAD_GETS = [
    # since= (Unix seconds, ISO, or an age)
    "/api/jobs?since=inf",
    "/api/jobs?since=-inf",
    "/api/jobs?since=nan",
    "/api/jobs?since=99999999999999999999",
    "/api/jobs?since=-1e300",
    "/api/jobs?since=1e400",
    "/api/jobs?since=99999999d",
    "/api/jobs?since=9999-12-31T23:59:59-23:59",
    "/api/jobs?since=soon",
    # start=/end= (between)
    "/api/jobs?start=0&end=1e20",
    "/api/jobs?start=-1e300&end=0",
    "/api/jobs?start=nan&end=1",
    "/api/jobs?start=0&end=inf",
    "/api/jobs?start=10&end=5",
    "/api/jobs?start=0",
    # memory_above= / cpu_above=
    "/api/jobs?memory_above=1e400",
    "/api/jobs?memory_above=nan",
    "/api/jobs?memory_above=-5",
    "/api/jobs?cpu_above=nan",
    "/api/jobs?cpu_above=inf",
    "/api/jobs?cpu_above=1e400",
    # limit= / attempt=
    "/api/jobs?limit=99999999999999999999",
    "/api/jobs?limit=-1",
    "/api/jobs?limit=1.5",
    "/api/jobs/x?attempt=99999999999999999999",
    "/api/jobs/x?attempt=abc",
    "/api/jobs/x?attempt=0",
    "/api/heartbeats?run_id=x&attempt=99999999999999999999",
    "/api/errors?run_id=x&attempt=nan",
    "/api/violations?run_id=x&attempt=-99999999999999999999",
]

BAD_POSTS = [
    ("/api/prune", {"older_than": 1e308}),
    ("/api/prune", {"older_than": 99999999999999999999999}),
    ("/api/prune", {"older_than": "99999999999w"}),
    ("/api/prune", {"older_than": 0}),
    ("/api/prune", {"older_than": -1}),
    ("/api/prune", {"older_than": "soon"}),
    ("/api/prune", {"older_than": True}),
    # Steps as RemoteSink sends them, with values a client could forge.
    ("/api/query", {"steps": [["started_between", 1e300, None]]}),
    ("/api/query", {"steps": [["started_between", 0, 1e20]]}),
    ("/api/query", {"steps": [["limit", -1]]}),
    ("/api/sql", {"query": "SELECT ?", "params": [{"$type": "timedelta", "value": 1e308}]}),
    ("/api/sql", {"query": "SELECT ?", "params": [{"$type": "datetime", "value": "10000-01-01"}]}),
]


@pytest.mark.parametrize("path", BAD_GETS)
def test_every_bad_query_parameter_is_a_400_with_a_message(server: SinkServer, path: str) -> None:
    """Out-of-range, non-finite and malformed numbers and times are 400 with an error text."""
    status, body = _call(server, path)
    assert status == 400, (path, body)
    assert isinstance(body.get("error"), str)
    assert body["error"]


@pytest.mark.parametrize(("path", "payload"), BAD_POSTS)
def test_every_bad_body_value_is_a_400_with_a_message(
    server: SinkServer, path: str, payload: dict[str, Any]
) -> None:
    """Out-of-range values in POST bodies (prune's age, replayed steps, typed SQL params)."""
    status, body = _call(server, path, payload)
    assert status == 400, (path, payload, body)
    assert body["error"]


def test_messages_say_the_range(server: SinkServer) -> None:
    """The 400s the issue named say what range is allowed."""
    assert "years 1 to 9999" in _call(server, "/api/jobs?since=inf")[1]["error"]
    assert "end=1e+20 is out of range" in _call(server, "/api/jobs?start=0&end=1e20")[1]["error"]
    assert "shorter duration" in _call(server, "/api/prune", {"older_than": 1e308})[1]["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs?since=1h",
        "/api/jobs?since=0",
        "/api/jobs?since=2024-05-01T12:00:00%2B09:00",
        "/api/jobs?start=0&end=253402300799",
        "/api/jobs?memory_above=512MiB&cpu_above=50&limit=9223372036854775807",
        "/api/heartbeats?run_id=x&attempt=9223372036854775807",
    ],
)
def test_values_at_the_edges_still_work(server: SinkServer, path: str) -> None:
    """The checks refuse only what cannot work: edge values are still answered."""
    assert _call(server, path)[0] == 200


def test_an_age_of_0_is_now_for_until_and_refused_for_since(server: SinkServer) -> None:
    """``until=0s``: started before now (it was a 400, not a positive duration)."""
    assert _call(server, "/api/jobs?until=0s") == (200, {"jobs": []})
    status, body = _call(server, "/api/jobs?since=0s")
    assert status == 400
    assert "must be more than 0" in body["error"]


def _raw_post(server: SinkServer, path: str, head: dict[str, str], body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=head)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/api/sql", "/api/query", "/api/prune"])
def test_api_body_over_the_limit_is_413_by_its_declared_length(
    server: SinkServer, path: str
) -> None:
    """A declared Content-Length over the limit is refused before the body is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert time.monotonic() - started < 5


def test_api_body_over_the_limit_is_413_when_chunked(server: SinkServer) -> None:
    """A chunked body (no length) is refused once it passes the limit; one at the limit is read."""
    head = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    big = b'{"query": "SELECT 1", "pad": "' + b"x" * (MAX_BODY + 10) + b'"}'

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i : i + 64 * 1024]

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(
            "POST", "/api/query", body=chunks(big), headers=head, encode_chunked=True
        )
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    fits = json.dumps({"steps": [], "pad": "x" * (MAX_BODY - 100)}).encode()
    assert len(fits) <= MAX_BODY
    assert _raw_post(server, "/api/query", {"Content-Type": "application/json"}, fits) == 200


def test_cli_prune_older_than_zero_says_it_must_be_positive(tmp_path: Path) -> None:
    """`prune --older-than 0` is a usage error saying 0 is not allowed (not "not a duration")."""
    result = invoke("prune", "--older-than", "0", "--db", str(tmp_path / "none.duckdb"))
    assert result.exit_code == 2
    assert "not more than 0" in result.output
    assert "not a duration" not in result.output
