"""An add answered 200 survives ``kill -9`` of the daemon (SQLite store).

The real ``pushsidecar`` daemon runs as a subprocess on a free loopback port
with its SQLite store in tmp_path.  Several concurrent HTTP clients add 5,000
tokens through ``POST /v2/tokens/{account}``; once about 2,000 adds have been
answered the daemon gets SIGKILL, with adds still in flight.  It is then
restarted on the same spool_dir, the adds that never got an answer are sent
again, and the store is checked directly: every add answered 200 is there and
the file passes SQLite's integrity check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator
from sidecar.store.sqlite import SqliteTokenStore, default_path

from sidecar_fixtures import sidecar_config

REPO = Path(__file__).resolve().parents[2]
PUSHSIDECAR = Path(sys.executable).with_name("pushsidecar")

TOTAL_TOKENS = 5_000
KILL_AFTER_ANSWERED = 2_000
ACCOUNTS = 50  # 100 devices each
CLIENTS = 8
WORKERS_PER_CLIENT = 4
START_TIMEOUT = 30.0


def free_port() -> int:
    """A port the kernel just gave us (it may be taken again before we use it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Daemon:
    """A ``pushsidecar`` subprocess and where it listens."""

    process: trio.Process
    url: str
    log: Path


async def start_daemon(config_dir: Path, log: Path, *, attempts: int = 5) -> Daemon:
    """Start the daemon on a free port and wait until /health answers.

    The port is picked by binding port 0 and closing the socket, so another
    program may grab it in between: a daemon that exits during start-up is
    retried on a new port.

    Raises:
        AssertionError: no attempt came up (the log tail is in the message).
    """
    for _ in range(attempts):
        port = free_port()
        with log.open("ab") as out:
            process = await trio.lowlevel.open_process(
                [str(PUSHSIDECAR), "--config-dir", str(config_dir), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=REPO,
            )
        url = f"http://127.0.0.1:{port}"
        if await wait_healthy(process, url):
            return Daemon(process, url, log)
        if process.returncode is None:
            process.kill()
        await process.wait()
    raise AssertionError(f"pushsidecar did not start; log tail:\n{log_tail(log)}")


async def wait_healthy(process: trio.Process, url: str) -> bool:
    """True once GET /health answers 200 from our process; False if it exited."""
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        with trio.move_on_after(START_TIMEOUT):
            while process.poll() is None:
                try:
                    if (await http.get("/health")).status_code == 200:
                        # Answered by our daemon, not by whoever else had the port.
                        return process.poll() is None
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    return False


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def account_of(i: int) -> str:
    return f"user{i % ACCOUNTS}@durability.test"


def add_body(creds: SimCredentials, i: int) -> dict:
    return {
        "app-id": f"{creds.token_bundle_id}.prod",
        "platform": "firebase",
        "token": f"tok-{i:05d}",
        "device-id": f"dev-{i:05d}",
        "silent": "1",
    }


@dataclass
class AddLog:
    """Which adds were answered, and how."""

    answered_200: set[int] = field(default_factory=set)
    other_answers: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    in_flight_at_kill: int = -1


async def add_tokens(
    url: str, creds: SimCredentials, indexes: list[int], record: AddLog,
    *, kill: Daemon | None = None, kill_after: int = 0,
) -> None:
    """Add ``indexes`` from CLIENTS concurrent clients, each with several workers.

    With ``kill``, that daemon gets SIGKILL once ``kill_after`` adds have been
    answered 200.  A request that fails at the transport level (the daemon
    died) got no answer: it is not recorded, and its worker stops.
    """
    queue = iter(indexes)
    workers_left = CLIENTS * WORKERS_PER_CLIENT

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal workers_left
        try:
            for i in queue:
                record.in_flight += 1
                try:
                    answer = await http.post(f"/v2/tokens/{account_of(i)}", json=add_body(creds, i))
                except httpx.TransportError:
                    return  # the daemon is gone
                finally:
                    record.in_flight -= 1
                if answer.status_code == 200:
                    record.answered_200.add(i)
                else:
                    record.other_answers[i] = answer.status_code
        finally:
            workers_left -= 1

    async def killer(daemon: Daemon) -> None:
        while len(record.answered_200) < kill_after and workers_left:
            await trio.sleep(0.001)
        record.in_flight_at_kill = record.in_flight
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            for _ in range(CLIENTS)
        ]
        async with trio.open_nursery() as nursery:
            for http in clients:
                for _ in range(WORKERS_PER_CLIENT):
                    nursery.start_soon(worker, http)
            if kill is not None:
                nursery.start_soon(killer, kill)


async def stored_device_ids(path: Path) -> set[str]:
    store = await SqliteTokenStore.open(path)
    try:
        found: set[str] = set()
        for a in range(ACCOUNTS):
            found |= {d.device_id for d in await store.devices(account_of(a))}
        return found
    finally:
        await store.aclose()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


async def test_adds_answered_200_survive_sigkill(tmp_path: Path, sim: Simulator, sim_credentials) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    db = default_path(config_dir / "spool")
    log = tmp_path / "daemon.log"

    daemon = await start_daemon(config_dir, log)
    first = AddLog()
    with trio.fail_after(120):
        await add_tokens(daemon.url, sim_credentials, list(range(TOTAL_TOKENS)), first,
                         kill=daemon, kill_after=KILL_AFTER_ANSWERED)
    assert daemon.process.returncode == -signal.SIGKILL
    assert first.other_answers == {}, f"non-200 answers: {first.other_answers}"
    answered = len(first.answered_200)
    # Killed part-way, with requests still on the wire: otherwise the test proves little.
    assert KILL_AFTER_ANSWERED <= answered < TOTAL_TOKENS
    assert first.in_flight_at_kill > 0
    print(f"killed after {answered} answered adds, {first.in_flight_at_kill} in flight")

    # The -wal file is left over from the kill; the restarted daemon recovers it.
    daemon = await start_daemon(config_dir, log)
    try:
        second = AddLog()
        rest = [i for i in range(TOTAL_TOKENS) if i not in first.answered_200]
        with trio.fail_after(120):
            await add_tokens(daemon.url, sim_credentials, rest, second)
        assert second.other_answers == {} and second.answered_200 == set(rest)
        # Read while the daemon runs (WAL allows it): the answered ones are there.
        stored = await stored_device_ids(db)
        missing = {f"dev-{i:05d}" for i in first.answered_200} - stored
        assert not missing, f"{len(missing)} answered adds lost, e.g. {sorted(missing)[:5]}"
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await daemon.process.wait()
    assert daemon.process.returncode == 0, log_tail(log)

    assert integrity(db) == "ok"
    stored = await stored_device_ids(db)
    assert stored == {f"dev-{i:05d}" for i in range(TOTAL_TOKENS)}

    # And the operator's view, through the CLI, of one account.
    listing = subprocess.run(
        [str(PUSHSIDECAR), "store", "list", account_of(7), "--config-dir", str(config_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )
    assert listing.returncode == 0, listing.stderr
    assert f"{account_of(7)}: {TOTAL_TOKENS // ACCOUNTS} device(s)" in listing.stdout
    assert "token            tok-00007" in listing.stdout
