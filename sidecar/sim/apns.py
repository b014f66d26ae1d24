"""The APNs provider API: ``POST /3/device/<token>``, validated like Apple does.

Checks run in a fixed order (path, method, headers, authentication, then each
header, then the payload) and the first failure answers, with Apple's status
and ``{"reason": ...}`` body.  Where Apple does not document its answer, the
choice made here is noted next to the check.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from .apns_auth import ProviderTokenChecker
from .exchange import Incoming, Reply
from .faults import DeviceTokens, Fault

PATH_PREFIX = "/3/device/"
PUSH_TYPES = frozenset({
    "alert", "background", "voip", "complication", "fileprovider", "mdm", "location",
    "liveactivity", "pushtotalk", "widgets", "controls",
})
# Push types that Apple only accepts on a topic with this suffix.
TOPIC_SUFFIXES = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "pushtotalk": ".voip-ptt",
    "liveactivity": ".push-type.liveactivity",
}
PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120
COLLAPSE_ID_LIMIT = 64

REASON_STATUS = {
    "BadCollapseId": 400, "BadDeviceToken": 400, "BadExpirationDate": 400, "BadMessageId": 400,
    "BadPriority": 400, "BadTopic": 400, "DeviceTokenNotForTopic": 400, "DuplicateHeaders": 400,
    "IdleTimeout": 400, "InvalidPushType": 400, "MissingDeviceToken": 400, "MissingTopic": 400,
    "PayloadEmpty": 400, "TopicDisallowed": 400,
    "BadCertificate": 403, "BadCertificateEnvironment": 403, "ExpiredProviderToken": 403,
    "Forbidden": 403, "InvalidProviderToken": 403, "MissingProviderToken": 403,
    "BadPath": 404, "MethodNotAllowed": 405, "ExpiredToken": 410, "Unregistered": 410,
    "PayloadTooLarge": 413, "TooManyProviderTokenUpdates": 429, "TooManyRequests": 429,
    "InternalServerError": 500, "ServiceUnavailable": 503, "Shutdown": 503,
}
# The reason a scripted status answers with unless the script names one.
DEFAULT_REASON = {
    400: "BadDeviceToken", 403: "Forbidden", 404: "BadPath", 405: "MethodNotAllowed",
    410: "Unregistered", 413: "PayloadTooLarge", 429: "TooManyRequests",
    500: "InternalServerError", 503: "ServiceUnavailable",
}
_TOKEN = re.compile(r"[0-9a-fA-F]{8,200}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def error(reason: str, *, status: int | None = None, apns_id: str | None = None,
          headers: tuple[tuple[str, str], ...] = (), clock: Callable[[], float] = time.time) -> Reply:
    """Apple's error answer; 410 carries the time the token became invalid."""
    status = status or REASON_STATUS.get(reason, 400)
    document: dict[str, object] = {"reason": reason}
    if status == 410:
        document["timestamp"] = int(clock() * 1000)
    if apns_id:
        headers = (("apns-id", apns_id),) + headers
    return Reply.json(status, document, headers=headers, reason=reason)


class ApnsService:
    """Validates and answers APNs requests.

    Args:
        tokens: scripted dead/bad tokens shared with the simulator.
        checker: the provider-token checker (token auth).
        clock: wall-clock seconds, for 410 timestamps.
    """

    def __init__(self, tokens: DeviceTokens, checker: ProviderTokenChecker,
                 clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.checker = checker
        self._clock = clock

    def validate(self, req: Incoming) -> Reply | None:
        """Return the error answer for an invalid request, None if it is valid."""
        if not req.path.startswith(PATH_PREFIX):
            return error("BadPath")
        if req.method != "POST":
            return error("MethodNotAllowed")
        if req.duplicate_headers:
            return error("DuplicateHeaders")
        h = req.header
        apns_id = h.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            return error("BadMessageId")
        reason = self._authenticate(req)
        if reason:
            return error(reason, apns_id=apns_id)
        reason = self._check_headers(req)
        if reason:
            return error(reason, apns_id=apns_id)
        if not req.body:
            return error("PayloadEmpty", apns_id=apns_id)
        limit = VOIP_PAYLOAD_LIMIT if h.get("apns-push-type") == "voip" else PAYLOAD_LIMIT
        if len(req.body) > limit:
            return error("PayloadTooLarge", apns_id=apns_id)
        return None

    def deliver(self, req: Incoming) -> Reply:
        """Answer a valid request: the token's scripted fate, else 200."""
        apns_id = req.header.get("apns-id") or str(uuid.uuid4()).upper()
        token = req.path[len(PATH_PREFIX):]
        if token in self.tokens.dead:
            return error("Unregistered", apns_id=apns_id, clock=self._clock)
        if token in self.tokens.bad:
            return error("BadDeviceToken", apns_id=apns_id)
        topic = self.tokens.topics.get(token)
        if topic is not None and topic != self.topic(req):
            return error("DeviceTokenNotForTopic", apns_id=apns_id)
        return Reply(200, (("apns-id", apns_id),))

    def fault_reply(self, fault: Fault, req: Incoming) -> Reply:
        """The answer a scripted fault asks for, in Apple's format."""
        apns_id = req.header.get("apns-id") or str(uuid.uuid4()).upper()
        headers = tuple(fault.headers.items())
        if fault.status == 200:
            return Reply(200, (("apns-id", apns_id),) + headers)
        reason = fault.reason or DEFAULT_REASON.get(fault.status, "InternalServerError")
        return error(reason, status=fault.status, apns_id=apns_id, headers=headers,
                     clock=self._clock)

    def topic(self, req: Incoming) -> str | None:
        """The request's topic; with certificate auth Apple defaults it to the cert's."""
        return req.header.get("apns-topic") or req.conn.client_topic

    # -- checks, in Apple's order ----------------------------------------

    def _authenticate(self, req: Incoming) -> str | None:
        cert_topic = req.conn.client_topic
        topic = req.header.get("apns-topic")
        if cert_topic is not None:
            # Certificate auth: the certificate names the app; its VoIP and
            # other push-type topics are sub-topics of the bundle id.
            if topic is not None and topic != cert_topic and not topic.startswith(cert_topic + "."):
                return "TopicDisallowed"
            return None
        return self.checker.check(req.header.get("authorization"))

    def _check_headers(self, req: Incoming) -> str | None:
        h = req.header
        token = req.path[len(PATH_PREFIX):]
        if not token:
            return "MissingDeviceToken"
        if not _TOKEN.fullmatch(token):
            return "BadDeviceToken"
        topic = self.topic(req)
        if not topic:
            return "MissingTopic"
        push_type = h.get("apns-push-type")
        if push_type is not None:
            if push_type not in PUSH_TYPES:
                return "InvalidPushType"
            # Apple does not document the answer to a push type sent on the
            # wrong topic; InvalidPushType tells a sender what it got wrong.
            suffix = TOPIC_SUFFIXES.get(push_type)
            if suffix is not None and not topic.endswith(suffix):
                return "InvalidPushType"
            if suffix is None and topic.endswith(".voip"):
                return "InvalidPushType"
        priority = h.get("apns-priority")
        if priority is not None:
            if priority not in ("1", "5", "10"):
                return "BadPriority"
            if priority == "10" and push_type == "background":
                return "BadPriority"
        expiration = h.get("apns-expiration")
        if expiration is not None and not (expiration.isascii() and expiration.isdigit()):
            return "BadExpirationDate"
        collapse_id = h.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > COLLAPSE_ID_LIMIT:
            return "BadCollapseId"
        return None
