"""What every ingress sees of the running daemon: one narrow, typed interface.

The HTTP routes, the fast HTTP server, the ZeroMQ ingress and the account
fan-out all talk to :class:`IngressRuntime`; ``service.Runtime`` satisfies
it.  ``settings`` and ``app_types`` may be replaced by a reload at any time:
a request reads them once and works with that snapshot.
"""

from __future__ import annotations

from typing import Protocol
from collections.abc import Mapping

from .apps.base import AppType
from .config import AppConfig, Settings
from .model import Outcome, OutcomeKind, Push
from .store.base import TokenStore


class IngressRuntime(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def app_types(self) -> Mapping[str, AppType]: ...

    @property
    def store(self) -> TokenStore: ...

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome:
        """Send ``push`` and return its single outcome (never raises)."""
        ...

    def spawn(self, push: Push, app: AppConfig, app_type: AppType) -> None:
        """Start sending ``push`` in the runtime's nursery and return at once."""
        ...

    def drop(self, push: Push, app: AppConfig | None, reason: str, kind: OutcomeKind) -> Outcome:
        """Record the one outcome of a push that will never be dispatched."""
        ...
