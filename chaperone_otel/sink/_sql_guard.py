"""What a user's SELECT may call and how large it may be, read from DuckDB's own parse tree.

The engine's sandbox (:mod:`._store`: no files but the store's, no extensions, a locked
configuration) bounds what a statement can *reach*; the read-only transaction and the
watchdog (:mod:`._local`) bound what it can *change* and how long it runs. Four things get
past those, found by probing a real ``sink serve`` (sessions 16 and 17):

* **SQL run from a string on another connection.** ``json_execute_serialized_sql`` (the
  built-in JSON extension, which cannot be unloaded) runs the statement it is given on a
  connection of its own: outside the read-only transaction and out of reach of the
  watchdog's ``interrupt()``, so a long query there kept a server that was told to stop
  at 200 % CPU, holding the store, until it was killed. ``query()`` and ``query_table()``
  take their SQL or table name as a string too, which no check of the outer statement
  sees, and ``json_serialize_plan`` binds and plans its string: binding ``read_csv`` of
  the store file read a line of its raw bytes into the plan's column names. All four are
  refused wherever they appear.
* **Planning that grows faster than the text.** The planner's memory grows with the square
  of a set operation's branches (``SELECT 1 UNION ALL …`` 12,000 times, 228 KB: ~4 GB and
  17 s, before the time limit can act, which only interrupts execution), and it plans a CTE
  that is not ``MATERIALIZED`` once per reference, so CTEs that each refer twice to the one
  before grow exponentially (18 of them, 818 bytes: 1 GB, 27 s). A statement may plan at
  most :data:`MAX_SET_BRANCHES` branches and :data:`MAX_CTE_COPIES` copies of CTE bodies,
  counted from the tree as the planner would copy them.
* **One value of unbounded size.** DuckDB's ``memory_limit`` bounds its buffer pool, not a
  single list or string a scalar function builds in one call: ``len(range(200000000))``
  took 14 GB. The list-making scalars ``range`` and ``generate_series`` are refused
  (their table-function forms, ``FROM range(n)``, stream rows under the row limit and stay
  allowed). Other functions still build a value as large as their arguments ask
  (``repeat('x', 2000000000)``: 4 GB; ``lpad``, ``list_resize``…), and string functions
  such as ``repeat`` have everyday uses, so they are not refused: run a sink that serves
  untrusted clients under an OS memory limit (``docs/sink-server.md``).
* **The store's own files.** The sandbox lets the engine reach the store file, its log and
  its spill directory, and so it let queries read them: ``read_blob('<store>')`` returned
  the raw bytes, rows a prune had deleted among them (a retention policy undone). Every
  table function that reads files (:data:`FILE_READERS`) is refused, and so is a table
  name that names a file (``FROM '<store>'``, which DuckDB reads as a call of the reader
  the extension picks); ``checkpoint()``, which ran inside the read-only transaction, is
  refused with the others that write.

A deny list, not an allow list: an allow list of the tree's node kinds was tried before and
was bypassed by spellings the engine accepts; a function, however it is spelled (case,
``system.main.`` prefixes, method-call syntax), is one ``function_name`` in the tree. A
built-in *macro* is one name too, its body expanded only when bound: the macros whose body
calls a refused function (``histogram_values``, ``generate_subscripts`` in DuckDB 2.0) are
found in ``duckdb_functions()`` and refused with them. The tree comes from
``json_serialize_sql`` on a private in-memory connection (it only parses).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from typing import Any, Final

import duckdb

from ..exceptions import SinkError

SQL_FROM_STRINGS: Final = frozenset(
    {"json_execute_serialized_sql", "json_serialize_plan", "query", "query_table"}
)
"""Functions that run or plan SQL (or read a table) named by a string: refused anywhere.
``json_serialize_plan`` only plans, but binding is enough to read a file (``read_csv``
sniffs its header while it is bound) or to fold a constant of any size."""
HUGE_VALUE_SCALARS: Final = frozenset({"range", "generate_series"})
"""Scalar functions that build one list or string as large as their argument asks:
refused as scalars (their table-function forms stream rows and are allowed)."""
FILE_READERS: Final = re.compile(r"(read_|parquet_|sniff_|python_)\w*|\w+_scan|glob")
"""Table functions that read files (or, ``arrow_scan``/``pandas_scan``/``python_*``, the
process's Python objects), matched on the whole name. The sandbox already limits files to
the store's own, but those are not for user SQL either: ``read_blob('<store>')`` returned
the store's raw bytes, rows a prune had deleted among them, and the log and spill files
hold other statements' data."""
STORE_WRITERS: Final = frozenset({"checkpoint", "force_checkpoint", "truncate_duckdb_logs"})
"""Table functions that change the store or the engine (``checkpoint()`` ran inside the
read-only transaction): refused like any other write."""
_PATH_LIKE: Final = re.compile(r"[./\\:*?]")
"""A table name that names a file: DuckDB reads ``FROM 'x.csv'`` (or ``'<store>'``) as a
call of the reader its extension picks. No table or view of the store has these; a CTE of
the statement may (``WITH "last:hour" AS …``), and is not refused."""
MAX_SET_BRANCHES: Final = 256
"""Most branches of the set operations (``UNION``, ``EXCEPT``, ``INTERSECT``) one statement
plans, its CTEs counted once per copy the planner makes of them: planning grows with their
square (1,000 branches: ~40 MB, 0.1 s)."""
MAX_CTE_COPIES: Final = 1_000
"""Most copies of CTE bodies one statement plans. A CTE that is not ``MATERIALIZED`` is
planned once per reference, so a chain of CTEs each referring twice to the one before grows
exponentially: 18 of them, 818 bytes, took 1 GB and 27 s to plan."""

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None
_macros: frozenset[tuple[str, bool]] = frozenset()
_materialized_seen = True  # DuckDB 1.5's json_serialize_sql drops ``AS MATERIALIZED``


_inherited: list[duckdb.DuckDBPyConnection] = []
"""Parsers of the parent process, kept by a forked child: never closed or freed there
(DuckDB's destructor in a forked child waits on threads that did not fork: it crashed)."""


def _forget_parser() -> None:
    """In a forked child: a parser and lock of its own (the parent's lock may have been
    held by a thread the child does not have, and the child would wait for ever)."""
    global _parser, _parser_lock
    if _parser is not None:
        _inherited.append(_parser)
    _parser, _parser_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parser)


