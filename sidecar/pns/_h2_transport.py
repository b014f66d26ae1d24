"""A transport wrapper that turns a failed write into a flag.

Why: when a push service answers some streams and then cuts the connection,
those answers are in the kernel's receive buffer, and reading them is the
only way to know those pushes were delivered.  But ``trio.SSLStream`` marks
itself broken as soon as a write to its transport fails (or is cancelled),
and a broken SSLStream refuses to read.  Under the TLS layer, this wrapper
catches the failure, remembers it in :attr:`SendLatch.error`, drops the data
(and everything written after it), and returns normally: the TLS stream stays
readable, and the HTTP/2 connection checks :attr:`error` after each write.
"""

from __future__ import annotations

import trio


class SendLatch(trio.abc.Stream):
    """Wraps a stream; the first failed ``send_all`` latches :attr:`error`.

    Args:
        inner: the TCP stream.
        write_timeout: seconds one ``send_all`` may take (the peer stopped
            reading); a timeout latches :class:`trio.TooSlowError`.
    """

    def __init__(self, inner: trio.abc.Stream, *, write_timeout: float = 30.0):
        self.inner = inner
        self.write_timeout = write_timeout
        self.error: BaseException | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.fail_after(self.write_timeout):
                await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            self.error = exc

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
