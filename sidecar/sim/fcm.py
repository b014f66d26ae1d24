"""FCM HTTP v1: ``POST /v1/projects/<project>/messages:send``.

Errors use Google's shape ``{"error": {"code", "message", "status",
"details"}}``; the FCM reason travels in a ``FcmError`` detail, a payload
problem in a ``google.rpc.BadRequest`` detail naming the field, which is what
lets a sender tell a dead token from a bug in its own payload.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from .exchange import Incoming, Reply
from .faults import DeviceTokens, Fault
from .oauth import AccessTokens

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
PAYLOAD_LIMIT = 4096
MAX_TTL = 2419200
MESSAGE_FIELDS = frozenset({
    "name", "data", "notification", "android", "webpush", "apns", "fcm_options", "fcmOptions",
    "token", "topic", "condition",
})
TARGETS = ("token", "topic", "condition")
STATUS_TEXT = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
# The FcmError errorCode a scripted status answers with unless the script names one.
DEFAULT_ERROR_CODE = {400: "INVALID_ARGUMENT", 401: "THIRD_PARTY_AUTH_ERROR",
                      403: "SENDER_ID_MISMATCH", 404: "UNREGISTERED", 429: "QUOTA_EXCEEDED",
                      500: "INTERNAL", 503: "UNAVAILABLE"}
_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_TTL = re.compile(r"(\d+)(\.\d{1,9})?s")
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-.]{8,4096}")
_INVALID_TOKEN = "The registration token is not a valid FCM registration token"


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None, *,
                 reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """Google's error document."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": STATUS_TEXT.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return Reply.json(status, {"error": error}, headers=headers,
                      reason=reason or error["status"])


def fcm_error(status: int, error_code: str, message: str,
              headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return google_error(status, message, [{"@type": FCM_ERROR, "errorCode": error_code}],
                        reason=error_code, headers=headers)


def bad_request(field: str, description: str) -> Reply:
    """A payload problem: INVALID_ARGUMENT with a BadRequest detail naming ``field``."""
    return google_error(400, description, [
        {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": description}]},
    ], reason="INVALID_ARGUMENT")


class FcmService:
    """Validates and answers FCM v1 send requests.

    Args:
        tokens: scripted dead/bad tokens shared with the simulator.
        access_tokens: what the OAuth endpoint handed out.
    """

    def __init__(self, tokens: DeviceTokens, access_tokens: AccessTokens) -> None:
        self.tokens = tokens
        self.access_tokens = access_tokens

    def validate(self, req: Incoming) -> Reply | None:
        """Return the error answer for an invalid request, None if it is valid."""
        match = _PATH.fullmatch(req.path)
        if match is None:
            return google_error(404, "Method not found.")
        if req.method != "POST":
            return google_error(404, "Method not found.")
        problem = self._authenticate(req.header.get("authorization"), match.group(1))
        if problem:
            return problem
        try:
            document = req.document()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.")
        if not isinstance(document, dict) or not isinstance(document.get("message"), dict):
            return bad_request("message", "Request contains an invalid argument: message is required.")
        unknown = set(document) - {"message", "validate_only", "validateOnly"}
        if unknown:
            name = sorted(unknown)[0]
            return bad_request(name, f'Invalid JSON payload received. Unknown name "{name}": '
                                     "Cannot find field.")
        return self._check_message(document["message"])

    def deliver(self, req: Incoming) -> Reply:
        """Answer a valid request: the token's scripted fate, else 200."""
        project = _PATH.fullmatch(req.path).group(1)
        message = req.document()["message"]
        token = message.get("token")
        if token is not None:
            if token in self.tokens.dead:
                return fcm_error(404, "UNREGISTERED", "Requested entity was not found.")
            owner = self.tokens.projects.get(token)
            if owner is not None and owner != project:
                return fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch")
        return Reply.json(200, {"name": f"projects/{project}/messages/0:{secrets.token_hex(8)}"})

    def fault_reply(self, fault: Fault, req: Incoming) -> Reply:
        headers = tuple(fault.headers.items())
        if fault.status == 200:
            reply = self.deliver(req)
            return Reply(reply.status, reply.headers + headers, reply.body, reply.reason)
        code = fault.reason or DEFAULT_ERROR_CODE.get(fault.status, "INTERNAL")
        return fcm_error(fault.status, code, f"scripted {code}", headers)

    def _authenticate(self, authorization: str | None, project: str) -> Reply | None:
        scheme, _, token = (authorization or "").partition(" ")
        grant = self.access_tokens.lookup(token) if scheme.lower() == "bearer" else None
        if grant is None:
            expired = scheme.lower() == "bearer" and self.access_tokens.known(token)
            reason = "ACCESS_TOKEN_EXPIRED" if expired else "CREDENTIALS_MISSING"
            return google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                [{"@type": ERROR_INFO, "reason": reason, "domain": "googleapis.com"}],
                reason="UNAUTHENTICATED",
            )
        if grant.project_id != project:
            return google_error(
                403, f"Permission 'cloudmessaging.messages.create' denied on resource "
                     f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                     "(or it may not exist).")
        return None

    def _check_message(self, message: dict[str, Any]) -> Reply | None:
        unknown = set(message) - MESSAGE_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            return bad_request(f"message.{name}", f'Invalid JSON payload received. Unknown name '
                                                  f'"{name}" at \'message\': Cannot find field.')
        targets = [t for t in TARGETS if message.get(t) is not None]
        if len(targets) != 1:
            return bad_request("message", "Exactly one of token, topic or condition is required.")
        data = message.get("data")
        if data is not None:
            if not isinstance(data, dict):
                return bad_request("message.data", "Invalid value at 'message.data'")
            for index, value in enumerate(data.values()):
                if not isinstance(value, str):
                    field = f"message.data[{index}].value"
                    return bad_request(field, f"Invalid value at '{field}' (TYPE_STRING), "
                                              f"{json.dumps(value)}")
        android = message.get("android")
        if android is not None:
            problem = _check_android(android)
            if problem:
                return problem
        # FCM's 4096-byte limit is on the payload the device receives.
        size = len(json.dumps(data or {}, separators=(",", ":")).encode())
        if message.get("notification"):
            size += len(json.dumps(message["notification"], separators=(",", ":")).encode())
        if size > PAYLOAD_LIMIT:
            return bad_request("message", "Message is too big")
        token = message.get("token")
        if token is not None and (not isinstance(token, str) or not _FCM_TOKEN.fullmatch(token)
                                  or token in self.tokens.bad):
            return fcm_error(400, "INVALID_ARGUMENT", _INVALID_TOKEN)
        return None


def _check_android(android: Any) -> Reply | None:
    if not isinstance(android, dict):
        return bad_request("message.android", "Invalid value at 'message.android'")
    priority = android.get("priority")
    if priority is not None and str(priority).lower() not in ("normal", "high"):
        return bad_request("message.android.priority",
                           f"Invalid value at 'message.android.priority' "
                           f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
                           f"{json.dumps(priority)}")
    ttl = android.get("ttl")
    if ttl is not None:
        match = _TTL.fullmatch(ttl) if isinstance(ttl, str) else None
        if match is None or int(match.group(1)) > MAX_TTL:
            return bad_request("message.android.ttl",
                               f"Invalid value at 'message.android.ttl' (type.googleapis.com/"
                               f"google.protobuf.Duration), {json.dumps(ttl)}")
    return None
