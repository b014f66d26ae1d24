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
from pathlib import Path
from typing import Callable

import trio

from ..config import AppConfig
from ..plugins import PluginError, defined_subclasses, import_plugin, plugin_files
from .base import PushService, PushServiceConfigError

logger = logging.getLogger("sidecar.pns")

ServiceFactory = Callable[[AppConfig, trio.Nursery], PushService]


def load_plugin_classes(folder: Path | None) -> dict[str, type[PushService]]:
    """Push-service plugins of ``folder`` by platform name.

    Raises:
        PluginError: a file failed to import, or a class has no ``platform``.
    """
    found: dict[str, type[PushService]] = {}
    for path in plugin_files(folder):
        for cls in defined_subclasses(import_plugin(path, "sidecar_pns_plugins"), PushService):
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


class PushServices:
    """Owns one long-lived :class:`PushService` per application.

    Services are created lazily on first use (so a slow connect never delays
    start-up), kept across config reloads while their application's
    configuration is unchanged, and closed when it changes or goes away.
    """

    def __init__(self, nursery: trio.Nursery, factories: dict[str, ServiceFactory]):
        self._nursery = nursery
        self._factories = factories
        self._services: dict[tuple[str, str], tuple[AppConfig, PushService]] = {}

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(self._factories)

    def service_for(self, app: AppConfig) -> PushService:
        entry = self._services.get(app.key)
        if entry is not None and entry[0] == app:
            return entry[1]
        service = self.build(app)
        self.install({app.key: (app, service)})
        return service

    def build(self, app: AppConfig) -> PushService:
        """A new service for ``app``, not yet in use (its credentials are loaded
        and checked now).  Raises PushServiceConfigError."""
        factory = self._factories.get(app.platform)
        if factory is None:
            raise PushServiceConfigError(f"no push service for platform {app.platform!r}")
        return factory(app, self._nursery)

    def install(self, services: dict[tuple[str, str], tuple[AppConfig, PushService]]) -> None:
        """Put built services in use; the ones they replace are drained and closed."""
        for key, entry in services.items():
            old = self._services.get(key)
            self._services[key] = entry
            if old is not None and old[1] is not entry[1]:
                self._retire(old[1])

    def discard(self, services: list[PushService]) -> None:
        """Close built services that will not be used (a rejected reload)."""
        for service in services:
            self._retire(service)

    def validate(self, app: AppConfig) -> None:
        """Create (and keep) the service now, so bad credentials fail at start-up."""
        self.service_for(app)

    def apply(self, applications: dict[tuple[str, str], AppConfig]) -> None:
        """After a reload: retire the services of changed or removed applications."""
        for key, (app, service) in list(self._services.items()):
            if applications.get(key) != app:
                del self._services[key]
                self._retire(service)

    def statistics(self) -> dict[tuple[str, str], dict]:
        return {key: dict(service.statistics()) for key, (_, service) in self._services.items()}

    def _retire(self, service: PushService) -> None:
        async def close_later() -> None:
            # Let pushes already in flight on it finish (drain), then close.
            await trio.sleep(5)
            await service.aclose()

        self._nursery.start_soon(close_later)

    async def aclose(self) -> None:
        services = [service for _, service in self._services.values()]
        self._services.clear()
        for service in services:
            with trio.move_on_after(3) as scope:
                scope.shield = True
                await service.aclose()


def credential_files(app: AppConfig) -> set[Path]:
    """The files an application's push service reads its credentials from."""
    candidates = (app.apple_certificate, app.apple_key, app.firebase_authorization_file, app.tls_ca_file)
    return {path for path in candidates if path is not None}
