"""The ZeroMQ ingress: a PULL socket that receives pushes from the SIP proxies.

Theory of operation.  The proxies' workers PUSH one msgpack frame per push
(see :mod:`sidecar.wire`); here one trio task owns a PULL socket bound to the
endpoint and turns each frame into exactly one of these ends, each counted in
:class:`ZmqIngressCounters` so that ``frames == accepted + bad + expired +
duplicates + shed + handler_errors`` always holds:

* ``bad``: the frame does not decode (logged, rate-limited; never fatal);
* ``shed``: the dispatcher or the dispatch queue is full (``overloaded()`` is
  true): the message is
  given to ``on_discard(msg, "overloaded")`` at once, without a task, so the
  reader keeps draining the socket faster than messages arrive and never
  falls behind their time to live;
* ``expired``: ``sent-at + ttl`` has passed (the proxy queued it while we were
  down, and a call push that late only rings a phone for a call that is over);
* ``duplicates``: the same (call-id, event, token or account) was already
  accepted within its ttl;
* ``accepted``: handed to ``handler(msg)``, a plain function that must not
  block (the service's :class:`~.proxy.ProxyIngress` admits it and queues it
  for a bounded number of concurrent dispatches);
* ``handler_errors``: the handler raised (a bug; logged).

Expired, shed and duplicate messages are also given to the optional
``on_discard(msg, reason)`` callback, so the service can log or count them as
``expired``/``dropped`` outcomes of their call-id.

ZeroMQ under trio: the socket's ``zmq.FD`` is edge-triggered and signals
"something changed", not "a message is waiting".  So after each wake-up we
drain with ``recv(NOBLOCK)`` until ``zmq.Again``, look at ``zmq.EVENTS`` once
before parking again (the edge may have fired while we were draining), let a
single task wait on the fd, yield every ``_FAIRNESS_BATCH`` messages so a flood
cannot starve the rest of the process, and call ``notify_closing`` before
closing the socket.

Authentication: ``ipc://`` endpoints rely on file permissions (the socket
file and its folder); over TCP, pass ``curve`` (see :mod:`.curve`) and only
clients whose public key is on the allow-list get a connection; the ZAP
handler runs in this socket's context and counts refusals in
``counters.clients_refused``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import heapq
import logging
import os
import time
from typing import Any
from collections.abc import Callable, Hashable

import trio
import zmq

from sidecar.model import default_ttl
from sidecar.ingress.endpoint_guard import EndpointError, EndpointInUse, claim_ipc_path, tcp_in_use_message
from sidecar.wire import RateLimitedLog, WireError, WireMessage, decode

from ..key_files import CurveServerKeys
from .curve import ZapHandler, apply_server_keys

log = logging.getLogger(__name__)

_FAIRNESS_BATCH = 1000

Handler = Callable[[WireMessage], Any]
DiscardCallback = Callable[[WireMessage, str], Any]


@dataclasses.dataclass(slots=True)
class ZmqIngressCounters:
    """What happened to every frame received (monotonic counters)."""

    frames: int = 0
    accepted: int = 0
    bad: int = 0
    expired: int = 0
    duplicates: int = 0
    shed: int = 0
    handler_errors: int = 0
    clients_refused: int = 0  # CURVE handshakes refused by the allow-list (no frames)

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RecentKeys:
    """Keys seen recently, each until its own expiry time; at most ``max_size``.

    When full, the entries closest to expiry are forgotten first.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._expiry: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0  # ties in the heap never compare keys

    def __len__(self) -> int:
        return len(self._expiry)

    def _forget(self) -> None:
        expiry, _, key = heapq.heappop(self._heap)
        if self._expiry.get(key) == expiry:
            del self._expiry[key]

    def seen(self, key: Hashable, now: float, expires: float) -> bool:
        """True if ``key`` is still remembered; otherwise remember it until ``expires``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            self._forget()
        known = self._expiry.get(key)
        if known is not None and known > now:
            return True
        while len(self._expiry) >= self.max_size and heap:
            self._forget()
        self._expiry[key] = expires
        self._seq += 1
        heapq.heappush(heap, (expires, self._seq, key))
        return False


def _prepare_ipc_path(endpoint: str, dir_mode: int) -> str | None:
    """Create the folder of an ``ipc://`` endpoint; return the socket path."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if path.startswith("@"):  # Linux abstract namespace: no file
        return None
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=dir_mode, exist_ok=True)
        os.chmod(folder, dir_mode)  # makedirs honours the umask
    return path


