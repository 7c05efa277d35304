"""Query concurrency is bounded and kept apart from ingest (issue 11, item 2): 50
concurrent long queries against a real `sink serve` process leave /healthz and OTLP ingest
answering within 1 s; queries beyond the slots wait briefly, then get 503 + Retry-After."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.sink.serve_process import PROTOBUF, ServeProcess, lifecycle_logs, request, timed

pytestmark = pytest.mark.slow

LONG = "SELECT sum(a.range * b.range % 7) FROM range(100000) a, range(100000) b"  # ~forever
QUERY_TIMEOUT = 4


def test_fifty_long_queries_leave_ingest_and_healthz_answering(tmp_path: Path) -> None:
    results: list[tuple[int, dict[str, str]]] = []
    errors: list[BaseException] = []

    def query(port: int) -> None:
        try:
            status, _body, headers = request(
                port,
                "POST",
                "/api/sql",
                json.dumps({"query": LONG}).encode(),
                {"Content-Type": "application/json"},
                timeout=60,
            )
            results.append((status, headers))
        except BaseException as e:  # reported below
            errors.append(e)

    env = {"CHAPERONE_OTEL_SQL_TIMEOUT": str(QUERY_TIMEOUT)}
    with ServeProcess(tmp_path / "jobs.duckdb", env=env) as server:
        threads = [threading.Thread(target=query, args=(server.port,)) for _ in range(50)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)  # not a wait for a condition: lets the queries start first
            probes = []
            deadline = time.monotonic() + QUERY_TIMEOUT
            while time.monotonic() < deadline:
                probes.append(("healthz", *timed(server.port, "GET", "/healthz")))
                probes.append(
                    (
                        "ingest",
                        *timed(
                            server.port, "POST", "/v1/logs", body=lifecycle_logs(20),
                            headers=PROTOBUF,
                        ),
                    )
                )
        finally:
            for t in threads:
                t.join(120)
        assert not errors, errors
        slow = [(what, round(s, 2), status) for what, s, status in probes if s >= 1.0]
        assert not slow, slow
        assert {status for _, _, status in probes} == {200}
        statuses = sorted(status for status, _ in results)
        assert len(statuses) == 50
        refused = [h for status, h in results if status == 503]
        assert refused, statuses  # beyond the slots, after a short wait
        assert all(h.get("retry-after") == "1" for h in refused)
        assert set(statuses) <= {400, 503}, statuses  # the rest hit the time limit
