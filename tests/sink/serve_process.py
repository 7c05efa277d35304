"""`chaperone-otel sink serve` as a real process on 127.0.0.1 for the hardening tests: started
with an optional fd limit, found through its sidecar, stopped by its PID; plus OTLP bodies
(real lifecycle records, and bombs of empty ones) and a small HTTP client."""

from __future__ import annotations

import http.client
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from chaperone_otel import semconv as sc
from chaperone_otel.sink._store import read_sidecar
from tests.waiting import wait_until

CLI = (sys.executable, "-m", "chaperone_otel.cli", "sink", "serve")
PROTOBUF = {"Content-Type": "application/x-protobuf"}


class ServeProcess:
    """``sink serve --db PATH --port 0`` in a child process (stderr kept in a file)."""

    def __init__(
        self,
        path: Path,
        *args: str,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.log = path.with_name(path.name + ".stderr")
        base = {k: v for k, v in os.environ.items() if k != "CHAPERONE_OTEL_SINK_TOKEN"}

        def limit_fds() -> None:  # in the child, before exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "--db", str(path), "--port", "0", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**base, **(env or {})},
                preexec_fn=limit_fds,  # noqa: PLW1509 (no threads to deadlock in this test)
            )
        self.pid = self.proc.pid
        try:
            owner = wait_until(
                lambda: self.proc.poll() is not None or read_sidecar(str(path)),
                start_timeout,
                "sink serve to advertise itself",
            )
            if owner is True:
                raise AssertionError(f"sink serve exited {self.proc.returncode}: {self.stderr()}")
        except BaseException:
            self.stop()
            raise
        self.url: str = owner["url"]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP request on a new connection: (status, body, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def timed(port: int, method: str, path: str, **kw: Any) -> tuple[float, int]:
    """(seconds, status) of one request."""
    start = time.monotonic()
    status = request(port, method, path, **kw)[0]
    return time.monotonic() - start, status


def _attr(key: str, value: Any) -> common_pb2.KeyValue:
    if isinstance(value, str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
    if isinstance(value, float):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))


def lifecycle_logs(runs: int, *, prefix: str = "", pad: int = 0, extra: int = 0) -> bytes:
    """An ``ExportLogsServiceRequest`` with one finished-run record for each of ``runs`` new
    run ids (``prefix`` + a uuid); ``pad`` bytes of metadata make each record bigger, and
    ``extra`` small integer attributes make it costlier to decode."""
    now = time.time()
    records = []
    for i in range(runs):
        attrs = {
            sc.ATTR_JOB_RUN_ID: f"{prefix}{uuid.uuid4().hex}",
            sc.ATTR_JOB_NAME: "harden.load",
            sc.ATTR_JOB_SEQUENCE: 1,
            sc.ATTR_JOB_STATUS: "completed",
            sc.ATTR_JOB_STARTED_AT: now - 5,
            sc.ATTR_JOB_FINISHED_AT: now,
            sc.ATTR_HEARTBEAT_INTERVAL: 1.0,
            sc.ATTR_METADATA: '{"pad":"' + "x" * pad + '","i":' + str(i) + "}",
            **{f"x{j}": j for j in range(extra)},
        }
        records.append(
            logs_pb2.LogRecord(
                time_unix_nano=int(now * 1e9),
                event_name=sc.EVENT_JOB_FINISHED,
                attributes=[_attr(k, v) for k, v in attrs.items()],
            )
        )
    request_ = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    )
    return bytes(request_.SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def empty_records(size: int) -> bytes:
    """A logs request of about ``size`` bytes holding only empty LogRecords (2 bytes each):
    the cheapest way to make a parser build millions of messages."""
    scope = b"\x12\x00" * (size // 2)  # ScopeLogs.log_records, empty
    scope_logs = b"\x12" + _varint(len(scope)) + scope  # ResourceLogs.scope_logs
    return b"\x0a" + _varint(len(scope_logs)) + scope_logs  # request.resource_logs
