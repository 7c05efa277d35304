"""Auth is never off by accident: an empty token is refused, a non-loopback bind needs a
token (or an explicit ``--insecure``), and the embedded sink's query API needs the per-process
token from its 0600 sidecar, which the same user's ``open_sink(path)`` and CLI send and
another process (another OS user, too) does not have. Real processes on 127.0.0.1, each
bounded in time and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaperone_otel.exceptions import ConfigurationError, SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._owner import StoreOwner, is_loopback
from chaperone_otel.sink._remote import TOKEN_ENV, RemoteSink, open_remote
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._store import read_sidecar, sidecar_path
from tests.stores import empty_store
from tests.waiting import wait_until

CLI = (sys.executable, "-m", "chaperone_otel.cli")


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Any:
    """Run the CLI in a subprocess (a serve that is not refused times out: a failure)."""
    full_env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *args], check=False, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ---- empty token ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   "])
def test_sink_server_refuses_an_empty_token(tmp_path: Path, token: str) -> None:
    """SinkServer(token="") raises before anything is opened (it used to mean "no auth")."""
    path = tmp_path / "empty.duckdb"
    with pytest.raises(ValueError, match="token is empty"):
        SinkServer(str(path), port=0, token=token)
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--token", ""), {}), ((), {TOKEN_ENV: ""}), ((), {TOKEN_ENV: "  "})],
    ids=["flag", "env", "env-blank"],
)
@pytest.mark.slow
def test_cli_refuses_an_empty_token_with_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """`sink serve --token ""` and an empty CHAPERONE_OTEL_SINK_TOKEN exit 2 saying what to do."""
    path = tmp_path / "empty.duckdb"
    result = _cli("sink", "serve", "--db", str(path), "--port", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert "token is empty" in result.stderr
    assert "openssl rand" in result.stderr
    assert not path.exists()


# ---- non-loopback bind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("sink.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses and `localhost` count; wildcards and other names do not."""
    assert is_loopback(host) is loopback


def test_non_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    """SinkServer(host="0.0.0.0") without a token raises; with a token or insecure=True it
    serves (reached here through 127.0.0.1)."""
    path = tmp_path / "open.duckdb"
    with pytest.raises(ConfigurationError, match="without a token"):
        SinkServer(str(path), host="0.0.0.0", port=0)
    assert not path.exists()
    for options in ({"token": "s3cret"}, {"insecure": True}):
        with SinkServer(str(path), host="0.0.0.0", port=0, advertise=False, **options) as s:
            assert _status(f"http://127.0.0.1:{s.port}/healthz") == 200


@pytest.mark.slow
def test_cli_non_loopback_needs_a_token_or_insecure(tmp_path: Path) -> None:
    """`sink serve --host 0.0.0.0` exits 2 naming --token and --insecure; with --insecure it
    serves, and stops on SIGTERM."""
    path = tmp_path / "wild.duckdb"
    refused = _cli("sink", "serve", "--db", str(path), "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    assert "without a token" in refused.stderr
    assert "--insecure" in refused.stderr
    assert not path.exists()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.Popen(
        [
            *CLI,
            "sink",
            "serve",
            "--db",
            str(path),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--insecure",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        owner = wait_until(lambda: proc.poll() is None and read_sidecar(path), 30, "the sidecar")
        port = owner["url"].rsplit(":", 1)[1]
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200
        assert "token" not in owner  # sink serve never writes a token to disk
    finally:
        _stop(proc)
    assert proc.returncode == 0


# ---- the embedded sink's query API ----------------------------------------------------------

APP = textwrap.dedent("""
    import os, sys, time
    import chaperone_otel
    from chaperone_otel import supervised

    path, stop = sys.argv[1], sys.argv[2]
    chaperone_otel.configure(sink=path)
    with supervised("auth.job"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.05)
    chaperone_otel.shutdown()
""")


@pytest.fixture
def app_store() -> Iterator[tuple[Path, dict[str, Any]]]:
    """An application with the embedded sink in another process, its store in a directory
    every user may enter (so only the sidecar's own mode keeps other users out)."""
    base = Path(tempfile.mkdtemp(prefix="chaperone-auth-"))
    base.chmod(0o755)
    path, stop = base / "app.duckdb", base / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, str(path), str(stop)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        owner = wait_until(lambda: proc.poll() is None and read_sidecar(path), 30, "the sidecar")

        def recorded() -> bool:
            with open_sink(path) as sink:
                return sink.jobs.named("auth.job").count() == 1

        wait_until(recorded, 30, "the run")
        yield path, owner
    finally:
        stop.touch()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_embedded_api_needs_the_sidecar_token(
    app_store: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar is mode 0600 and holds a token; without it (or with another) every /api
    route is 401; open_sink(path) and the CLI read it and work."""
    path, owner = app_store
    mode = stat.S_IMODE(sidecar_path(path).stat().st_mode)
    assert mode == 0o600, oct(mode)
    token = owner["token"]
    assert isinstance(token, str)
    assert len(token) >= 32
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for route in ("/api/jobs", "/api/info", "/api/jobs/x", "/api/heartbeats?run_id=x"):
        assert _status(owner["url"] + route) == 401, route
        assert _status(owner["url"] + route, "not-the-token") == 401, route
    assert _status(owner["url"] + "/api/jobs?count=1", token) == 200
    with open_sink(path) as sink:
        assert isinstance(sink, RemoteSink)
        assert sink.jobs.named("auth.job").count() == 1
    shown = _cli("jobs", "--db", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    assert [j["name"] for j in json.loads(shown.stdout)] == ["auth.job"]


ATTACK = textwrap.dedent("""
    import json, sys, urllib.error, urllib.request
    sidecar, url = sys.argv[1], sys.argv[2]
    try:
        open(sidecar).read()
        print("read")
    except PermissionError:
        print("denied")
    for route in ("/api/jobs", "/api/info"):
        try:
            print(urllib.request.urlopen(url + route, timeout=10).status)
        except urllib.error.HTTPError as e:
            print(e.code)
""")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3")
def test_another_os_user_cannot_read_the_token_or_query(
    app_store: tuple[Path, dict[str, Any]],
) -> None:
    """User `nobody` can reach the port and enter the directory, but cannot read the sidecar
    and gets 401 from the embedded API (it used to read and prune a root app's store)."""
    path, owner = app_store
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", ATTACK, str(sidecar_path(path)), owner["url"]],
        check=False,
        user=65534,
        group=65534,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["denied", "401", "401"]


def test_a_wrong_token_says_where_the_right_one_is(tmp_path: Path) -> None:
    """A client with the wrong token is told where the embedded sink's token lives."""
    owner = StoreOwner(empty_store(tmp_path / "own.duckdb"))
    try:
        url = owner.serve()
        with pytest.raises(SinkError, match=r"PATH\.owner\.json holds the token"):
            open_remote(url, token="nope")
        assert open_remote(url).info()["path"] == owner.path  # this process knows its token
    finally:
        owner.close()
