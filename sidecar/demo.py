"""``pushsidecar demo``: the sidecar and the simulator in one process.

For a first look without an Apple or Google account: generated credentials,
a generated configuration (three applications: sylk on Apple with token auth,
linphone on Apple with certificate auth, sylk on Firebase), the simulator on
a free loopback port standing in for APNs, FCM and Google OAuth, and the
sidecar on 127.0.0.1.  One sample push is sent at start-up so the log shows
the whole path at once.

The demo folder holds generated private keys: a temporary one is removed
on exit unless ``--keep`` is given (a folder named with ``--dir`` is the
operator's and is left alone).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import trio

logger = logging.getLogger("sidecar.demo")

SAMPLE_TOKEN = "a" * 64
SAMPLE_CALL_ID = "demo-call-1"
LOG_FILE_NAME = "pushsidecar.log"


def run_demo(*, port: int = 8400, folder: Path | None = None, keep: bool = False) -> int:
    """Run until Ctrl-C.  Exit 0, or 1 when the sidecar cannot start (one line)."""
    from .config import ConfigError
    from .observe.log import setup_logging
    from .service import StartupError, leaf_exceptions

    temporary = folder is None
    folder = Path(folder or tempfile.mkdtemp(prefix="pushsidecar-demo-")).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / LOG_FILE_NAME
    handle = setup_logging(debug=False, log_to_file=True, log_file=log_file, debug_hpack=False)
    code = 0
    try:
        trio.run(_demo, folder, port)
    except BaseException as exc:  # noqa: BLE001 - sorted out below, re-raised if unknown
        leaves = [exc] if not isinstance(exc, BaseExceptionGroup) else list(leaf_exceptions(exc))
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            pass
        elif all(isinstance(leaf, (StartupError, ConfigError, KeyboardInterrupt)) for leaf in leaves):
            for leaf in leaves:
                if not isinstance(leaf, KeyboardInterrupt):
                    print(f"pushsidecar demo: cannot start: {leaf}", file=sys.stderr)
            if port == 8400:
                print("  (try: pushsidecar demo --port 0, for any free port)", file=sys.stderr)
            code = 1
        else:
            raise
    finally:
        handle.close()
        if temporary and not keep:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"\nremoved {folder} (it held generated private keys; --keep keeps it)")
        else:
            print(f"\nkept {folder}: configuration, credentials (private keys!) and {LOG_FILE_NAME}")
    return code


async def _demo(folder: Path, port: int) -> None:
    from .service import run_sidecar
    from .sim.cli import write_config
    from .sim.creds import ensure_credentials, write_service_account
    from .sim.server import open_simulator

    creds = ensure_credentials(folder / "credentials")
    async with open_simulator(creds, token_update_interval=0) as sim:
        write_service_account(creds, sim.port)
        sim.add_service_account(creds.service_account())
        config_dir = write_config(folder / "config", creds, sim.port, sidecar_port=port)
        (config_dir / "general.ini").write_text(
            (config_dir / "general.ini").read_text()
            + f"\n[zmq]\nendpoint = ipc://{folder}/push.sock\nrun_dir = {folder}\n"
        )
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(run_sidecar, config_dir)
            app_id = f"{creds.token_bundle_id}.prod"
            body = {
                "app-id": app_id, "platform": "apple", "token": SAMPLE_TOKEN,
                "call-id": SAMPLE_CALL_ID, "from": "sip:alice@example.com",
                "to": "sip:bob@example.com", "event": "incoming_session",
                "media-type": "audio", "silent": True,
            }
            log_file = folder / LOG_FILE_NAME
            sim_url = f"https://127.0.0.1:{sim.port}"
            print(f"\npushsidecar demo\n  configuration: {config_dir}\n"
                  f"  simulator (APNs, FCM, OAuth): {sim_url}\n"
                  f"  sidecar API: {handle.http_url} (/docs for the API page)   "
                  f"ZeroMQ: {handle.zmq_endpoint}\n"
                  f"  logs: this terminal, and {log_file}\n", flush=True)
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"{handle.http_url}/push", json=body)
            print(f"sample push -> HTTP {answer.status_code} {answer.text}\n", flush=True)
            print(
                "try it yourself:\n"
                "  send a push:\n"
                f"    curl -s -X POST {handle.http_url}/push -H 'content-type: application/json' \\\n"
                f"      -d '{json.dumps(body)}'\n"
                "  what the simulator received (it serves TLS with its own CA):\n"
                f"    curl -s --cacert {creds.ca_file} {sim_url}/_sim/requests\n"
                "  one call's story from the log:\n"
                f"    pushsidecar trace {SAMPLE_CALL_ID} --log {log_file}\n"
                "Ctrl-C stops.", flush=True)
