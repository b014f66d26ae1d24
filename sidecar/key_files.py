"""Client credentials read from files at (re)load: HTTP bearer tokens, ZeroMQ CURVE keys.

Below the configuration (which reports their errors with file, section and
option) and below the ingresses that check them per request or handshake.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import zmq.auth
import zmq.utils.z85

log = logging.getLogger("sidecar.ingress.zmq")

MIN_TOKEN_LENGTH = 16


class BearerTokenError(ValueError):
    """The tokens file is unusable (the message names the line, never a token)."""


def load_bearer_tokens(path: Path) -> tuple[tuple[str, str], ...]:
    """Read ``NAME TOKEN`` lines.

    Raises:
        BearerTokenError: missing file, malformed line, short or repeated token.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BearerTokenError(f"cannot read {path}: {exc.__class__.__name__}") from None
    tokens: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BearerTokenError(f"{path} line {number}: expected 'NAME TOKEN'")
        name, token = parts
        if len(token) < MIN_TOKEN_LENGTH:
            raise BearerTokenError(f"{path} line {number}: the token of {name} is shorter than "
                                   f"{MIN_TOKEN_LENGTH} characters")
        if token in seen:
            raise BearerTokenError(f"{path} line {number}: the token of {name} is used twice")
        seen.add(token)
        tokens.append((name, token))
    if not tokens:
        raise BearerTokenError(f"{path}: no token in it")
    return tuple(tokens)


class CurveKeyError(ValueError):
    """A key file or folder is missing or unreadable (the message names it).

    ``option``: the [zmq] option that named it (curve_secret_key, curve_clients).
    """

    def __init__(self, message: str, option: str = "curve_secret_key"):
        super().__init__(message)
        self.option = option


@dataclasses.dataclass(frozen=True, slots=True)
class CurveServerKeys:
    """The sidecar's key pair and the public keys of the clients allowed in."""

    public: bytes  # Z85, as in the key files
    secret: bytes  # Z85
    clients: frozenset[bytes]  # raw 32-byte public keys


def load_server_keys(secret_file: Path, clients_dir: Path) -> CurveServerKeys:
    """Read the sidecar's ``.key_secret`` and every ``*.key`` in ``clients_dir``.

    Raises:
        CurveKeyError: naming the file or folder that is wrong.
    """
    public, secret = _load(secret_file, "curve_secret_key")
    if not secret:
        raise CurveKeyError(f"{secret_file}: no secret key in it (use the .key_secret file)")
    if not clients_dir.is_dir():
        raise CurveKeyError(f"{clients_dir}: not a folder of client public keys", "curve_clients")
    clients = set()
    for path in sorted(clients_dir.glob("*.key")):
        client_public, _ = _load(path, "curve_clients")
        clients.add(zmq.utils.z85.decode(client_public))  # ZAP hands over the raw 32 bytes
    if not clients:
        log.warning("zmq ingress: no client key in %s: every CURVE client will be refused", clients_dir)
    return CurveServerKeys(public, secret, frozenset(clients))


def _load(path: Path, option: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveKeyError(f"{path}: no such file", option)
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{path}: not a ZeroMQ key file: {exc}", option) from exc
    if public is None:
        raise CurveKeyError(f"{path}: no public key in it", option)
    return public, secret
