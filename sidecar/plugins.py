"""Loading plugin files (app types and push services) from a folder.

A plugin is a ``*.py`` file; names starting with ``_`` are skipped, so
plugins can share private helper modules.  Each file is imported under its
own name in ``sys.modules`` (so tracebacks name it and reloading replaces
it), and only the classes it *defines* count, not the ones it imports.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from collections.abc import Iterator


class PluginError(Exception):
    """A plugin file could not be loaded; the message names the file."""


def plugin_files(folder: Path | None) -> list[Path]:
    """The plugin files of ``folder`` in name order (none if it does not exist)."""
    if folder is None or not folder.is_dir():
        return []
    return [path for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")]


def import_plugin(path: Path, package: str) -> ModuleType:
    """Import ``path`` as ``<package>.<stem>``; any failure is a PluginError naming the file."""
    module_name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and typing look modules up there.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"{path}: cannot load plugin: {type(exc).__name__}: {exc}") from exc
    return module


def defined_subclasses(module: ModuleType, base: type) -> Iterator[type]:
    """Concrete subclasses of ``base`` defined in ``module`` itself."""
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if (issubclass(cls, base) and cls is not base and cls.__module__ == module.__name__
                and not inspect.isabstract(cls)):
            yield cls
