"""An httpx transport that sends each request through the fast HTTP/1.1 server.

Each request gets its own connection: a real socket pair, with the server's
:meth:`~sidecar.ingress.fast_http.FastHttpServer.handle_connection` on one
end (told the client address the test chooses, for the access list) and h11
writing the request and reading the answer on the other.  So the bytes go
through httptools and our connection loop exactly as from a TCP client.
"""

from __future__ import annotations

import socket

import h11
import httpx
import trio

from sidecar.ingress.fast_http import FastHttpServer
from sidecar.ingress.http import create_http_app


class FastServerTransport(httpx.AsyncBaseTransport):
    def __init__(self, runtime, client=("127.0.0.1", 5000)):
        self.server = FastHttpServer(create_http_app(runtime), runtime, lambda: runtime.settings)
        self.server.server_address = ("127.0.0.1", 8400)
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"connection"]
        headers.append((b"connection", b"close"))
        client = h11.Connection(h11.CLIENT)
        wire = client.send(h11.Request(method=request.method, target=request.url.raw_path,
                                       headers=headers))
        if body:
            wire += client.send(h11.Data(data=body))
        wire += client.send(h11.EndOfMessage())
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs = trio.socket.from_stdlib_socket(theirs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.server.handle_connection, ours, self.client)
            with theirs:
                await send_all(theirs, wire)
                answer = await receive_until_closed(theirs)
        client.receive_data(answer)
        client.receive_data(b"")
        response = None
        content = b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.NEED_DATA:
                break
        assert response is not None, answer
        return httpx.Response(response.status_code, headers=response.headers, content=content,
                              request=request)


async def send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def receive_until_closed(sock) -> bytes:
    answer = b""
    while chunk := await sock.recv(65536):
        answer += chunk
    return answer