def _refused_macros(con: duckdb.DuckDBPyConnection) -> frozenset[tuple[str, bool]]:
    """DuckDB's built-in macros whose body calls a refused function (or such a macro), as
    (name, is a table macro): a macro is one name in the parse tree, its body expanded only
    when it is bound (``histogram_values`` calls ``query_table`` and the scalar
    ``generate_series``). The kind matters: the table macro ``histogram(table, column)``
    calls ``histogram_values``, the aggregate ``histogram(x)`` of the same name does not."""
    rows = con.execute(
        "SELECT DISTINCT lower(function_name), function_type = 'table_macro', macro_definition "
        "FROM duckdb_functions() WHERE macro_definition IS NOT NULL"
    ).fetchall()
    refused = set(SQL_FROM_STRINGS | HUGE_VALUE_SCALARS | STORE_WRITERS)
    found: set[tuple[str, bool]] = set()
    while True:
        names = "|".join([*map(re.escape, sorted(refused)), FILE_READERS.pattern])
        calls = re.compile(r"\b(" + names + r")\s*\(", re.I)
        more = {
            (name, bool(table))
            for name, table, body in rows
            if (name, bool(table)) not in found and calls.search(str(body))
        }
        if not more:
            return frozenset(found)
        found |= more
        refused |= {name for name, _ in more}


def _parse_tree(query: str) -> Any:
    """``query``'s parse tree as ``json_serialize_sql`` writes it (a SELECT only)."""
    global _parser, _macros, _materialized_seen
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(
                ":memory:",
                config={"enable_external_access": False, "autoinstall_known_extensions": False},
            )
            _macros = _refused_macros(_parser)
            probe = "WITH a AS MATERIALIZED (SELECT 1) SELECT * FROM a"
            shown = _parser.execute("SELECT json_serialize_sql(?)", [probe]).fetchall()[0][0]
            _materialized_seen = "CTE_MATERIALIZE_ALWAYS" in str(shown)
        try:
            text = _parser.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
        except duckdb.Error as e:
            raise SinkError(f"cannot parse SQL: {e}") from e
    try:
        tree = json.loads(text)
    except RecursionError as e:
        raise SinkError(
            "sink.sql() refuses this statement: it is nested too deeply to be checked "
            "(hundreds of levels of calls or operators): split it"
        ) from e
    if not isinstance(tree, dict) or tree.get("error"):
        why = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise SinkError(f"cannot check this statement ({why or 'not a plain SELECT'})")
    return tree


def _check_call(node: dict[str, Any], as_table: bool) -> None:
    name = node.get("function_name")
    if not isinstance(name, str):
        return
    name = name.lower()
    if name in SQL_FROM_STRINGS:
        raise SinkError(
            f"sink.sql() refuses {name}(): it runs or plans SQL named by a string, outside "
            "the checks and the time limit of the statement that calls it"
        )
    if (name, as_table) in _macros:
        raise SinkError(
            f"sink.sql() refuses {name}(): a built-in macro that calls a function refused "
            "here (SQL named by a string, a list as long as its argument, a file reader)"
        )
    if as_table and FILE_READERS.fullmatch(name):
        raise SinkError(
            f"sink.sql() reads only the job store: it refuses {name}(), which reads "
            "files (not even the store's own: query its tables and views)"
        )
    if as_table and name in STORE_WRITERS:
        raise SinkError(f"sink.sql() refuses {name}(): it writes; user SQL only reads")
    if not as_table and name in HUGE_VALUE_SCALARS:
        raise SinkError(
            f"sink.sql() refuses the scalar {name}(): it builds one value as large as its "
            f"argument, past the memory limit (use the table function: FROM {name}(...))"
        )


