"""Scripted misbehaviour: canned answers, delays, GOAWAY and dropped connections.

Faults are plain data consumed by the request handlers, so tests (in-process
or over ``POST /_sim/script``) describe *what* should go wrong and the
connection drivers decide *how* to do it on the wire.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any
from collections.abc import Iterable, Mapping

KINDS = ("apns", "fcm", "oauth")


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One scripted answer, used once by the next valid request of its kind.

    Attributes:
        status: HTTP status to answer (its reason/body defaults per service).
        headers: extra response headers, e.g. ``{"retry-after": "1"}``.
        reason: the service's reason (APNs ``reason``, FCM ``errorCode``,
            OAuth ``error``) instead of the default for ``status``.
        delay: seconds to wait before answering (on top of ``Simulator.delay``).
        reset: answer with RST_STREAM carrying this HTTP/2 error code instead.
        drop: close the connection abruptly instead of answering.
        cut: answer, then cut the TCP connection at once (RST, no GOAWAY, no
            TLS close_notify): the answer is in the client's receive buffer
            when its next write fails.  What a server crash right after
            answering, or a load balancer killing the flow, looks like.
    """

    status: int = 200
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    delay: float = 0.0
    reset: int | None = None
    drop: bool = False
    cut: bool = False

    @classmethod
    def coerce(cls, item: Any) -> Fault:
        """Accept a Fault, ``(status, headers[, reason])``, a status or a JSON dict."""
        if isinstance(item, Fault):
            return item
        if isinstance(item, int):
            return cls(status=item)
        if isinstance(item, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(item) - known
            if unknown:
                raise ValueError(f"unknown fault fields: {sorted(unknown)}")
            return cls(**item)
        status, *rest = item
        headers = rest[0] if rest else {}
        reason = rest[1] if len(rest) > 1 else None
        return cls(status=int(status), headers=dict(headers or {}), reason=reason)


@dataclasses.dataclass(slots=True)
class ConnectionTrigger:
    """Fires on the ``n``-th stream counted from when it was armed.

    Attributes:
        n: streams to count (any connection) before the action.
        repeat: re-arm after firing (counting restarts).
        last_stream_id: for GOAWAY, the last stream the server processes;
            ``None`` means the stream that fired it.
        error_code: for GOAWAY, its HTTP/2 error code.
        debug_data: for GOAWAY, its opaque debug data.
        kind: count only requests of this kind (apns, fcm, oauth); None: all.
        after_answer: for a drop, answer the stream that fired it first, then
            cut the connection (see :attr:`Fault.cut`).
    """

    n: int
    repeat: bool = False
    kind: str | None = None
    last_stream_id: int | None = None
    error_code: int = 0
    debug_data: bytes = b""
    after_answer: bool = False
    seen: int = 0

    def count(self, kind: str) -> bool:
        """Count one stream of ``kind``; True when the action is due now."""
        if self.kind is not None and kind != self.kind:
            return False
        self.seen += 1
        if self.seen < self.n:
            return False
        self.seen = 0
        return True


def _fired(trigger: ConnectionTrigger | None, kind: str) -> ConnectionTrigger | None:
    """``trigger`` when this stream of ``kind`` makes it fire, else None."""
    return trigger if trigger is not None and trigger.count(kind) else None


class FaultPlan:
    """Everything scripted to go wrong, shared by all connections."""

    def __init__(self) -> None:
        self.scripts: dict[str, collections.deque[Fault]] = {k: collections.deque() for k in KINDS}
        self.delay = 0.0
        self.goaway: ConnectionTrigger | None = None
        self.drop: ConnectionTrigger | None = None

    def script(self, kind: str, sequence: Iterable[Any]) -> None:
        if kind not in self.scripts:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.scripts[kind].extend(Fault.coerce(item) for item in sequence)

    def next_fault(self, kind: str) -> Fault | None:
        queue = self.scripts.get(kind)
        return queue.popleft() if queue else None

    def take_drop(self, kind: str) -> ConnectionTrigger | None:
        """Count a stream against the drop trigger; the trigger if it fires now."""
        trigger = _fired(self.drop, kind)
        if trigger is not None and not trigger.repeat:
            self.drop = None
        return trigger

    def take_goaway(self, kind: str) -> ConnectionTrigger | None:
        """Count a stream against the GOAWAY trigger; the trigger if it fires now."""
        trigger = _fired(self.goaway, kind)
        if trigger is not None and not trigger.repeat:
            self.goaway = None
        return trigger

    def clear(self) -> None:
        for queue in self.scripts.values():
            queue.clear()
        self.delay = 0.0
        self.goaway = None
        self.drop = None


class DeviceTokens:
    """Scripted fates of device tokens, shared by the APNs and FCM handlers.

    Attributes:
        dead: tokens answered as gone (APNs 410 Unregistered, FCM 404 UNREGISTERED).
        bad: tokens answered as invalid (APNs 400 BadDeviceToken, FCM 400
            INVALID_ARGUMENT naming the registration token).
        topics: APNs token -> the only topic it accepts (else DeviceTokenNotForTopic).
        projects: FCM token -> the project it belongs to (else SENDER_ID_MISMATCH).
    """

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.bad: set[str] = set()
        self.topics: dict[str, str] = {}
        self.projects: dict[str, str] = {}

    def clear(self) -> None:
        self.dead.clear()
        self.bad.clear()
        self.topics.clear()
        self.projects.clear()
