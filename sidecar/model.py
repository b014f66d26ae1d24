"""The shared vocabulary of the sidecar: Push, Outcome, events, platforms.

Both ingresses (HTTP and ZeroMQ) translate their input into a :class:`Push`;
the dispatcher turns each Push into exactly one :class:`Outcome`.  Nothing in
this module does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import os
from typing import Any, Mapping


class Event(str, enum.Enum):
    INCOMING_SESSION = "incoming_session"
    INCOMING_CONFERENCE_REQUEST = "incoming_conference_request"
    CANCEL = "cancel"
    MESSAGE = "message"
    TRANSFER = "transfer"

    @property
    def is_call(self) -> bool:
        return self in (Event.INCOMING_SESSION, Event.INCOMING_CONFERENCE_REQUEST)


EVENTS = frozenset(e.value for e in Event)
MEDIA_TYPES = frozenset({"audio", "video", "image", "chat", "sms", "file-transfer"})

# Sylk's platform aliases: what clients may send -> the canonical platform name.
PLATFORM_ALIASES = {
    "apple": "apple",
    "ios": "apple",
    "apns": "apple",
    "firebase": "firebase",
    "android": "firebase",
    "fcm": "firebase",
}


def canonical_platform(name: str) -> str:
    """Map a client-supplied platform name to its canonical form.

    Unknown names are returned lower-cased, so custom push services
    (plugins named in ``app_platform``) keep working.
    """
    lowered = name.strip().lower()
    return PLATFORM_ALIASES.get(lowered, lowered)


def session_id(call_id: str) -> str:
    """MD5 of the call-id laid out as a UUID (what Sylk apps expect)."""
    digest = hashlib.md5(call_id.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


_request_counter = itertools.count(1)
_request_prefix = f"{os.getpid():x}"


def new_request_id() -> str:
    """A short id, unique within this process, that ties log lines together."""
    return f"{_request_prefix}-{next(_request_counter):x}"


# Default useful life of a push when the sender does not say (seconds).
DEFAULT_TTL = {
    Event.INCOMING_SESSION: 45,
    Event.INCOMING_CONFERENCE_REQUEST: 45,
    Event.CANCEL: 45,
    Event.MESSAGE: 24 * 3600,
    Event.TRANSFER: 24 * 3600,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Push:
    """One notification to one device.

    ``deadline`` is on the trio clock (``trio.current_time()``): when it passes,
    the push is no longer worth sending.  ``expires_at`` is the same moment in
    wall-clock UNIX seconds, for ``apns-expiration`` and FCM ttl.
    """

    app_id: str
    platform: str
    token: str
    event: Event
    call_id: str
    from_uri: str
    to_uri: str
    deadline: float
    expires_at: float
    media_type: str | None = None
    from_display_name: str | None = None
    device_id: str | None = None
    silent: bool = True
    reason: str | None = None
    badge: int = 1
    filename: str | None = None
    filetype: str | None = None
    account: str | None = None
    content: str | None = None
    content_type: str | None = None
    source: str = "http"
    #: for APNs: a development build (RFC 8599 ``pn-provider=apns.dev``),
    #: sent to the application's sandbox URL
    sandbox: bool = False
    request_id: str = dataclasses.field(default_factory=new_request_id)
    peer: str | None = None  # who sent it: HTTP client address, or the ZeroMQ endpoint

    def replace(self, **changes: Any) -> "Push":
        return dataclasses.replace(self, **changes)

    @property
    def log_context(self) -> dict[str, str]:
        return {"call_id": self.call_id, "request_id": self.request_id}


class OutcomeKind(str, enum.Enum):
    DELIVERED = "delivered"
    TOKEN_DEAD = "token_dead"  # the device token is dead: purge it
    REJECTED = "rejected"  # a 4xx that retrying will not fix
    FAILED = "failed"  # gave up after retries (5xx, connection failures)
    EXPIRED = "expired"  # the deadline passed before it could be sent
    DROPPED = "dropped"  # overload, duplicate or undeliverable at ingress
    SKIPPED = "skipped"  # not needed by the application (see PushNotNeeded)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The single final result of one Push.

    ``code`` is the HTTP-like status reported to clients in the Sylk
    ``data.code`` field (dead tokens are reported as 410 whatever the
    push service said).
    """

    kind: OutcomeKind
    code: int
    reason: str
    url: str = ""
    attempts: int = 0
    body: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


class PushValidationError(ValueError):
    """Input that cannot become a Push; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class PushNotNeeded(PushValidationError):
    """A push the application has no use for (a cancel for a Linphone app).

    The HTTP API answers it as Sylk did (``message``, ``status``); a proxy's
    push ends as ``skipped`` with the reason ``why``, not as ``rejected``:
    the proxy did right to ask, and nothing went wrong.
    """

    def __init__(self, message: str, status: int, why: str):
        super().__init__(message, status)
        self.why = why
