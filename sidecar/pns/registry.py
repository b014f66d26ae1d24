"""Which push service serves which application; plugins from extra_pns_dir.

A push-service plugin is a ``*.py`` file in ``extra_pns_dir`` that defines a
subclass of :class:`sidecar.pns.base.PushService` with a ``platform`` name.
An application selects it with ``app_platform = <that name>``.  The plugin is
constructed as ``cls(app, nursery)``: ``app`` is the application's
:class:`~sidecar.config.AppConfig` (its own options are in ``app.extra``) and
``nursery`` owns any background task it needs.  See config/pns/sample_pns.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ..config import AppConfig
from ..model import Push
from ..plugins import PluginError, defined_subclasses, import_plugin, plugin_files
from .base import SEND_CAP_AFTER_DEADLINE, Notification, PushService, PushServiceConfigError, SendResult

logger = logging.getLogger("sidecar.pns")

ServiceFactory = Callable[[AppConfig, trio.Nursery], PushService]

#: seconds a service is given to close its connections (retired, or at a stop)
CLOSE_SECONDS = 3.0


def load_plugin_classes(folder: Path | None) -> dict[str, type[PushService]]:
    """Push-service plugins of ``folder`` by platform name.

    Raises:
        PluginError: a file failed to import, or a class has no ``platform``.
    """
    found: dict[str, type[PushService]] = {}
    for path in plugin_files(folder):
        for cls in defined_subclasses(import_plugin(path, "sidecar_pns_plugins"), PushService):
            assert issubclass(cls, PushService)  # for the type checker: defined_subclasses checked it
            if not cls.platform:
                raise PluginError(f"{path}: class {cls.__name__} has no 'platform' name")
            found[cls.platform] = cls
    return found


def builtin_factories(*, debug_hpack: bool = False, state_dir: Path | None = None,
                      shared_oauth: bool = False) -> dict[str, ServiceFactory]:
    """Factories of the built-in services, sharing one JWT cache per process.

    ``state_dir`` (the spool dir) keeps APNs tokens across restarts, so a
    restart does not earn 429 TooManyProviderTokenUpdates, and shares them
    between worker processes; None: memory only.  ``shared_oauth`` shares
    the OAuth tokens through ``state_dir`` too (``workers`` > 1).
    """
    from .apns import ApnsService
    from .apns_auth import ApnsTokenCache
    from .fcm import FcmService
    from .fcm_auth import OAuthTokenCache

    # One JWT per (team, key) and one OAuth token per service account, for
    # every application and connection of the process.
    token_cache = ApnsTokenCache(state_dir=state_dir)
    oauth_cache = OAuthTokenCache(shared_dir=state_dir if shared_oauth else None)

    def apple(app: AppConfig, nursery: trio.Nursery) -> PushService:
        return ApnsService(app, nursery, token_cache=token_cache, debug_hpack=debug_hpack)

    def firebase(app: AppConfig, nursery: trio.Nursery) -> PushService:
        return FcmService(app, nursery, oauth_cache=oauth_cache, debug_hpack=debug_hpack)

    factories: dict[str, ServiceFactory] = {"apple": apple, "firebase": firebase}
    return factories


class _Entry:
    """One service in use, and the sends it has in flight (to drain it when retired)."""

    __slots__ = ("app", "service", "in_flight", "drain_by", "idle", "drain_scope", "closed")

    def __init__(self, app: AppConfig, service: PushService):
        self.app = app
        self.service = service
        self.in_flight = 0
        #: the dispatcher's hard cap of the latest push sent on it: no send outlives it
        self.drain_by = -math.inf
        self.idle = trio.Event()  # set once retired and no send is in flight
        self.drain_scope: trio.CancelScope | None = None
        self.closed = False


class PushServices:
    """Owns one long-lived :class:`PushService` per application key.

    Only :meth:`apply` (start-up and each reload) creates and retires
    services: it builds those of new and changed applications (a service
    connects on its first send, so a slow connect never delays start-up)
    and retires those of changed and removed ones.  A push is sent with
    :meth:`send` on the service in force for its application key, whichever
    configuration snapshot it was read with: a push retrying across a reload
    goes to the new service, and a push for an application that a reload
    removed gets None (the dispatcher reports it rejected, 404).  A retired
    service drains: it is closed once its sends in flight are answered, at
    most until the latest one's deadline plus :data:`SEND_CAP_AFTER_DEADLINE`.
    """

    def __init__(self, nursery: trio.Nursery, factories: Mapping[str, ServiceFactory]):
        self._nursery = nursery
        self._factories = dict(factories)
        self._live: dict[tuple[str, str], _Entry] = {}
        self._retiring: set[_Entry] = set()

    def apply(
        self, applications: Mapping[tuple[str, str], AppConfig], *, changed_files: frozenset[Path] = frozenset()
    ) -> list[tuple[AppConfig, str]]:
        """Put ``applications`` in force: all or nothing.

        The services of new and changed applications, and of unchanged ones
        whose credential files are in ``changed_files``, are built first
        (credentials loaded and checked).  If one fails, the ones built are
        closed and the running services stay in force.  Otherwise the new
        ones replace the old, and those of changed and removed applications
        are retired (drained, then closed).

        Returns:
          ``(application, problem)`` for each service that could not be built;
          empty when the applications are in force.
        """
        built: dict[tuple[str, str], _Entry] = {}
        problems: list[tuple[AppConfig, str]] = []
        for key, app in applications.items():
            entry = self._live.get(key)
            if entry is not None and entry.app == app and not credential_files(app) & changed_files:
                continue
            try:
                built[key] = _Entry(app, self._build(app))
            except PushServiceConfigError as exc:
                problems.append((app, str(exc)))
        if problems:
            for entry in built.values():  # never used: nothing in flight
                self._retire(entry)
            return problems
        for key in [key for key in self._live if key not in applications or key in built]:
            self._retire(self._live.pop(key))
        self._live.update(built)
        return []

    async def send(self, key: tuple[str, str], push: Push, notification: Notification) -> SendResult | None:
        """One attempt on the service in force for application ``key``.

        Returns:
          the service's answer, or None if no application has that key
          (a reload removed it): nothing was sent.
        """
        entry = self._live.get(key)
        if entry is None:
            return None
        entry.in_flight += 1
        entry.drain_by = max(entry.drain_by, push.deadline + SEND_CAP_AFTER_DEADLINE)
        try:
            return await entry.service.send(push, notification)
        finally:
            entry.in_flight -= 1
            if entry.in_flight == 0 and entry in self._retiring:
                entry.idle.set()

    def statistics(self) -> dict[tuple[str, str], dict[str, Any]]:
        """A snapshot of each service in force (retired ones are left out)."""
        return {key: dict(entry.service.statistics()) for key, entry in self._live.items()}

    async def aclose(self) -> None:
        """Close every service now, draining ones included (the daemon stops)."""
        entries = [*self._live.values(), *self._retiring]
        self._live.clear()
        for entry in entries:
            if entry.drain_scope is not None:
                entry.drain_scope.cancel()
            await self._close(entry)

    def _build(self, app: AppConfig) -> PushService:
        factory = self._factories.get(app.platform)
        if factory is None:
            raise PushServiceConfigError(f"no push service for platform {app.platform!r}")
        return factory(app, self._nursery)

    def _retire(self, entry: _Entry) -> None:
        self._retiring.add(entry)
        if entry.in_flight == 0:
            entry.idle.set()
        self._nursery.start_soon(self._drain_then_close, entry)

    async def _drain_then_close(self, entry: _Entry) -> None:
        # No new send reaches a retired service; the ones in flight end by
        # their deadline's hard cap at the latest (the dispatcher cancels them).
        with trio.move_on_at(entry.drain_by) as entry.drain_scope:
            await entry.idle.wait()
        await self._close(entry)

    async def _close(self, entry: _Entry) -> None:
        if entry.closed:
            return
        entry.closed = True
        self._retiring.discard(entry)
        with trio.move_on_after(CLOSE_SECONDS) as scope:
            scope.shield = True
            await entry.service.aclose()


def credential_files(app: AppConfig) -> set[Path]:
    """The files an application's push service reads its credentials from."""
    candidates = (app.apple_certificate, app.apple_key, app.firebase_authorization_file, app.tls_ca_file)
    return {path for path in candidates if path is not None}
