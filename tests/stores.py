"""A current, empty job store made once per test process and copied where a test only needs
*a* store (not its creation): a DuckDB file can be copied while no connection holds it.

Creating a store replays every migration and renders the views (~40 ms of DuckDB DDL); a copy
of the template opens like any existing current store. The creation path itself stays tested
where it is the subject (``tests/sink/test_schema.py``, ``tests/sink/test_store.py``, every
test that configures a sink on a new path), and the template is made by that same path, so a
copy is byte-for-byte what a first open leaves behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_template: Path | None = None


def _make_template() -> Path:
    from chaperone_otel.sink._store import acquire, release

    folder = Path(tempfile.mkdtemp(prefix="chaperone-otel-template-"))
    creator = os.getpid()

    def remove() -> None:  # never from a forked child that exits normally
        if os.getpid() == creator:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    path = folder / "template.duckdb"
    release(acquire(path, read_only=False))  # the real open path: migrations, views
    leftovers = sorted(p.name for p in folder.iterdir() if p != path)
    assert not leftovers, f"a closed store left {leftovers} beside it"
    return path


def empty_store(path: str | os.PathLike[str]) -> Path:
    """Put a copy of the empty current store at ``path`` (which must not exist yet); returns
    it. Opening it then costs what opening any existing store costs."""
    global _template
    with _lock:
        if _template is None:
            _template = _make_template()
        template = _template
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} exists: empty_store() only makes new stores")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return target


def store_with_a_run(path: str | os.PathLike[str], name: str) -> Path:
    """:func:`empty_store` at ``path``, then one completed run named ``name`` recorded in it
    by a configured sink (the store a query test reads)."""
    import chaperone_otel as chaperone

    db = empty_store(path)
    chaperone.configure(sink=str(db))
    with chaperone.supervised(name):
        pass
    chaperone.shutdown()
    chaperone.reset()
    return db
