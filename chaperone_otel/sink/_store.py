"""One DuckDB connection per store file per process, the owner sidecar, and error translation.

DuckDB lets one process open a file for writing, and while it does no other process can open
it at all, not even read-only ("Could not set lock on file … Conflicting lock is held in …
(PID n)"). Inside one process, a second ``duckdb.connect`` to the same file with a different
configuration fails too. So this module keeps a registry: the first opener of a path in this
process owns the connection, later opens (the query API next to an embedded sink) share it
through cursors, one per use (STYLE §4.11).

The process that owns a live store advertises where it serves the query API in a sidecar
``<path>.owner.json`` (``{"url", "pid", "path"}``, plus ``"token"`` when the API needs one),
written atomically and removed on close, so ``open_sink(path)`` in another process can follow
it instead of failing on the lock. The sidecar is created mode 0600: its token is what lets
a process of the same user (and root) query the embedded sink, and no other local user. A
token read from (or written to) a sidecar is remembered for its URL in this process
(:func:`sidecar_token`), so the remote client sends it without every caller passing it on.

Every connection is opened with :func:`engine_config`: the engine cannot reach files other
than the store itself (and its WAL and spill directory), the network or extensions, and once
the store's own session settings are applied the configuration is locked. That is what makes
user SQL (``sink.sql()``, ``/api/sql``, ``chaperone-otel sql``) unable to read
``/etc/passwd`` however the name is spelt: the engine refuses, not a pattern list. The setting
belongs to this database instance only; other DuckDB connections in the process keep theirs.
It also bounds the instance's memory and threads, so an embedded sink cannot grow the user's
application without limit (``CHAPERONE_OTEL_SINK_MEMORY_LIMIT``,
``CHAPERONE_OTEL_SINK_THREADS``), and its spill directory, so a query cannot fill the disk
(``CHAPERONE_OTEL_SINK_SPILL_LIMIT``).

Every ``duckdb.Error`` leaving this package becomes a
:class:`~chaperone_otel.exceptions.SinkError` (``raise … from e``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import duckdb

from .._health import DEFAULT_POLICY, HealthPolicy
from .._units import parse_bytes
from ..exceptions import ConfigurationError, SinkError
from ._probe import OpenRuns
from ._schema import migrate, require_current

_LOCK_PID = re.compile(r"\(PID (\d+)\)")

DEFAULT_MEMORY_LIMIT: Final = "256MiB"
"""DuckDB's buffer-pool limit for a store's instance (DuckDB's own default is 80 % of RAM,
too much for a sink embedded in someone's application); past it DuckDB spills to
``<path>.tmp`` or fails the query, never the process."""

DEFAULT_THREADS: Final = 2
"""DuckDB worker threads for a store's instance (DuckDB's default is one per core)."""

DEFAULT_SPILL_LIMIT: Final = "4GiB"
"""DuckDB's bound on the spill directory (``<path>.tmp``; DuckDB's own default is 90 % of
the free disk, so one big sort of user SQL could fill the disk the store and its host
need). Past it a query fails, like one past the memory limit; the process is untouched."""

ENV_MEMORY_LIMIT: Final = "CHAPERONE_OTEL_SINK_MEMORY_LIMIT"
ENV_THREADS: Final = "CHAPERONE_OTEL_SINK_THREADS"
ENV_SPILL_LIMIT: Final = "CHAPERONE_OTEL_SINK_SPILL_LIMIT"

_LOCKED_DOWN: Final = {
    # No file, URL or other database beyond the store: read_text('/etc/passwd'),
    # FROM 'x.csv', "/dir/k".information_schema.csv, ATTACH, COPY … TO and INSTALL all
    # fail with a PermissionException; Python replacement scans are off as well. The store
    # file, its WAL, checkpoints and the spill directory are the engine's own and still work.
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def engine_config() -> dict[str, Any]:
    """The DuckDB configuration every store connection is opened with (see the module doc).

    ``CHAPERONE_OTEL_SINK_MEMORY_LIMIT`` (``512MiB``, ``2GiB`` …),
    ``CHAPERONE_OTEL_SINK_THREADS`` and ``CHAPERONE_OTEL_SINK_SPILL_LIMIT`` override
    :data:`DEFAULT_MEMORY_LIMIT`, :data:`DEFAULT_THREADS` and :data:`DEFAULT_SPILL_LIMIT`.

    Raises:
        ConfigurationError: one of those variables is not a size / a positive integer.
    """
    memory = os.environ.get(ENV_MEMORY_LIMIT, "").strip() or DEFAULT_MEMORY_LIMIT
    threads_text = os.environ.get(ENV_THREADS, "").strip()
    try:
        threads = int(threads_text) if threads_text else DEFAULT_THREADS
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigurationError(
            f"{ENV_THREADS}={threads_text!r}: expected a positive number of threads, e.g. 2"
        )
    limit = parse_bytes(memory, what=ENV_MEMORY_LIMIT)
    spill_limit()  # checked with the others, before anything is opened
    return {**_LOCKED_DOWN, "memory_limit": f"{max(limit // 1024, 1)}KiB", "threads": threads}


def spill_limit() -> str:
    """The spill directory's bound (:data:`DEFAULT_SPILL_LIMIT`, or
    ``CHAPERONE_OTEL_SINK_SPILL_LIMIT``) as a DuckDB setting. Set once the store's own
    migrations have run (they may sort a large store) and before the configuration is
    locked: it bounds every query after.

    Raises:
        ConfigurationError: the variable is not a size.
    """
    text = os.environ.get(ENV_SPILL_LIMIT, "").strip() or DEFAULT_SPILL_LIMIT
    return f"{max(parse_bytes(text, what=ENV_SPILL_LIMIT) // 1024, 1)}KiB"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the owner of ``path`` advertises its query URL."""
    return Path(os.fspath(path) + ".owner.json")


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (signal 0 probes without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


_tokens_lock = threading.Lock()
_tokens: dict[str, str] = {}
"""Query URL → the bearer token its owner's sidecar gave (read or written in this process)."""


def _remember_token(url: str, token: object) -> None:
    if isinstance(token, str) and token:
        with _tokens_lock:
            _tokens[url.rstrip("/")] = token


def sidecar_token(url: str) -> str | None:
    """The bearer token of the owner serving ``url``, if this process read its sidecar (or
    is that owner)."""
    with _tokens_lock:
        return _tokens.get(url.rstrip("/"))


def write_sidecar(path: str | os.PathLike[str], url: str, *, token: str | None = None) -> Path:
    """Advertise ``url`` (and the ``token`` its query API requires) as the query endpoint of
    the store at ``path``: written to a temporary file created mode 0600 (never readable by
    other users, not even for a moment), then atomically renamed over the sidecar."""
    target = sidecar_path(path)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    data: dict[str, Any] = {"url": url, "pid": os.getpid(), "path": os.fspath(path)}
    if token is not None:
        data["token"] = token
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crashed owner with this PID: O_EXCL below needs it gone
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the mode given to open() is masked by the umask, never widened
        with os.fdopen(fd, "w") as out:
            fd = -1
            out.write(json.dumps(data))
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _remember_token(url, token)
    return target


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``path`` if it exists, parses and names a live process; else None.
    Its token, if any, is remembered for its URL (:func:`sidecar_token`)."""
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    _remember_token(data["url"], data.get("token"))
    return data


def remove_sidecar(path: str | os.PathLike[str]) -> None:
    """Remove the sidecar if this process wrote it (never another owner's)."""
    target = sidecar_path(path)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        data = json.loads(target.read_text())
        if data.get("pid") == os.getpid():
            target.unlink()
            with _tokens_lock:  # that URL's token dies with the server
                _tokens.pop(str(data.get("url", "")).rstrip("/"), None)


class InheritedStoreError(Exception):
    """This process was forked from one that had the store open: DuckDB keeps one database
    per file in a process, and the parent's, inherited, cannot be used or replaced here
    (closing it would write the parent's file from a stale copy). To this process the file
    is held by the parent (``pid``), whether that process is still alive or not."""

    def __init__(self, path: str, pid: int) -> None:
        super().__init__(
            f"{path} was open in the process this one was forked from (PID {pid}), so this "
            "process cannot open it (DuckDB keeps that process's handle here): it reads the "
            "store through its owner's query URL and forwards its records to it, but cannot "
            "own the file. Open the store (configure(sink=...)) after forking, or let "
            "another process own it (`chaperone-otel sink serve`)."
        )
        self.pid = pid


def lock_holder(error: BaseException) -> int | None:
    """The PID in DuckDB's 'Could not set lock … Conflicting lock is held in … (PID n)'
    message (-1 when it names none), the forking parent's for an inherited store, or None
    when ``error`` is not about another process holding the file."""
    if isinstance(error, InheritedStoreError):
        return error.pid
    text = str(error)
    if "Could not set lock" not in text and "Conflicting lock" not in text:
        return None
    m = _LOCK_PID.search(text)
    return int(m.group(1)) if m else -1


def sink_error(error: BaseException, path: str, action: str) -> SinkError:
    """A :class:`SinkError` for a duckdb failure, saying what to do where we know."""
    holder = lock_holder(error)
    if holder is not None:
        who = f"process {holder}" if holder > 0 else "another process"
        return SinkError(
            f"cannot {action} {path}: the file is held by {who} (DuckDB lets one process "
            "open a store; others cannot even read it). If that process is a chaperone-otel "
            "sink it advertises a query URL in "
            f"{sidecar_path(path)}; otherwise stop it (kill {holder if holder > 0 else 'PID'}) "
            "or query a copy of the file."
        )
    return SinkError(f"cannot {action} {path}: {error}")


_BLOCK_SIZE: Final = 4096
"""DuckDB's header block; the main header (its magic bytes at offset 8) is the first."""

_HEADER_SIZE: Final = 3 * _BLOCK_SIZE
"""DuckDB's file header: the main header and two database headers; blocks follow."""


def check_not_truncated(path: str, *, partial_only: bool = False) -> None:
    """Refuse a DuckDB file shorter than its own header says (a copy cut short, a disk
    that filled while it was written): DuckDB opens such a file and fails only when a query
    reaches a missing block, with an IO error that names no cause. Asked only to explain
    such an IO error (:func:`truncation`): a shorter file is not always a damaged one.

    The active database header (the one with the higher iteration) holds the block count
    and block size; the file must be at least ``header + count * size`` bytes. A file that
    is not a DuckDB file, or a header this check does not know, is left to DuckDB.

    With ``partial_only``, only a file that ends inside a block or inside its header is
    refused: DuckDB writes whole blocks, so that is never its own doing, while a file
    shorter by whole blocks can be (trailing free blocks it cut off or never wrote).

    Raises:
        SinkError: the file is truncated.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEADER_SIZE)
    except OSError:
        return  # missing (created later) or unreadable: DuckDB says why
    if size == 0 or head[8:12] != b"DUCK":
        return
    if len(head) < _HEADER_SIZE:
        expected = _HEADER_SIZE
    else:
        headers = [struct.unpack_from("<Qqqqqq", head, at) for at in (4096, 8192)]
        _sum, _iteration, _meta, _free, count, block = max(headers, key=lambda h: h[1])
        if count < 0 or block < 4096 or block > 2**30 or block & (block - 1):
            return  # not a layout this check knows
        expected = _HEADER_SIZE + count * block
        if partial_only:
            expected = size if (size - _HEADER_SIZE) % block == 0 else expected
    if size < expected:
        raise SinkError(
            f"cannot open {path}: the store file is truncated ({size} bytes; its header "
            f"says {expected}). It was cut short (an incomplete copy, a full disk): restore "
            "it from a backup, or move it away to start a new store"
        )


def _check_no_partial_block(path: str) -> None:
    """Before opening: refuse a file that ends inside a block (see
    :func:`check_not_truncated`), unless another process holds it (a writer may be
    extending it as the size is read): then its lock is what the caller must hear."""
    try:
        check_not_truncated(path, partial_only=True)
        return
    except SinkError as e:
        truncated = e
    try:
        probe = duckdb.connect(path, read_only=True, config=engine_config())
    except duckdb.Error as e:
        if lock_holder(e) is not None:
            raise sink_error(e, path, "open") from e
        raise truncated from None
    try:
        check_not_truncated(path, partial_only=True)  # nobody writes it now
    finally:
        probe.close()


def truncation(error: BaseException, path: str) -> SinkError | None:
    """The clear error for an I/O failure that a truncated file explains, else None.

    The size check (:func:`check_not_truncated`) is only asked once DuckDB itself failed to
    read the file: alone it is not proof. DuckDB may leave a header that counts more blocks
    than the file holds (trailing free blocks it never wrote, or cut off at a checkpoint: a
    store whose owner ended with ``os._exit`` looked 2 blocks short and opened and read
    fine), and a file another process is writing changes size under the check."""
    if not isinstance(error, duckdb.IOException) and "Could not read" not in str(error):
        return None
    try:
        check_not_truncated(path)
    except SinkError as truncated:
        truncated.__cause__ = error
        return truncated
    return None


_NOT_A_DATABASE: Final = "not a valid DuckDB database file"


def _connect(path: str, *, read_only: bool) -> tuple[Any, bool]:
    """``duckdb.connect``, and whether this open made the spill directory (it removes it
    again if the connect fails: another process may own the store, and its directory).

    A writable open of a missing file first creates it whole (:func:`_create_whole`); the
    spill directory is checked first (:func:`_private_spill_directory`)."""
    if not read_only and not os.path.exists(path):
        _create_whole(path)
    config = engine_config()
    usable, made = _private_spill_directory(path, read_only=read_only)
    if not usable:
        config["temp_directory"] = ""  # no private place to spill: queries do not spill
    try:
        return duckdb.connect(path, read_only=read_only, config=config), made
    except BaseException:
        if made:
            _drop_spill_directory(path)
        raise


def _private_spill_directory(path: str, *, read_only: bool) -> tuple[bool, bool]:
    """Whether DuckDB may spill to ``<path>.tmp`` (its default place, which it makes at the
    first spill), and whether this call made it.

    DuckDB lets user SQL read and write its spill directory, and read the write-ahead log,
    although external access is off, by their paths: a ``<path>.tmp`` someone else made
    beside the store (a symlink to ``/etc`` in a shared folder) let
    ``read_text('<path>.tmp/passwd')`` through the owner's ``/api/sql`` read wherever it
    pointed. So a writable open (the owner, whose query API other users may reach) makes
    the directory itself, mode 0700, and refuses a symlink there or in place of the log,
    and a spill directory of another user's. A read-only open (a user's own CLI, which can
    read only what that user can) makes nothing: it does not spill to a directory that is
    not its user's own (``(False, False)``), and leaves a missing one to DuckDB.

    Raises:
        SinkError: (writable open) ``<path>.tmp`` or ``<path>.wal`` is a symlink, or
            ``<path>.tmp`` is not a directory of this user's.
    """
    spill = path + ".tmp"
    made = False
    if not read_only:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path + ".wal").st_mode):
                raise _not_own(path, f"{path}.wal is a symbolic link")
        with contextlib.suppress(OSError):  # it exists (checked below), or DuckDB says why
            os.mkdir(spill, 0o700)
            made = True
    try:
        found = os.lstat(spill)
    except FileNotFoundError:
        return True, False  # a read-only open: DuckDB makes it if it spills
    problem = (
        f"{spill} is a symbolic link"
        if stat.S_ISLNK(found.st_mode)
        else f"{spill} is not a directory"
        if not stat.S_ISDIR(found.st_mode)
        else f"{spill} belongs to uid {found.st_uid}"
        if found.st_uid != os.geteuid()
        else None
    )
    if problem is not None:
        if read_only:
            return False, False
        raise _not_own(path, problem)
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o077 and not read_only:  # made by DuckDB: its spill files are the store's data
        with contextlib.suppress(OSError):
            os.chmod(spill, mode & 0o700)
    return True, made


def _drop_spill_directory(path: str) -> None:
    """Remove ``<path>.tmp`` if empty: the owner's close, or an open that made it and failed."""
    with contextlib.suppress(OSError):
        os.rmdir(path + ".tmp")


def _not_own(path: str, what: str) -> SinkError:
    return SinkError(
        f"cannot open {path}: {what}. DuckDB's spill directory and log beside a store must "
        "be this user's own (queries can read them): remove it, or keep the store in a "
        "folder only this user can write"
    )


def _create_whole(path: str) -> None:
    """Create an empty store at ``path`` so that no other process ever sees it half made.

    DuckDB creates a missing database file with ``O_CREAT | O_TRUNC``, writes its header and
    only then is the file a database (its lock is taken as it opens). Processes that open one
    new path at once (eight apps started together, each ``configure(sink=PATH)``) met that:
    one read the file before its header ("exists, but it is not a valid DuckDB database file")
    and one truncated the file the winner had just created ("the store file is truncated"),
    in about 1 of 10 rounds on duckdb 1.5 and 2.0. So the file is created under a name of
    this process's own and hard-linked into place: ``link`` fails if ``path`` exists, so the
    first process puts a whole file there and every other one opens that file (and meets its
    owner's lock). Where the filesystem has no hard links, DuckDB creates it in place as
    before. A process killed inside this function leaves its private file behind (a hidden
    ``.NAME.PID.HEX.new`` next to the store, a second name of the store if it was killed
    between the link and the unlink): harmless to the store, safe to delete.
    """
    folder, name = os.path.split(path)
    private = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    try:
        duckdb.connect(private, config=engine_config()).close()
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(private, path)
    except (OSError, duckdb.Error):
        pass  # no hard links here, or the folder is not writable: DuckDB says why, in place
    finally:
        for leftover in (private, f"{private}.wal"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def unfinished(error: BaseException, path: str) -> SinkError | None:
    """The clear error for a file DuckDB refused that is shorter than its first header
    block (empty, or cut off as another program created it), else None."""
    if _NOT_A_DATABASE not in str(error):
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size >= _BLOCK_SIZE:
        return None
    return SinkError(
        f"cannot open {path}: the file has {size} bytes, too short to be a DuckDB store "
        "(an empty file, another program's, or one cut off as it was created). Delete it "
        "to start a new store, or pass the path of an existing store"
    )


class Store:
    """A DuckDB connection to one store file, shared by everything in this process.

    Attributes:
        path: the file (absolute).
        read_only: opened read-only (no writer, no migrations).
        write_lock: held by whoever writes (the writer thread, ``prune``), so two writers in
            this process never conflict on the same rows.
        policy: the health policy the views were rendered with.
    """

    def __init__(self, path: str, *, read_only: bool, policy: HealthPolicy) -> None:
        self.path = path
        self.read_only = read_only
        self.policy = policy
        self.write_lock = threading.RLock()
        # Set by an in-process writer (the embedded sink) so that readers in this process see
        # their own writes: a query right after a run must find it, not wait for the linger.
        self.before_read: Callable[[], object] | None = None
        # The open runs and where their rows are, kept by the writers (sink/_probe.py).
        self.open_runs = OpenRuns()
        self._refs = 1
        self._closed = False
        self._queries_lock = threading.Condition()
        self._queries: set[Any] = set()
        self._stopping = False
        _check_no_partial_block(path)
        self._con = self._connect()

    def _connect(self) -> Any:
        """A new connection to the file, set up (zone, schema, locked configuration)."""
        path = self.path
        try:
            con, made = _connect(path, read_only=self.read_only)
        except duckdb.Error as e:  # duckdb 1.x reads a cut file's blocks as it connects
            raise unfinished(e, path) or truncation(e, path) or sink_error(e, path, "open") from e
        try:
            # GLOBAL: every query runs on a cursor, a session of its own that would otherwise
            # take the machine's zone (CAST(now() AS TIMESTAMP) would be local wall time).
            # TimeZone cannot be given to connect() (it belongs to the ICU extension).
            con.execute("SET GLOBAL TimeZone = 'UTC'")
            if self.read_only:
                require_current(con, path)
            else:
                migrate(con, path, self.policy)
            con.execute(f"SET GLOBAL max_temp_directory_size = '{spill_limit()}'")
            # Last: from here on no statement can change a setting (SET, RESET, PRAGMA), so
            # the lock-down above cannot be undone by user SQL.
            con.execute("SET lock_configuration = true")
        except BaseException as e:
            con.close()
            if made:
                _drop_spill_directory(path)
            if isinstance(e, duckdb.Error):
                raise truncation(e, path) or sink_error(e, path, "open") from e
            raise
        return con

    def reopen(self) -> None:
        """Open the file again after DuckDB invalidated the database (a fatal error, e.g. a
        checkpoint that met a full disk): closing the connection closes every cursor made
        from it, so the instance is released and DuckDB replays its log into a new one.
        Cursors taken before are closed: take new ones. Call with :attr:`write_lock` held.

        Raises:
            SinkError: it cannot be opened yet (e.g. still no space); the old connection is
                closed either way, and :meth:`cursor` fails until a reopen succeeds.
        """
        if self._closed:
            raise SinkError(f"the store {self.path} is closed")
        with contextlib.suppress(duckdb.Error):
            self._con.close()
        self.open_runs.invalidate()
        self._con = self._connect()

    def cursor(self) -> Any:
        """A new cursor (DuckDB connections are not shared across threads)."""
        if self._closed:
            raise SinkError(f"the store {self.path} is closed")
        try:
            return self._con.cursor()
        except duckdb.Error as e:
            raise sink_error(e, self.path, "use") from e

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def interruptible(self, cur: Any) -> Any:
        """Track ``cur`` while a query runs on it, so :meth:`interrupt_queries` can stop it.

        Raises:
            SinkError: the owner is shutting down (:meth:`interrupt_queries` was called).
        """
        with self._queries_lock:
            if self._stopping:
                raise SinkError(f"the store {self.path} is shutting down; query refused")
            self._queries.add(cur)
        try:
            yield cur
        finally:
            with self._queries_lock:
                self._queries.discard(cur)
                self._queries_lock.notify_all()

    @property
    def stopping(self) -> bool:
        """:meth:`interrupt_queries` was called: queries in flight were interrupted."""
        return self._stopping

    def accept_queries(self) -> None:
        """Undo :meth:`interrupt_queries`' refusal (the owner is gone, but other sinks in
        this process still share the connection)."""
        with self._queries_lock:
            self._stopping = False

    def interrupt_queries(self, timeout: float = 2.0) -> int:
        """Interrupt every tracked query and refuse new ones (the owner's shutdown calls
        this before it waits for in-flight requests, which would otherwise wait for the
        longest query). The writer's cursors are not tracked: queued records still commit.

        DuckDB forgets an interrupt that arrives before its query starts, so this repeats
        until the tracked queries are gone or ``timeout`` passes.

        Returns:
            How many queries were running.
        """
        deadline = time.monotonic() + timeout
        with self._queries_lock:
            self._stopping = True
            found = len(self._queries)
            while self._queries and time.monotonic() < deadline:
                for cur in self._queries:
                    with contextlib.suppress(duckdb.Error):
                        cur.interrupt()
                self._queries_lock.wait(0.05)
        return found

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            if not self.read_only:
                _drop_spill_directory(self.path)


_registry_lock = threading.Lock()
_registry: dict[str, Store] = {}


def _canonical(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def acquire(
    path: str | os.PathLike[str], *, read_only: bool, policy: HealthPolicy = DEFAULT_POLICY
) -> Store:
    """Open (or share) this process's connection to the store at ``path``.

    A read-only request shares a writable connection already open here; a writable request
    while only a read-only connection is open fails with a clear :class:`SinkError`.
    """
    key = _canonical(path)
    with _registry_lock:
        parent = _inherited_from.get(key)
        if parent is not None:  # see InheritedStoreError; a SinkError, as a held file is
            error = InheritedStoreError(key, parent)
            raise SinkError(str(error)) from error
        store = _registry.get(key)
        if store is not None and not store.closed:
            if store.read_only and not read_only:
                raise SinkError(
                    f"{key} is open read-only in this process; close those sinks before "
                    "opening it for writing"
                )
            store._refs += 1
            return store
        if read_only and not os.path.exists(key):
            raise SinkError(
                f"no job store at {key}: it is created by configure(sink=...) or "
                "`chaperone-otel sink serve --db FILE`; check the path, or open it with "
                "read_only=False to create an empty store"
            )
        if not read_only:
            Path(key).parent.mkdir(parents=True, exist_ok=True)
        store = Store(key, read_only=read_only, policy=policy)
        _registry[key] = store
        return store


def release(store: Store) -> None:
    """Drop one reference; the last one closes the connection."""
    with _registry_lock:
        store._refs -= 1
        if store._refs > 0:
            return
        if _registry.get(store.path) is store:
            del _registry[store.path]
    store._close()


def _forget_inherited() -> None:
    """In a forked child: the connections in the registry are the parent's (DuckDB's file
    lock is not inherited, and using them would write the parent's file from a stale copy).
    They are set aside, never closed (not even by the garbage collector: DuckDB closes a
    connection it frees, and closing checkpoints). DuckDB then hands this process the
    parent's database for that file whatever it asks, so the file is never opened here
    again: :func:`acquire` says so (:class:`InheritedStoreError`), and the process reads and
    forwards through the owner's URL like any other."""
    global _registry_lock
    _registry_lock = threading.Lock()
    parent = os.getppid()
    for store in _registry.values():
        _inherited_from.setdefault(store.path, parent)
    _inherited.extend(_registry.values())
    _registry.clear()


_inherited: list[Store] = []
_inherited_from: dict[str, int] = {}
"""Paths whose store this process inherited at a fork -> the process forked from."""


os.register_at_fork(after_in_child=_forget_inherited)


def owned_here(path: str | os.PathLike[str]) -> bool:
    """True if this process has the store at ``path`` open."""
    with _registry_lock:
        store = _registry.get(_canonical(path))
        return store is not None and not store.closed
