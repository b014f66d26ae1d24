"""FCM HTTP v1 sending: the dispatcher + FcmService + our HTTP/2 client vs httpx[http2].

System under test: N pushes through :class:`sidecar.dispatch.Dispatcher` ->
:class:`sidecar.pns.fcm.FcmService` (OAuth access token from the
simulator's token endpoint, cached) -> our HTTP/2 connection (at most 100
streams, FCM's limit) -> the simulator in a separate process.

Baseline (same run, same simulator, same concurrency): the same requests
(the Sylk app type's ``{"message": ...}`` body with the token, a bearer
access token obtained ONCE before timing) sent with
``httpx.AsyncClient(http2=True)`` under trio (also 100 streams at most).

    .venv/bin/python bench/bench_fcm.py [--count 20000] [--concurrency 500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import TOKEN, measure  # noqa: E402


def fcm_push(app_id: str, i: int):
    return common.bench_push(app_id, "firebase", i)


def send_url(creds, port: int) -> str:
    return f"https://127.0.0.1:{port}/v1/projects/{creds.project_id}/messages:send"


async def sidecar_worker(args: argparse.Namespace) -> dict:
    from sidecar.config import AppConfig
    from sidecar.sim.creds import load_credentials

    creds = load_credentials(args.creds_dir)
    app = AppConfig(section="bench-firebase", app_id=f"{creds.token_bundle_id}.prod", app_type="sylk",
                    platform="firebase", firebase_push_url=send_url(creds, args.port),
                    firebase_authorization_file=creds.service_account_file, tls_ca_file=creds.ca_file)
    return await common.dispatcher_worker(app, args.count, args.concurrency, args.timeout,
                                          {"connections": "connects", "oauth_fetches": "oauth_fetches"})


async def httpx_worker(args: argparse.Namespace) -> dict:

    from sidecar.apps.registry import load_app_types
    from sidecar.sim.creds import load_credentials
    from sidecar.sim.testing import oauth_assertion, oauth_form

    creds = load_credentials(args.creds_dir)
    app_id = f"{creds.token_bundle_id}.prod"
    app_type = load_app_types(None)["sylk"]
    url = send_url(creds, args.port)
    token_uri = creds.service_account()["token_uri"]
    async with common.httpx_client(creds.ca_file, args.concurrency) as client:
        granted = await client.post(token_uri, data=oauth_form(oauth_assertion(creds, token_uri)))
        granted.raise_for_status()
        authorization = "Bearer " + granted.json()["access_token"]
        headers = {"content-type": "application/json", "authorization": authorization}

        async def send(i: int) -> bool:
            notification = app_type.build(fcm_push(app_id, i), "firebase", time.time())
            payload = dict(notification.payload)
            payload["message"] = {**payload["message"], "token": TOKEN}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            return await common.httpx_post(client, url, body, headers)

        return await measure(send, args.count, args.concurrency, args.timeout)


WORKERS = {"sidecar": sidecar_worker, "httpx": httpx_worker}


def main() -> None:
    parser = common.push_arguments(__doc__, WORKERS)
    args = parser.parse_args()
    if args.worker:
        import trio

        print(json.dumps(trio.run(WORKERS[args.worker], args)), flush=True)
        return
    print(f"FCM: {args.count:,} pushes per side, {args.concurrency} in flight (100 streams on one "
          f"connection); sidecar = Dispatcher -> FcmService -> our HTTP/2; httpx = "
          f"httpx.AsyncClient(http2=True) with a bearer token fetched once")
    ratios = []
    with common.temp_dir("bench-fcm-") as folder, common.simulator(folder) as sim:
        for round_number in range(1, args.rounds + 1):
            rows = []
            for side in ("sidecar", "httpx"):
                sim.cpu.start()
                report = common.run_worker(Path(__file__), [
                    "--worker", side, "--port", str(sim.port), "--creds-dir", str(sim.creds_dir),
                    "--count", str(args.count), "--concurrency", str(args.concurrency),
                    "--timeout", str(args.timeout),
                ], timeout=args.timeout + 60)
                sim.cpu.stop()
                report["server_cpu_pct"] = sim.cpu.percent
                rows.append((side, report))
            suffix = f" (round {round_number}/{args.rounds})" if args.rounds > 1 else ""
            common.print_table(f"server: simulator (Python, separate process){suffix}", rows,
                               ratio=("sidecar", "httpx"))
            ratios.append(rows[0][1]["rate"] / rows[1][1]["rate"])
    if len(ratios) > 1:
        print(f"throughput ratio sidecar/httpx per round {', '.join(f'x{v:.2f}' for v in ratios)}; "
              f"median x{common.median(ratios):.2f}")


if __name__ == "__main__":
    main()
