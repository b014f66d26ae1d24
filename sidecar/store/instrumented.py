"""A TokenStore wrapper that counts operations and errors in the metrics."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from ..observe.metrics import Metrics
from .base import DeviceRecord, TokenStore

T = TypeVar("T")


class InstrumentedStore(TokenStore):
    """Delegates to ``store``; each call is counted as ``backend``/operation,
    and a call that raises is counted as an error too (then re-raised)."""

    def __init__(self, store: TokenStore, metrics: Metrics, backend: str):
        self.inner = store
        self._metrics = metrics
        self._backend = backend

    async def _counted(self, operation: str, call: Awaitable[T]) -> T:
        try:
            result = await call
        except Exception:
            self._metrics.store_operation(self._backend, operation, error=True)
            raise
        self._metrics.store_operation(self._backend, operation)
        return result

    async def add(self, record: DeviceRecord) -> None:
        await self._counted("add", self.inner.add(record))

    async def remove(self, account: str, app_id: str, device_id: str | None = None) -> int:
        return await self._counted("remove", self.inner.remove(account, app_id, device_id))

    async def devices(self, account: str) -> list[DeviceRecord]:
        return await self._counted("devices", self.inner.devices(account))

    async def aclose(self) -> None:
        await self.inner.aclose()
