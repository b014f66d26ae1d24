"""``workers = N``: N daemon processes under one supervisor, to use every core.

Theory of operation: ``pushsidecar`` with ``workers`` > 1 becomes a small
supervisor (this module, one trio loop) that starts N ordinary daemons
(``python -m sidecar`` with ``$PUSHSIDECAR_WORKER`` set) and keeps them
running:

- **HTTP**: every worker binds the same port with SO_REUSEPORT and the
  kernel spreads connections among them.  The supervisor binds it first
  (without listening, so it gets no connections) to resolve port 0 and to
  fail early when the port is taken.
- **ZeroMQ**: the supervisor binds the proxy-facing PULL endpoint and routes
  each frame to one worker's own ``ipc://`` PULL socket, chosen by a hash of
  the call-id: a duplicate of a message reaches the worker that saw the
  first one, so the per-process duplicate check keeps working.  The proxy
  scripts and the wire format are unchanged.
- **Credentials**: the workers share the spool folder, where the APNs JWT of
  each key and the OAuth token of each service account are kept under a
  file lock (one token for all workers, see :mod:`sidecar.pns.shared_tokens`).
- **Store**: SQLite in WAL mode takes several processes; Cassandra is a server.
- **Signals**: SIGHUP (reload, log reopen) and SIGTERM/SIGINT are passed to
  every worker; the supervisor exits when they all have.  A worker that dies
  is restarted (after a pause that doubles up to 30 s).
- **systemd**: workers send their sd_notify messages to the supervisor,
  which says READY=1 once all are ready and WATCHDOG=1 while all are alive.
- **/metrics**: each worker publishes its metrics to ``run_dir`` every second;
  the one that answers a scrape adds them up (:mod:`sidecar.observe.worker_metrics`).
- **Logs**: every worker writes the same stderr and log file, one whole line
  per write; request ids carry the process id, so ``trace`` reads one log.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import trio

from .config import Settings
from .observe import systemd

logger = logging.getLogger("sidecar.workers")

#: set in each worker to its number (0..N-1); see also sidecar.service.WORKER_ENV
WORKER_ENV = "PUSHSIDECAR_WORKER"
#: how many workers there are, and where each one's ZeroMQ PULL socket binds
WORKER_COUNT_ENV = "PUSHSIDECAR_WORKERS"
WORKER_ZMQ_ENV = "PUSHSIDECAR_WORKER_ZMQ"

STOP_GRACE_SECONDS = 15.0
MAX_RESTART_PAUSE = 30.0


def worker_count(settings: Settings) -> int:
    """``workers`` from general.ini, 0 meaning one per core."""
    return settings.workers or (os.cpu_count() or 1)


def worker_index() -> int | None:
    """This process's worker number, None outside a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def worker_zmq_endpoint(run_dir: Path, index: int) -> str:
    return f"ipc://{run_dir}/worker-{index}.sock"


def metrics_folder(run_dir: Path) -> Path:
    return run_dir / "worker-metrics"


# -- the ZeroMQ router (a thread: blocking ZeroMQ calls, no Python per frame but this loop) -----


def route(frame: bytes, count: int) -> int:
    """The worker for ``frame``: by its call-id, so duplicates meet; 0 if unreadable."""
    import msgpack  # type: ignore[import-untyped]  # no type information shipped

    try:
        message = msgpack.unpackb(frame, raw=False)
        call_id = message["ci"]
        return zlib.crc32(call_id.encode()) % count
    except Exception:  # garbage goes to worker 0, which counts and logs it
        return 0


