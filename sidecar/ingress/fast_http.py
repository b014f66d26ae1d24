"""A lighter HTTP/1.1 server for the API: httptools under our own trio loop.

Why: Hypercorn's HTTP/1.1 path (h11, its task groups, the ASGI message
round trips) cost about 550 us of CPU per request here, more than the push
itself; the profile of ``POST /push`` under load put 40 % of the daemon's
CPU there.  This server parses with httptools (llhttp, in C), runs each
connection as one trio task reading and answering its requests in order,
and answers ``POST /push`` by calling :func:`~sidecar.ingress.http.answer_push_v1`
directly: the same validation functions, the same answers.

Everything else (``/docs``, ``/openapi.json``, v2, ``/metrics``,
``/health``, errors) is handed to the full ASGI application (FastAPI inside
the access list and body limit middlewares) through a small ASGI bridge, so
those routes keep one implementation.

The access list and the body limit are applied here too, before the body
is read: a refused client gets Sylk's 403, a declared or streamed body over
``max_body_size`` Sylk's 413, each with ``connection: close``.

TLS (``tls_certificate``) is not handled here: the daemon keeps Hypercorn
for it (see :func:`sidecar.service._serve_http`).
"""

from __future__ import annotations

import collections
import errno
import http
import logging
import socket
import time
import urllib.parse
from email.utils import formatdate
from collections.abc import MutableMapping
from typing import Any
from collections.abc import Callable

import httptools
import trio

from ..config import Settings
from ..runtime_api import IngressRuntime
from .access import DENIED_BODY, ASGIApp, is_allowed
from .answers import client_peer, sylk_json
from .bearer import OPEN_PATHS, client_of
from .http import answer_push_v1
from .server_errors import error_body

logger = logging.getLogger("sidecar.ingress.fast_http")

RECEIVE_SIZE = 65536
BACKLOG = 1024
#: an idle keep-alive connection is closed after this (Hypercorn's default)
KEEP_ALIVE_TIMEOUT = 5.0
#: a request whose bytes stop coming for this long is answered 408 and closed
READ_TIMEOUT = 30.0
#: request line + headers larger than this: 431 (h11's default, so as with Hypercorn)
MAX_HEAD_BYTES = 16 * 1024
_PUSH_PATH = b"/push"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}


