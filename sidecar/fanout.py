"""Account pushes: one push per stored device, sent concurrently.

Shared by the v2 HTTP API (``/v2/tokens/{account}/push``) and the ZeroMQ
account form.  A device whose outcome is a dead token is removed from the
store after the pushes are done.
"""

from __future__ import annotations

import dataclasses
import time

import trio

from .admission import admit
from .apps.base import AppType
from .config import AppConfig
from .model import Event, Outcome, OutcomeKind, Push, PushRequest, PushValidationError
from .runtime_api import IngressRuntime
from .store.base import DeviceRecord, StoreUnavailable

# Events for which a stored background token (apple `voip-regular`) is used.
BACKGROUND_TOKEN_EVENTS = frozenset({Event.CANCEL.value, Event.MESSAGE.value})


@dataclasses.dataclass(slots=True)
class DeviceResult:
    """What happened for one device of the account."""

    device: DeviceRecord
    push: Push | None = None  # None: the push could not even be built
    outcome: Outcome | None = None
    error: PushValidationError | None = None
    token_removed: bool = False
    token_remove_error: str | None = None


def device_request(request: PushRequest, device: DeviceRecord) -> PushRequest:
    """The account's request addressed to one stored device (the device's values win)."""
    use_background = request.event in BACKGROUND_TOKEN_EVENTS and device.background_token
    return dataclasses.replace(
        request,
        app_id=device.app_id,
        platform=device.platform,
        token=device.background_token if use_background else device.device_token,
        silent=device.silent,
        device_id=device.device_id,
    )


async def push_to_devices(
    runtime: IngressRuntime,
    account: str,
    devices: list[DeviceRecord],
    request: PushRequest,
    *,
    source: str,
    peer: str | None = None,
) -> list[DeviceResult]:
    """Send ``request`` to every device in ``devices`` at once; purge dead tokens."""
    settings, app_types = runtime.settings, runtime.app_types
    now, wall_now = trio.current_time(), time.time()
    results = [DeviceResult(device) for device in devices]
    planned: list[tuple[DeviceResult, AppConfig, AppType]] = []
    for result in results:
        try:
            push, app, app_type = admit(
                device_request(request, result.device), settings=settings, app_types=app_types,
                source=source, now=now, wall_now=wall_now, peer=peer,
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
