"""The sink server's one mapping from ingest failures (decoder, writer, queue) to OTLP/HTTP
answers (DESIGN §6), checked without a network: every refusal path of ``/v1/*`` goes
through it, and the HTTP-level tests in ``test_server.py`` drive those paths end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._otlp import (
    OTLPDecodeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from chaperone_otel.sink._server import SinkServer, _BodyTooLargeError
from chaperone_otel.sink._writer import RecordsDroppedError, Ticket


def _dropped(*, permanent: bool) -> RecordsDroppedError:
    ticket = Ticket(0, 2)
    ticket.permanent = permanent
    return RecordsDroppedError("2 record(s) not stored", ticket)


@pytest.mark.parametrize(("error", "status", "headers"), [
    (OTLPDecodeError("bad varint"), 400, {}),
    (_dropped(permanent=True), 400, {}),
    (_BodyTooLargeError("body over 10 bytes"), 413, {"connection": "close"}),
    (PayloadTooLargeError("inflates past 10 bytes"), 413, {}),
    (UnsupportedMediaTypeError("text/plain"), 415, {}),
    (_dropped(permanent=False), 503, {"retry-after": "7"}),
    (SinkError("writer queue full"), 503, {"retry-after": "7"}),
])
@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_one_mapping_from_ingest_errors_to_otlp_answers(
    tmp_path: Path, error: SinkError, status: int, headers: dict[str, str], encoding: str
) -> None:
    """Each failure gets its status: 400 when resending cannot help (malformed, or data the
    store refuses), 413 (closing the connection only when the body was not read), 415, and
    503 + Retry-After for whatever a retry may fix; the body is a google.rpc.Status in the
    request's encoding saying why, and the refusal is counted under its status."""
    from google.rpc import status_pb2

    server = SinkServer(str(tmp_path / "never-opened.duckdb"), port=0, retry_after=7)
    answer = server._refusal(error, encoding)  # type: ignore[arg-type]
    assert answer.status_code == status
    got = {k: v for k, v in answer.headers.items() if k in ("connection", "retry-after")}
    assert got == headers
    body = bytes(answer.body)
    message = (json.loads(body)["message"] if encoding == "json"
               else status_pb2.Status.FromString(body).message)
    assert str(error) in message
    assert server.stats().rejected == {status: 1}
