"""CURVE authentication of the ZeroMQ ingress: keys, the allow-list and ZAP.

Theory of operation.  With ``[zmq] curve_secret_key`` set, the PULL socket is
a CURVE server (``curve_server``, the sidecar's key pair): every connection
is encrypted, and before ZeroMQ accepts one it asks the ZAP handler in the
same context (RFC 27, ``inproc://zeromq.zap.01``) whether the client's
public key may talk.  :class:`ZapHandler` answers from the allow-list, the
public keys in the ``curve_clients`` folder: "200" for a listed key, "400"
for anything else, counted in :attr:`ZapHandler.denied` and logged
(rate-limited; a public key is not a secret).  A refused client's handshake
fails, so none of its frames reach the reader.

Key files are ZeroMQ's certificate format (``zmq.auth``): ``NAME.key`` holds
the public key, ``NAME.key_secret`` both.  ``pushsidecar keys DIR NAME``
makes a pair.  Secret keys are written mode 0600 and never logged.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any
from collections.abc import Callable

import trio
import zmq
import zmq.auth
import zmq.utils.z85

from ..key_files import CurveKeyError, CurveServerKeys
from ..wire import RateLimitedLog

log = logging.getLogger("sidecar.ingress.zmq")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"pushsidecar"


def make_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (folder / (name + suffix)).exists():
            raise CurveKeyError(f"{folder / (name + suffix)} exists; not overwriting a key")
    old = os.umask(0o077)
    try:
        public_file, secret_file = zmq.auth.create_certificates(os.fspath(folder), name)
    finally:
        os.umask(old)
    os.chmod(secret_file, 0o600)
    os.chmod(public_file, 0o644)
    return Path(public_file), Path(secret_file)


def apply_server_keys(sock: zmq.Socket[Any], keys: CurveServerKeys) -> None:
    """Make ``sock`` a CURVE server that asks ZAP (call before bind)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


class ZapHandler:
    """Answers ZeroMQ's authentication requests from the allow-list (see module doc)."""

    def __init__(self, allowed: Callable[[], frozenset[bytes]], counters: Any = None):
        self.allowed = allowed  # read per handshake: a reload's new allow-list applies at once
        self.counters = counters  # a ZmqIngressCounters: clients_refused is kept there too
        self.granted = 0
        self.denied = 0
        self._warn = RateLimitedLog(log.warning)

    def decide(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request (pure but for the counters)."""
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        if mechanism == b"CURVE" and credentials and credentials[0] in self.allowed():
            self.granted += 1
            return [version, request_id, b"200", b"OK", zmq.utils.z85.encode(credentials[0]), b""]
        self.denied += 1
        if self.counters is not None:
            self.counters.clients_refused += 1
        who = zmq.utils.z85.encode(credentials[0]).decode() if mechanism == b"CURVE" and credentials else "-"
        self._warn(f"zmq ingress: refused a {mechanism.decode('ascii', 'replace')} client from "
                   f"{address.decode('ascii', 'replace')} (public key {who}; {self.denied} refused so far)")
        return [version, request_id, b"400", b"not on the allow-list", b"", b""]

    async def run(self, ctx: zmq.Context[Any], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ZAP in ``ctx`` until cancelled (start it before binding the CURVE socket)."""
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        fd = None
        try:
            sock.bind(ZAP_ENDPOINT)
            fd = sock.getsockopt(zmq.FD)
            task_status.started()
            while True:
                while True:  # the fd is edge-triggered: drain, then ask once more
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    sock.send_multipart(self.decide(frames))
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await trio.lowlevel.checkpoint()
                    continue
                await trio.lowlevel.wait_readable(fd)
        finally:
            if fd is not None:
                trio.lowlevel.notify_closing(fd)
            sock.close(linger=0)


# -- pushsidecar keys ---------------------------------------------------------------------------


def add_keys_command(commands: Any) -> None:
    """Register ``pushsidecar keys`` on the CLI's sub-command parsers."""
    parser = commands.add_parser(
        "keys",
        help="make a CURVE key pair for the ZeroMQ ingress (the sidecar's, or a proxy's)",
        description="Writes DIR/NAME.key (public) and DIR/NAME.key_secret (mode 0600). "
        "The sidecar's secret goes to [zmq] curve_secret_key; each proxy's NAME.key "
        "goes into the [zmq] curve_clients folder; the proxies need the sidecar's .key.",
    )
    parser.add_argument("dir", type=Path, help="folder to write the key files into")
    parser.add_argument("name", nargs="?", default="sidecar", help="file name (default: sidecar)")
    parser.set_defaults(handler=_keys_main)


def _keys_main(args: argparse.Namespace) -> int:
    try:
        public_file, secret_file = make_key_pair(args.dir, args.name)
    except CurveKeyError as exc:
        print(f"pushsidecar keys: {exc}")
        return 2
    print(f"public key: {public_file}\nsecret key: {secret_file} (keep it private)")
    return 0
