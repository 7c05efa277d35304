"""A real HTTP server on 127.0.0.1 for the tests that send to one (OTLP exporters)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

Request = tuple[str, str, bytes, float]
"""A POST a :class:`Recorder` received: path, content type, body (un-gzipped), when."""


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port in a thread; yields the base URL and stops
    the server (and its thread) on exit. Polled every 0.05 s, so the stop does not wait the
    default half second."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Recorder(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that keeps every POST in ``requests`` and answers 200."""

    requests: list[Request]
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.lock:
            self.requests.append(
                (self.path, self.headers.get("Content-Type", ""), body, time.monotonic())
            )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def recording() -> Iterator[tuple[str, list[Request]]]:
    """:func:`serving` a :class:`Recorder`: yields the base URL and the requests received."""
    requests: list[Request] = []
    with serving(type("Handler", (Recorder,), {"requests": requests})) as url:
        yield url, requests
