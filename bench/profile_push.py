"""Where a push's CPU goes: py-spy samples the daemon under wrk load.

The daemon (``python -m sidecar``, ``return_async = true``) sends every push
to the simulator (another process); wrk posts ``POST /push`` (or, with
``--zmq``, a load process feeds the ZeroMQ ingress) while py-spy records the
daemon.  Prints the functions with the most samples: by themselves (self)
and with what they call (inclusive), as shares of all samples.  This is the
profile the work of issue 13 was ordered by; it measures, it does not judge.

py-spy (PyPI) is installed into the virtual environment when missing.

    .venv/bin/python bench/profile_push.py [--seconds 10] [--rate 200] [--top 30] [--http-server fast|hypercorn]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.bench_http_push import WRK_SCRIPT, push_body  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(common.PYTHON).parent / "py-spy")
    if not Path(found).exists():
        subprocess.run([common.PYTHON, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return found


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive shares from py-spy's raw (collapsed stacks) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1].split(":")[0]
                  if "(" in frame else frame for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "-- self"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("-- inclusive")
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 8)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--http-server", choices=("fast", "hypercorn"), default="fast")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("profile_push: wrk is missing (Debian package wrk)")
    spy = py_spy()
    from sidecar.sim.cli import write_config
    from sidecar.sim.creds import load_credentials

    with common.temp_dir("profile-push-") as folder, common.simulator(folder) as sim:
        creds = load_credentials(sim.creds_dir)
        app_id = f"{creds.token_bundle_id}.prod"
        head, tail = json.dumps(push_body(app_id, "CALLID")).split("CALLID")
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT.format(head=json.dumps(head), tail=json.dumps(tail)))
        port = common.free_port()
        config_dir = write_config(folder / "config", creds, sim.port, sidecar_port=port)
        general = config_dir / "general.ini"
        general.write_text(general.read_text().replace(
            "[server]\n", f"[server]\nhttp_server = {args.http_server}\n", 1) + "\n[zmq]\nenabled = false\n")
        with open(folder / "sidecar.log", "wb") as log:
            daemon = subprocess.Popen([common.PYTHON, "-m", "sidecar", "--config-dir", str(config_dir)],
                                      stdout=log, stderr=log, env=common.child_env(), cwd=common.ROOT)
        try:
            common.wait_for_port(port, 30, daemon)
            url = f"http://127.0.0.1:{port}/push"
            wrk = ["wrk", "-t1", f"-c{args.connections}", "-s", str(script), url]
            subprocess.run(wrk[:1] + ["-d2s"] + wrk[1:], capture_output=True, timeout=60)  # warm-up
            raw = folder / "profile.txt"
            spy_process = subprocess.Popen([spy, "record", "-p", str(daemon.pid), "-d", str(int(args.seconds)),
                                            "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = subprocess.run(wrk[:1] + [f"-d{int(args.seconds)}s"] + wrk[1:], capture_output=True,
                                  text=True, timeout=args.seconds + 60).stdout
            spy_process.wait(timeout=60)
        finally:
            common.stop_process(daemon)
        rate = next((line for line in load.splitlines() if "Requests/sec" in line), "?")
        print(f"POST /push through the daemon ({args.http_server} HTTP server), {args.connections} "
              f"connections, {args.seconds:g} s, {rate.strip()} (slowed by the sampling)")
        print(summarize(raw, args.top) if raw.exists() else "py-spy wrote no profile (permissions?)")


if __name__ == "__main__":
    main()
