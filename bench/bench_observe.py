"""What logging and metrics cost per push through the dispatcher (CPU µs/push).

One process, configurations alternated round by round (the machine's
noise hits them alike), the median per configuration reported:

- ``quiet``: no log handler (root at WARNING), real :class:`Metrics`
  (the reference);
- ``info``: the daemon's logging with ``debug = false`` (INFO: three
  ``key=value`` lines per push, redaction filter, to a file and to a
  console stream that goes to /dev/null);
- ``debug``: the same with ``debug = true``;
- ``no-metrics``: no log handler and a metrics object whose methods do
  nothing.

The push service is either an in-process fake that answers at once
(``--service fake``, default: isolates the dispatcher's own work) or the
real ApnsService + HTTP/2 against the simulator in a separate process
(``--service apns``: what debug logging adds on the whole path).

    .venv/bin/python bench/bench_observe.py [--count 20000] [--rounds 5] [--service fake|apns]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

CONFIGS = ("quiet", "info", "debug", "no-metrics")


class NoopMetrics:
    """Takes every Metrics call and does nothing."""

    def __getattr__(self, name: str):
        return _noop


def _noop(*args, **kwargs) -> None:
    return None


class InstantService:
    """A push service that delivers at once (one checkpoint, like a network answer)."""

    platform = "apple"

    async def send(self, push, notification):
        import trio

        from sidecar.pns.base import SendResult, Verdict

        await trio.lowlevel.checkpoint()
        return SendResult(Verdict.DELIVERED, 200, "OK", "https://127.0.0.1/3/device/" + push.token,
                          body={"apns-id": "x"})


class OneService:
    def __init__(self, service):
        self.service = service

    async def send(self, key, push, notification):
        return await self.service.send(push, notification)


async def run_config(config: str, dispatcher_args: dict, count: int, concurrency: int,
                     log_file: Path, devnull) -> float:
    """CPU µs per push of ``count`` pushes under ``config``."""

    from sidecar.dispatch import Dispatcher
    from sidecar.observe.log import setup_logging
    from sidecar.observe.metrics import Metrics

    handle = None
    if config in ("info", "debug"):
        handle = setup_logging(debug=config == "debug", log_to_file=True, log_file=log_file,
                               debug_hpack=False, stream=devnull)
    else:
        logging.getLogger().setLevel(logging.WARNING)
    metrics = NoopMetrics() if config == "no-metrics" else Metrics()
    dispatcher = Dispatcher(dispatcher_args["services"], metrics=metrics)
    app, app_type = dispatcher_args["app"], dispatcher_args["app_type"]

    async def send(i: int) -> bool:
        outcome = await dispatcher.dispatch(common.bench_push(app.app_id, "apple", i), app, app_type)
        return bool(outcome.ok)

    try:
        before = common.cpu_seconds()
        failures = await common.closed_loop(send, count, concurrency, [])
        cpu = common.cpu_seconds() - before
    finally:
        if handle is not None:
            handle.close()
    if failures:
        raise RuntimeError(f"{config}: {failures} push(es) not delivered")
    return cpu / count * 1e6


async def bench(args: argparse.Namespace, folder: Path, sim_port: int | None, creds_dir: Path | None) -> dict:
    import trio

    from sidecar.apps.registry import load_app_types
    from sidecar.config import AppConfig

    app_type = load_app_types(None)["sylk"]
    devnull = open(os.devnull, "w")
    results: dict[str, list[float]] = {config: [] for config in CONFIGS}
    log_sizes: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        if args.service == "fake":
            app = AppConfig(section="bench", app_id="com.example.bench.prod", app_type="sylk", platform="apple")
            services = OneService(InstantService())
        else:
            from sidecar.pns.registry import PushServices, builtin_factories
            from sidecar.sim.creds import load_credentials

            creds = load_credentials(creds_dir)
            app = AppConfig(section="bench-apple", app_id=f"{creds.token_bundle_id}.prod", app_type="sylk",
                            platform="apple", apple_host="127.0.0.1", apple_port=sim_port,
                            apple_key=creds.apns_key_file, key_id=creds.key_id, team_id=creds.team_id,
                            tls_ca_file=creds.ca_file)
            services = PushServices(nursery, builtin_factories())
            services.apply({app.key: app})
        setup = {"services": services, "app": app, "app_type": app_type}
        with trio.fail_after(args.timeout):
            await run_config("quiet", setup, min(args.count, 2000), args.concurrency,
                             folder / "warmup.log", devnull)  # connection, imports, caches
            for _ in range(args.rounds):
                for config in CONFIGS:
                    log_file = folder / f"{config}.log"
                    log_file.unlink(missing_ok=True)
                    results[config].append(await run_config(config, setup, args.count, args.concurrency,
                                                            log_file, devnull))
                    if log_file.exists():
                        log_sizes[config] = log_file.stat().st_size
        if args.service != "fake":
            await services.aclose()
        nursery.cancel_scope.cancel()
    devnull.close()
    return {"results": results, "log_bytes_per_push": {k: v / args.count for k, v in log_sizes.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="pushes per configuration and round")
    parser.add_argument("--concurrency", type=int, default=200, help="pushes in flight")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (configurations alternate)")
    parser.add_argument("--service", choices=("fake", "apns"), default="fake")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed in all")
    args = parser.parse_args()
    import trio

    print(f"observability cost: {args.count:,} pushes x {args.rounds} rounds per configuration, "
          f"{args.concurrency} in flight, service = {args.service}; CPU us/push of this process, "
          f"median of rounds")
    with common.temp_dir("bench-observe-") as folder:
        if args.service == "apns":
            with common.simulator(folder) as sim:
                outcome = trio.run(bench, args, folder, sim.port, sim.creds_dir)
        else:
            outcome = trio.run(bench, args, folder, None, None)
    results, sizes = outcome["results"], outcome["log_bytes_per_push"]
    medians = {config: common.median(values) for config, values in results.items()}
    print(f"\n{'configuration':<14}{'cpu us/push':>14}{'min':>10}{'max':>10}{'log B/push':>12}")
    for config in CONFIGS:
        values = results[config]
        size = sizes.get(config)
        print(f"{config:<14}{medians[config]:>14.1f}{min(values):>10.1f}{max(values):>10.1f}"
              f"{(f'{size:.0f}' if size else '-'):>12}")
    print(f"\nINFO logging (debug=false) costs {medians['info'] - medians['quiet']:+.1f} us/push "
          f"vs no logging")
    print(f"debug=true costs {medians['debug'] - medians['info']:+.1f} us/push vs debug=false")
    print(f"metrics cost {medians['quiet'] - medians['no-metrics']:+.1f} us/push vs a no-op metrics object")
    print(f"peak RSS {common.peak_rss_mb():.1f} MB")


if __name__ == "__main__":
    main()
