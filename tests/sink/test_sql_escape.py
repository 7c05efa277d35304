"""User SQL cannot leave the job store: 150+ escape attempts through ``chaperone-otel sql``
(direct file open, real processes) and a live owner's ``/api/sql`` (``sink serve`` in a real
process), and a second OS user against an application's embedded API. Each is refused with
a clear reason, no secret content comes back, nothing reaches the network or the extension
directory, and the store is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from chaperone_otel.sink._store import read_sidecar
from tests.sink.sql_escapes import (
    ATTEMPTS,
    CLEAR_REASON,
    SECRET,
    ConnectionCounter,
    prepare_secret,
    render,
)
from tests.sink.store_factory import post_sql
from tests.waiting import wait_until

RECORD = """
import sys, chaperone_otel
from chaperone_otel import supervised
chaperone_otel.configure(sink=sys.argv[1])
for i in range(3):
    with supervised("escape.job", queue="q") as run:
        run.heartbeat(i=i)
chaperone_otel.shutdown()
"""

# Every attempt through the CLI in one process (a process per attempt is the slow test): the
# command's own code path, a direct read-only open of the file each time. SECRET_TABLE is a
# Python variable a replacement scan would find.
CLI_HARNESS = """
import json, sys
import pyarrow as pa
from click.testing import CliRunner
from chaperone_otel.cli import cli
SECRET_TABLE = pa.table({"s": [sys.argv[3]]})
secret_frame = SECRET_TABLE
db, attempts = sys.argv[1], json.loads(open(sys.argv[2]).read())
runner = CliRunner()
for q in attempts:
    r = runner.invoke(cli, ["sql", "--db", db, q], env={"NO_COLOR": "1", "COLUMNS": "200"})
    print(json.dumps({"q": q, "code": r.exit_code, "out": r.output}), flush=True)