class ZmqRouter:
    """PULL on the proxy-facing endpoint, one PUSH per worker.

    Args:
        endpoint: what the proxies send to (``[zmq] endpoint``).
        worker_endpoints: each worker's PULL endpoint, in worker order.
    """

    def __init__(self, endpoint: str, worker_endpoints: list[str], *, hwm: int = 100_000):
        import zmq

        from .ingress.zmq import _prepare_ipc_path

        self._zmq = zmq
        self._context = zmq.Context(io_threads=1)
        self._pull = self._context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, hwm)
        self._pull.setsockopt(zmq.LINGER, 0)
        ipc_path = _prepare_ipc_path(endpoint, 0o750)
        self._pull.bind(endpoint)
        if ipc_path is not None:
            os.chmod(ipc_path, 0o660)  # as the single-process daemon does
        self.endpoint = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pushes = []
        for worker_endpoint in worker_endpoints:
            push = self._context.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, hwm)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(worker_endpoint)
            self._pushes.append(push)
        self._stop_address = f"inproc://router-stop-{secrets.token_hex(4)}"
        self._stop_receiver = self._context.socket(zmq.PAIR)
        self._stop_receiver.bind(self._stop_address)
        self.routed = [0] * len(worker_endpoints)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="zmq-router", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        stopper = self._context.socket(self._zmq.PAIR)
        stopper.connect(self._stop_address)
        stopper.send(b"stop")
        self._thread.join(5)
        stopper.close(linger=0)
        for sock in (self._pull, self._stop_receiver, *self._pushes):
            sock.close(linger=0)
        self._context.term()

    def _run(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._stop_receiver, zmq.POLLIN)
        recv, pushes, count = self._pull.recv, self._pushes, len(self._pushes)
        last_warning = 0.0
        while True:
            events = dict(poller.poll())
            if self._stop_receiver in events:
                return
            while True:  # drain what is there
                try:
                    frame = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                index = route(frame, count) if count > 1 else 0
                try:
                    pushes[index].send(frame, zmq.NOBLOCK)
                    self.routed[index] += 1
                except zmq.Again:
                    # The worker's queue is full (it is down and 100,000
                    # frames are waiting): like a proxy whose sidecar is down.
                    self.dropped += 1
                    if time.monotonic() - last_warning > 10:
                        last_warning = time.monotonic()
                        logger.warning("zmq router: worker %d queue full, %d frame(s) dropped so far",
                                       index, self.dropped)


# -- the supervisor ----------------------------------------------------------------------------


