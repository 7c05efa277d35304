"""The store owner: open → serving → closed, torn down in the reverse order, leaving nothing
behind when any step fails (the embedded sink and ``sink serve`` both own files through it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._owner import BackgroundServer, StoreOwner
from chaperone_otel.sink._store import acquire, owned_here, read_sidecar, release, sidecar_path
from tests.sink.store_factory import record
from tests.waiting import wait_until


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())


def test_lifecycle_open_serving_closed_and_close_is_idempotent(tmp_path: Path) -> None:
    """Constructed: the file is owned, nothing advertised. serve(): the query API answers and
    the sidecar names it. close(): sidecar gone, URL dead, file released (another owner can
    take it); a second close() is a no-op."""
    path = tmp_path / "jobs.duckdb"
    owner = StoreOwner(path)
    assert owner.state == "open"
    assert owned_here(path)
    assert not sidecar_path(path).exists()
    url = owner.serve()
    assert owner.state == "serving"
    assert owner.url == url == owner.view.url
    sidecar = read_sidecar(path)
    assert sidecar is not None
    assert (sidecar["url"], sidecar["path"]) == (url, owner.path)
    assert owner.token is not None
    assert sidecar["token"] == owner.token
    assert _get(url + "/api/info", owner.token)["path"] == owner.path
    with pytest.raises(SinkError, match="serving, not open"):
        owner.serve()
    owner.close()
    assert owner.state == "closed"
    assert not sidecar_path(path).exists()
    assert not owned_here(path)
    with pytest.raises(urllib.error.URLError):
        _get(url + "/api/info")
    owner.close()
    with pytest.raises(SinkError, match="closed"):
        owner.writer  # noqa: B018
    again = acquire(path, read_only=False)
    release(again)


def test_close_commits_what_is_queued_before_releasing_the_file(tmp_path: Path) -> None:
    """Records submitted just before close() are in the file afterwards."""
    path = tmp_path / "jobs.duckdb"
    owner = StoreOwner(path)
    assert owner.writer.submit([record(run_id=f"r{i}", seq=1) for i in range(50)])
    owner.close()
    with open_sink(path) as sink:
        assert sink.jobs.count() == 50


class _WatchedServer(BackgroundServer):
    """Notes what the owner has already torn down when it stops its server."""

    def __init__(self, owner_path: Path) -> None:
        super().__init__(None)
        self.owner: StoreOwner | None = None
        self.path = owner_path
        self.seen: dict[str, Any] = {}

    def stop(self, timeout: float = 15.0) -> None:
        if self.owner is not None and not self.seen:
            self.seen["sidecar"] = read_sidecar(self.path)
            # A request still in flight can hand its records to the writer.
            self.seen["accepted"] = bool(self.owner.writer.submit([record(run_id="late")]))
        super().stop(timeout)


def test_teardown_order_stop_advertising_then_serving_then_writing(tmp_path: Path) -> None:
    """When the server stops, the sidecar is already gone (no new reader is sent to a server
    that is going away) but the writer still takes records (in-flight requests finish), and
    those are committed before the file is released."""
    path = tmp_path / "jobs.duckdb"
    owner = StoreOwner(path)
    server = _WatchedServer(path)
    server.app = lambda scope, receive, send: None  # never called: no request is made
    owner.serve(server)
    server.owner = owner
    assert read_sidecar(path) is not None
    owner.close()
    assert server.seen == {"sidecar": None, "accepted": True}
    with open_sink(path) as sink:
        assert sink.job("late") is not None


class _BrokenServer(BackgroundServer):
    def start(self, timeout: float = 10.0) -> BackgroundServer:
        raise SinkError("the HTTP server did not start")


def test_a_failed_serve_or_open_leaves_nothing_behind(tmp_path: Path) -> None:
    """A server that cannot start: the owner is closed, no sidecar, the file released. A
    writer that cannot be made (bad capacity): the file is released too."""
    path = tmp_path / "jobs.duckdb"
    owner = StoreOwner(path)
    with pytest.raises(SinkError, match="did not start"):
        owner.serve(_BrokenServer(None))
    assert owner.state == "closed"
    assert not sidecar_path(path).exists()
    assert not owned_here(path)
    with pytest.raises(ValueError, match="capacity"):
        StoreOwner(path, capacity=0)
    assert not owned_here(path)


def test_read_your_writes_is_the_owners_choice(tmp_path: Path) -> None:
    """With read_your_writes a query in this process first commits what is queued (the
    embedded sink); without it queries do not wait for the writer (the sink server)."""
    path = tmp_path / "jobs.duckdb"
    with StoreOwner(path, read_your_writes=True) as owner:
        with owner.store.write_lock:  # the writer cannot commit: only a flush would wait
            assert owner.writer.submit([record(run_id="mine")])
        assert owner.view.job("mine") is not None
    with StoreOwner(path) as owner:
        assert owner.store.before_read is None


def test_sink_server_commits_a_request_arriving_as_shutdown_begins(tmp_path: Path) -> None:
    """``sink serve`` owns its file through a StoreOwner: a request that reaches the handler
    after stop() began (the sidecar is gone, the HTTP server not yet stopped) is still
    committed and acknowledged, not refused with 503."""
    import http.client

    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.logs.v1 import logs_pb2

    from chaperone_otel import semconv as sc
    from chaperone_otel.sink._server import SinkServer

    attrs = [common_pb2.KeyValue(key=sc.ATTR_JOB_RUN_ID,
                                 value=common_pb2.AnyValue(string_value="late-run"))]
    body = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(
            event_name=sc.EVENT_JOB_STARTED, time_unix_nano=1_000_000_000,
            attributes=attrs)])])]).SerializeToString()
    path = tmp_path / "jobs.duckdb"
    server = SinkServer(str(path), port=0).start()
    host, port = server.url.removeprefix("http://").split(":")
    answers: list[int] = []
    stop_http = server._http.stop

    def stop(timeout: float = 15.0) -> None:  # the owner stops its server: send one more
        if answers:  # stop() is idempotent and called again once the owner is closed
            stop_http(timeout)
            return
        assert read_sidecar(path) is None
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/logs", body, {"Content-Type": "application/x-protobuf"})
        answers.append(conn.getresponse().status)
        conn.close()
        stop_http(timeout)

    server._http.stop = stop  # type: ignore[method-assign]
    server.stop()
    assert answers == [200]
    with open_sink(path) as sink:
        assert sink.job("late-run") is not None


def test_the_embedded_api_hands_the_gil_over_promptly_while_it_answers() -> None:
    """While a query is answered the interpreter switches threads every 1 ms (a CPU-bound
    application made each of the server's GIL waits 5 ms), and the application's interval
    is back once it is answered; forwarded records (/api/records) leave it alone."""
    import sys

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from chaperone_otel.sink._owner import PROMPT_SWITCH_INTERVAL, PromptHandover

    def seen(_request: Any) -> JSONResponse:
        return JSONResponse({"interval": sys.getswitchinterval()})

    app = Starlette(routes=[Route("/api/jobs", seen), Route("/api/records", seen)])
    before = sys.getswitchinterval()
    server = BackgroundServer(PromptHandover(app)).start()
    try:
        assert _get(server.url + "/api/jobs")["interval"] == PROMPT_SWITCH_INTERVAL
        # The response leaves before the middleware's last step: poll, bounded.
        wait_until(lambda: sys.getswitchinterval() == before, 5, "the interval restored")
        assert _get(server.url + "/api/records")["interval"] == before
    finally:
        server.stop()


def _starlette(handler: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/x", handler)])


def test_stop_wakes_an_idle_server_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """stop() does not wait for the server loop's next look at the clock: uvicorn's polling
    (and its grace sleep with nothing to wait for) added 0.2 s to the exit of every process
    with an embedded sink. With the tick set to a minute, stop() still returns at once."""
    from starlette.responses import PlainTextResponse

    from chaperone_otel.sink import _owner

    monkeypatch.setattr(_owner, "_TICK", 60.0)
    server = BackgroundServer(_starlette(lambda _r: PlainTextResponse("ok"))).start()
    with urllib.request.urlopen(server.url + "/x", timeout=10) as response:
        assert response.status == 200
    thread = server._thread
    assert thread is not None
    server.stop(timeout=10)
    assert not thread.is_alive()


def test_stop_still_answers_a_request_in_flight() -> None:
    """The quick stop is only for an idle server: a request being handled when stop() begins
    is answered before the server goes (uvicorn's graceful shutdown)."""
    import threading

    from starlette.responses import PlainTextResponse

    entered, release_ = threading.Event(), threading.Event()

    def slow(_request: Any) -> PlainTextResponse:
        entered.set()
        release_.wait(10)
        return PlainTextResponse("late")

    server = BackgroundServer(_starlette(slow)).start()
    answers: list[str] = []

    def ask() -> None:
        with urllib.request.urlopen(server.url + "/x", timeout=20) as response:
            answers.append(response.read().decode())

    client = threading.Thread(target=ask)
    client.start()
    try:
        assert entered.wait(10)
        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 15})
        stopper.start()
        wait_until(lambda: server._server.should_exit, 5, "stop() has begun")
        release_.set()
        stopper.join(20)
        client.join(20)
    finally:
        release_.set()
        server.stop()
    assert answers == ["late"]
