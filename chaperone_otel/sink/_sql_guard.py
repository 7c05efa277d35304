"""What a user's SELECT may call and how large it may be, read from DuckDB's own parse tree.

The engine's sandbox (:mod:`._store`: no files but the store's, no extensions, a locked
configuration) bounds what a statement can *reach*; the read-only transaction and the
watchdog (:mod:`._local`) bound what it can *change* and how long it runs. Three things get
past those, found by probing a real ``sink serve`` (session 16):

* **SQL run from a string on another connection.** ``json_execute_serialized_sql`` (the
  built-in JSON extension, which cannot be unloaded) runs the statement it is given on a
  connection of its own: outside the read-only transaction and out of reach of the
  watchdog's ``interrupt()``, so a long query there kept a server that was told to stop
  at 200 % CPU, holding the store, until it was killed. ``query()`` and ``query_table()``
  take their SQL or table name as a string too, which no check of the outer statement
  sees. All three are refused wherever they appear.
* **Planning that grows faster than the text.** The planner's memory grows with the square
  of a set operation's branches (``SELECT 1 UNION ALL …`` 12,000 times, 228 KB: ~4 GB and
  17 s, before the time limit can act, which only interrupts execution). A statement may
  have at most :data:`MAX_SET_BRANCHES` branches.
* **One value of unbounded size.** DuckDB's ``memory_limit`` bounds its buffer pool, not a
  single list or string a scalar function builds in one call: ``len(range(200000000))``
  took 14 GB. The list-making scalars ``range`` and ``generate_series`` are refused
  (their table-function forms, ``FROM range(n)``, stream rows under the row limit and stay
  allowed). Other functions still build a value as large as their arguments ask
  (``repeat('x', 2000000000)``: 4 GB; ``lpad``, ``list_resize``…), and string functions
  such as ``repeat`` have everyday uses, so they are not refused: run a sink that serves
  untrusted clients under an OS memory limit (``docs/sink-server.md``).

A deny list, not an allow list: an allow list of the tree's node kinds was tried before and
was bypassed by spellings the engine accepts; a function, however it is spelled (case,
``system.main.`` prefixes, method-call syntax), is one ``function_name`` in the tree. The
tree comes from ``json_serialize_sql`` on a private in-memory connection (it only parses).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Final

import duckdb

from ..exceptions import SinkError

SQL_FROM_STRINGS: Final = frozenset({"json_execute_serialized_sql", "query", "query_table"})
"""Functions that run SQL (or read a table) named by a string: refused anywhere."""
HUGE_VALUE_SCALARS: Final = frozenset({"range", "generate_series"})
"""Scalar functions that build one list or string as large as their argument asks:
refused as scalars (their table-function forms stream rows and are allowed)."""
MAX_SET_BRANCHES: Final = 256
"""Most branches of the set operations (``UNION``, ``EXCEPT``, ``INTERSECT``) in one
statement: planning grows with their square (1,000 branches: ~40 MB, 0.1 s)."""

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(query: str) -> Any:
    """``query``'s parse tree as ``json_serialize_sql`` writes it (a SELECT only)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(
                ":memory:",
                config={"enable_external_access": False, "autoinstall_known_extensions": False},
            )
        try:
            text = _parser.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
        except duckdb.Error as e:
            raise SinkError(f"cannot parse SQL: {e}") from e
    try:
        tree = json.loads(text)
    except RecursionError as e:
        raise SinkError("sink.sql() refuses this statement: it is nested too deeply") from e
    if not isinstance(tree, dict) or tree.get("error"):
        why = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise SinkError(f"cannot check this statement ({why or 'not a plain SELECT'})")
    return tree


def check_select(query: str) -> None:
    """Raise :class:`SinkError` if the SELECT ``query`` calls a refused function or has
    too many set-operation branches (see the module doc)."""
    operations = 0
    stack: list[tuple[Any, bool]] = [(_parse_tree(query), False)]
    while stack:
        node, as_table = stack.pop()
        if isinstance(node, list):
            stack.extend((item, False) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        name = node.get("function_name")
        if isinstance(name, str):
            name = name.lower()
            if name in SQL_FROM_STRINGS:
                raise SinkError(
                    f"sink.sql() refuses {name}(): it runs SQL named by a string, outside "
                    "the checks and the time limit of the statement that calls it"
                )
            if not as_table and name in HUGE_VALUE_SCALARS:
                raise SinkError(
                    f"sink.sql() refuses the scalar {name}(): it builds one value as large "
                    f"as its argument, past the memory limit (use the table function: "
                    f"FROM {name}(...))"
                )
        if node.get("type") == "SET_OPERATION_NODE":  # n-ary (children) or binary
            children = node.get("children")
            operations += len(children) - 1 if isinstance(children, list) and children else 1
            if operations >= MAX_SET_BRANCHES:
                raise SinkError(
                    f"sink.sql() refuses more than {MAX_SET_BRANCHES} UNION/EXCEPT/INTERSECT "
                    "branches in one statement (planning them takes memory that grows with "
                    "their square)"
                )
        table_function = node.get("type") == "TABLE_FUNCTION"
        for key, value in node.items():
            stack.append((value, table_function and key == "function"))