class _Worker:
    def __init__(self, index: int):
        self.index = index
        self.process: trio.Process | None = None
        self.ready = False
        self.last_watchdog = time.monotonic()
        self.restarts = 0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT, not listening: resolves port 0 for
    the workers and holds the port while they start (it gets no connections)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    if port:
        # First without SO_REUSEPORT: another process listening there with it
        # (another supervised sidecar) would otherwise share the port silently.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring)."""

    def __init__(self, config_dir: Path, settings: Settings, count: int, *, ip: str | None,
                 port: int | None, debug: bool):
        self.config_dir = config_dir
        self.settings = settings
        self.count = count
        self.host = ip or settings.host
        self.port = settings.port if port is None else port
        self.debug = debug
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self._notify_address = f"\0pushsidecar-supervisor-{os.getpid()}-{secrets.token_hex(4)}"
        self._reloading = False

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "sidecar", "--config-dir", str(self.config_dir),
                   "--ip", self.host, "--port", str(self.port)]
        return command + (["--debug"] if self.debug else [])

    def _environment(self, worker: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env[WORKER_ENV] = str(worker.index)
        env[WORKER_COUNT_ENV] = str(self.count)
        env[WORKER_ZMQ_ENV] = worker_zmq_endpoint(self.settings.run_dir, worker.index)
        # The workers' sd_notify messages come to us; systemd hears from us only.
        env["NOTIFY_SOCKET"] = "@" + self._notify_address[1:]
        env.pop("WATCHDOG_PID", None)
        if systemd.default_notifier.watchdog_interval() is None:
            env.pop("WATCHDOG_USEC", None)
        return env

    async def run(self) -> int:
        reservation = reserve_port(self.host, self.port)
        self.port = reservation.getsockname()[1]
        run_dir = self.settings.run_dir
        router = None
        try:
            if self.settings.zmq_enabled:
                run_dir.mkdir(parents=True, exist_ok=True)
                endpoint = self.settings.zmq_endpoint or f"ipc://{run_dir}/push.sock"
                router = ZmqRouter(endpoint, [worker_zmq_endpoint(run_dir, w.index) for w in self.workers])
                router.start()
            metrics_folder(run_dir).mkdir(parents=True, exist_ok=True)
            notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            await notify.bind(self._notify_address)
            logger.info("supervisor: %d workers on port %d, zmq %s", self.count, self.port,
                        router.endpoint if router else "off")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_notifications, notify)
                nursery.start_soon(systemd_watchdog, self)
                for worker in self.workers:
                    nursery.start_soon(self._keep_running, worker)
                await self._handle_signals()
                nursery.cancel_scope.cancel()
            notify.close()
        finally:
            reservation.close()
            if router is not None:
                router.stop()
        logger.info("supervisor: stopped")
        return 0

    async def _keep_running(self, worker: _Worker) -> None:
        pause = 0.5
        while not self.stopping:
            started = time.monotonic()
            worker.ready = False
            worker.process = await trio.lowlevel.open_process(
                self._command(), env=self._environment(worker), stdin=None)
            worker.last_watchdog = time.monotonic()
            status = await worker.process.wait()
            if self.stopping:
                return
            if status == 2:  # a configuration error: restarting would fail the same way
                logger.error("supervisor: worker %d exited with a configuration error", worker.index)
            logger.warning("supervisor: worker %d (pid %d) exited with status %s; restarting in %.1f s",
                           worker.index, worker.process.pid, status, pause)
            worker.restarts += 1
            await trio.sleep(pause)
            pause = 0.5 if time.monotonic() - started > 60 else min(pause * 2, MAX_RESTART_PAUSE)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.info("supervisor: SIGHUP, reloading %d workers", self.count)
                    self._reloading = True
                    for worker in self.workers:
                        worker.ready = False
                    systemd.notify_reloading()
                    self._signal_all(signal.SIGHUP)
                    continue
                logger.info("supervisor: received %s, stopping the workers", signal.Signals(signum).name)
                self.stopping = True
                systemd.notify_stopping()
                self._signal_all(signal.SIGTERM)
                with trio.move_on_after(STOP_GRACE_SECONDS):
                    for worker in self.workers:
                        if worker.process is not None:
                            await worker.process.wait()
                self._signal_all(signal.SIGKILL)
                return

    async def _receive_notifications(self, sock: Any) -> None:
        """sd_notify datagrams from the workers, each told apart by its sender's
        pid (SO_PASSCRED credentials, as systemd does)."""
        credentials_size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            data, ancillary, _, _ = await sock.recvmsg(4096, credentials_size)
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            worker = next((w for w in self.workers if w.process is not None and w.process.pid == pid), None)
            if worker is None:
                continue
            lines = data.decode("utf-8", "replace").splitlines()
            if "READY=1" in lines and not worker.ready:
                worker.ready = True
                if all(w.ready for w in self.workers):
                    systemd.notify_ready(f"{self.count} workers ready")
                    logger.info("supervisor: %d workers ready", self.count)
            if "WATCHDOG=1" in lines:
                worker.last_watchdog = time.monotonic()


async def systemd_watchdog(supervisor: Supervisor) -> None:
    """WATCHDOG=1 upstream while every worker is alive and keeps its own watchdog
    (a worker whose event loop is stuck stops pinging, and systemd restarts us)."""
    interval = systemd.default_notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        now = time.monotonic()
        healthy = all(w.process is not None and w.process.returncode is None
                      and now - w.last_watchdog < 3 * interval for w in supervisor.workers)
        if healthy:
            systemd.default_notifier.watchdog()
        await trio.sleep(interval)


def run_supervisor(config_dir: Path, settings: Settings, *, ip: str | None, port: int | None,
                   debug: bool) -> int:
    """Run ``worker_count(settings)`` workers until SIGTERM; the exit status."""
    supervisor = Supervisor(config_dir, settings, worker_count(settings), ip=ip, port=port, debug=debug)
    try:
        return trio.run(supervisor.run)
    except OSError as exc:
        from .ingress.endpoint_guard import http_in_use_message, is_address_in_use

        text = (http_in_use_message(supervisor.host, supervisor.port) if is_address_in_use(exc)
                else f"{exc.strerror or exc}")
        logger.error("cannot start: %s", text)
        return 1