"""

SERVE = "from chaperone_otel.sink._server import serve; import sys; serve(sys.argv[1], port=0)"

_DUCKDB_1 = int(__import__("duckdb").__version__.split(".")[0]) < 2
_ON_DUCKDB_1 = pytest.mark.skipif(
    _DUCKDB_1,
    reason="duckdb 1.x (the newest on Python 3.10) words some refusals differently (a"
    " Binder Error for a catalog-qualified file name) and runs PRAGMA version as a SELECT;"
    " the battery checks duckdb 2's messages",
)


def content_digest(path: Path) -> str:
    """Every row of every table and the definition of every table and view."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        parts = [repr(con.execute(
            "SELECT sql FROM duckdb_tables() UNION ALL SELECT sql FROM duckdb_views() "
            "WHERE NOT internal ORDER BY ALL").fetchall())]
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall():
            parts.append(repr(con.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()))
    finally:
        con.close()
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Setting:
    """A store with three runs, a secret, a loopback listener and a private HOME."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secret = prepare_secret(root / "secret")
        self.home = root / "home"
        self.home.mkdir()
        self.db = root / "store" / "jobs.duckdb"
        self.db.parent.mkdir()
        subprocess.run([sys.executable, "-c", RECORD, str(self.db)], check=True, timeout=60,
                       env=self.env())
        self.net = ConnectionCounter()
        self.attempts = [render(a, self.secret, self.net.url) for a in ATTEMPTS]
        self.secret_files = listing(self.secret.parent)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "HOME": str(self.home), "NO_COLOR": "1", "COLUMNS": "200"}
        env.pop("CHAPERONE_OTEL_SINK", None)
        return env

    def assert_nothing_escaped(self) -> None:
        """No connection to the listener, no extension download, no file written."""
        assert self.net.count == 0
        assert listing(self.home) == [], "the engine touched ~/.duckdb (extension install?)"
        assert listing(self.secret.parent) == self.secret_files


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[Setting]:
    s = Setting(tmp_path)
    try:
        yield s
    finally:
        s.net.close()


def check_refusal(attempt: str, message: str) -> str | None:
    """Why this refusal is not good enough, or None."""
    if SECRET in message:
        return f"secret leaked: {attempt!r}: {message[:300]!r}"
    if not re.search(CLEAR_REASON, message):
        return f"unclear refusal of {attempt!r}: {message[:300]!r}"
    return None


def test_battery_is_large_and_covers_every_statement_type() -> None:
    """At least 100 attempts; every statement type DuckDB's parser knows but SELECT and
    EXPLAIN appears among them."""
    assert len(ATTEMPTS) >= 100
    kinds = set()
    for attempt in ATTEMPTS:
        try:
            statements = duckdb.extract_statements(render(attempt, Path("/x/s"), "http://h"))
        except duckdb.Error:
            continue
        for statement in statements:
            try:
                name = statement.type.name
            except ValueError:  # newer than the Python enum (UPDATE EXTENSIONS)
                name = "unknown"
            kinds.add(name if name.isidentifier() else "unknown")  # duckdb 1.x: "???"
    known = {t.name for t in duckdb.StatementType.__members__.values()}
    # Allowed (SELECT, EXPLAIN), or types the parser never reports for SQL text: internal
    # plans, and what it files under another type (ANALYZE is VACUUM, CREATE FUNCTION is
    # CREATE, COPY FROM DATABASE is PRAGMA).
    unreachable = {"SELECT", "EXPLAIN", "INVALID", "EXTENSION", "LOGICAL_PLAN", "RELATION",
                   "VARIABLE_SET", "MULTI", "ANALYZE", "CREATE_FUNC", "COPY_DATABASE"}
    assert known - unreachable - kinds == set()
    assert "unknown" in kinds


@_ON_DUCKDB_1
@pytest.mark.slow
def test_cli_refuses_every_escape_and_leaves_the_file_byte_for_byte(setting: Setting) -> None:
    """``chaperone-otel sql --db FILE`` (direct open, no owner): every attempt exits 2 with
    a clear reason and no secret; the file's bytes are unchanged."""
    before = file_digest(setting.db)
    attempts_file = setting.root / "attempts.json"
    attempts_file.write_text(json.dumps(setting.attempts))
    done = subprocess.run(
        [sys.executable, "-c", CLI_HARNESS, str(setting.db), str(attempts_file), SECRET],
        check=False, capture_output=True, text=True, timeout=240, env=setting.env(),
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(setting.attempts)
    problems = [f"exit {r['code']} for {r['q']!r}: {r['out'][:200]!r}"
                for r in results if r["code"] != 2]
    problems += [p for r in results if (p := check_refusal(r["q"], r["out"]))]
    assert problems == []
    assert file_digest(setting.db) == before
    setting.assert_nothing_escaped()


@pytest.mark.slow
def test_cli_processes_refuse_escapes(setting: Setting) -> None:
    """A few attempts as real ``chaperone-otel sql`` processes: exit 2, the reason on stderr."""
    before = file_digest(setting.db)
    sample = [setting.attempts[i] for i in range(0, len(setting.attempts), 40)]
    for attempt in sample:
        done = subprocess.run(
            [sys.executable, "-m", "chaperone_otel.cli", "sql", "--db", str(setting.db),
             attempt], check=False, capture_output=True, text=True, timeout=60,
            env=setting.env())
        assert done.returncode == 2, (attempt, done.stdout, done.stderr)
        assert SECRET not in done.stdout + done.stderr
        assert check_refusal(attempt, done.stderr) is None
    assert file_digest(setting.db) == before
    setting.assert_nothing_escaped()


@_ON_DUCKDB_1
@pytest.mark.slow
def test_every_escape_as_its_own_cli_process(setting: Setting) -> None:
    """Every attempt as a real ``chaperone-otel sql --db FILE`` process."""
    before = file_digest(setting.db)
    problems = []
    for attempt in setting.attempts:
        done = subprocess.run(
            [sys.executable, "-m", "chaperone_otel.cli", "sql", "--db", str(setting.db),
             attempt], check=False, capture_output=True, text=True, timeout=60,
            env=setting.env())
        if done.returncode != 2:
            problems.append(f"exit {done.returncode} for {attempt!r}")
        problem = check_refusal(attempt, done.stdout + done.stderr)
        if problem:
            problems.append(problem)
    assert problems == []
    assert file_digest(setting.db) == before
    setting.assert_nothing_escaped()


def start_owner(setting: Setting, **env: str) -> tuple[subprocess.Popen[str], str]:
    errors = setting.root / "serve.stderr"
    with errors.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(setting.db)],
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**setting.env(), **env})
    owner = wait_until(lambda: proc.poll() is not None or read_sidecar(setting.db), 30,
                       "the sink process to advertise its URL")
    if proc.poll() is not None:
        pytest.fail(f"sink process died: {errors.read_text()}")
    return proc, owner["url"]


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@_ON_DUCKDB_1
@pytest.mark.slow
def test_api_sql_of_a_live_owner_refuses_every_escape(setting: Setting) -> None:
    """``/api/sql`` of ``sink serve``: every attempt gets 400 with a clear reason and no
    secret; the store's content is unchanged after the owner exits."""
    before = content_digest(setting.db)
    proc, url = start_owner(setting)
    try:
        problems = []
        for attempt in setting.attempts:
            status, body = post_sql(url, {"query": attempt})
            if status != 400:
                problems.append(f"{status} for {attempt!r}: {str(body)[:200]}")
                continue
            problem = check_refusal(attempt, body.get("error", ""))
            if problem:
                problems.append(problem)
        assert problems == []
        status, body = post_sql(url, {"query": "SELECT count(*) FROM jobs"})
        assert (status, body["rows"]) == (200, [[3]])
    finally:
        assert stop(proc) == 0
    assert content_digest(setting.db) == before
    setting.assert_nothing_escaped()


