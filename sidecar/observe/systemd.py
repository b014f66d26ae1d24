"""systemd notifications (sd_notify) and the watchdog, without libsystemd.

Theory of operation: under ``Type=notify`` systemd puts the path of a
datagram socket in ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the
Linux abstract namespace); the service sends newline-separated
``KEY=VALUE`` assignments to it: ``READY=1`` once it serves,
``RELOADING=1`` ... ``READY=1`` around a reload, ``STOPPING=1`` when it
begins to stop, ``STATUS=...`` for ``systemctl status``, and ``WATCHDOG=1``
more often than ``$WATCHDOG_USEC``.  See sd_notify(3).

Without ``$NOTIFY_SOCKET`` every call is a cheap no-op.  A send never
blocks (a full socket queue loses the message: systemd is not reading, and
waiting would not help) and never raises.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

logger = logging.getLogger("sidecar.systemd")


class Notifier:
    """Sends sd_notify messages to the socket named in ``environ``.

    Args:
      environ: where to find ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` (default: ``os.environ``, read at each call so a
        test can change it).
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        self._environ = environ

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ if self._environ is not None else os.environ

    @property
    def enabled(self) -> bool:
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram.

        Returns:
          True if it was sent; False when there is no socket or it failed.
        """
        address = self.environ.get("NOTIFY_SOCKET")
        if not address:
            return False
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            logger.debug("unsupported NOTIFY_SOCKET %r", address)
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, address)
        except OSError as exc:
            logger.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload);
        # older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives (half of ``$WATCHDOG_USEC``), or None when
        the watchdog is off or meant for another process."""
        usec = self.environ.get("WATCHDOG_USEC")
        if not usec or not self.enabled:
            return None
        pid = self.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        if value <= 0:
            return None
        return value / 1_000_000 / 2

    async def watchdog_loop(self) -> None:
        """Send ``WATCHDOG=1`` every half watchdog period until cancelled.

        Returns at once when the watchdog is not enabled.  It runs on the
        event loop, so a blocked loop stops the keep-alives and systemd
        restarts the daemon: that is the point.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(interval)


def _status(text: str | None) -> list[str]:
    if not text:
        return []
    # One line: a newline would start a new assignment.
    return ["STATUS=" + " ".join(text.split())]


#: the notifier for the process environment, used by the functions below
default_notifier = Notifier()


def notify_ready(status: str | None = None) -> bool:
    """``READY=1``: startup (or a reload) finished."""
    return default_notifier.ready(status)


def notify_reloading() -> bool:
    """``RELOADING=1``: a reload begins; send :func:`notify_ready` when done."""
    return default_notifier.reloading()


def notify_stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: shutdown begins."""
    return default_notifier.stopping(status)


def notify_status(text: str) -> bool:
    """``STATUS=...``: one line shown by ``systemctl status``."""
    return default_notifier.status(text)


async def watchdog_loop() -> None:
    """Keep systemd's watchdog fed (see :meth:`Notifier.watchdog_loop`)."""
    await default_notifier.watchdog_loop()
