"""Opening a TLS connection that speaks HTTP/2 (ALPN h2), server verified."""

from __future__ import annotations

import ssl
from typing import Any

import trio

from ._h2_connection import Http2Connection
from ._h2_errors import ConnectError
from ._h2_transport import SendLatch


async def open_http2_connection(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    nursery: trio.Nursery,
    *,
    connect_timeout: float = 10.0,
    **options: Any,
) -> Http2Connection:
    """Connect with TLS (server verified, ALPN ``h2``) and start an HTTP/2 connection.

    Returns once the server's SETTINGS arrived, so the first requests already
    respect its MAX_CONCURRENT_STREAMS.

    Args:
        host, port: the server; ``host`` is also the TLS server name.
        ssl_context: see :func:`sidecar.pns.tls.client_ssl_context`.
        nursery: where the connection's background tasks run.
        connect_timeout: seconds for TCP + TLS + SETTINGS together.
        options: passed to :class:`Http2Connection`.

    Raises:
        ConnectError: DNS, TCP, TLS or verification failure, timeout, or the
            server did not select ALPN ``h2``.
    """
    authority = host if port == 443 else f"{host}:{port}"
    options.setdefault("name", authority)
    tls_stream: trio.SSLStream[SendLatch] | None = None
    connection: Http2Connection | None = None
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            # Under TLS: a failed write must not make the answers already received unreadable.
            latch = SendLatch(tcp, write_timeout=options.get("write_timeout", 30.0))
            tls_stream = trio.SSLStream(latch, ssl_context, server_hostname=host, https_compatible=True)
            await tls_stream.do_handshake()
            alpn = tls_stream.selected_alpn_protocol()
            if alpn != "h2":
                raise ConnectError(f"{authority}: server selected ALPN {alpn!r}, not 'h2'")
            connection = Http2Connection(tls_stream, authority=authority, send_latch=latch, **options)
            await connection.start(nursery)
            await connection.wait_remote_settings()
            return connection
    except BaseException as exc:
        if connection is not None:
            await connection.aclose()
        elif tls_stream is not None:
            await trio.aclose_forcefully(tls_stream)
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.TooSlowError)):
            # trio wraps TLS failures in BrokenResourceError: name the real one.
            raise ConnectError(f"cannot connect to {authority}: {exc.__cause__ or exc!r}") from exc
        raise
