"""The ``pushsidecar`` command: the daemon and its sub-commands.

    pushsidecar [--config-dir DIR] [--ip IP] [--port N] [--debug]   run the daemon
    pushsidecar check-config [--config-dir DIR] [--strict]          validate, exit 0 or 2
    pushsidecar demo [--keep]                                       daemon + simulator, no credentials needed
    pushsidecar simulate ...                                        the APNs/FCM/OAuth simulator
    pushsidecar store {init,list,remove,import-sylk-pickle} ...     token store operations
    pushsidecar trace CALL-ID [--log FILE]                          one call's pushes from the log
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def add_config_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir", "--config_dir", dest="config_dir", metavar="DIR",
        help="folder holding general.ini and applications.ini "
        "(default: /etc/pushsidecar, then ./config)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushsidecar",
        description="Push notification sidecar for SIP proxies: wakes phones through "
        "APNs and FCM; serves the Sylk Pushserver HTTP API and a ZeroMQ socket.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--version", action="version", version=f"pushsidecar {__version__}")
    add_config_dir_option(parser)
    parser.add_argument("--ip", help="listen address of the HTTP API (overrides [server] host)")
    parser.add_argument("--port", type=int, help="port of the HTTP API (overrides [server] port)")
    parser.add_argument("--debug", action="store_true", help="log headers and bodies (secrets redacted)")
    parser.add_argument("--no-fork", action="store_true",
                        help="accepted for Sylk compatibility; the daemon always runs in the foreground")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        help="validate the configuration as the daemon does at start-up, credentials included; "
        "exit 0 ok, 2 errors",
    )
    add_config_dir_option(check)
    check.add_argument("--strict", action="store_true",
                       help="treat warnings (unknown sections and options, no application) as errors")

    demo = commands.add_parser(
        "demo",
        help="run the sidecar against the bundled simulator with a generated configuration",
    )
    demo.add_argument("--port", type=int, default=8400, help="HTTP API port (default 8400; 0 = any free port)")
    demo.add_argument("--dir", type=Path, help="where to write the demo configuration (default: a temporary "
                      "folder, removed on exit)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary folder (it holds generated private keys) on exit")

    from .sim.cli import build_parser as add_simulate_command
    add_simulate_command(commands)

    from .store.cli import add_store_commands
    add_store_commands(commands)

    from .observe.trace import add_trace_command
    add_trace_command(commands)

    from .ingress.curve import add_keys_command
    add_keys_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    if command is None:
        from .service import run_daemon
        return run_daemon(args.config_dir, ip=args.ip, port=args.port, debug=args.debug)
    if command == "check-config":
        return check_config(args.config_dir, strict=args.strict)
    if command == "demo":
        from .demo import run_demo
        return run_demo(port=args.port, folder=args.dir, keep=args.keep)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        parser.error(f"unknown command {command!r}")
    return int(handler(args) or 0)


def check_config(config_dir: str | None, *, strict: bool = False) -> int:
    """``check-config``: what the daemon checks at start-up, every problem at
    once (both files, plugins, credential contents), then the warnings.

    Exit 0 when the daemon would start; 2 when it would refuse (or, with
    ``strict``, when there is any warning)."""
    from .config import ConfigError, find_config_dir
    from .service import check_configuration

    try:
        settings, problems, warnings = check_configuration(find_config_dir(config_dir))
    except ConfigError as exc:
        settings, problems, warnings = None, exc.problems, exc.warnings
    if problems:
        print("configuration errors:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    if warnings:
        print("configuration warnings" + (" (errors with --strict):" if strict else ":"), file=sys.stderr)
        for warning in warnings:
            print(f"  {warning}", file=sys.stderr)
    if problems or settings is None or (strict and warnings):
        return EXIT_CONFIG
    print(
        f"configuration OK: {settings.config_dir}: {len(settings.applications)} application(s), "
        f"store {'cassandra' if settings.cassandra.enabled else 'sqlite'}"
        + (f", {len(warnings)} warning(s)" if warnings else "")
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
