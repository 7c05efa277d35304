"""User SQL that gets past the engine's sandbox, the read-only transaction or the watchdog is
refused before it runs (``sink/_sql_guard.py``): SQL run from a string on another
connection, set operations whose planning outgrows any limit, list-making scalars."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import _sql_guard
from chaperone_otel.sink._local import open_sink
from chaperone_otel.sink._server import SinkServer
from chaperone_otel.sink._sql_guard import MAX_SET_BRANCHES, materialized_seen
from tests.processes import run_python
from tests.sink.store_factory import post_sql
from tests.stores import store_with_a_run

# Runs for hours, on json_execute_serialized_sql's own connection: the watchdog's interrupt()
# and a server's shutdown never reached it.
ENDLESS = "SELECT sum(range) FROM range(100000000000000)"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return store_with_a_run(tmp_path / "guard.duckdb", "guard.job")


@pytest.mark.parametrize(
    "query",
    [
        f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql($${ENDLESS}$$))",
        f"SELECT * FROM SYSTEM.Main.JSON_EXECUTE_SERIALIZED_SQL(json_serialize_sql('{ENDLESS}'))",
        f"WITH x AS (SELECT * FROM json_execute_serialized_sql(json_serialize_sql('{ENDLESS}')))"
        " SELECT * FROM x",
        "SELECT name FROM jobs WHERE EXISTS (SELECT * FROM json_execute_serialized_sql("
        f"json_serialize_sql('{ENDLESS}')))",
        f"EXPLAIN ANALYZE SELECT * FROM json_execute_serialized_sql(json_serialize_sql('{ENDLESS}'))",
        f"SELECT * FROM query('{ENDLESS}')",
        "SELECT * FROM query_table('jobs')",
        # Plans its string: binding read_csv of the store read a line of its raw bytes
        # (pruned rows among them) into the plan's column names; and a constant is folded
        # whatever its size (len(range(20000000)): 1.8 GB before the time limit).
        "SELECT json_serialize_plan('SELECT t FROM read_csv(''{store}'', header=true) t "
        "WHERE false', optimize := true)",
        "SELECT length(json_serialize_plan('SELECT len(range(20000000))', optimize := true))",
        "SELECT JSON_Serialize_Plan($$SELECT 1$$)",
    ],
)
def test_sql_run_from_a_string_is_refused_in_every_spelling(store: Path, query: str) -> None:
    with open_sink(store) as sink, pytest.raises(
        SinkError, match=r"refuses \w+\(\): it runs or plans SQL"
    ):
        sink.sql(query.format(store=store), timeout=2)


def test_sql_planned_from_a_parameter_is_refused(store: Path) -> None:
    """The string need not be in the statement: a parameter carries it past any check of
    the text, so the function itself is refused."""
    inner = f"SELECT t FROM read_csv('{store}', header=true) t WHERE false"
    with open_sink(store) as sink, pytest.raises(SinkError, match="json_serialize_plan"):
        sink.sql("SELECT json_serialize_plan($1, optimize := true)", [inner], timeout=2)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT len(range(200000000))",
        "SELECT (200000000).range()",
        "SELECT len(generate_series(1, 200000000))",
        "SELECT list_transform([200000000], x -> len(range(x)))",
        "SELECT * FROM range(len(range(3)))",
        "EXPLAIN SELECT len(range(200000000))",
    ],
)
def test_list_making_scalars_are_refused(store: Path, query: str) -> None:
    with open_sink(store) as sink, pytest.raises(SinkError, match="refuses the scalar"):
        sink.sql(query, timeout=2)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT octet_length(content) FROM read_blob('{store}')",
        "SELECT * FROM Read_Text('{store}')",
        "SELECT * FROM system.main.read_blob('{store}.wal')",
        "SELECT count(*) FROM read_blob('{store}.tmp/*')",
        "SELECT * FROM glob('{store}*')",
        "SELECT * FROM read_duckdb('{store}', table_name := 'jobs')",
        "SELECT * FROM parquet_metadata('{store}')",
        "SELECT * FROM read_csv('{store}', header := false)",
        "WITH raw AS (SELECT content FROM read_blob('{store}')) SELECT * FROM raw",
        "SELECT name FROM jobs WHERE EXISTS (SELECT * FROM read_text('{store}'))",
        "EXPLAIN ANALYZE SELECT * FROM read_blob('{store}')",
        "SELECT * FROM '{store}'",
        "SELECT * FROM '{store}.tmp/*.csv'",
        "FROM '{store}.wal'",
        "SELECT * FROM jobs, 'file://{store}'",
        'SELECT * FROM "{store}"',
    ],
)
def test_the_stores_own_files_are_not_readable(store: Path, query: str) -> None:
    """The sandbox lets the engine reach the store file, its log and its spill directory;
    before the guard refused file readers, ``read_blob`` returned the store's raw bytes,
    rows a prune had deleted among them. A table named by a path is such a reader too."""
    with open_sink(store) as sink, pytest.raises(
        SinkError, match=r"reads only the job store: it refuses (\w+\(\), which reads|FROM)"
    ):
        sink.sql(query.format(store=store), timeout=5)


def test_checkpoint_is_refused_as_a_write(store: Path) -> None:
    """``checkpoint()`` ran inside the read-only transaction."""
    with open_sink(store) as sink, pytest.raises(SinkError, match=r"refuses checkpoint\(\): it writes"):
        sink.sql("SELECT * FROM checkpoint()")


def test_their_table_functions_and_everyday_functions_still_run(store: Path) -> None:
    with open_sink(store) as sink:
        assert sink.sql("SELECT count(*) FROM range(10)")[1] == [(10,)]
        assert sink.sql("SELECT * FROM generate_series(1, 3)")[1] == [(1,), (2,), (3,)]
        assert sink.sql("SELECT repeat('=', 3), lpad('7', 3, '0')")[1] == [("===", "007")]
        assert sink.sql("SELECT 'a.csv' GLOB '*.csv', 'x' LIKE 'x'")[1] == [(True, True)]
        assert sink.sql("SELECT * FROM unnest([1, 2])")[1] == [(1,), (2,)]
        # the aggregate, not the table macro of the same name (which calls query_table)
        assert sink.sql("SELECT histogram(x) FROM (VALUES (1), (2), (2)) t(x)")[1] == [
            ({1: 1, 2: 2},)
        ]
        assert sink.sql("SELECT count(*) > 0 FROM duckdb_tables()")[1] == [(True,)]
        # a quoted CTE name may hold what a path does; it names no file
        assert sink.sql('WITH "last:hour.x" AS (SELECT 1 AS n) SELECT n FROM "last:hour.x"')[
            1
        ] == [(1,)]
        assert sink.sql('SELECT count(*) FROM jobs AS "j.x"')[1] == [(1,)]
        assert sink.sql("SELECT name FROM jobs WHERE name = $1", ["guard.job"])[1] == [
            ("guard.job",)
        ]


def test_set_operations_are_bounded_before_they_are_planned(store: Path) -> None:
    """As many branches as the limit run; one more is refused, whatever the operators."""
    allowed = " UNION ALL ".join([f"SELECT {i}" for i in range(MAX_SET_BRANCHES)])
    with open_sink(store) as sink:
        assert len(sink.sql(allowed)[1]) == MAX_SET_BRANCHES
        for operator in ("UNION ALL", "UNION", "EXCEPT", "INTERSECT"):
            query = f" {operator} ".join(["SELECT 1"] * (MAX_SET_BRANCHES + 1))
            with pytest.raises(SinkError, match="UNION/EXCEPT/INTERSECT"):
                sink.sql(query)
        # 12,000 branches: ~4 GB and 17 s of planning before the guard (DuckDB 1.x nests
        # set operations two by two, and its parser refuses them at its depth limit)
        with pytest.raises(SinkError, match=r"UNION/EXCEPT/INTERSECT|expression depth"):
            sink.sql(" UNION ALL ".join(["SELECT 1"] * 12_000))
        nested = "SELECT 1 UNION ALL (" * 200 + "SELECT 1" + ")" * 200
        assert len(sink.sql(nested)[1]) == 201
        with pytest.raises(SinkError, match="UNION/EXCEPT/INTERSECT"):
            sink.sql(f"({nested}) UNION ALL ({nested})")


def test_a_statement_nested_past_the_check_is_refused_not_failed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parse tree deeper than the interpreter's JSON decoder goes (600 nested calls on
    Python 3.11; 3.13's decoder goes deeper) is refused with the reason, never a
    RecursionError (a 500 over HTTP)."""
    query = "SELECT " + "abs(" * 600 + "1" + ")" * 600
    with open_sink(store) as sink:
        outcome: object
        try:
            outcome = sink.sql(query)[1]
        except SinkError as refused:
            outcome = str(refused)
        assert outcome == [(1,)] or "nested too deeply" in str(outcome), outcome

        def too_deep(text: str) -> object:
            raise RecursionError("maximum recursion depth exceeded")

        monkeypatch.setattr(_sql_guard, "json", SimpleNamespace(loads=too_deep))
        with pytest.raises(SinkError, match="nested too deeply"):
            sink.sql("SELECT 1")


