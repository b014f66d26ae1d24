"""The shared vocabulary of the sidecar: PushRequest, Push, Outcome, events.

Every ingress (HTTP v1 and v2, ZeroMQ) translates its input into a
:class:`PushRequest`; :mod:`sidecar.admission` checks it against the
configuration and makes it a :class:`Push`; the dispatcher turns each Push
into exactly one :class:`Outcome`.  Nothing in this module does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import os
from typing import Any
from collections.abc import Mapping


class Event(str, enum.Enum):  # noqa: UP042 (StrEnum would change str() in log lines)
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


def default_ttl(event: str) -> float:
    """The useful life of a push of ``event`` whose sender gave none (seconds)."""
    return _TTL_BY_NAME.get(event, 45)


_TTL_BY_NAME = {event.value: ttl for event, ttl in DEFAULT_TTL.items()}


def _sylk(key: str, kind: type = str) -> Any:
    """A request field that Sylk's JSON carries under ``key`` (a ``kind`` value)."""
    return dataclasses.field(default=None, metadata={"json": key, "kind": kind})


@dataclasses.dataclass(frozen=True, slots=True)
class PushRequest:
    """What a sender asked for, typed, before admission (None: not given).

    The ingresses build it (HTTP from Sylk's JSON, ZeroMQ from a
    :class:`~sidecar.wire.WireMessage`); :func:`sidecar.admission.admit`
    checks it and makes it a :class:`Push`.  A field with ``json`` metadata
    is read from that Sylk key by :func:`sidecar.admission.request_from_json`
    (fields in the order their errors are reported); a ZeroMQ field of the
    same name is copied by the ZeroMQ ingress.  So a new push field is added
    here and in the wire table, nowhere else.
    """

    app_id: str | None = _sylk("app-id")
    platform: str | None = _sylk("platform")
    token: str | None = _sylk("token")
    call_id: str | None = _sylk("call-id")
    from_uri: str | None = _sylk("from")
    to_uri: str | None = _sylk("to")
    event: str | None = _sylk("event")
    device_id: str | None = _sylk("device-id")
    from_display_name: str | None = _sylk("from-display-name")
    media_type: str | None = _sylk("media-type")
    reason: str | None = _sylk("reason")
    filename: str | None = _sylk("filename")
    filetype: str | None = _sylk("filetype")
    account: str | None = _sylk("account")  # Sylk's: the conference of incoming_conference_request
    content: str | None = _sylk("content")
    content_type: str | None = _sylk("content-type")
    silent: bool | None = _sylk("silent", bool)
    badge: int | None = _sylk("badge", int)
    #: useful life in seconds (None: :func:`default_ttl` of the event)
    ttl: float | None = None
    #: when the sender sent it, UNIX seconds (ZeroMQ); the ttl counts from then
    sent_at: float | None = None
    #: for APNs: a development build (RFC 8599 ``pn-provider=apns.dev``),
    #: sent to the application's sandbox URL
    sandbox: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Push(PushRequest):
    """One admitted notification to one device: a request with its defaults
    applied, its platform canonical and its deadline fixed.

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
    silent: bool = True
    badge: int = 1
    deadline: float
    expires_at: float
    source: str = "http"
    request_id: str = dataclasses.field(default_factory=new_request_id)
    peer: str | None = None  # who sent it: HTTP client address, or the ZeroMQ endpoint

    def replace(self, **changes: Any) -> Push:
        return dataclasses.replace(self, **changes)


class OutcomeKind(str, enum.Enum):  # noqa: UP042 (as Event)
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
