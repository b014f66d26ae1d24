"""What every push service client (APNs, FCM, plugins) offers the dispatcher.

A service makes ONE attempt per :meth:`PushService.send` call and classifies
the answer into a :class:`SendResult`; the dispatcher owns retries, backoff
and deadlines.  Transparent re-sends that cannot ring a phone twice (streams
refused by GOAWAY above ``last_stream_id``) happen inside the service and are
not counted as attempts.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from ..model import Push


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    """An outgoing request as an app type builds it, before the service sends it.

    ``headers`` are protocol headers (for APNs: apns-topic, apns-push-type,
    apns-priority, apns-expiration...; FCM: usually empty).  ``payload`` is the
    JSON body (for FCM the whole ``{"message": {...}}``; the service fills in
    the token).
    """

    headers: Mapping[str, str]
    payload: Mapping[str, Any]


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    TOKEN_DEAD = "token_dead"  # the token will never work again: purge
    REJECTED = "rejected"  # permanent for this push; do not retry
    RETRY = "retry"  # temporary (429, 5xx, connection failure): retry with backoff
    EXPIRED = "expired"  # the deadline passed before it could be sent: nothing was sent


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """One attempt's classified answer.

    ``status`` is the push service's HTTP status (0 when no answer came, e.g.
    a connection failure); ``reason`` its reason string (APNs ``reason``, FCM
    errorCode or status) or a description of the local failure.
    ``fate_unknown``: the request reached the wire but no answer could be
    read (the connection was cut): it may have been delivered.  The
    dispatcher resends such a push at most once.
    """

    verdict: Verdict
    status: int
    reason: str
    url: str = ""
    retry_after: float | None = None
    body: Mapping[str, Any] | None = None
    fate_unknown: bool = False


#: seconds an answer is still awaited after the deadline once its request was sent
ANSWER_GRACE = 5.0

#: the dispatcher's hard cap on a push's sends, past its deadline, for services
#: (plugins) that ignore ``send_by``: no send outlives it, so a retired service
#: drains by then at the latest
SEND_CAP_AFTER_DEADLINE = ANSWER_GRACE + 1.0


class PushService(abc.ABC):
    """A client for one push service with one set of credentials.

    Created from an application's configuration; long-lived; owns its
    connections.  ``send`` must not raise for network or protocol trouble
    (return ``Verdict.RETRY``); only cancellation propagates.
    """

    #: the ``app_platform`` value this service serves (apple, firebase, or a plugin's)
    platform: str = ""

    @abc.abstractmethod
    async def send(self, push: Push, notification: Notification) -> SendResult:
        """Make one attempt to deliver ``notification`` for ``push``."""

    async def aclose(self) -> None:  # noqa: B027  (optional: a service may hold nothing to close)
        """Close connections; in-flight sends fail with ``Verdict.RETRY``."""

    def statistics(self) -> Mapping[str, Any]:
        """An immutable snapshot for metrics (connections, in flight...)."""
        return {}


class PushServiceConfigError(ValueError):
    """The application's push-service options are unusable (bad key file...)."""