def test_api_sql_refuses_them_with_400_and_the_reason(store: Path) -> None:
    """A real sink server: the refusal is a 400 with the reason, and so is a body nested past
    the JSON decoder's depth (it was a 500)."""
    with SinkServer(str(store), port=0, advertise=False) as server:
        url = server.url
        status, body = post_sql(
            url,
            {"query": f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql('{ENDLESS}'))"},
            timeout=15,
        )
        assert status == 400
        assert "json_execute_serialized_sql" in body["error"]
        deep = '{"query": "SELECT 1", "params": ' + "[" * 100_000 + "]" * 100_000 + "}"
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        try:
            conn.request("POST", "/api/sql", body=deep, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 400
        assert "nested less deeply" in answer["error"]


@pytest.mark.parametrize(
    "query",
    [
        # Its body calls query_table() and the scalar generate_series(): 7.6 GB before.
        "SELECT count(*) FROM histogram_values('schema_version', version, "
        "bin_count := 30000000, technique := 'equi-height')",
        "SELECT generate_subscripts([1, 2, 3], 1)",
        "SELECT * FROM histogram('jobs', status)",
        "SELECT (SELECT count(*) FROM histogram('jobs', name))",
    ],
)
def test_built_in_macros_that_call_a_refused_function_are_refused(store: Path, query: str) -> None:
    with open_sink(store) as sink, pytest.raises(SinkError, match="a built-in macro that calls"):
        sink.sql(query, timeout=2)


def _chain(n: int, materialized: bool = False) -> str:
    """CTEs each referring twice to the one before: 2**n copies when inlined."""
    how = " MATERIALIZED" if materialized else ""
    ctes = ["t0 AS (SELECT 1 AS x)"] + [
        f"t{i} AS{how} (SELECT a.x FROM t{i - 1} a, t{i - 1} b LIMIT 1)" for i in range(1, n + 1)
    ]
    return f"WITH {', '.join(ctes)} SELECT * FROM t{n}"


def test_ctes_planned_once_per_reference_are_bounded(store: Path) -> None:
    """A chain of 18 such CTEs (818 bytes) took 1 GB and 27 s to plan: refused, saying to
    materialize; the same chain MATERIALIZED runs, and so do CTEs referenced a few times."""
    with open_sink(store) as sink:
        with pytest.raises(SinkError, match=r"planned [\d,]+ times or more.*MATERIALIZED"):
            sink.sql(_chain(18))
        if materialized_seen():  # DuckDB 2 (1.5's parse tree drops AS MATERIALIZED)
            assert sink.sql(_chain(18, materialized=True))[1] == [(1,)]
        assert sink.sql(_chain(4))[1] == [(1,)]
        twice = "WITH n AS (SELECT name FROM jobs) SELECT count(*) FROM n a JOIN n b USING (name)"
        assert sink.sql(twice)[1] == [(1,)]
        recursive = (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
            "SELECT count(*) FROM r"
        )
        assert sink.sql(recursive)[1] == [(5,)]


def test_set_operations_in_ctes_count_once_per_copy(store: Path) -> None:
    inner = " UNION ALL ".join(["SELECT 1 AS x"] * 100)
    query = f"WITH u AS ({inner}) SELECT * FROM u UNION ALL SELECT * FROM u UNION ALL SELECT * FROM u"
    with open_sink(store) as sink, pytest.raises(SinkError, match="UNION/EXCEPT/INTERSECT"):
        sink.sql(query)  # 3 copies of 99 operations, and 2 of its own
    if not materialized_seen():  # DuckDB 1.5's parse tree drops AS MATERIALIZED
        return
    with open_sink(store) as sink:
        assert len(sink.sql(f"WITH u AS MATERIALIZED ({inner}) {query[query.index('SELECT * FROM u'):]}")[1]) == 300


_FORK_WHILE_BUSY = r"""
import os, sys, time
from chaperone_otel.sink import _sql_guard
from chaperone_otel.sink._sql_guard import check_select

check_select("SELECT 1")  # the checker exists
with _sql_guard._parser_lock:  # as another thread would hold it
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            check_select("SELECT 2")
            code = 0
        finally:
            os._exit(code)
deadline = time.monotonic() + 30
while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
if done[0] == 0:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print("hung")
else:
    print("exit", os.waitstatus_to_exitcode(done[1]))
"""


def test_a_child_forked_while_the_checker_was_busy_checks_on_its_own() -> None:
    """A fork while another thread held the checker's lock: the child checks with a lock
    and a connection of its own (it waited for ever on a lock no thread of it holds). In a
    fresh interpreter: a fork of the test process, with its many DuckDB threads, may crash
    the child whatever this module does."""
    assert run_python(_FORK_WHILE_BUSY, timeout=60).stdout.split() == ["exit", "0"]
