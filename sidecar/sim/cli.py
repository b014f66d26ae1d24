"""``pushsidecar simulate``: run the simulator as a process.

Generates credentials when the folder has none, listens, prints one JSON
line (``{"port": ..., "url": ..., "ca_file": ..., "config_dir": ...}``) so
scripts can read the port, and with ``--write-config DIR`` writes a sidecar
configuration (general.ini + applications.ini, Sylk option names) whose
applications all point at it.  Runs until interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from .creds import SimCredentials, ensure_credentials, write_service_account
from .server import Simulator

DEFAULT_CREDS_DIR = "sim-credentials"


def build_parser(subparsers: Any | None = None) -> argparse.ArgumentParser:
    """Add the ``simulate`` sub-command (or build a stand-alone parser).

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the
            main ``pushsidecar`` command, or None.

    Returns:
        The parser; its defaults carry ``func=run``.
    """
    description = "Run the APNs/FCM/OAuth simulator on one TLS port."
    if subparsers is None:
        parser = argparse.ArgumentParser(prog="pushsidecar simulate", description=description)
    else:
        parser = subparsers.add_parser("simulate", help=description, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--creds-dir", type=Path,
                        help="credentials folder, generated if empty (default: "
                             f"DIR/credentials with --write-config, else ./{DEFAULT_CREDS_DIR})")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="append every request as a JSON line to FILE")
    parser.add_argument("--write-config", type=Path, metavar="DIR",
                        help="write a sidecar config dir (general.ini, applications.ini) "
                             "pointing at this simulator")
    parser.add_argument("--sidecar-port", type=int, default=8400,
                        help="HTTP port written into general.ini (default 8400)")
    parser.add_argument("--max-records", type=int, default=10_000,
                        help="records kept in memory for /_sim/requests (default 10000)")
    parser.add_argument("--initial-streams", type=int, default=1,
                        help="max concurrent streams before a first success (Apple: 1)")
    parser.add_argument("--token-update-interval", type=float, default=1200.0,
                        help="minimum seconds between APNs provider token changes (Apple: 1200)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the simulator described by parsed arguments; returns the exit status."""
    creds_dir = args.creds_dir
    if creds_dir is None:
        creds_dir = (args.write_config / "credentials") if args.write_config else Path(DEFAULT_CREDS_DIR)
    creds = ensure_credentials(creds_dir)
    sim = Simulator(creds, host=args.host, port=args.port, record_file=args.record,
                    max_records=args.max_records, initial_max_streams=args.initial_streams,
                    token_update_interval=args.token_update_interval)
    try:
        trio.run(_serve, sim, args)
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sidecar.sim``."""
    args = build_parser().parse_args(argv)
    return run(args)


async def _serve(sim: Simulator, args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        creds = sim.credentials
        assert creds is not None
        write_service_account(creds, port, args.host)
        sim.add_service_account(creds.service_account())
        config_dir = None
        if args.write_config:
            config_dir = write_config(args.write_config, creds, port, host=args.host,
                                      sidecar_port=args.sidecar_port)
        line = {"port": port, "url": f"https://{args.host}:{port}",
                "ca_file": str(creds.ca_file), "config_dir": str(config_dir) if config_dir else None}
        print(json.dumps(line), flush=True)
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    """SIGTERM/SIGINT end serving cleanly, so the record file is complete."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def write_config(folder: Path, creds: SimCredentials, port: int, *, host: str = "127.0.0.1",
                 sidecar_port: int = 8400) -> Path:
    """Write general.ini + applications.ini for a sidecar using this simulator.

    Three applications: a sylk app on Apple with token auth, a linphone app
    on Apple with certificate auth and the sylk app on Firebase.  All paths
    are absolute; ``tls_ca_file`` makes the sidecar trust the simulator.

    Returns:
        The absolute config folder.
    """
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)
    general = f"""\
# Written by `pushsidecar simulate`: a sidecar talking to the simulator at {host}:{port}.
[server]
host = 127.0.0.1
port = {sidecar_port}
return_async = true
allowed_hosts =
spool_dir = {folder / "spool"}
debug = false

[applications]
config_file = applications.ini
credentials_folder = {creds.folder}
"""
    applications = ("# Written by `pushsidecar simulate`; the simulator's CA is the tls_ca_file.\n"
                    + _three_applications(creds, host, port, ("sylk-apple", "linphone-apple", "sylk-firebase"),
                                          ".prod", f"{creds.token_bundle_id}.prod"))
    (folder / "general.ini").write_text(general)
    (folder / "applications.ini").write_text(applications)
    return folder


def rfc8599_applications(creds: SimCredentials, port: int, *, host: str = "127.0.0.1",
                         sandbox_port: int | None = None) -> str:
    """applications.ini sections for phones that register with RFC 8599 parameters.

    A ``pn-param`` ``<TeamID>.<bundle>[.voip&remote]`` maps to app-id
    ``<bundle>`` (``sidecar/wire.py``), and an FCM ``pn-param`` (the project)
    is the app-id as it is; the simulator's own sections use ``<bundle>.prod``
    (Sylk's convention).  Three applications: the token-auth bundle as a
    ``sylk`` app, the certificate bundle as a ``linphone`` app, and the
    Firebase project.  ``sandbox_port``: where pushes of development builds
    (``pn-provider=apns.dev``) go, else Apple's sandbox.
    """
    sandbox = {"apple_sandbox_push_url": f"{host}:{sandbox_port}"} if sandbox_port else {}
    return "\n" + _three_applications(creds, host, port, ("rfc8599-apple", "rfc8599-linphone", "rfc8599-fcm"),
                                      "", creds.project_id, sandbox)


def _three_applications(creds: SimCredentials, host: str, port: int, names: tuple[str, str, str],
                        bundle_suffix: str, firebase_app_id: str, sandbox: dict[str, str] | None = None) -> str:
    """applications.ini text: the token-auth bundle as a ``sylk`` app on Apple
    (with ``sandbox``), the certificate bundle as a ``linphone`` app on Apple,
    and a ``sylk`` app on Firebase, every one trusting the simulator's CA."""
    apple = {"app_platform": "apple", "apple_push_url": f"{host}:{port}"}
    sections = {
        names[0]: {"app_id": creds.token_bundle_id + bundle_suffix, "app_type": "sylk", **apple, **(sandbox or {}),
                   "apple_key": creds.apns_key_file, "key_id": creds.key_id, "team_id": creds.team_id},
        names[1]: {"app_id": creds.cert_bundle_id + bundle_suffix, "app_type": "linphone", **apple,
                   "apple_certificate": creds.client_cert, "apple_key": creds.client_key},
        names[2]: {"app_id": firebase_app_id, "app_type": "sylk", "app_platform": "firebase",
                   "firebase_push_url": f"https://{host}:{port}/v1/projects/{creds.project_id}/messages:send",
                   "firebase_authorization_file": creds.service_account_file},
    }
    return "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items())
        + f"tls_ca_file = {creds.ca_file}\n"
        for name, options in sections.items())


if __name__ == "__main__":
    sys.exit(main())