class _Reader:
    """Frame -> one counted end.  Kept apart from the socket loop for clarity."""

    def __init__(self, handler: Handler, counters: ZmqIngressCounters,
                 on_discard: DiscardCallback | None, wall_clock: Callable[[], float],
                 recent: RecentKeys, overloaded: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.handler = handler
        self.overloaded = overloaded
        self.counters = counters
        self.on_discard = on_discard
        self.wall_clock = wall_clock
        self.recent = recent
        self.warn_bad = RateLimitedLog(log.warning)
        self.warn_expired = RateLimitedLog(log.info)
        self.warn_handler = RateLimitedLog(log.error)
        self.warn_shed = RateLimitedLog(log.warning)

    def _discard(self, msg: WireMessage, reason: str) -> None:
        if self.on_discard is not None:
            try:
                self.on_discard(msg, reason)
            except Exception:
                log.exception("zmq ingress: on_discard callback failed")

    def frame(self, frame: bytes) -> None:
        counters = self.counters
        counters.frames += 1
        try:
            msg = decode(frame)
        except WireError as exc:
            counters.bad += 1
            self.warn_bad(f"zmq ingress: bad frame ignored ({counters.bad} so far): {exc}")
            return
        now = self.wall_clock()
        ttl = msg.ttl if msg.ttl is not None else default_ttl(msg.event)
        expires = msg.sent_at + ttl
        if expires <= now:
            counters.expired += 1
            self.warn_expired(
                f"zmq ingress: {msg.event} push for call-id {msg.call_id} expired "
                f"({now - msg.sent_at:.1f} s old, ttl {ttl} s)"
            )
            self._discard(msg, "expired")
            return
        key = (msg.call_id, msg.event, msg.target)
        if self.recent.seen(key, now, min(expires, now + ttl)):
            counters.duplicates += 1
            log.debug("zmq ingress: duplicate %s push for call-id %s dropped", msg.event, msg.call_id)
            self._discard(msg, "duplicate")
            return
        if self.overloaded is not None and self.overloaded():
            counters.shed += 1
            self.warn_shed(f"zmq ingress: dispatcher full, pushes dropped at once ({counters.shed} so far)")
            self._discard(msg, "overloaded")
            return
        try:
            self.handler(msg)
        except Exception as exc:
            counters.handler_errors += 1
            self.warn_handler(f"zmq ingress: handler failed for call-id {msg.call_id}: {exc!r}")
            return
        counters.accepted += 1


async def serve_zmq(
    endpoint: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    counters: ZmqIngressCounters | None = None,
    on_discard: DiscardCallback | None = None,
    wall_clock: Callable[[], float] = time.time,
    dedup_max: int = 100_000,
    rcvhwm: int = 100_000,
    ipc_dir_mode: int = 0o700,
    ipc_socket_mode: int = 0o600,
    context: zmq.Context[Any] | None = None,
    overloaded: Callable[[], bool] | None = None,
    curve: CurveServerKeys | None = None,
    allowed_clients: Callable[[], frozenset[bytes]] | None = None,
) -> None:
    """Receive pushes on a PULL socket bound to ``endpoint`` until cancelled.

    Use ``await nursery.start(serve_zmq, endpoint, handler)``: it returns the
    bound endpoint (with the real port for ``tcp://host:*``) once the socket
    is ready.  For ``ipc://`` the folder is created with ``ipc_dir_mode`` if
    missing and the socket file gets ``ipc_socket_mode``; widen them (e.g.
    0o750/0o660 with a group shared with the proxy) when the proxy runs as
    another user.

    Args:
        endpoint: ``ipc:///run/pushsidecar/push.sock``, ``tcp://127.0.0.1:5600``...
        handler: called as ``handler(msg)`` for each valid, fresh, new message;
            must not block or await anything (hand the message to a task).
        counters: updated in place; pass one to read the figures.
        on_discard: optional ``on_discard(msg, "expired" | "duplicate" | "overloaded")``.
        overloaded: optional; while it returns True, messages are shed
            (given to ``on_discard``) instead of handed to ``handler``.
        allowed_clients: the CURVE allow-list in force (read per handshake,
            so a reload applies); default ``curve.clients``.
        curve: the CURVE key pair and allow-list (see :mod:`.curve`); None:
            no authentication (ipc:// with file permissions, loopback).
        wall_clock: UNIX time source (compared with the proxy's ``sent-at``).
        dedup_max: most (call-id, event, target) keys remembered.
        rcvhwm: frames ZeroMQ may queue before the senders start dropping.
        context: a ZeroMQ context (default: a private one, closed at the end).
    """
    counters = counters if counters is not None else ZmqIngressCounters()
    reader = _Reader(handler, counters, on_discard, wall_clock, RecentKeys(dedup_max), overloaded)
    with contextlib.ExitStack() as claim:
        try:
            ipc_path = _prepare_ipc_path(endpoint, ipc_dir_mode)
            if ipc_path is not None:
                # zmq would silently take a live socket over: refuse instead.
                claim.enter_context(claim_ipc_path(ipc_path, endpoint=endpoint))
        except OSError as exc:
            raise EndpointError(f"cannot use ZeroMQ endpoint {endpoint}: {exc}") from exc
        await _serve_bound(endpoint, ipc_path, reader, task_status, rcvhwm, ipc_socket_mode, context,
                           curve, allowed_clients)


async def _serve_bound(endpoint: str, ipc_path: str | None, reader: _Reader,
                       task_status: trio.TaskStatus[str], rcvhwm: int, ipc_socket_mode: int,
                       context: zmq.Context[Any] | None, curve: CurveServerKeys | None,
                       allowed_clients: Callable[[], frozenset[bytes]] | None) -> None:
    own_context = context is None
    ctx = zmq.Context() if context is None else context
    sock = ctx.socket(zmq.PULL)
    fd = None
    try:
        async with trio.open_nursery() as nursery:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                keys = curve
                zap = ZapHandler(allowed_clients or (lambda: keys.clients), reader.counters)
                await nursery.start(zap.run, ctx)
                apply_server_keys(sock, curve)
            elif endpoint.startswith("tcp://") and not _is_loopback(endpoint):
                log.warning("zmq ingress: %s has no CURVE authentication: anyone who can reach it "
                            "can send pushes (set [zmq] curve_secret_key)", endpoint)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno == errno.EADDRINUSE and endpoint.startswith("tcp://"):
                    port = endpoint.rsplit(":", 1)[-1]
                    raise EndpointInUse(tcp_in_use_message(endpoint, int(port) if port.isdigit() else 0)) from exc
                raise EndpointError(f"cannot bind ZeroMQ endpoint {endpoint}: {exc}") from exc
            if ipc_path is not None:
                os.chmod(ipc_path, ipc_socket_mode)
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            fd = int(sock.getsockopt(zmq.FD))
            log.info("zmq ingress: listening on %s%s", bound, " (CURVE)" if curve is not None else "")
            task_status.started(bound)
            await _read_loop(sock, fd, reader.frame)
    finally:
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
        sock.close(linger=0)
        if own_context:
            ctx.term()


def _is_loopback(endpoint: str) -> bool:
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


async def _read_loop(sock: zmq.Socket[Any], fd: int, on_frame: Callable[[bytes], None]) -> None:
    recv = sock.recv
    noblock = zmq.NOBLOCK
    again = zmq.Again
    while True:
        batch = 0
        while True:  # drain: the fd only fires on edges
            try:
                frame = recv(noblock)
            except again:
                break
            on_frame(frame)
            batch += 1
            if batch >= _FAIRNESS_BATCH:
                batch = 0
                await trio.lowlevel.checkpoint()
        # An edge may have come and gone while we drained: ask once more.
        if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            await trio.lowlevel.checkpoint()
            continue
        await trio.lowlevel.wait_readable(fd)
