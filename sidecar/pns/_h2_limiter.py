"""A counting limiter whose capacity follows the server's MAX_CONCURRENT_STREAMS.

``trio.Semaphore`` cannot shrink or grow, and APNs changes the limit during a
connection's life (1 until the first valid token, then ~1000).  When the
capacity shrinks below what is in use, holders keep their slots and new
acquirers wait until enough are released.  Slots are handed over on release
(no barging), and waiters are served first come, first served.
"""

from __future__ import annotations

import trio


class StreamLimiter:
    """Bounds concurrently open streams; see the module docstring."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._in_use = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._lot)

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free.

        A free slot is taken without a checkpoint: the request that calls
        this checkpoints right after, while it waits for its response, and
        skipping a scheduling round trip per request is measurable.
        """
        if self._in_use < self._capacity and not self._lot:
            self._in_use += 1
            return
        # The releaser counts the slot for us before unparking (hand-over),
        # so nothing to do once park() returns.
        await self._lot.park()

    def release(self) -> None:
        """Give a slot back, handing it to the longest waiter if one fits."""
        self._in_use -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        """Follow a new limit; waiters are woken at once if it grew."""
        self._capacity = max(capacity, 0)
        self._wake()

    def _wake(self) -> None:
        free = self._capacity - self._in_use
        if free > 0 and self._lot:
            woken = self._lot.unpark(count=free)
            self._in_use += len(woken)
