"""Answers shared by the HTTP/2 push services (APNs, FCM): pure functions."""

from __future__ import annotations

import email.utils

from .base import SendResult, Verdict
from .http2 import (
    ConnectionLost,
    Http2Error,
    InvalidRequest,
    NoAnswerInTime,
    NoResponseAfterGoaway,
    NotSentInTime,
    RemoteProtocolError,
)


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
