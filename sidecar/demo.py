"""``pushsidecar demo``: the sidecar and the simulator in one process.

For a first look without an Apple or Google account: generated credentials,
a generated configuration (three applications: sylk on Apple with token auth,
linphone on Apple with certificate auth, sylk on Firebase), the simulator on
a free loopback port standing in for APNs, FCM and Google OAuth, and the
sidecar on 127.0.0.1.  One sample push is sent at start-up so the log shows
the whole path at once.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import httpx
import trio

logger = logging.getLogger("sidecar.demo")

SAMPLE_TOKEN = "a" * 64


def run_demo(*, port: int = 8400, folder: Path | None = None) -> int:
    from .observe.log import setup_logging

    setup_logging(debug=False, log_to_file=False, log_file=None, debug_hpack=False)
    folder = Path(folder or tempfile.mkdtemp(prefix="pushsidecar-demo-")).absolute()
    try:
        trio.run(_demo, folder, port)
    except KeyboardInterrupt:
        pass
    return 0


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
                "call-id": "demo-call-1", "from": "sip:alice@example.com",
                "to": "sip:bob@example.com", "event": "incoming_session",
                "media-type": "audio", "silent": True,
            }
            print(f"\npushsidecar demo\n  configuration: {config_dir}\n"
                  f"  simulator: https://127.0.0.1:{sim.port} (records: GET /_sim/requests)\n"
                  f"  sidecar API: {handle.http_url}   ZeroMQ: {handle.zmq_endpoint}\n", flush=True)
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"{handle.http_url}/push", json=body)
            print(f"sample push -> HTTP {answer.status_code} {answer.text}\n", flush=True)
            print("try it yourself:\n  curl -s -X POST "
                  f"{handle.http_url}/push -H 'content-type: application/json' \\\n"
                  f"    -d '{json.dumps(body)}'\n"
                  "Ctrl-C stops.", flush=True)
