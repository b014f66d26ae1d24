"""A tiny HTTP/1.1 server (h11 over trio) standing in for a webhook push service.

It answers each request with the next scripted ``(status, extra headers)``
(default ``(200, [])``) and a JSON body ``{"ok": <2xx>, "n": <requests so far>}``,
and keeps what it received as ``(target, headers, body)``.
"""

from __future__ import annotations

import functools
import json

import h11
import pytest
import trio


class WebhookServer:
    def __init__(self) -> None:
        self.script: list[tuple[int, list[tuple[str, str]]]] = []
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            headers = {k.decode(): v.decode() for k, v in request.headers}
            self.received.append((request.target.decode(), headers, body))
            status, extra = self.script.pop(0) if self.script else (200, [])
            answer = json.dumps({"ok": 200 <= status < 300, "n": len(self.received)}).encode()
            response_headers = [("content-type", "application/json"),
                                ("content-length", str(len(answer))), *extra]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=response_headers))
                                  + conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()


@pytest.fixture
async def webhook(nursery: trio.Nursery) -> WebhookServer:
    server = WebhookServer()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server
