"""What the HTTP/2 push services (APNs, FCM) share: one POST, and reading its answer."""

from __future__ import annotations

import email.utils
import json
import logging
from typing import Any

from ..model import Push
from .base import SendResult, Verdict
from .http2 import ConnectionLost, Header, Http2Endpoint, Http2Error, InvalidRequest, NoAnswerInTime
from .http2 import NoResponseAfterGoaway, NotSentInTime, RemoteProtocolError, Response


async def post(
    endpoint: Http2Endpoint, push: Push, path: str, url: str, headers: list[Header], body: bytes, *,
    service: str, logger: logging.Logger, hpack_logger: logging.Logger | None,
) -> Response | SendResult:
    """POST ``body`` to ``path`` before the push's deadline.

    Returns the answer, or the SendResult of a request that got none: never
    raises but Cancelled (a bug is logged to ``logger`` and reported
    REJECTED).  ``hpack_logger``: where to log the answer's headers (debug_hpack).
    """
    try:
        response = await endpoint.request("POST", path, headers, body, send_by=push.deadline)
    except Http2Error as exc:
        return failure_result(exc, url)
    except Exception as exc:  # a bug: report it, but keep the no-raise contract
        logger.exception("%s: unexpected error sending to %s", push.request_id, service)
        return SendResult(Verdict.REJECTED, 0, f"internal error: {exc!r}", url)
    if hpack_logger is not None:
        hpack_logger.debug("%s response %s headers %s", push.request_id, path, response.headers)
    return response


def decode_body(response: Response) -> dict[str, Any] | None:
    """An answer's JSON body as a dict (pure): None when empty; text that is
    not JSON as ``{"text": ...}``, other JSON values as ``{"value": ...}``."""
    if not response.body:
        return None
    try:
        decoded = json.loads(response.body)
    except ValueError:
        decoded = {"text": response.body[:200].decode("utf-8", "replace")}
    return decoded if isinstance(decoded, dict) else {"value": decoded}


def retry_after(response: Response, verdict: Verdict, now: float) -> float | None:
    """Seconds the service asked us to wait, for an answer to retry (pure)."""
    return parse_retry_after(response.headers.get("retry-after"), now) if verdict is Verdict.RETRY else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date).

    ``now`` is wall-clock UNIX time.  Returns None when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def failure_result(exc: Http2Error, url: str) -> SendResult:
    """The SendResult of a request that got no answer (pure)."""
    if isinstance(exc, NoResponseAfterGoaway):
        # The service processed it or may have: resending could ring the phone twice.
        return SendResult(Verdict.REJECTED, 0, f"NoResponseAfterGoaway: {exc}", url)
    if isinstance(exc, InvalidRequest):
        return SendResult(Verdict.REJECTED, 0, f"InvalidRequest: {exc}", url)
    if isinstance(exc, NotSentInTime):
        return SendResult(Verdict.EXPIRED, 0, f"NotSentInTime: {exc}", url)
    # Sent, and no answer could be read: maybe delivered.
    unknown = isinstance(exc, (ConnectionLost, RemoteProtocolError, NoAnswerInTime))
    return SendResult(Verdict.RETRY, 0, f"{type(exc).__name__}: {exc}", url, fate_unknown=unknown)
