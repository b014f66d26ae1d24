"""Account pushes: one push per stored device, sent concurrently.

Shared by the v2 HTTP API (``/v2/tokens/{account}/push``) and the ZeroMQ
account form.  A device whose outcome is a dead token is removed from the
store after the pushes are done.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Protocol

import trio

from .apps.base import AppType
from .config import AppConfig, Settings
from .ingress.fields import build_push
from .model import Outcome, OutcomeKind, Push, PushValidationError
from .store.base import DeviceRecord, StoreUnavailable, TokenStore

# Events for which a stored background token (apple `voip-regular`) is used.
BACKGROUND_TOKEN_EVENTS = frozenset({"cancel", "message"})


class FanoutRuntime(Protocol):
    settings: Settings
    app_types: Mapping[str, AppType]
    store: TokenStore

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome: ...


@dataclasses.dataclass(slots=True)
class DeviceResult:
    """What happened for one device of the account."""

    device: DeviceRecord
    push: Push | None = None  # None: the push could not even be built
    outcome: Outcome | None = None
    error: PushValidationError | None = None
    token_removed: bool = False
    token_remove_error: str | None = None


def device_fields(fields: Mapping[str, Any], device: DeviceRecord) -> dict[str, Any]:
    """The request fields completed by (and overridden with) the stored device."""
    merged = dict(fields)
    use_background = fields.get("event") in BACKGROUND_TOKEN_EVENTS and device.background_token
    merged.update(
        {
            "app-id": device.app_id,
            "platform": device.platform,
            "token": device.background_token if use_background else device.device_token,
            "silent": device.silent,
            "device-id": device.device_id,
        }
    )
    return merged


async def push_to_devices(
    runtime: FanoutRuntime,
    account: str,
    devices: list[DeviceRecord],
    fields: Mapping[str, Any],
    *,
    source: str,
    ttl: float | None = None,
    peer: str | None = None,
) -> list[DeviceResult]:
    """Send ``fields`` to every device in ``devices`` at once; purge dead tokens."""
    settings = runtime.settings
    now, wall_now = trio.current_time(), time.time()
    results = [DeviceResult(device) for device in devices]
    planned: list[tuple[DeviceResult, AppConfig, AppType]] = []
    for result in results:
        try:
            push, app, app_type = build_push(
                device_fields(fields, result.device), settings=settings,
                app_types=runtime.app_types, source=source, now=now, wall_now=wall_now, ttl=ttl,
                peer=peer,
            )
        except PushValidationError as exc:
            result.error = exc
        else:
            result.push = push
            planned.append((result, app, app_type))

    async def send_one(result: DeviceResult, app: AppConfig, app_type: AppType) -> None:
        assert result.push is not None
        result.outcome = await runtime.dispatch(result.push, app, app_type)

    async with trio.open_nursery() as nursery:
        for result, app, app_type in planned:
            nursery.start_soon(send_one, result, app, app_type)

    for result, _, _ in planned:
        if result.outcome is not None and result.outcome.kind is OutcomeKind.TOKEN_DEAD:
            device = result.device
            # The pushes are done: a storage failure now must not hide their results.
            try:
                removed = await runtime.store.remove(account, device.app_id, device.device_id)
            except StoreUnavailable as exc:
                result.token_remove_error = str(exc) or type(exc).__name__
            else:
                result.token_removed = bool(removed)
    return results
