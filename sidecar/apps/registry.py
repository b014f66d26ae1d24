"""Which app types exist: the built-in ones plus plugins from ``extra_applications_dir``.

A plugin is any ``*.py`` file in that folder (names starting with ``_`` are
skipped, so plugins can share private helper modules) that defines one or
more :class:`~sidecar.apps.base.AppType` subclasses with a non-empty
``name``.  See ``config/applications/sample_app.py`` for a documented example.
"""

from __future__ import annotations

from pathlib import Path

from ..plugins import PluginError, defined_subclasses, import_plugin, plugin_files
from .base import AppType
from .linphone import LinphoneAppType
from .sylk import SylkAppType

BUILTIN_APP_TYPES: tuple[type[AppType], ...] = (SylkAppType, LinphoneAppType)

# Plugin modules are registered under this prefix in sys.modules, so
# tracebacks and pickling name them, and reloading replaces them.
_PLUGIN_PACKAGE = "sidecar_app_plugins"


class AppTypeLoadError(PluginError):
    """An app-type plugin could not be loaded; the message names the file."""


def load_app_types(extra_dir: Path | None) -> dict[str, AppType]:
    """Return every app type by name: built-ins, then plugins of ``extra_dir``.

    A missing ``extra_dir`` (the Sylk default ``applications/`` often does
    not exist) just means no plugins.  Files are loaded in name order.

    Raises:
        AppTypeLoadError: a plugin failed to import, or two app types share a
          name (also a plugin reusing ``sylk`` or ``linphone``).
    """
    app_types: dict[str, AppType] = {cls.name: cls() for cls in BUILTIN_APP_TYPES}
    origins = {name: "built-in" for name in app_types}
    for path in plugin_files(extra_dir):
        try:
            module = import_plugin(path, _PLUGIN_PACKAGE)
        except PluginError as exc:
            raise AppTypeLoadError(str(exc)) from exc
        for cls in defined_subclasses(module, AppType):
            if not issubclass(cls, AppType) or not cls.name:  # (issubclass: for the type checker)
                continue
            if cls.name in app_types:
                raise AppTypeLoadError(
                    f"{path}: app type {cls.name!r} is already defined ({origins[cls.name]})"
                )
            try:
                app_types[cls.name] = cls()
            except Exception as exc:
                raise AppTypeLoadError(
                    f"{path}: cannot create app type {cls.name!r}: {type(exc).__name__}: {exc}"
                ) from exc
            origins[cls.name] = str(path)
    return app_types
