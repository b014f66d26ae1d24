"""The APNs push service: one HTTP/2 endpoint per application, one attempt per send.

The app type builds the headers (apns-topic, apns-push-type, apns-priority,
apns-expiration...) and the JSON payload; this module adds authentication
(a shared ES256 JWT, or the TLS client certificate), sends
``POST /3/device/<token>`` and classifies the answer with pure tables, so the
dispatcher only sees a :class:`~sidecar.pns.base.SendResult`.

Every request carries an ``apns-id`` derived from the push (:func:`apns_id_for`),
unless the app type set one.

Re-sends that cannot ring a phone twice (streams above a GOAWAY's
``last_stream_id``, refused streams) happen inside the HTTP/2 endpoint.  A
stream APNs may have processed before going away without answering is
reported REJECTED (reason ``NoResponseAfterGoaway``) so it is never resent.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Any
from collections.abc import Callable, Mapping
from urllib.parse import quote

import trio

from ..config import AppConfig
from ..model import Push
from .apns_auth import ApnsJwtProvider, ApnsTokenCache
from ._answers import decode_body, post, retry_after
from .base import Notification, PushService, PushServiceConfigError, SendResult, Verdict
from .http2 import Connector, Http2Endpoint, Response, open_http2_connection
from .tls import client_ssl_context

logger = logging.getLogger("sidecar.pns.apns")
hpack_logger = logging.getLogger("sidecar.pns.apns.hpack")

CONNECT_TIMEOUT = 10.0
PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120

# (status, reason) answers whose meaning is not the status class's.
REASON_VERDICTS: Mapping[tuple[int, str], Verdict] = {
    (400, "BadDeviceToken"): Verdict.TOKEN_DEAD,  # often a sandbox token sent to production
    (403, "ExpiredProviderToken"): Verdict.RETRY,  # after renewing our JWT
    (403, "InvalidProviderToken"): Verdict.RETRY,  # idem
}
STATUS_VERDICTS: Mapping[int, Verdict] = {
    200: Verdict.DELIVERED,
    410: Verdict.TOKEN_DEAD,  # Unregistered, ExpiredToken
    429: Verdict.RETRY,  # TooManyRequests, TooManyProviderTokenUpdates
}
# Built once: json.dumps() with non-default arguments builds an encoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: 403 reasons that mean our JWT was refused: renew it before the next attempt
JWT_REJECTED = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


def classify_apns(status: int, reason: str) -> Verdict:
    """The verdict for one APNs answer (pure; see the tables above)."""
    verdict = REASON_VERDICTS.get((status, reason)) or STATUS_VERDICTS.get(status)
    if verdict is not None:
        return verdict
    return Verdict.RETRY if status >= 500 else Verdict.REJECTED


def apns_result(response: Response, url: str, now: float) -> SendResult:
    """Turn an APNs response into a SendResult (pure)."""
    status = response.status
    if status == 200:
        return SendResult(Verdict.DELIVERED, 200, "OK", url, body={"apns-id": response.headers.get("apns-id", "")})
    body = decode_body(response)
    reason = str(body.get("reason", "")) if body else ""
    verdict = classify_apns(status, reason)
    return SendResult(verdict, status, reason, url, retry_after=retry_after(response, verdict, now), body=body)


# Fixed namespace of our derived apns-ids (a random UUID chosen once).
_APNS_ID_NAMESPACE = uuid.UUID("5b0c6a2e-8f4d-4c1e-9a57-2f1d3e8b6c90")


def apns_id_for(push: Push) -> str:
    """The ``apns-id`` of ``push``: a UUID derived from (call-id, event, token), pure.

    The same push sent twice (a resend after a cut connection, a proxy that
    sent it twice) carries the same id, so a duplicate can be recognised in
    our logs, in Apple's delivery logs and by an app that reads the id.
    """
    name = "\x00".join((push.call_id, push.event.value, push.token))
    return str(uuid.uuid5(_APNS_ID_NAMESPACE, name))


def payload_limit(headers: Mapping[str, str]) -> int:
    return VOIP_PAYLOAD_LIMIT if headers.get("apns-push-type") == "voip" else PAYLOAD_LIMIT


class ApnsService(PushService):
    """Sends an application's pushes to APNs over one persistent HTTP/2 connection.

    Args:
        app: the application's configuration (apple_host/apple_port; token
            auth with apple_key .p8 + key_id + team_id, or certificate auth
            with apple_certificate [+ apple_key]; tls_ca_file).
        nursery: where the connection's background tasks run.
        token_cache: the process-wide JWT cache (token auth).
        debug_hpack: log request and response headers at DEBUG
            (without the authorization header).
        connector: test seam: opens connections instead of TLS to
            apple_host:apple_port.
        sandbox_connector: the same for apple_sandbox_host:apple_sandbox_port,
            where pushes with ``push.sandbox`` (development builds) go.
        wall_clock: UNIX time, for Retry-After dates.

    Raises:
        PushServiceConfigError: missing or unusable credentials or CA file;
            the message names the file.
    """

    platform = "apple"

    def __init__(
        self,
        app: AppConfig,
        nursery: trio.Nursery,
        *,
        token_cache: ApnsTokenCache,
        debug_hpack: bool = False,
        connector: Connector | None = None,
        sandbox_connector: Connector | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._app = app
        self._debug_hpack = debug_hpack
        self._wall_clock = wall_clock
        self._jwt: ApnsJwtProvider | None = None
        where = f"[{app.section}]"
        if app.apple_token_auth:
            if not app.key_id or not app.team_id:
                raise PushServiceConfigError(f"{where} APNs token auth ({app.apple_key}) needs key_id and team_id")
            assert app.apple_key is not None
            self._jwt = token_cache.provider(app.team_id, app.key_id, app.apple_key)
            context = client_ssl_context(ca_file=app.tls_ca_file)
        elif app.apple_certificate is not None:
            context = client_ssl_context(
                ca_file=app.tls_ca_file, cert_file=app.apple_certificate, key_file=app.apple_key
            )
        else:
            raise PushServiceConfigError(f"{where} APNs needs apple_certificate or apple_key (.p8)")
        self._nursery = nursery
        self._context = context
        self._endpoint, self._url_prefix = self._open_endpoint(app.apple_host, app.apple_port, connector)
        # Development builds (pn-provider=apns.dev) are served by Apple's sandbox:
        # its connection is opened on the first such push only.
        self._sandbox: tuple[Http2Endpoint, str] | None = None
        self._sandbox_connector = sandbox_connector

    def _open_endpoint(self, host: str, port: int, connector: Connector | None) -> tuple[Http2Endpoint, str]:
        if connector is None:
            connector = functools.partial(
                open_http2_connection, host, port, self._context, connect_timeout=CONNECT_TIMEOUT
            )
        endpoint = Http2Endpoint(connector, self._nursery, name=f"apns {self._app.app_id} {host}:{port}")
        return endpoint, f"https://{host}:{port}/3/device/"

    def _endpoint_for(self, push: Push) -> tuple[Http2Endpoint, str]:
        if not push.sandbox:
            return self._endpoint, self._url_prefix
        if self._sandbox is None:
            app = self._app
            self._sandbox = self._open_endpoint(app.apple_sandbox_host, app.apple_sandbox_port,
                                                self._sandbox_connector)
        return self._sandbox

    async def send(self, push: Push, notification: Notification) -> SendResult:
        """One attempt; never raises except Cancelled.  See the module docstring."""
        endpoint, url_prefix = self._endpoint_for(push)
        token = quote(push.token, safe="")
        path = "/3/device/" + token
        url = url_prefix + token
        try:
            body = _encode_json(notification.payload).encode()
        except (TypeError, ValueError) as exc:
            return SendResult(Verdict.REJECTED, 0, f"payload is not JSON: {exc}", url)
        if len(body) > payload_limit(notification.headers):
            return SendResult(Verdict.REJECTED, 413, "PayloadTooLarge", url)
        headers = list(notification.headers.items())
        if "apns-id" not in notification.headers:
            headers.append(("apns-id", apns_id_for(push)))
        if self._debug_hpack:
            hpack_logger.debug("%s request %s headers %s", push.request_id, path, headers)
        jwt = ""
        if self._jwt is not None:
            jwt = self._jwt.token()
            headers.append(("authorization", "bearer " + jwt))
        response = await post(endpoint, push, path, url, headers, body, service="APNs", logger=logger,
                              hpack_logger=hpack_logger if self._debug_hpack else None)
        if isinstance(response, SendResult):
            return response
        result = apns_result(response, url, self._wall_clock())
        if self._jwt is not None and result.status == 403 and result.reason in JWT_REJECTED:
            self._jwt.invalidate(jwt)
        return result

    async def aclose(self) -> None:
        await self._endpoint.aclose()
        if self._sandbox is not None:
            await self._sandbox[0].aclose()

    def statistics(self) -> Mapping[str, Any]:
        stats = {"platform": self.platform, "app_id": self._app.app_id, **self._endpoint.statistics()}
        if self._jwt is not None:  # shared by every service with the same team and key
            stats["jwt_renewals"] = self._jwt.renewals
        return stats


def create_apns_service(
    app: AppConfig, nursery: trio.Nursery, *, token_cache: ApnsTokenCache, debug_hpack: bool = False
) -> ApnsService:
    """Factory for the service registry (same arguments as :class:`ApnsService`)."""
    return ApnsService(app, nursery, token_cache=token_cache, debug_hpack=debug_hpack)
