"""The HTTP API v2 (Sylk Pushserver): device tokens stored per account.

Routes (``account`` is ``user@domain``):

- ``POST /v2/tokens/{account}``: store a device (app-id, device-id) -> token.
- ``DELETE /v2/tokens/{account}``: forget one device, or every device of an app.
- ``POST /v2/tokens/{account}/push[/{device}]``: push to every stored device
  of the account (or one), concurrently; dead tokens are removed afterwards.

Answers keep the original's bodies: adding echoes the record with the
hyphenated keys, removing answers ``{"result": ...}`` on 404, pushing answers
``{"code", "description": "push notification responses", "data": [...]}``.
Errors (validation, storage down) use the Sylk ``{code, description, data}``
shape.
"""

from __future__ import annotations

import re
from typing import Any
from collections.abc import Mapping

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import fanout
from ..admission import check_text, parse_json_fields, request_from_json, require, resolve_application
from ..model import PushValidationError, canonical_platform
from ..runtime_api import IngressRuntime
from ..store.base import DeviceRecord
from .answers import client_peer, json_response, outcome_data, read_json_body, sylk_response
from .api_docs import ERROR_RESPONSES, AddTokenDoc, PushV2Doc, RemoveTokenDoc, SylkAnswer, request_body_doc

_URN_UUID_PREFIX = "<urn:uuid:"


def normalize_device_id(device_id: str) -> str:
    """Strip a literal ``<urn:uuid:...>`` wrapper (SIP instance ids), nothing else.

    The original stripped those characters as a *set* from both ends, which
    cut ids ending in ``d``, ``i``, ``n``, ``r`` or ``u``.
    """
    if (
        len(device_id) > len(_URN_UUID_PREFIX)
        and device_id[: len(_URN_UUID_PREFIX)].lower() == _URN_UUID_PREFIX
        and device_id.endswith(">")
    ):
        return device_id[len(_URN_UUID_PREFIX) : -1]
    return device_id


def split_apple_token(token: str) -> tuple[str, str | None]:
    """``<voip>-<regular>`` -> (voip, regular); a token without ``-`` -> (token, None)."""
    voip, sep, regular = token.partition("-")
    if sep and voip and regular:
        return voip, regular
    return token, None


# RFC 3261 section 25.1: user = 1*( unreserved / escaped / user-unreserved ),
# host = hostname / IPv4address / IPv6reference (no port in an account).
_SIP_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_SIP_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
ACCOUNT_MAX_LENGTH = 512


def check_account(account: str) -> str:
    """``user@domain`` with both parts present, in RFC 3261's characters.

    Raises:
        PushValidationError: 400 naming what is wrong.
    """
    check_text("account", account)
    if len(account) > ACCOUNT_MAX_LENGTH:
        raise PushValidationError(f"Invalid account: longer than {ACCOUNT_MAX_LENGTH} characters", 400)
    user, at, domain = account.rpartition("@")
    shown = account if account.isprintable() else repr(account)
    if not at or not user or not domain:
        raise PushValidationError(f"Invalid account '{shown}': expected user@domain", 400)
    if not _SIP_USER.fullmatch(user):
        raise PushValidationError(
            f"Invalid account '{shown}': the user part has characters a SIP URI does not allow", 400)
    if not _SIP_HOST.fullmatch(domain):
        raise PushValidationError(f"Invalid account '{shown}': the domain is not a host name or address", 400)
    return account


