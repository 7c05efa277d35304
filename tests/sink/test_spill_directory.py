"""The spill directory (``<store>.tmp``) and log (``<store>.wal``) beside a store: DuckDB lets
user SQL reach them by path although external access is off, so they must be the store
user's own. A ``<store>.tmp`` someone else made (a symlink to another folder, in a shared
folder such as /tmp) let ``read_text('<store>.tmp/secret')`` read where it pointed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._local import open_sink
from tests.processes import run_python
from tests.stores import empty_store

SECRET = "SPILL-SECRET-5d1e"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return empty_store(tmp_path / "store" / "jobs.duckdb")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "secret.txt").write_text(SECRET)
    return folder


def _read_through_spill(sink: object, store: Path) -> str:
    query = f"SELECT content FROM read_text('{store}.tmp/secret.txt')"
    try:
        return str(sink.sql(query))  # type: ignore[attr-defined]
    except SinkError as refused:
        return str(refused)


def test_a_writable_open_refuses_a_spill_directory_that_is_a_symlink(
    store: Path, elsewhere: Path
) -> None:
    Path(f"{store}.tmp").symlink_to(elsewhere)
    with pytest.raises(SinkError, match=r"jobs\.duckdb\.tmp is a symbolic link.*this user's own"):
        open_sink(str(store), read_only=False)


def test_a_writable_open_refuses_a_log_that_is_a_symlink(store: Path, elsewhere: Path) -> None:
    Path(f"{store}.wal").symlink_to(elsewhere / "secret.txt")
    with pytest.raises(SinkError, match=r"jobs\.duckdb\.wal is a symbolic link"):
        open_sink(str(store), read_only=False)
    assert (elsewhere / "secret.txt").read_text() == SECRET  # not written through


@pytest.mark.skipif(os.geteuid() != 0, reason="gives the directory to another user: root only")
def test_a_spill_directory_of_another_user_is_refused_writable_and_unused_read_only(
    store: Path, elsewhere: Path
) -> None:
    spill = Path(f"{store}.tmp")
    spill.mkdir(mode=0o777)
    spill.chmod(0o777)
    (spill / "secret.txt").symlink_to(elsewhere / "secret.txt")
    os.chown(spill, 65534, 65534, follow_symlinks=False)
    with pytest.raises(SinkError, match=r"jobs\.duckdb\.tmp belongs to uid 65534"):
        open_sink(str(store), read_only=False)
    with open_sink(str(store)) as sink:  # another user's CLI: it does not spill there
        answer = _read_through_spill(sink, store)
    assert SECRET not in answer
    assert "reads only the job store" in answer


def test_a_writable_open_makes_a_private_spill_directory_and_removes_it_when_empty(
    store: Path,
) -> None:
    spill = Path(f"{store}.tmp")
    with open_sink(str(store), read_only=False) as sink:
        assert stat.S_IMODE(spill.lstat().st_mode) == 0o700
        assert sink.sql("SELECT count(*) FROM jobs")[1] == [(0,)]
    assert not spill.exists()
    spill.mkdir(mode=0o755)  # one DuckDB made earlier, under a usual umask
    spill.chmod(0o755)
    with open_sink(str(store), read_only=False):
        assert stat.S_IMODE(spill.lstat().st_mode) == 0o700


def test_a_read_only_open_neither_makes_nor_uses_a_spill_directory_not_its_own(
    store: Path, elsewhere: Path
) -> None:
    spill = Path(f"{store}.tmp")
    with open_sink(str(store)) as sink:
        assert sink.sql("SELECT count(*) FROM jobs")[1] == [(0,)]
    assert not spill.exists()
    spill.symlink_to(elsewhere)
    with open_sink(str(store)) as sink:  # the user's own CLI: it opens, without spilling there
        answer = _read_through_spill(sink, store)
    assert SECRET not in answer
    assert "reads only the job store" in answer


_OPEN_HELD = r"""
import sys
from chaperone_otel.exceptions import SinkError
from chaperone_otel.sink._local import open_sink
try:
    open_sink(sys.argv[1], read_only=False)
except SinkError as e:
    print("refused:", e)
else:
    print("opened")
"""


def test_another_process_failing_to_open_a_held_store_leaves_the_owners_spill_directory(
    store: Path,
) -> None:
    """A process that cannot open the store (its owner holds it: a forwarder's start, each
    take-over attempt) leaves the owner's private directory alone (it removed it)."""
    spill = Path(f"{store}.tmp")
    with open_sink(str(store), read_only=False):
        out = run_python(_OPEN_HELD, store, timeout=60).stdout
        assert out.startswith("refused:"), out
        assert spill.is_dir()
        assert stat.S_IMODE(spill.lstat().st_mode) == 0o700


def test_a_refused_open_makes_no_spill_directory(store: Path, elsewhere: Path) -> None:
    Path(f"{store}.wal").symlink_to(elsewhere / "secret.txt")
    with pytest.raises(SinkError, match="symbolic link"):
        open_sink(str(store), read_only=False)
    assert not Path(f"{store}.tmp").exists()
