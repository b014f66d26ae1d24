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
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.bench_apns import TOKEN, WARMUP, measure  # noqa: E402


def fcm_push(app_id: str, i: int):
    import trio

    from sidecar.model import Event, Push

    return Push(app_id=app_id, platform="firebase", token=TOKEN, event=Event.INCOMING_SESSION,
                call_id=f"bench-{i}@example.com", from_uri="sip:alice@example.com",
                to_uri="sip:bob@example.com", deadline=trio.current_time() + 60,
                expires_at=time.time() + 45, media_type="audio", from_display_name="Alice")


def send_url(creds, port: int) -> str:
    return f"https://127.0.0.1:{port}/v1/projects/{creds.project_id}/messages:send"


async def sidecar_worker(args: argparse.Namespace) -> dict:
    import trio

    from sidecar.apps.registry import load_app_types
    from sidecar.config import AppConfig
    from sidecar.dispatch import Dispatcher
    from sidecar.observe.metrics import Metrics
    from sidecar.pns.registry import PushServices, builtin_factories
    from sidecar.sim.creds import load_credentials

    creds = load_credentials(args.creds_dir)
    app = AppConfig(section="bench-firebase", app_id=f"{creds.token_bundle_id}.prod", app_type="sylk",
                    platform="firebase", firebase_push_url=send_url(creds, args.port),
                    firebase_authorization_file=creds.service_account_file, tls_ca_file=creds.ca_file)
    app_type = load_app_types(None)["sylk"]
    async with trio.open_nursery() as nursery:
        services = PushServices(nursery, builtin_factories())
        services.apply({app.key: app})
        dispatcher = Dispatcher(services, metrics=Metrics())

        async def send(i: int) -> bool:
            outcome = await dispatcher.dispatch(fcm_push(app.app_id, i), app, app_type)
            return outcome.ok

        report = await measure(send, args.count, args.concurrency, args.timeout)
        stats = services.statistics()[app.key]
        report["connections"] = stats.get("connects")
        report["oauth_fetches"] = stats.get("oauth_fetches")
        await services.aclose()
        nursery.cancel_scope.cancel()
    return report


async def httpx_worker(args: argparse.Namespace) -> dict:
    import httpx

    from sidecar.apps.registry import load_app_types
    from sidecar.sim.creds import load_credentials
    from sidecar.sim.testing import oauth_assertion, oauth_form

    creds = load_credentials(args.creds_dir)
    app_id = f"{creds.token_bundle_id}.prod"
    app_type = load_app_types(None)["sylk"]
    url = send_url(creds, args.port)
    token_uri = creds.service_account()["token_uri"]
    context = ssl.create_default_context(cafile=str(creds.ca_file))
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(http2=True, verify=context, timeout=60, limits=limits) as client:
        granted = await client.post(token_uri, data=oauth_form(oauth_assertion(creds, token_uri)))
        granted.raise_for_status()
        authorization = "Bearer " + granted.json()["access_token"]
        headers = {"content-type": "application/json", "authorization": authorization}

        async def send(i: int) -> bool:
            notification = app_type.build(fcm_push(app_id, i), "firebase", time.time())
            payload = dict(notification.payload)
            payload["message"] = {**payload["message"], "token": TOKEN}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.http_version == "HTTP/2"

        return await measure(send, args.count, args.concurrency, args.timeout)


WORKERS = {"sidecar": sidecar_worker, "httpx": httpx_worker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="timed pushes per side (after %d of warm-up)" % WARMUP)
    parser.add_argument("--concurrency", type=int, default=500, help="pushes in flight")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the comparison")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per side")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--creds-dir", type=Path, help=argparse.SUPPRESS)
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
