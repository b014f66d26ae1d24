"""The running daemon: one nursery that owns every task, reload and stop.

Theory of operation: :func:`run_sidecar` loads the configuration, opens the
token store, builds the :class:`Runtime` (the object both ingresses talk
to), then starts, in one nursery: the push services' background tasks, the
HTTP API (Hypercorn's trio worker), the ZeroMQ PULL loop, the config
watcher and the signal handler.  SIGTERM/SIGINT stop the ingresses first,
give pushes in flight a few seconds to end, then cancel everything.  SIGHUP
(``systemctl reload``) reopens the log file and reloads the configuration.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable

import trio

from .apps.base import AppType
from .apps.registry import load_app_types
from .config import AppConfig, ConfigError, Settings, load_settings
from .dispatch import Dispatcher
from .model import Outcome, OutcomeKind, Push
from .pns.base import PushService
from .pns.registry import PushServices, builtin_factories, load_plugin_classes
from .store.base import TokenStore

logger = logging.getLogger("sidecar.service")

STOP_GRACE_SECONDS = 5.0


def plugin_platforms(settings_dir_hint: Path | None) -> dict[str, type[PushService]]:
    return load_plugin_classes(settings_dir_hint, PushService)


def load_all(config_dir: Path) -> tuple[Settings, dict[str, AppType], dict[str, type[PushService]]]:
    """Load settings and plugins together, so applications can name plugin
    platforms and app types.  Raises ConfigError."""
    # Plugins live in folders named by general.ini, so read it twice: once
    # leniently to find the folders, then strictly with the plugin names.
    from .pns.registry import PluginError

    try:
        probe = load_settings(config_dir, pns_names=_ANY, app_type_names=None)
    except ConfigError:
        probe = None
    try:
        pns_plugins = load_plugin_classes(probe.extra_pns_dir if probe else None, PushService)
        app_types = load_app_types(probe.extra_applications_dir if probe else None)
    except PluginError as exc:
        raise ConfigError([str(exc)]) from exc
    except Exception as exc:  # the app-type loader raises its own error type
        raise ConfigError([str(exc)]) from exc
    pns_names = {"apple", "firebase", *pns_plugins}
    settings = load_settings(config_dir, pns_names=pns_names, app_type_names=set(app_types))
    return settings, app_types, pns_plugins


class _AnyName(frozenset):
    def __contains__(self, item: object) -> bool:  # accepts every platform name
        return True


_ANY = _AnyName()


class Runtime:
    """What the ingresses see: current settings, app types, dispatch, store.

    ``settings`` and ``app_types`` are replaced atomically by a reload; a
    request reads them once and works with that snapshot.
    """

    def __init__(
        self,
        settings: Settings,
        app_types: dict[str, AppType],
        services: PushServices,
        store: TokenStore,
        nursery: trio.Nursery,
        *,
        listeners: list[Callable[..., None]] | None = None,
    ):
        self.settings = settings
        self.app_types = app_types
        self.services = services
        self.store = store
        self.dispatcher = Dispatcher(services, listeners=listeners)
        self._nursery = nursery
        self.started_at = time.time()

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome:
        return await self.dispatcher.dispatch(push, app, app_type)

    def spawn(self, push: Push, app: AppConfig, app_type: AppType) -> None:
        """Send in the background (``return_async = false``)."""
        self._nursery.start_soon(self.dispatcher.dispatch, push, app, app_type)

    def apply_settings(self, settings: Settings, app_types: dict[str, AppType]) -> None:
        self.settings = settings
        self.app_types = app_types
        self.services.apply(dict(settings.applications))
