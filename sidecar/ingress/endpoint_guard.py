"""One listener per endpoint: refuse an endpoint a running process holds.

ZeroMQ's ``bind`` on an ``ipc://`` path unlinks whatever socket file is
there and binds anew, so a second sidecar started by mistake silently takes
the proxies' socket over, and when it stops the first one is left deaf.
Before binding we therefore:

1. take an exclusive ``flock`` on ``<path>.lock`` for the life of the
   listener (the kernel drops it when the process dies, so a crash never
   leaves a stale lock) and write our pid in it;
2. if the socket file exists, try to connect to it: a listener answering
   there (a process that does not take our lock, an older version or another
   program) makes us refuse; a refused connection means the file is stale
   and it is removed before binding.

For ``tcp://`` the kernel refuses a second bind by itself; we only name the
process that holds the port.  Owners are found through ``/proc`` (socket
inode -> process), which shows every process to root and one's own to others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path
from collections.abc import Iterator

log = logging.getLogger(__name__)


class EndpointError(Exception):
    """The endpoint cannot be listened on; the message says why, in one line."""


class EndpointInUse(EndpointError):
    """The endpoint is held by a running process; the message names both."""


@contextlib.contextmanager
def claim_ipc_path(path: str, *, endpoint: str) -> Iterator[None]:
    """Hold ``path`` (an ipc socket file) for the ``with`` block.

    Raises:
        EndpointInUse: another process listens there, or the path is not a socket.
    """
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            raise EndpointInUse(
                f"ZeroMQ endpoint {endpoint} is in use by a running sidecar "
                f"({describe_process(holder) if holder else 'pid unknown'}, holding {lock_path}); "
                "stop it first, or give this instance another [zmq] endpoint"
            ) from None
        _remove_if_stale(path, endpoint)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove_if_stale(path: str, endpoint: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise EndpointError(f"ZeroMQ endpoint {endpoint}: {path} exists and is not a socket; "
                            "remove it or choose another [zmq] endpoint")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a stale file left by a killed process
        log.info("zmq ingress: removed stale socket file %s", path)
        return
    except OSError as exc:
        raise EndpointError(f"ZeroMQ endpoint {endpoint}: cannot check {path}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    owner = unix_listener_pids(path)
    who = ", ".join(describe_process(pid) for pid in owner) if owner else "a process this user cannot see"
    raise EndpointInUse(f"ZeroMQ endpoint {endpoint} is in use: {who} listens on {path}; "
                        "stop it first, or give this instance another [zmq] endpoint")


def tcp_in_use_message(endpoint: str, port: int) -> str:
    pids = tcp_listener_pids(port)
    who = ", ".join(describe_process(pid) for pid in pids) if pids else "another process"
    return f"ZeroMQ endpoint {endpoint} is in use: {who} listens on port {port}"


def http_in_use_message(host: str, port: int) -> str:
    pids = tcp_listener_pids(port)
    who = ", ".join(describe_process(pid) for pid in pids) if pids else "another process"
    return (f"cannot listen for HTTP on {host}:{port}: address already in use by {who}; "
            "stop it, or set another [server] port (or --port)")


# -- who holds a socket (through /proc) ------------------------------------------


def describe_process(pid: int) -> str:
    """``pid 123 (pushsidecar --config-dir /etc/x)``, as far as /proc tells."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def unix_listener_pids(path: str) -> list[int]:
    """Processes holding a listening UNIX socket bound to ``path``."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; 0x10000 = accepting
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                inodes.add(fields[6])
    return _pids_holding(inodes)


def tcp_listener_pids(port: int) -> list[int]:
    """Processes holding a listening TCP socket on ``port`` (IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
                if len(fields) >= 10 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return _pids_holding(inodes)


def _pids_holding(inodes: set[str]) -> list[int]:
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in targets:
                        pids.append(int(entry.name))
                        break
        except OSError:
            continue  # gone, or not ours to see
    return sorted(pids)


def is_address_in_use(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.EADDRINUSE
