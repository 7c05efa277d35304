"""User SQL reads the job store and nothing else (the engine is locked down, per database
instance: the application's own DuckDB databases are unaffected); the HTTP API takes JSON
bodies only."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chaperone_otel as chaperone
from chaperone_otel import supervised
from chaperone_otel.exceptions import SinkError
from tests.stores import empty_store


@pytest.fixture
def owned_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store owned by this process (embedded sink serving its query API) with one run."""
    db = empty_store(tmp_path / "guard.duckdb")
    setup = chaperone.configure(sink=str(db))
    with supervised("guard.job"):
        pass
    try:
        yield db, setup.sink
    finally:
        chaperone.shutdown()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT name FROM jobs WHERE name IN (SELECT content FROM read_text('/etc/hostname'))",
        "EXPLAIN SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM other_db.jobs",
        # A CTE named like a file is in scope only inside its own subquery: outside it, the
        # same name is a replacement scan of the file.
        'SELECT * FROM (WITH "/etc/passwd" AS (SELECT 1 AS x) SELECT * FROM "/etc/passwd") a, '
        '"/etc/passwd" b',
        'SELECT * FROM (WITH "/etc/passwd" AS (SELECT 1) SELECT 1) a '
        'WHERE EXISTS (SELECT * FROM "/etc/passwd")',
    ],
)
def test_sql_cannot_read_files_or_other_databases(owned_store, query: str) -> None:  # type: ignore[no-untyped-def]
    """File readers, replacement scans and other catalogs are refused with the reason."""
    db, _ = owned_store
    with chaperone.open_sink(str(db)) as sink, pytest.raises(
        SinkError, match="reads only the job store"
    ):
        sink.sql(query)


def test_unknown_statement_types_are_refused_cleanly(owned_store) -> None:  # type: ignore[no-untyped-def]
    """A statement type newer than duckdb's Python enum is a SinkError, not a ValueError."""
    db, _ = owned_store
    with chaperone.open_sink(str(db)) as sink, pytest.raises(
        SinkError, match="read-only: this statements are refused"
    ):
        sink.sql("UPDATE EXTENSIONS")


def test_the_applications_own_duckdb_is_unaffected(owned_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The lock-down is the store's database instance only: in the same process, the user's
    in-memory and file databases still read files, change settings and scan Python data."""
    import duckdb
    import pyarrow as pa

    db, _ = owned_store
    secret = tmp_path / "mine.txt"
    secret.write_text("mine")
    frame = pa.table({"x": [1, 2]})  # noqa: F841 (found by the replacement scan)
    with chaperone.open_sink(str(db)) as sink:
        with pytest.raises(SinkError, match="reads only the job store"):
            sink.sql(f"SELECT * FROM read_text('{secret}')")
        for con in (duckdb.connect(), duckdb.connect(str(tmp_path / "mine.duckdb"))):
            try:
                assert con.execute(f"SELECT content FROM read_text('{secret}')").fetchall() == [
                    ("mine",)
                ]
                con.execute("SET threads = 1")
                assert con.execute("SELECT sum(x) FROM frame").fetchall() == [(3,)]
            finally:
                con.close()
        assert sink.sql("SELECT count(*) FROM jobs")[1] == [(1,)]


def test_store_instance_is_bounded_and_locked(owned_store) -> None:  # type: ignore[no-untyped-def]
    """The store's instance runs with the documented memory and thread limits, external
    access off, and a configuration user SQL cannot change."""
    db, _ = owned_store
    with chaperone.open_sink(str(db)) as sink:
        _, rows = sink.sql(
            "SELECT current_setting('memory_limit'), current_setting('threads'), "
            "current_setting('enable_external_access'), current_setting('lock_configuration'), "
            "current_setting('TimeZone')"
        )
        assert rows == [("256.0 MiB", 2, False, True, "UTC")]


def test_sql_over_the_store_still_works(owned_store) -> None:  # type: ignore[no-untyped-def]
    """Joins, CTEs, subqueries, metadata functions and EXPLAIN over the store are allowed."""
    db, _ = owned_store
    with chaperone.open_sink(str(db)) as sink:
        _columns, rows = sink.sql(
            "WITH j AS (SELECT * FROM jobs) SELECT name, count(*) FROM j "
            "LEFT JOIN heartbeats h USING (run_id) WHERE run_id IN (SELECT run_id FROM jobs) "
            "GROUP BY ALL"
        )
        assert rows == [("guard.job", 1)]
        assert sink.sql("SELECT count(*) FROM duckdb_tables()")[1][0][0] >= 4
        assert sink.sql("SELECT * FROM range(2)")[1] == [(0,), (1,)]
        assert sink.sql("EXPLAIN SELECT * FROM jobs")[1]
        # CTEs in scope where they are used: chained, in a union, recursive, in a subquery.
        assert sink.sql("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b")[
            1
        ] == [(1,)]
        assert sink.sql(
            "WITH x AS (SELECT run_id FROM jobs) SELECT * FROM x UNION ALL SELECT * FROM x"
        )[1]
        assert sink.sql(
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) "
            "SELECT count(*) FROM t"
        )[1] == [(3,)]
        assert sink.sql("SELECT * FROM (WITH y AS (SELECT 2 AS v) SELECT v FROM y)")[1] == [(2,)]


def test_api_refuses_non_json_posts(owned_store) -> None:  # type: ignore[no-untyped-def]
    """A text/plain POST (what a cross-site form can send) gets 415, JSON gets through."""
    _, embedded = owned_store
    host, port = embedded.url.removeprefix("http://").split(":")

    def post(content_type: str) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/api/sql", body=b'{"query": "SELECT 1"}',
                         headers={"Content-Type": content_type,
                                  "Authorization": f"Bearer {embedded.owner.token}"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    assert post("text/plain") == 415
    assert post("application/x-www-form-urlencoded") == 415
    assert post("application/json") == 200


_HOLD_THEN_RELEASE = r"""
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
time.sleep(float(sys.argv[2]))
con.close()
print("released", flush=True)
time.sleep(30)
"""


@pytest.mark.slow
def test_open_sink_waits_out_a_lock_held_without_an_advertisement(tmp_path: Path) -> None:
    """A file locked by a process that advertises no URL (an owner between its sidecar and
    its lock, at start or exit) is retried: ``open_sink`` opens it once the lock goes,
    within ``handover_timeout``; with ``handover_timeout=0`` it fails at once, as before."""
    path = tmp_path / "jobs.duckdb"
    chaperone.open_sink(str(path), read_only=False).close()  # a store
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_THEN_RELEASE, str(path), "0.8"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdin is not None
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(SinkError, match="serves no query URL"):
                chaperone.open_sink(str(path), handover_timeout=0)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            started = time.monotonic()
            sink = chaperone.open_sink(str(path), handover_timeout=20)
            waited = time.monotonic() - started
            try:
                assert sink.jobs.count() == 0
            finally:
                sink.close()
            assert holder.stdout.readline().strip() == "released"
            assert 0.5 < waited < 20
        finally:
            holder.kill()
