"""The FCM HTTP v1 push service: one HTTP/2 endpoint per application, one attempt per send.

The app type builds the whole ``{"message": {...}}`` body (with the token);
this module adds the OAuth2 bearer token (shared per service account, see
:mod:`.fcm_auth`), sends ``POST /v1/projects/<project>/messages:send`` over
our persistent HTTP/2 connection (at most ``FCM_MAX_STREAMS`` concurrent
streams, FCM's observed limit) and classifies the answer with a pure
function, so the dispatcher only sees a :class:`~sidecar.pns.base.SendResult`.

Google's error document is ``{"error": {"code", "message", "status",
"details"}}``; the FCM reason is the ``errorCode`` of a ``FcmError`` detail.
The one judgement call is 400 INVALID_ARGUMENT, which means a bad token OR a
bad payload: the token is dead only when the message names the registration
token or no ``google.rpc.BadRequest`` detail blames a payload field (purging a
good token because of our own payload bug would be worse than one more failed
push to a dead one).

An answer refusing our credentials (401, or 403 other than
SENDER_ID_MISMATCH) invalidates the access token and the push is resent ONCE
with a fresh one inside the same :meth:`FcmService.send`: an expired or
revoked token is our problem, not the push's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import trio

from ..config import AppConfig
from ..model import Push
from ._answers import decode_body, post, retry_after
from .base import Notification, PushService, PushServiceConfigError, SendResult, Verdict
from .fcm_auth import OAuthError, OAuthTokenCache, OAuthTokenProvider
from .http2 import Connector, Http2Endpoint, Response, open_http2_connection
from .tls import client_ssl_context

logger = logging.getLogger("sidecar.pns.fcm")
hpack_logger = logging.getLogger("sidecar.pns.fcm.hpack")

FCM_HOST = "fcm.googleapis.com"
CONNECT_TIMEOUT = 10.0
FCM_MAX_STREAMS = 100  # observed per-connection limit; stay within it even if SETTINGS say more
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"

#: FCM errorCodes that condemn the token whatever else the answer says
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
#: errorCodes / statuses that say our credentials were refused
AUTH_CODES = frozenset({"UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR", "PERMISSION_DENIED"})
STATUS_VERDICTS: Mapping[int, Verdict] = {
    200: Verdict.DELIVERED,
    429: Verdict.RETRY,  # QUOTA_EXCEEDED (Google asks for >= 60 s)
}


@dataclasses.dataclass(frozen=True, slots=True)
class FcmVerdict:
    """The classification of one FCM answer.

    ``auth_error``: FCM refused our credentials; renew the access token and
    resend once before believing ``verdict``.
    """

    verdict: Verdict
    reason: str
    auth_error: bool = False


def google_error(body: Any) -> dict[str, Any]:
    """The ``error`` object of a Google error document, or {} (pure)."""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: Mapping[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def fcm_error_code(error: Mapping[str, Any]) -> str:
    """The FcmError ``errorCode`` of an error object, else its ``status`` (pure)."""
    for detail in _details(error):
        code = detail.get("errorCode")
        if detail.get("@type") == FCM_ERROR and isinstance(code, str):
            return code
    status = error.get("status")
    return status if isinstance(status, str) else ""


def is_token_problem(error: Mapping[str, Any]) -> bool:
    """Whether a 400 INVALID_ARGUMENT is about the token rather than the payload (pure)."""
    message = str(error.get("message", ""))
    if "registration token" in message.lower():
        return True
    for detail in _details(error):
        if detail.get("@type") != BAD_REQUEST:
            continue
        for violation in detail.get("fieldViolations") or ():
            field = str(violation.get("field", "")) if isinstance(violation, dict) else ""
            if field not in ("message.token", "token"):
                return False  # a payload field is to blame
    # "Invalid JSON payload received." (no details) is our bug, not the token's.
    return not message.lower().startswith("invalid json payload")


def classify_fcm(status: int, body: Any) -> FcmVerdict:
    """The verdict for one FCM answer (pure).

    Args:
        status: the HTTP status.
        body: the decoded JSON body (anything; Google's error document on errors).
    """
    if status == 200:
        return FcmVerdict(Verdict.DELIVERED, "OK")
    error = google_error(body)
    code = fcm_error_code(error)
    message = str(error.get("message", ""))[:300]
    reason = code or f"HTTP {status}"
    if code in DEAD_TOKEN_CODES:
        return FcmVerdict(Verdict.TOKEN_DEAD, code)
    if status in (401, 403) or code in AUTH_CODES:
        return FcmVerdict(Verdict.REJECTED, f"{reason}: {message}" if message else reason, auth_error=True)
    if status == 400 and code in ("INVALID_ARGUMENT", ""):
        if is_token_problem(error):
            return FcmVerdict(Verdict.TOKEN_DEAD, "INVALID_ARGUMENT")
        return FcmVerdict(Verdict.REJECTED, f"{reason}: {message}" if message else reason)
    verdict = STATUS_VERDICTS.get(status) or (Verdict.RETRY if status >= 500 else Verdict.REJECTED)
    if verdict is Verdict.REJECTED and message:
        reason = f"{reason}: {message}"
    return FcmVerdict(verdict, reason)


def fcm_result(response: Response, url: str, now: float) -> tuple[SendResult, bool]:
    """Turn an FCM response into a SendResult and its auth_error flag (pure).

    ``now`` is wall-clock UNIX time, for Retry-After dates.
    """
    body = decode_body(response)
    judged = classify_fcm(response.status, body)
    result = SendResult(judged.verdict, response.status, judged.reason, url,
                        retry_after=retry_after(response, judged.verdict, now), body=body)
    return result, judged.auth_error


def send_url(app: AppConfig, project_id: str | None) -> str:
    """The messages:send URL: firebase_push_url, else Google's for the project.

    Raises:
        PushServiceConfigError: no URL can be made, or it is not https.
    """
    if app.firebase_push_url:
        url = app.firebase_push_url.strip()
    elif project_id:
        url = f"https://{FCM_HOST}/v1/projects/{project_id}/messages:send"
    else:
        raise PushServiceConfigError(
            f"[{app.section}] the service account {app.firebase_authorization_file} has no "
            "project_id; add it or set firebase_push_url"
        )
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise PushServiceConfigError(f"[{app.section}] firebase_push_url {url!r} is not an https URL")
    try:
        _ = parts.port  # raises for a port that is not a number
    except ValueError:
        raise PushServiceConfigError(f"[{app.section}] firebase_push_url {url!r} has a bad port") from None
    return url


class FcmService(PushService):
    """Sends an application's pushes to FCM HTTP v1 over one persistent HTTP/2 connection.

    Args:
        app: the application's configuration (firebase_authorization_file,
            optional firebase_push_url, tls_ca_file for both the token
            endpoint and the FCM host).
        nursery: where the connection's background tasks run.
        oauth_cache: the process-wide access-token cache.
        debug_hpack: log request and response headers at DEBUG (without
            the authorization header).
        connector: test seam: opens connections instead of TLS to the URL's host.
        wall_clock: UNIX time, for Retry-After dates.

    Raises:
        PushServiceConfigError: missing or unusable service-account file, CA
            file or URL; the message names the file.
    """

    platform = "firebase"

    def __init__(
        self,
        app: AppConfig,
        nursery: trio.Nursery,
        *,
        oauth_cache: OAuthTokenCache,
        debug_hpack: bool = False,
        connector: Connector | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._app = app
        self._debug_hpack = debug_hpack
        self._wall_clock = wall_clock
        if app.firebase_authorization_file is None:
            raise PushServiceConfigError(
                f"[{app.section}] FCM needs firebase_authorization_file (service-account JSON)"
            )
        self._oauth: OAuthTokenProvider = oauth_cache.provider(
            app.firebase_authorization_file, ca_file=app.tls_ca_file
        )
        account = self._oauth.account
        self._url = send_url(app, account.project_id if account else None)
        parts = urlsplit(self._url)
        host, port = parts.hostname or "", parts.port or 443
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        if connector is None:
            context = client_ssl_context(ca_file=app.tls_ca_file)
            connector = functools.partial(
                open_http2_connection, host, port, context,
                connect_timeout=CONNECT_TIMEOUT, max_streams=FCM_MAX_STREAMS,
            )
        self._endpoint = Http2Endpoint(connector, nursery, name=f"fcm {app.app_id} {host}:{port}")
        self.auth_retries = 0

    async def send(self, push: Push, notification: Notification) -> SendResult:
        """One attempt (plus one resend after a refused access token); never raises except Cancelled."""
        url = self._url
        try:
            body = json.dumps(_with_token(notification.payload, push.token), separators=(",", ":"),
                              ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            return SendResult(Verdict.REJECTED, 0, f"payload is not JSON: {exc}", url)
        try:
            access = await self._oauth.token()
        except OAuthError as exc:
            return SendResult(Verdict.RETRY, 0, f"OAuth token unavailable: {exc}", url)
        result, auth_error = await self._post(push, access, body, notification.headers)
        if not auth_error:
            return result
        # FCM refused our access token: renew it and resend once.
        if self._oauth.invalidate(access):
            try:
                fresh = await self._oauth.token()
            except OAuthError as exc:
                return SendResult(Verdict.RETRY, 0, f"OAuth token unavailable after {result.reason}: {exc}", url)
            if fresh != access:
                self.auth_retries += 1
                result, auth_error = await self._post(push, fresh, body, notification.headers)
                if not auth_error:
                    return result
        logger.error(
            "%s: FCM refused the credentials of application [%s] %s (service account %s): %s",
            push.request_id, self._app.section, self._app.app_id, self._app.firebase_authorization_file,
            result.reason,
        )
        return dataclasses.replace(result, verdict=Verdict.REJECTED,
                                   reason=f"FCM refused our credentials: {result.reason}")

    async def _post(
        self, push: Push, access: str, body: bytes, extra: Mapping[str, str]
    ) -> tuple[SendResult, bool]:
        headers = [(k.lower(), v) for k, v in extra.items() if k.lower() not in ("authorization", "content-type")]
        headers.append(("content-type", "application/json"))
        if self._debug_hpack:
            hpack_logger.debug("%s request %s headers %s", push.request_id, self._path, headers)
        headers.append(("authorization", "Bearer " + access))
        response = await post(self._endpoint, push, self._path, self._url, headers, body, service="FCM",
                              logger=logger, hpack_logger=hpack_logger if self._debug_hpack else None)
        if isinstance(response, SendResult):
            return response, False
        return fcm_result(response, self._url, self._wall_clock())

    async def aclose(self) -> None:
        await self._endpoint.aclose()

    def statistics(self) -> Mapping[str, Any]:
        return {
            "platform": self.platform,
            "app_id": self._app.app_id,
            **self._endpoint.statistics(),
            "oauth_fetches": self._oauth.fetches,
            "auth_retries": self.auth_retries,
        }


def _with_token(payload: Mapping[str, Any], token: str) -> Mapping[str, Any]:
    """The payload, with ``message.token`` filled in when the app type left no target."""
    message = payload.get("message")
    if isinstance(message, dict) and not any(message.get(t) for t in ("token", "topic", "condition")):
        return {**payload, "message": {**message, "token": token}}
    return payload


def create_fcm_service(
    app: AppConfig,
    nursery: trio.Nursery,
    *,
    oauth_cache: OAuthTokenCache | None = None,
    debug_hpack: bool = False,
) -> FcmService:
    """Factory for the service registry (same arguments as :class:`FcmService`).

    Pass the process-wide ``oauth_cache``; without one, this service gets its
    own (correct, but applications sharing a service account then fetch one
    token each).
    """
    return FcmService(app, nursery, oauth_cache=oauth_cache or OAuthTokenCache(), debug_hpack=debug_hpack)
