"""The Sylk answer shape and the JSON helpers every HTTP door shares.

Every answer of the HTTP API, errors included, is
``{"code": int, "description": str, "data": object}``.  Below the routes
(v1, v2), the middlewares and the fast HTTP server, which all use it.
"""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from ..model import Outcome, Push, PushValidationError
from .access import Scope, Send


def sylk_response(
    code: int,
    description: str,
    data: Any = None,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON answer ``{"code", "description", "data"}`` (HTTP status = ``code`` by default)."""
    return Response(
        sylk_json(code, description, data),
        status_code=code if status is None else status,
        headers=headers,
        media_type="application/json",
    )


def json_response(
    content: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer of any shape (the v2 token routes keep the original's bodies)."""
    return Response(
        encode_json(content), status_code=status, headers=headers, media_type="application/json"
    )


def sylk_json(code: int, description: str, data: Any = None) -> bytes:
    """The encoded Sylk answer ``{"code", "description", "data"}``."""
    return encode_json(
        {"code": code, "description": description, "data": {} if data is None else data}
    )


# One encoder for every answer: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_json(content: Any) -> bytes:
    return _ENCODER.encode(content).encode()


async def read_json_body(request: Request) -> Any:
    """The decoded JSON body of ``request`` (see :func:`decode_json`)."""
    return decode_json(await request.body())


def decode_json(raw: bytes) -> Any:
    """Decode a request body.

    Raises:
        PushValidationError: 400 for an empty or malformed body.
    """
    if not raw.strip():
        raise PushValidationError("Request body is empty; a JSON object is expected", 400)
    try:
        return json.loads(raw)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting recurses.
    except (ValueError, RecursionError) as exc:
        raise PushValidationError(f"Request body is not valid JSON: {exc}", 400) from exc


def outcome_data(push: Push, outcome: Outcome) -> dict[str, Any]:
    """The ``data`` of a push answer (Sylk's keys)."""
    return {
        "code": outcome.code,
        "reason": outcome.reason,
        "url": outcome.url,
        "platform": push.platform,
        "call_id": push.call_id,
        "token": push.token,
        "body": dict(outcome.body) if outcome.body else {},
    }


def push_answer_json(status: int, push: Push, outcome: Outcome) -> bytes:
    """``sylk_json(status, "push notification response", outcome_data(push, outcome))``.

    The same bytes, written out for the usual value types (one answer per
    push); anything else goes through the encoder.
    """
    code, reason, url = outcome.code, outcome.reason, outcome.url
    platform, call_id, token = push.platform, push.call_id, push.token
    if not (status.__class__ is int and code.__class__ is int
            and (reason is None or reason.__class__ is str)
            and (url is None or url.__class__ is str)
            and platform.__class__ is str and call_id.__class__ is str
            and token.__class__ is str):
        return sylk_json(status, "push notification response", outcome_data(push, outcome))
    quote = _quote
    body = outcome.body
    return (
        f'{{"code":{status},"description":"push notification response","data":{{'
        f'"code":{code},"reason":{"null" if reason is None else quote(reason)},'
        f'"url":{"null" if url is None else quote(url)},"platform":{quote(platform)},'
        f'"call_id":{quote(call_id)},"token":{quote(token)},'
        f'"body":{_ENCODER.encode(dict(body)) if body else "{}"}}}}}'
    ).encode()


# What the encoder writes for a str (ensure_ascii=False).
_quote = json.encoder.encode_basestring


async def send_json(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    """Send a complete JSON response through a raw ASGI ``send``."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_peer(scope: Scope) -> str | None:
    """``host:port`` (``[v6]:port``) of the HTTP client, for the log lines."""
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