def _scan(root: Any) -> tuple[int, Counter[str]]:
    """Check every call in ``root`` (not in the CTE definitions it holds: each is scanned on
    its own) and count its set operations and its references to names (CTEs or tables)."""
    operations = 0
    refs: Counter[str] = Counter()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, as_table = stack.pop()
        if isinstance(node, list):
            stack.extend((item, False) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        _check_call(node, as_table)
        kind = node.get("type")
        if kind == "SET_OPERATION_NODE":  # n-ary (children) or binary
            children = node.get("children")
            operations += len(children) - 1 if isinstance(children, list) and children else 1
        elif kind == "BASE_TABLE" and not node.get("schema_name") and not node.get("catalog_name"):
            refs[str(node.get("table_name", "")).lower()] += 1
        table_function = kind == "TABLE_FUNCTION"
        for key, value in node.items():
            if key != "cte_map":
                stack.append((value, table_function and key == "function"))
    return operations, refs


def _definitions(tree: Any) -> dict[str, list[tuple[bool, Any]]]:
    """Every CTE defined anywhere in ``tree``: name → (materialized, definition) for each
    definition of that name (one name may be defined in several scopes)."""
    found: dict[str, list[tuple[bool, Any]]] = {}
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        entries = (
            (node.get("cte_map") or {}).get("map")
            if isinstance(node.get("cte_map"), dict)
            else None
        )
        for entry in entries or ():
            if isinstance(entry, dict) and isinstance(entry.get("value"), dict):
                value = entry["value"]
                always = value.get("materialized") == "CTE_MATERIALIZE_ALWAYS"
                found.setdefault(str(entry.get("key", "")).lower(), []).append((always, value))
        stack.extend(node.values())
    return found


def materialized_seen() -> bool:
    """Whether this DuckDB's parse tree says which CTEs are ``MATERIALIZED`` (1.5 does
    not: every CTE then counts as planned once per reference)."""
    _parse_tree("SELECT 1")
    return _materialized_seen


def check_select(query: str) -> None:
    """Raise :class:`SinkError` if the SELECT ``query`` calls a refused function, or plans
    too many set-operation branches or CTE copies (see the module doc)."""
    tree = _parse_tree(query)
    definitions = _definitions(tree)
    scanned = {
        name: [(always, *_scan(value)) for always, value in defs]
        for name, defs in definitions.items()
    }
    # Per CTE name, what one copy of it plans: (copies of CTE bodies, set operations), the
    # largest of its definitions; a MATERIALIZED one is planned once, not per reference.
    cost: dict[str, tuple[int, int]] = {}
    visiting: set[str] = set()

    def planned(refs: Counter[str]) -> tuple[int, int]:
        copies = operations = 0
        for name, times in refs.items():
            if name not in scanned or name in visiting:  # a table, or a recursive reference
                continue
            if name not in cost:
                visiting.add(name)
                worst = (0, 0)
                for _always, own, inner in scanned[name]:
                    c, o = planned(inner)
                    worst = max(worst, (1 + c, own + o))
                visiting.discard(name)
                cost[name] = worst
            c, o = cost[name]
            once = all(always for always, _, _ in scanned[name])
            copies += c if once else c * times
            operations += o if once else o * times
            if copies > MAX_CTE_COPIES or operations >= MAX_SET_BRANCHES:
                break
        return copies, operations

    own, refs = _scan(tree)
    for name in [*refs, *(n for defs in scanned.values() for _, _, inner in defs for n in inner)]:
        if _PATH_LIKE.search(name) and name not in definitions:  # a quoted CTE name may
            raise SinkError(
                f"sink.sql() reads only the job store: it refuses FROM {name!r}, which "
                "names a file (query the store's tables and views: jobs, heartbeats, …)"
            )
    copies, operations = planned(refs)
    if copies > MAX_CTE_COPIES:
        fix = (
            "write WITH name AS MATERIALIZED (...)"
            if materialized_seen()
            else "this DuckDB does not show which CTEs are MATERIALIZED: refer to each once"
        )
        raise SinkError(
            f"sink.sql() refuses this statement: its CTEs would be planned {copies:,} times "
            f"or more (at most {MAX_CTE_COPIES:,}): each reference to a CTE that is not "
            f"MATERIALIZED plans it again; {fix}"
        )
    if own + operations >= MAX_SET_BRANCHES:
        raise SinkError(
            f"sink.sql() refuses more than {MAX_SET_BRANCHES} UNION/EXCEPT/INTERSECT "
            "branches in one statement, its CTEs counted once per copy planned (planning "
            "them takes memory that grows with their square)"
        )
