"""Which app types exist: the built-in ones plus plugins from ``extra_applications_dir``.

A plugin is any ``*.py`` file in that folder (names starting with ``_`` are
skipped, so plugins can share private helper modules) that defines one or
more :class:`~sidecar.apps.base.AppType` subclasses with a non-empty
``name``.  See ``config/applications/sample_app.py`` for a documented example.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from .base import AppType
from .linphone import LinphoneAppType
from .sylk import SylkAppType

BUILTIN_APP_TYPES: tuple[type[AppType], ...] = (SylkAppType, LinphoneAppType)

# Plugin modules are registered under this prefix in sys.modules, so
# tracebacks and pickling name them, and reloading replaces them.
_PLUGIN_PACKAGE = "sidecar_app_plugins"


class AppTypeLoadError(Exception):
    """A plugin file could not be loaded; the message names the file."""


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
    if extra_dir is None or not extra_dir.is_dir():
        return app_types
    for path in sorted(extra_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _import_plugin(path)
        for cls in _app_type_classes(module):
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


def _import_plugin(path: Path) -> ModuleType:
    module_name = f"{_PLUGIN_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AppTypeLoadError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and typing look modules up there.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise AppTypeLoadError(
            f"{path}: cannot load app type plugin: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _app_type_classes(module: ModuleType) -> list[type[AppType]]:
    """AppType subclasses *defined* in ``module`` (imported ones are skipped)."""
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, AppType)
        and cls.__module__ == module.__name__
        and cls.name
        and not inspect.isabstract(cls)
    ]