class _DateHeader:
    """``date: ...`` for the current second, formatted once per second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


_DATE = _DateHeader()


def json_answer(status: int, body: bytes, *, keep_alive: bool, head: bool = False,
                extra: bytes = b"") -> bytes:
    """One complete HTTP/1.1 answer with a JSON body (``extra``: more header lines)."""
    line = _STATUS_LINES.get(status) or _status_line(status)
    return b"".join((
        line, b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
        b"\r\n", _DATE.line(), b"server: pushsidecar\r\n", extra,
        b"" if keep_alive else b"connection: close\r\n", b"\r\n", b"" if head else body,
    ))


_UNAUTHORIZED = (401, sylk_json(401, "a valid bearer token is required"),
                 b'www-authenticate: Bearer realm="pushsidecar"\r\n')


class _Request:
    """One request as the parser delivers it."""

    __slots__ = ("url", "headers", "chunks", "size", "method", "keep_alive", "http_version",
                 "refusal")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.method = b""
        self.keep_alive = True
        self.http_version = "1.1"
        # (status, body[, header lines]) answered as soon as the headers are in,
        # without the body.
        self.refusal: tuple[Any, ...] | None = None


class _Connection:
    """httptools callbacks for one connection: complete requests queue in ``ready``."""

    def __init__(self, server: FastHttpServer, peer: tuple[Any, ...] | None):
        self.server = server
        self.peer = peer
        self.client = (peer[0], peer[1]) if peer else None
        self.peer_text = client_peer({"client": self.client})  # for the log lines
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[_Request] = collections.deque()
        self.current: _Request | None = None
        self.settings: Settings = server.current_settings()
        self.limit = self.settings.max_body_size
        self.send_continue = False
        self.idle = True
        self.in_head = False  # between the first byte of a request and its last header
        self.head_bytes = 0
        self.recv_scope: trio.CancelScope | None = None

    # -- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        self.idle = False
        self.in_head = True
        self.head_bytes = 0
        self.current = _Request()
        # Each request reads the settings in force (a reload applies at once).
        self.settings = self.server.current_settings()
        self.limit = self.settings.max_body_size

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url
        self.current.size += len(url)  # the head's size until the body starts

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.lower(), value))
        self.current.size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        self.in_head = False
        parser = self.parser
        if request.size > MAX_HEAD_BYTES:  # a head that came whole in one read
            request.refusal = (431, error_body(431))
            return
        request.size = 0  # from here on: the body's size
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        request.http_version = parser.get_http_version()
        networks = self.settings.allowed_hosts
        if networks and not is_allowed(self.client[0] if self.client else None, networks):
            request.refusal = (403, DENIED_BODY)
            return
        # Bearer tokens (when configured) next, as BearerTokenMiddleware does for
        # the rest: the same check, before the body is read.
        tokens = self.settings.bearer_tokens
        if tokens and request.url.partition(b"?")[0].decode("latin-1") not in OPEN_PATHS:
            authorization = next((v for n, v in request.headers if n == b"authorization"), None)
            if client_of(authorization, tokens) is None:
                request.refusal = _UNAUTHORIZED
                return
        for name, value in request.headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    request.refusal = (400, sylk_json(400, "invalid Content-Length header"))
                    return
                if declared > self.limit:
                    request.refusal = self._too_large()
                    return
            elif name == b"expect" and value.lower() == b"100-continue":
                self.send_continue = True

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        if request.refusal is not None:
            return
        request.size += len(body)
        if request.size > self.limit:
            request.refusal = self._too_large()
            request.chunks.clear()
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.ready.append(self.current)
        self.current = None
        self.send_continue = False

    def _too_large(self) -> tuple[int, bytes]:
        return 413, sylk_json(413, f"request body larger than {self.limit} bytes")


class FastHttpServer:
    """Serve the API's HTTP/1.1 on plain TCP.

    Args:
        app: the full ASGI application, for every request but ``POST /push``.
        runtime: what ``POST /push`` needs (see :class:`~sidecar.ingress.http.IngressRuntime`).
        current_settings: returns the settings in force (read per request).
    """

    def __init__(self, app: ASGIApp, runtime: IngressRuntime, current_settings: Callable[[], Settings]):
        self.app = app
        self.runtime = runtime
        self.current_settings = current_settings
        self._connections: set[_Connection] = set()
        self._stopping = False
        self.server_address: tuple[str, int] | None = None

    # -- listening ---------------------------------------------------------

    async def serve(self, host: str, port: int, stop: trio.Event, *, reuse_port: bool = False,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` until ``stop`` is set, then finish the requests
        being answered and return.  Reports ``["http://host:port"]`` when listening."""
        listener = await open_listener(host, port, reuse_port=reuse_port)
        await self.serve_on(listener, stop, task_status=task_status)

    async def serve_on(self, listener: socket.socket, stop: trio.Event, *,
                       task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """:meth:`serve` on a listening socket from :func:`open_listener` (closed at the end)."""
        try:
            bound = listener.getsockname()
            self.server_address = (bound[0], bound[1])
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept_loop, listener, nursery)
                task_status.started([f"http://{shown}:{bound[1]}"])
                logger.info("HTTP/1.1 on http://%s:%d (fast path)", shown, bound[1])
                await stop.wait()
                self._stopping = True
                trio.lowlevel.notify_closing(listener)
                listener.close()
                for connection in list(self._connections):
                    if connection.idle and connection.recv_scope is not None:
                        connection.recv_scope.cancel()
        finally:
            listener.close()

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(listener)
                except trio.ClosedResourceError:
                    return
                continue
            except OSError as exc:
                if self._stopping or listener.fileno() < 0:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("HTTP accept failed (%s); retrying in 100 ms", exc)
                    await trio.sleep(0.1)
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            nursery.start_soon(self.handle_connection, sock, peer)

    # -- one connection ------------------------------------------------------

    async def handle_connection(self, sock: socket.socket, peer: tuple[Any, ...] | None) -> None:
        """Read and answer requests on ``sock`` until the client or the server ends it.

        ``sock`` is a non-blocking standard socket: its I/O goes through
        trio's ``wait_readable``/``wait_writable`` only when it would block,
        which saves trio's socket wrapper (two scheduler passes per call)
        on each request.  ``peer`` is the client's address (what the access
        list checks).
        """
        connection = _Connection(self, peer)
        self._connections.add(connection)
        try:
            with sock:
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await self._read_loop(sock, connection)
        except OSError:
            pass  # reset by the client: nothing to answer
        finally:
            self._connections.discard(connection)

    async def _read_loop(self, sock: socket.socket, connection: _Connection) -> None:
        parser = connection.parser
        while not (self._stopping and connection.idle):
            data = b""
            timeout = KEEP_ALIVE_TIMEOUT if connection.idle else READ_TIMEOUT
            # Cancelled at stop while idle; times out like Hypercorn's keep-alive.
            with trio.CancelScope(deadline=trio.current_time() + timeout) as connection.recv_scope:
                data = await _receive(sock)
            scope, connection.recv_scope = connection.recv_scope, None
            if not data:
                if scope.cancelled_caught and not connection.idle and not self._stopping:
                    await _send_all(sock, json_answer(408, error_body(408), keep_alive=False))
                return  # the client closed (a half-sent request gets no answer), or stop
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # h2c / WebSocket upgrades are declined: the request is answered
                # as HTTP/1.1 below and the connection then closed.
                if connection.current is not None and connection.current.refusal is None:
                    connection.ready.append(connection.current)
                while connection.ready:
                    request = connection.ready.popleft()
                    request.keep_alive = False
                    await self._answer(sock, connection, request)
                return
            except httptools.HttpParserError as exc:
                # As h11 under Hypercorn: 501 for a transfer coding we do not speak.
                status = 501 if "transfer-encoding" in str(exc).lower() else 400
                await _send_all(sock, json_answer(status, error_body(status), keep_alive=False))
                return
            if connection.in_head:
                connection.head_bytes += len(data)
                if connection.head_bytes > MAX_HEAD_BYTES:
                    await _send_all(sock, json_answer(431, error_body(431), keep_alive=False))
                    return
            while connection.ready:
                request = connection.ready.popleft()
                if not await self._answer(sock, connection, request):
                    return
            current = connection.current
            if current is None:
                connection.idle = True
                continue
            if current.refusal is not None:  # before (the rest of) its body is read
                await _send_all(sock, _refusal_answer(current.refusal))
                return
            if connection.send_continue:
                connection.send_continue = False
                await _send_all(sock, b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _answer(self, sock: socket.socket, connection: _Connection, request: _Request) -> bool:
        """Answer one complete request; whether the connection stays open."""
        keep_alive = request.keep_alive and not self._stopping
        if request.refusal is not None:
            await _send_all(sock, _refusal_answer(request.refusal))
            return False
        url = request.url
        if request.method == b"POST" and (url == _PUSH_PATH or url.startswith(b"/push?")):
            try:
                status, body = await answer_push_v1(self.runtime, b"".join(request.chunks),
                                                    connection.peer_text)
            except Exception:
                logger.exception("POST /push failed unexpectedly")
                status, body = 500, sylk_json(500, "internal server error")
            keep_alive = keep_alive and not self._stopping  # a stop may have come meanwhile
            await _send_all(sock, json_answer(status, body, keep_alive=keep_alive))
            return keep_alive
        answer = await self._through_asgi(connection, request, keep_alive)
        await _send_all(sock, answer)
        return keep_alive

    # -- everything else: the ASGI application -------------------------------

    async def _through_asgi(self, connection: _Connection, request: _Request, keep_alive: bool) -> bytes:
        raw_path, _, query = request.url.partition(b"?")
        method = request.method.decode("ascii", "replace")
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version, "method": method, "scheme": "http",
            "path": urllib.parse.unquote(raw_path.decode("ascii", "replace")), "raw_path": raw_path,
            "query_string": query, "root_path": "", "headers": request.headers,
            "client": connection.client, "server": self.server_address, "state": {},
        }
        body = b"".join(request.chunks)
        delivered = False
        done = trio.Event()
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        except Exception:
            logger.exception("%s %s failed unexpectedly", method, scope["path"])
            start.clear()
        finally:
            done.set()
        if not start:
            return json_answer(500, sylk_json(500, "internal server error"), keep_alive=keep_alive)
        return _asgi_answer(start, b"".join(parts), keep_alive=keep_alive, head=method == "HEAD")