APP = """
import sys, chaperone_otel
from chaperone_otel import supervised
setup = chaperone_otel.configure(sink=sys.argv[1])
with supervised("app.job"):
    pass
print(setup.sink.url, flush=True)
sys.stdin.read()  # serve until the test closes stdin
chaperone_otel.shutdown()
"""

ATTACKER = """
import http.client, json, sys
host, port = sys.argv[1].removeprefix("http://").split(":")
try:
    open(sys.argv[2]).read()
    print(json.dumps({"direct": "readable"}))
except PermissionError:
    print(json.dumps({"direct": "denied"}))
def post(q, token):
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    conn.request("POST", "/api/sql", body=json.dumps({"query": q}), headers=headers)
    r = conn.getresponse()
    out = {"q": q, "status": r.status, "body": r.read().decode()}
    conn.close()
    return out
print(json.dumps({"without_token": post("SELECT 1", None)["status"]}), flush=True)
for q in json.loads(sys.argv[3]):  # as if the owner's token had leaked: the engine refuses
    print(json.dumps(post(q, sys.argv[4])), flush=True)
"""

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.slow
def test_another_os_user_cannot_read_a_root_only_file_through_an_apps_api(
    setting: Setting,
) -> None:
    """The issue's cross-user case: ``nobody`` posts file-reading SQL to a root
    application's embedded-sink ``/api/sql``; a 0600 root file stays unread."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a second OS user (nobody)")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter nobody may run) is missing")
    setting.secret.chmod(0o600)
    app = subprocess.Popen([sys.executable, "-c", APP, str(setting.db)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=setting.env())
    try:
        assert app.stdout is not None
        url = app.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), app.stderr.read() if app.stderr else ""
        attempts = [a for a in setting.attempts if str(setting.secret.parent) in a][:40]
        owner = read_sidecar(setting.db)
        assert owner is not None
        assert owner.get("token"), "the embedded API has no token"
        token = str(owner["token"])
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", ATTACKER, url, str(setting.secret), json.dumps(attempts),
             token],
            user="nobody", group="nogroup", cwd="/", env={"PATH": "/usr/bin:/bin"},
            check=False, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[0] == {"direct": "denied"}  # the file really is out of nobody's reach
        assert lines[1] == {"without_token": 401}  # the sidecar's token is root's alone
        answers = lines[2:]
        assert len(answers) == len(attempts) >= 30
        assert SECRET not in done.stdout
        assert [a["q"] for a in answers if a["status"] != 400] == []
    finally:
        if app.stdin is not None:
            app.stdin.close()
        try:
            app.wait(30)
        finally:
            if app.poll() is None:
                os.kill(app.pid, signal.SIGKILL)
                app.wait(10)
            for stream in (app.stdout, app.stderr):
                if stream is not None:
                    stream.close()
    setting.assert_nothing_escaped()


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN ANALYZE COPY (SELECT 'planted' AS x) TO '{tmp}/planted.csv'",
        "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO '{tmp}/planted.json'",
        "EXPLAIN /* a comment */ ANALYZE COPY jobs TO '{tmp}/jobs.csv'",
        "EXPLAIN COPY (SELECT 1) TO '{tmp}/plan-only.csv'",
    ],
)
def test_explain_analyze_cannot_write_into_the_engines_spill_directory(
    tmp_path: Path, query: str
) -> None:
    """DuckDB lets a statement write into its own spill directory (``<store>.tmp/``), and
    ``EXPLAIN ANALYZE`` runs what it explains: a ``COPY … TO`` there wrote a file of the
    query's choosing that outlived the server. EXPLAIN is allowed of a SELECT only; the
    SELECT it explains still runs (``EXPLAIN ANALYZE SELECT``)."""
    from chaperone_otel import configure, open_sink, shutdown, supervised
    from chaperone_otel.exceptions import SinkError

    db = tmp_path / "jobs.duckdb"
    configure(sink=str(db))

    @supervised(name="escape.fixture")
    def job() -> None:
        pass

    job()
    shutdown()
    spill = Path(str(db) + ".tmp")
    spill.mkdir()  # as a query that spilled leaves it
    with open_sink(str(db)) as sink:
        with pytest.raises(SinkError, match="EXPLAIN \\[ANALYZE\\] of a SELECT only"):
            sink.sql(query.format(tmp=spill))
        plan = sink.sql("EXPLAIN ANALYZE SELECT count(*) FROM jobs")
        assert plan.rows
    assert list(spill.iterdir()) == []
