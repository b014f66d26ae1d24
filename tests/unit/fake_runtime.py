"""A recording stand-in for the daemon's Runtime (the IngressRuntime protocol), for ingress tests.

Only the daemon is replaced: admission, fan-out and the ZeroMQ ingress under
test are the real ones.  ``dispatch`` can be held open (``gate``) to see how
many dispatches run at once.
"""

from __future__ import annotations

from pathlib import Path

import trio

from sidecar.apps.base import AppType
from sidecar.apps.linphone import LinphoneAppType
from sidecar.apps.sylk import SylkAppType
from sidecar.config import AppConfig, Settings
from sidecar.model import Outcome, OutcomeKind, Push
from sidecar.store.base import DeviceRecord, StoreUnavailable, TokenStore

APPS = [
    AppConfig(section="a", app_id="com.ag.sylk", app_type="sylk", platform="apple"),
    AppConfig(section="b", app_id="com.ag.sylk", app_type="sylk", platform="firebase"),
    AppConfig(section="c", app_id="org.linphone", app_type="linphone", platform="apple"),
]
SETTINGS = Settings(config_dir=Path("/nonexistent"), applications={a.key: a for a in APPS})
APP_TYPES: dict[str, AppType] = {"sylk": SylkAppType(), "linphone": LinphoneAppType()}


class MemoryStore(TokenStore):
    def __init__(self, devices: list[DeviceRecord] | None = None, *, down: bool = False,
                 remove_fails: bool = False) -> None:
        self.records = list(devices or [])
        self.down = down
        self.remove_fails = remove_fails
        self.removed: list[tuple[str, str, str | None]] = []

    async def add(self, record: DeviceRecord) -> None:
        self.records.append(record)

    async def remove(self, account: str, app_id: str, device_id: str | None = None) -> int:
        if self.remove_fails:
            raise StoreUnavailable("store went away")
        self.removed.append((account, app_id, device_id))
        before = len(self.records)
        self.records = [r for r in self.records
                        if not (r.account == account and r.app_id == app_id and r.device_id == device_id)]
        return before - len(self.records)

    async def devices(self, account: str) -> list[DeviceRecord]:
        if self.down:
            raise StoreUnavailable("cassandra is down")
        return [r for r in self.records if r.account == account]


class FakeRuntime:
    """Records every dispatched push and every dropped one, with its outcome."""

    def __init__(self, store: MemoryStore | None = None, *,
                 outcome_for: dict[str, OutcomeKind] | None = None) -> None:
        self.settings = SETTINGS
        self.app_types = APP_TYPES
        self.store: TokenStore = store or MemoryStore()
        self.outcome_for = outcome_for or {}  # token -> outcome kind (default delivered)
        self.dispatched: list[Push] = []
        self.dropped: list[tuple[Push, AppConfig | None, str, OutcomeKind]] = []
        self.gate: trio.Event | None = None  # set: dispatches wait for it
        self.in_flight = 0
        self.max_in_flight = 0
        self.finished = 0

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome:
        self.dispatched.append(push)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await trio.lowlevel.checkpoint()
        finally:
            self.in_flight -= 1
        self.finished += 1
        kind = self.outcome_for.get(push.token, OutcomeKind.DELIVERED)
        return Outcome(kind, 410 if kind is OutcomeKind.TOKEN_DEAD else 200, kind.value)

    def spawn(self, push: Push, app: AppConfig, app_type: AppType) -> None:
        raise AssertionError("the ingresses under test never spawn")

    def drop(self, push: Push, app: AppConfig | None, reason: str, kind: OutcomeKind) -> Outcome:
        self.dropped.append((push, app, reason, kind))
        return Outcome(kind, 503, reason)
