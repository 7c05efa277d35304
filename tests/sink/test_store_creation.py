"""Opening a new store file from several processes at once (``sink/_store.py``,
``_create_whole``): DuckDB creates a file with O_TRUNC before it writes its header, so an
open in between failed ("not a valid DuckDB database file": seen in CI, one of eight apps
starting at once died in ``configure()``) or truncated the store another process had just
made ("the store file is truncated")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink import open_sink
from chaperone_otel.sink._store import acquire, release
from tests.sink.store_factory import lifecycle, store_writer, write_all

_OPENER = r"""
import json, os, sys, time
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._store import acquire, release

folder, rounds, t0, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
openers = int(sys.argv[5])
held = []
for r in range(rounds):
    time.sleep(max(0.0, t0 + r * every - time.time()))  # all openers in the same moment
    try:
        store = acquire(os.path.join(folder, f"{r}.duckdb"), read_only=False)
    except SinkError as e:
        print(json.dumps(["held" if "held by" in str(e) else "error", str(e)]), flush=True)
        continue
    print(json.dumps(["opened", ""]), flush=True)
    held.append(store)  # kept while every other opener tries, however late (a busy machine)
# Released once every opener has tried every path, however far behind a busy machine put it.
open(os.path.join(folder, f"done-{os.getpid()}"), "w").close()
deadline = time.time() + 120
while len([f for f in os.listdir(folder) if f.startswith("done-")]) < openers:
    assert time.time() < deadline, "the other openers never finished"
    time.sleep(0.05)
for store in held:
    release(store)
"""


@pytest.mark.slow
def test_processes_opening_a_new_path_at_once_either_own_it_or_meet_the_lock(
    tmp_path: Path,
) -> None:
    """8 processes open the same new path in the same moment, 20 paths in turn: each time
    exactly one creates and owns the store, every other one is told who holds it. None is
    refused for a file "not a valid DuckDB database" (3 of 30 rounds before the fix)."""
    script = tmp_path / "opener.py"
    script.write_text(_OPENER)
    rounds, every = 20, 0.5
    t0 = time.time() + 4.0  # after every interpreter has started
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(rounds), str(t0), str(every), "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outcomes: list[list[list[str]]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=4.0 + rounds * every + 60)
            assert proc.returncode == 0, err
            outcomes.append([json.loads(line) for line in out.splitlines()])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with proc:  # closes its pipes and waits
                pass
    for r in range(rounds):
        kinds = sorted(o[r][0] for o in outcomes)
        assert kinds == ["held"] * 7 + ["opened"], [o[r] for o in outcomes if o[r][0] != "held"]
    with open_sink(tmp_path / "0.duckdb") as sink:
        assert sink.jobs.count() == 0  # a whole store, created once


def test_a_new_store_is_created_whole_and_leaves_nothing_else(tmp_path: Path) -> None:
    """A writable open of a missing path creates the store (schema and all) and leaves no
    private file of the creation behind."""
    path = tmp_path / "jobs.duckdb"
    store = acquire(path, read_only=False)
    try:
        with store.cursor() as cur:
            assert cur.execute("SELECT count(*) FROM jobs").fetchall() == [(0,)]
    finally:
        release(store)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".wal")) == [
        "jobs.duckdb"
    ]


def test_a_file_another_process_created_after_the_check_is_opened_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment of the race, made certain: the path is missing when this process looks and
    exists (another process's store, with its rows) when it puts its own there. That store is
    opened as it is, never replaced by the one this process made."""
    path = tmp_path / "jobs.duckdb"
    with store_writer(path) as (writer, _sink):
        write_all(writer, lifecycle("theirs", beats=2))
    before = path.read_bytes()
    monkeypatch.setattr("chaperone_otel.sink._store.os.path.exists", lambda p: False)
    store = acquire(path, read_only=False)
    try:
        with store.cursor() as cur:
            assert cur.execute("SELECT run_id FROM jobs").fetchall() == [("theirs",)]
    finally:
        release(store)
    assert len(path.read_bytes()) >= len(before)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".new")]


def test_a_short_file_is_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    """An empty file (or another program's short file) is refused with a message that says
    it is too short to be a store and to delete it; it is never overwritten."""
    for content in (b"", b"not a store\n"):
        path = tmp_path / "jobs.duckdb"
        path.write_bytes(content)
        with pytest.raises(
            SinkError, match=rf"has {len(content)} bytes, too short to be a DuckDB store.*Delete it"
        ):
            acquire(path, read_only=False)
        assert path.read_bytes() == content