def _refusal_answer(refusal: tuple[Any, ...]) -> bytes:
    status, body, *extra = refusal
    return json_answer(status, body, keep_alive=False, extra=extra[0] if extra else b"")


def _asgi_answer(start: dict[str, Any], body: bytes, *, keep_alive: bool, head: bool) -> bytes:
    status = int(start["status"])
    lines = [_STATUS_LINES.get(status) or _status_line(status)]
    has_length = has_date = False
    for name, value in start.get("headers", ()):
        name = bytes(name).lower()
        if name == b"connection":
            continue  # ours decides
        has_length = has_length or name == b"content-length"
        has_date = has_date or name == b"date"
        lines.append(bytes(name) + b": " + bytes(value) + b"\r\n")
    if not has_length:
        lines.append(b"content-length: %d\r\n" % len(body))
    if not has_date:
        lines.append(_DATE.line())
    lines.append(b"server: pushsidecar\r\n")
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(body)
    return b"".join(lines)


async def _receive(sock: socket.socket) -> bytes:
    """The next bytes from the client (b"" when it closed).

    Waits first: after an answer the next request is not there yet (the
    client waits for the answer), so trying recv first would cost a system
    call for nothing.
    """
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            continue


async def _send_all(sock: socket.socket, data: bytes) -> None:
    """Write ``data``; an answer fits the socket buffer, so this rarely waits."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def open_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening non-blocking TCP socket on ``host:port`` (``reuse_port``:
    SO_REUSEPORT, so several worker processes can each bind the same port and
    the kernel spreads the connections among them)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