def require_keys(fields: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse a token request missing one of ``keys`` (400 naming the first)."""
    for key in keys:
        if fields.get(key) is None:
            raise PushValidationError(f"Field '{key}' required", 400)


# -- routes ------------------------------------------------------------------------------------


def create_v2_router(runtime: IngressRuntime) -> APIRouter:
    """The ``/v2/tokens`` routes, bound to ``runtime``."""
    router = APIRouter(prefix="/v2/tokens", tags=["v2"])

    @router.post(
        "/{account}",
        summary="Store a device token",
        responses=ERROR_RESPONSES,
        openapi_extra=request_body_doc(AddTokenDoc),
    )
    async def add_token(account: str, request: Request) -> Response:
        check_account(account)
        fields = parse_json_fields(await read_json_body(request))
        require_keys(fields, ("app-id", "platform", "token", "device-id"))
        platform, _, _ = resolve_application(fields["platform"], fields["app-id"], runtime.settings,
                                             runtime.app_types)
        device_id = normalize_device_id(fields["device-id"])
        token, background = fields["token"], None
        if platform == "apple":
            token, background = split_apple_token(token)
        silent = fields.get("silent", True)
        record = DeviceRecord(
            account=account,
            app_id=fields["app-id"],
            device_id=device_id,
            platform=platform,
            device_token=token,
            background_token=background,
            silent=silent,
            user_agent=fields.get("user-agent"),
        )
        await runtime.store.add(record)
        return json_response(
            {
                "app-id": record.app_id,
                "platform": fields["platform"],
                "token": fields["token"],
                "device-id": device_id,
                "silent": silent,
                "user-agent": record.user_agent,
            }
        )

    @router.delete(
        "/{account}",
        summary="Remove a device token",
        responses=ERROR_RESPONSES,
        openapi_extra=request_body_doc(RemoveTokenDoc),
    )
    async def remove_token(account: str, request: Request) -> Response:
        check_account(account)
        fields = parse_json_fields(await read_json_body(request))
        require_keys(fields, ("app-id",))
        device_id = fields.get("device-id")
        if device_id is not None:
            device_id = normalize_device_id(device_id)
        if not await runtime.store.devices(account):
            return json_response({"result": "User not found"}, status=404)
        if not await runtime.store.remove(account, fields["app-id"], device_id):
            return json_response({"result": "Not found"}, status=404)
        return json_response({"app-id": fields["app-id"], "device-id": device_id})

    push_doc: dict[str, Any] = {
        "summary": "Push to an account's devices",
        "response_model": SylkAnswer,
        "responses": ERROR_RESPONSES,
        "openapi_extra": request_body_doc(PushV2Doc),
    }

    @router.post("/{account}/push", **push_doc)
    async def push_account(account: str, request: Request) -> Response:
        return await push_to_devices(runtime, account, None, request)

    @router.post("/{account}/push/{device}", **push_doc)
    async def push_device(account: str, device: str, request: Request) -> Response:
        check_text("device-id", device)
        return await push_to_devices(runtime, account, normalize_device_id(device), request)

    return router


async def push_to_devices(
    runtime: IngressRuntime, account: str, device_id: str | None, request: Request
) -> Response:
    """Send one push per stored device, concurrently; remove dead tokens afterwards."""
    check_account(account)
    push_request = request_from_json(await read_json_body(request))
    require(push_request, ("call-id", "from", "to"))
    devices = await runtime.store.devices(account)
    if device_id is not None:
        devices = [d for d in devices if d.device_id == device_id]
    if not devices:
        what = "user" if device_id is None else "device"
        return sylk_response(404, f"Push request was not sent: {what} not found")

    results = await fanout.push_to_devices(runtime, account, devices, push_request, source="http-v2",
                                           peer=client_peer(request.scope))
    data = []
    for result in results:
        device = result.device
        if result.push is None or result.outcome is None:
            assert result.error is not None
            data.append(device_result(
                device, call_id=push_request.call_id or "", code=result.error.status, reason=result.error.message
            ))
            continue
        entry = outcome_data(result.push, result.outcome)
        entry.update(device_id=device.device_id, app_id=device.app_id, token_removed=result.token_removed)
        if result.token_remove_error is not None:
            entry["token_remove_error"] = result.token_remove_error
        data.append(entry)
    return sylk_response(overall_code(data), "push notification responses", data)


def device_result(
    device: DeviceRecord, *, call_id: str, code: int, reason: str
) -> dict[str, Any]:
    """A per-device entry for a push that could not even be built."""
    return {
        "code": code,
        "reason": reason,
        "url": "",
        "platform": canonical_platform(device.platform),
        "call_id": call_id,
        "token": device.device_token,
        "body": {},
        "device_id": device.device_id,
        "app_id": device.app_id,
        "token_removed": False,
    }


def overall_code(results: list[dict[str, Any]]) -> int:
    """200 when any device got its push; otherwise the first device's code.

    A code that is not an HTTP status (0: no answer at all) becomes 502.
    """
    if any(entry["code"] == 200 for entry in results):
        return 200
    code = int(results[0]["code"]) if results else 404
    return code if 100 <= code <= 599 else 502
