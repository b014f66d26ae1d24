"""``pushsidecar store ...``: look after the token store from the shell.

    pushsidecar store init [--replication-class CLASS --replication-factor N | --datacenter NAME:RF ...]
    pushsidecar store import-sylk-pickle FILE
    pushsidecar store list ACCOUNT
    pushsidecar store remove ACCOUNT [--app-id ID] [--device-id ID]

Each ``run_*`` function takes a loaded :class:`Settings`, so tests (and other
commands) can call it without configuration files.  Exit codes: 0 done,
1 failed (store unreachable, unreadable file), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from sidecar.config import ConfigError, Settings
from sidecar.store._account import split_account
from sidecar.store.base import DeviceRecord, StoreUnavailable
from sidecar.store.factory import store_context

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


# -- argument parsing ---------------------------------------------------------


def add_store_commands(subparsers: Any) -> None:
    """Add ``store`` and its sub-commands to the top-level sub-parsers.

    Each leaf parser sets ``handler(args) -> int``, which loads the settings
    from ``args.config_dir`` and runs the command.
    """
    store = subparsers.add_parser("store", help="token store operations (init, import, list, remove)")
    _add_config_dir(store)
    actions = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="create the Cassandra keyspace and tables (or the SQLite file); safe to rerun",
    )
    _add_config_dir(init)
    init.add_argument(
        "--replication-class", default=None, metavar="CLASS",
        help="Cassandra replication strategy (default SimpleStrategy, or "
        "NetworkTopologyStrategy when --datacenter is given)",
    )
    init.add_argument(
        "--replication-factor", type=int, default=None, metavar="N",
        help="replication factor for SimpleStrategy (default 1)",
    )
    init.add_argument(
        "--datacenter", action="append", default=[], metavar="NAME:RF",
        help="replicas per data centre for NetworkTopologyStrategy (repeatable)",
    )
    init.set_defaults(handler=_with_settings(lambda s, a: run_init(s, _replication_from_args(a))))

    imp = actions.add_parser(
        "import-sylk-pickle", help="import Sylk Pushserver's webrtc_device_tokens file (idempotent)"
    )
    _add_config_dir(imp)
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.set_defaults(handler=_with_settings(lambda s, a: run_import_sylk_pickle(s, a.file)))

    lst = actions.add_parser("list", help="show the devices stored for an account")
    _add_config_dir(lst)
    lst.add_argument("account", metavar="ACCOUNT", help="user@domain")
    lst.set_defaults(handler=_with_settings(lambda s, a: run_list(s, a.account)))

    rm = actions.add_parser(
        "remove", help="remove an account's devices (all, or those matching --app-id/--device-id)"
    )
    _add_config_dir(rm)
    rm.add_argument("account", metavar="ACCOUNT", help="user@domain")
    rm.add_argument("--app-id", "--app_id", dest="app_id")
    rm.add_argument("--device-id", "--device_id", dest="device_id")
    rm.set_defaults(
        handler=_with_settings(lambda s, a: run_remove(s, a.account, a.app_id, a.device_id))
    )


def _add_config_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a sub-parser default must not overwrite a --config-dir given
    # before the sub-command.
    parser.add_argument(
        "--config-dir", "--config_dir", dest="config_dir", metavar="DIR",
        default=argparse.SUPPRESS, help="folder holding general.ini",
    )


class _UsageError(Exception):
    pass


def _replication_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.replication_class is None and args.replication_factor is None and not args.datacenter:
        return None  # run_init's default
    return replication_options(
        args.replication_class, args.replication_factor, args.datacenter
    )


def replication_options(
    replication_class: str | None,
    replication_factor: int | None,
    datacenters: Sequence[str],
) -> dict[str, Any]:
    """Build Cassandra's replication map from the command-line options.

    Raises:
        _UsageError: contradictory or malformed options.
    """
    if datacenters:
        cls = replication_class or "NetworkTopologyStrategy"
        if cls != "NetworkTopologyStrategy":
            raise _UsageError("--datacenter needs --replication-class NetworkTopologyStrategy")
        if replication_factor is not None:
            raise _UsageError("give either --replication-factor or --datacenter, not both")
        options: dict[str, Any] = {"class": cls}
        for item in datacenters:
            name, colon, factor = item.rpartition(":")
            if not colon or not name or not factor.isdigit() or int(factor) < 1:
                raise _UsageError(f"--datacenter wants NAME:RF, got {item!r}")
            options[name] = int(factor)
        return options
    cls = replication_class or "SimpleStrategy"
    if cls == "NetworkTopologyStrategy":
        raise _UsageError("NetworkTopologyStrategy needs at least one --datacenter NAME:RF")
    replicas = 1 if replication_factor is None else replication_factor
    if replicas < 1:
        raise _UsageError("--replication-factor must be at least 1")
    return {"class": cls, "replication_factor": replicas}


def _with_settings(
    command: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Wrap ``command(settings, args)`` as ``handler(args)``: load the config first."""

    def handler(args: argparse.Namespace) -> int:
        try:
            settings = _load_settings(getattr(args, "config_dir", None))
        except ConfigError as exc:
            print("configuration errors:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_USAGE
        try:
            return command(settings, args)
        except _UsageError as exc:
            print(f"pushsidecar store: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return handler


def _load_settings(config_dir: str | None) -> Settings:
    """general.ini only: the store commands do not need the applications (so a
    token import can run before applications.ini is put right)."""
    from sidecar.config import find_config_dir, read_settings

    settings, problems, warnings = read_settings(find_config_dir(config_dir), with_applications=False)
    if problems or settings is None:
        raise ConfigError(problems, warnings)
    return settings


# -- the commands -------------------------------------------------------------


def _describe_store(settings: Settings) -> str:
    if settings.cassandra.enabled:
        points = ",".join(f"{h}:{p}" for h, p in settings.cassandra.contact_points)
        return f"Cassandra {points} keyspace {settings.cassandra.keyspace} table {settings.cassandra.table}"
    from sidecar.store.sqlite import default_path

    return f"SQLite {default_path(settings.spool_dir)}"


def _run(
    main: Callable[[], Any], settings: Settings, err: TextIO
) -> int:
    """trio.run(main), turning store and file errors into exit status 1."""
    try:
        return int(trio.run(main) or EXIT_OK)
    except StoreUnavailable as exc:
        print(f"token store unavailable ({_describe_store(settings)}): {exc}", file=err)
        return EXIT_FAILURE


def run_init(
    settings: Settings,
    replication: Mapping[str, Any] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Create the store's schema.  ``replication`` is used for Cassandra only."""
    out, err = out or sys.stdout, err or sys.stderr

    async def main() -> int:
        if settings.cassandra.enabled:
            from sidecar.store.cassandra import init_schema

            options = dict(replication or {"class": "SimpleStrategy", "replication_factor": 1})
            await init_schema(settings, options)
            print(f"schema ready: {_describe_store(settings)}, replication {options}", file=out)
        else:
            if replication:
                print("note: replication options apply to Cassandra only; ignored", file=err)
            async with store_context(settings):
                pass
            print(f"schema ready: {_describe_store(settings)}", file=out)
        return EXIT_OK

    return _run(main, settings, err)


def run_import_sylk_pickle(
    settings: Settings, path: Path, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Import Sylk's token pickle into the configured store."""
    out, err = out or sys.stdout, err or sys.stderr
    from sidecar.store.sylk_pickle import import_sylk_pickle

    async def main() -> int:
        async with store_context(settings) as store:
            report = await import_sylk_pickle(path, store)
        print(
            f"imported {report.devices}, already present {report.already_present} "
            f"(devices of {report.accounts} account(s)) into {_describe_store(settings)}; "
            f"skipped {len(report.skipped)}",
            file=out,
        )
        for line in report.skipped:
            print(f"  skipped: {line}", file=out)
        return EXIT_OK

    try:
        return _run(main, settings, err)
    except (OSError, ValueError) as exc:  # unreadable, unsafe or malformed file
        print(f"cannot import {path}: {exc}", file=err)
        return EXIT_FAILURE


def format_record(record: DeviceRecord) -> str:
    """Readable lines for one device (tokens included: they are not credentials)."""
    lines = [
        f"  app-id {record.app_id}  device-id {record.device_id}  platform {record.platform}  "
        f"silent {'yes' if record.silent else 'no'}",
        f"    token            {record.device_token}",
    ]
    if record.background_token:
        lines.append(f"    background token {record.background_token}")
    if record.user_agent:
        lines.append(f"    user-agent       {record.user_agent}")
    return "\n".join(lines)


def run_list(
    settings: Settings, account: str, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print the devices of ``account``."""
    out, err = out or sys.stdout, err or sys.stderr
    if not _account_ok(account, err):
        return EXIT_USAGE

    async def main() -> int:
        async with store_context(settings) as store:
            records = await store.devices(account)
        print(f"{account}: {len(records)} device(s)", file=out)
        for record in records:
            print(format_record(record), file=out)
        return EXIT_OK

    return _run(main, settings, err)


def run_remove(
    settings: Settings,
    account: str,
    app_id: str | None = None,
    device_id: str | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Remove the account's devices matching ``app_id`` / ``device_id`` (all if neither)."""
    out, err = out or sys.stdout, err or sys.stderr
    if not _account_ok(account, err):
        return EXIT_USAGE

    async def main() -> int:
        async with store_context(settings) as store:
            if app_id is not None:
                removed = await store.remove(account, app_id, device_id)
            else:
                # The store removes by app-id; find which app-ids hold matches.
                removed = 0
                for record in await store.devices(account):
                    if device_id is None or record.device_id == device_id:
                        removed += await store.remove(account, record.app_id, record.device_id)
        print(f"{account}: removed {removed} device(s)", file=out)
        return EXIT_OK

    return _run(main, settings, err)


def _account_ok(account: str, err: TextIO) -> bool:
    try:
        split_account(account)
    except ValueError as exc:
        print(f"pushsidecar store: {exc}", file=err)
        return False
    return True
