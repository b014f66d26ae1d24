"""The token store interface used by the dispatcher and the v2 API.

A device is identified within an account (``user@domain``) by
(``app_id``, ``device_id``); adding it again replaces it.
"""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRecord:
    account: str
    app_id: str
    device_id: str
    platform: str
    device_token: str
    background_token: str | None = None
    silent: bool = True
    user_agent: str | None = None


class StoreUnavailable(Exception):
    """The backend cannot be reached right now (maps to HTTP 503)."""


class TokenStore(abc.ABC):
    @abc.abstractmethod
    async def add(self, record: DeviceRecord) -> None: ...

    @abc.abstractmethod
    async def remove(self, account: str, app_id: str, device_id: str | None = None) -> int:
        """Remove one device, or every device of ``app_id`` when device_id is None.

        Returns how many records went.
        """

    @abc.abstractmethod
    async def devices(self, account: str) -> list[DeviceRecord]: ...

    async def aclose(self) -> None:
        return None
