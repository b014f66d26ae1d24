"""HTTP/1.1 on the simulator's port, for clients that do not speak HTTP/2.

ALPN offers ``h2`` and ``http/1.1``; an OAuth client (httpx without http2),
``curl --http1.1`` or a script reading ``/_sim/requests`` lands here.  One
request at a time, keep-alive, on h11.  A scripted GOAWAY becomes
``connection: close`` after the answer, a reset or drop an abrupt close.
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import trio

from .exchange import ConnectionInfo, Incoming, Plan

RECEIVE_SIZE = 65536
MAX_BODY = 1 << 20
CLOSE_TIMEOUT = 1.0


async def serve_http1(stream: trio.SSLStream, info: ConnectionInfo,
                      plan: Callable[[Incoming], Plan], batch_done: Callable[[], None]) -> None:
    """Serve one HTTP/1.1 connection until either side closes it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
    request: h11.Request | None = None
    body = bytearray()
    try:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                await _send_simple(stream, conn, 400)
                return
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                keep_going = await _answer(stream, conn, info, plan, request, bytes(body))
                batch_done()
                if not keep_going or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await stream.aclose()  # sends close_notify
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)


async def _answer(stream: trio.SSLStream, conn: h11.Connection, info: ConnectionInfo,
                  plan_for: Callable[[Incoming], Plan], request: h11.Request, body: bytes) -> bool:
    """Answer one request; False when the connection must close afterwards."""
    fields = [(name.decode("latin-1"), value.decode("utf-8", "replace"))
              for name, value in request.headers]
    incoming = Incoming.build(request.method.decode(), request.target.decode("utf-8", "replace"),
                              fields, body, info)
    plan = plan_for(incoming)
    if plan.delay > 0:
        await trio.sleep(plan.delay)
    if plan.drop or plan.reset is not None or plan.reply is None:
        await trio.aclose_forcefully(stream.transport_stream)
        return False
    reply = plan.reply
    headers = [(name, value) for name, value in reply.headers]
    headers.append(("content-length", str(len(reply.body))))
    if plan.goaway is not None:
        headers.append(("connection", "close"))
    data = conn.send(h11.Response(status_code=reply.status, headers=headers))
    data += conn.send(h11.Data(data=reply.body)) if reply.body else b""
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
    return plan.goaway is None


async def _send_simple(stream: trio.SSLStream, conn: h11.Connection, status: int) -> None:
    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
        data = conn.send(h11.Response(status_code=status, headers=[("content-length", "0"),
                                                                   ("connection", "close")]))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
