"""A forked child lets go of its parent's server sockets.

``fork()`` copies every descriptor, and Linux has no close-on-fork flag. A child of a process
that serves the store (the embedded owner: a Celery or gunicorn master, a ``multiprocessing``
parent) therefore holds the parent's listening socket *and* the server side of every
connection open at the fork. A socket is only closed when its last descriptor is, so when
the parent closes an idle keep-alive connection (uvicorn: after 5 s) nothing is sent to the
client: the connection stays established with nobody reading it. The next request on it
(a pool child forwarding its records after a pause) waits for its whole timeout, 15 s,
while its run looks silent in the store. The same copy of the listening socket would keep
accepting connections into a backlog nobody serves after the parent exits.

So the servers record the address they listen on, and a forked child points each inherited
descriptor bound to such an address at ``/dev/null`` (``dup2``): the child's copy of the
socket is released at once, and the Python socket objects the child inherited keep a valid
descriptor of their own, so closing them later (the garbage collector) cannot close a
descriptor the child has reused for something else. The descriptors are found by scanning
``/proc/self/fd`` (a connection accepted just before the fork has no protocol object yet);
without ``/proc`` the listening sockets recorded here are released and nothing more.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from .._safety import record_internal_error

__all__ = ["forget_server", "note_server", "release_inherited_sockets"]

_INET = (socket.AF_INET, socket.AF_INET6)

_lock = threading.Lock()
_addresses: dict[tuple[str, int], int] = {}
"""(host, port) served by this process, as the socket reports it (a name like ``localhost``
resolved) → the listening socket's descriptor."""


def note_server(host: str, port: int, fd: int) -> None:
    """A server of this process listens on (host, port) with descriptor ``fd``."""
    with _lock:
        _addresses[(host, port)] = fd


def forget_server(host: str, port: int) -> None:
    """The server on (host, port) stopped."""
    with _lock:
        _addresses.pop((host, port), None)


def _served(name: object, addresses: dict[tuple[str, int], int]) -> bool:
    if not isinstance(name, tuple) or len(name) < 2:
        return False
    host, port = name[0], name[1]
    for served_host, served_port in addresses:
        if port == served_port and (
            host == served_host or served_host in ("", "0.0.0.0", "::")  # noqa: S104
        ):
            return True
    return False


def _server_descriptors(addresses: dict[tuple[str, int], int]) -> list[int]:
    """Descriptors of this process bound to a served address (listening or accepted)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return list(addresses.values())
    found = []
    for name in names:
        fd = int(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket (or the listing's own descriptor, now closed)
            continue
        try:
            if sock.family in _INET and _served(sock.getsockname(), addresses):
                found.append(fd)
        except OSError:
            pass
        finally:
            sock.detach()
    return found


def release_inherited_sockets() -> int:
    """In a forked child: release the parent's server sockets (see the module doc). Returns
    how many descriptors were released."""
    global _lock
    _lock = threading.Lock()  # the parent's server thread may have held it at the fork
    addresses = dict(_addresses)
    _addresses.clear()  # the parent's servers, not this process's
    if not addresses:
        return 0
    fds = _server_descriptors(addresses)
    if not fds:
        return 0
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    return len(fds)


def _after_fork_in_child() -> None:
    try:
        release_inherited_sockets()
    except Exception as exc:  # never break a fork: counted, and the child goes on
        record_internal_error("sink.fork", exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
