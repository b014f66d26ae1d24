"""APNs token authentication: one ES256 JWT per (team, key), shared and renewed rarely.

Apple's rules (see shared/reference/push-services.md): a token whose ``iat``
is over an hour old is refused (403 ExpiredProviderToken), and changing
tokens more often than every 20 minutes earns 429 TooManyProviderTokenUpdates.
So every request and every connection of the same team + key share ONE token
(a process-wide :class:`ApnsTokenCache`, passed in, never a global), renewed
after ``max_age`` (default 40 minutes) or when APNs rejects it.

The token's age is measured on the trio clock so MockClock tests can skip
ahead; only the ``iat`` claim uses wall-clock time (injectable).

A restart must not mint a new token either (Apple would answer 429 for up to
20 minutes), so with a ``state_dir`` the cache keeps ``(team, key id) ->
(token, iat)`` in :data:`TOKEN_FILE_NAME` there (mode 0600, replaced
atomically) and a new process adopts a stored token while it is younger than
``max_age`` and still verifies with the key.  Tokens never reach a log line.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from contextlib import AbstractContextManager
from typing import Any
from collections.abc import Callable

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .base import PushServiceConfigError

logger = logging.getLogger("sidecar.pns.apns")

DEFAULT_MAX_AGE = 40 * 60.0
MIN_MAX_AGE = 20 * 60.0
MAX_MAX_AGE = 60 * 60.0
#: the file, in ``state_dir``, holding the current token of each (team, key id)
TOKEN_FILE_NAME = "apns-provider-tokens.json"
#: a token another worker stored is adopted only with this much life left
SHARED_MARGIN = 60.0


def load_apns_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an APNs ``.p8`` key (PEM, PKCS#8, P-256).

    Raises:
        PushServiceConfigError: the file is missing, unreadable, or not a
            P-256 private key; the message names the file (never its content).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PushServiceConfigError(f"cannot read APNs key {path}: {exc.strerror or exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # "from None": the parser's message may quote the key's bytes.
        raise PushServiceConfigError(f"APNs key {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PushServiceConfigError(f"APNs key {path} is not a P-256 (ES256) key")
    return key


class ApnsJwtProvider:
    """The current bearer token of one (team, key).

    Args:
        team_id: the ``iss`` claim.
        key_id: the ``kid`` header.
        key: the P-256 signing key.
        max_age: seconds after which the token is renewed (20 to 60 minutes).
        wall_clock: returns UNIX seconds, for ``iat``.
        stored: ``(token, iat)`` saved by an earlier process; adopted on
            first use while younger than ``max_age`` (the caller checked it
            belongs to this team and key).
        on_renew: called with ``(token, iat)`` after each new token (persistence).
        shared: returns the ``(token, iat)`` other processes stored (worker
            processes sharing the spool folder); when due, a fresh one there
            that is not the token being replaced is adopted instead of signing.
        lock: a context manager factory held around that check and the
            signing + storing, so concurrent workers make one token.
    """

    def __init__(
        self,
        team_id: str,
        key_id: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        wall_clock: Callable[[], float] = time.time,
        stored: tuple[str, int] | None = None,
        on_renew: Callable[[str, int], None] | None = None,
        shared: Callable[[], tuple[str, int] | None] | None = None,
        lock: Callable[[], AbstractContextManager[None]] | None = None,
    ):
        if not MIN_MAX_AGE <= max_age < MAX_MAX_AGE:
            raise ValueError(f"max_age must be between {MIN_MAX_AGE:.0f} and {MAX_MAX_AGE:.0f} seconds")
        self._stored = stored
        self._on_renew = on_renew
        self._shared = shared
        self._lock = lock
        self._rejected: collections.deque[str] = collections.deque(maxlen=4)
        self._team_id = team_id
        self._key_id = key_id
        self._key = key
        self._max_age = max_age
        self._wall_clock = wall_clock
        self._token = ""
        self._made_at = -math.inf  # trio clock
        self.renewals = 0

    def token(self) -> str:
        """The token to send now; signs a new one only when due.  Never blocks."""
        if self._stored is not None:
            self._adopt_stored()
        if trio.current_time() - self._made_at >= self._max_age:
            self._renew()
        return self._token

    def invalidate(self, rejected: str) -> None:
        """APNs refused ``rejected`` (403 Expired/InvalidProviderToken): renew next time.

        Only the current token can be invalidated, so the many in-flight
        requests that carried the same rejected token cause one renewal.
        """
        if rejected and rejected == self._token:
            self._rejected.append(rejected)
            self._made_at = -math.inf
            logger.warning("APNs rejected the token of team %s key %s; renewing it", self._team_id, self._key_id)

    def _adopt_stored(self) -> None:
        token, issued_at = self._stored  # type: ignore[misc]
        self._stored = None
        age = self._wall_clock() - issued_at
        # A clock set back makes a negative age: treat it as new, Apple's 1-hour
        # limit is what max_age < 60 minutes protects.
        if 0 <= age < self._max_age or -60 < age < 0:
            self._token = token
            self._made_at = trio.current_time() - max(age, 0.0)
            logger.info("reusing the stored APNs token of team %s key %s (%.0f s old)",
                        self._team_id, self._key_id, max(age, 0.0))

    def _renew(self) -> None:
        if self._lock is None:
            self._sign()
            return
        with self._lock():
            if not self._adopt_shared():
                self._sign()

    def _adopt_shared(self) -> bool:
        """Take the token another worker stored, if fresh and not the one being replaced."""
        found = self._shared() if self._shared is not None else None
        if found is None:
            return False
        token, issued_at = found
        if token == self._token or token in self._rejected:
            return False
        age = self._wall_clock() - issued_at
        if not 0 <= age < self._max_age - SHARED_MARGIN:
            return False
        self._token = token
        self._made_at = trio.current_time() - age
        logger.info("APNs token for team %s key %s: adopted the one another worker made (%.0f s old)",
                    self._team_id, self._key_id, age)
        return True

    def _sign(self) -> None:
        issued_at = int(self._wall_clock())
        self._token = jwt.encode(
            {"iss": self._team_id, "iat": issued_at},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id, "typ": None},  # Apple's header is exactly {alg, kid}
        )
        self._made_at = trio.current_time()
        self.renewals += 1
        logger.info("new APNs token for team %s key %s", self._team_id, self._key_id)
        if self._on_renew is not None:
            self._on_renew(self._token, issued_at)


class ApnsTokenCache:
    """Process-wide: one :class:`ApnsJwtProvider` per (team, key id, key file version).

    Create one at start-up and pass it to every ApnsService, so applications
    (and reloads) sharing a key share its token.

    Args:
        max_age: passed to each provider.
        wall_clock: passed to each provider.
        state_dir: where tokens are kept across restarts (the spool dir);
            None keeps them in memory only.
    """

    def __init__(
        self,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        wall_clock: Callable[[], float] = time.time,
        state_dir: Path | None = None,
    ):
        if not MIN_MAX_AGE <= max_age < MAX_MAX_AGE:
            raise ValueError(f"max_age must be between {MIN_MAX_AGE:.0f} and {MAX_MAX_AGE:.0f} seconds")
        self._max_age = max_age
        self._wall_clock = wall_clock
        self._store = TokenFile(Path(state_dir) / TOKEN_FILE_NAME) if state_dir is not None else None
        self._providers: dict[tuple[str, str, Path, int], ApnsJwtProvider] = {}

    def provider(self, team_id: str, key_id: str, key_path: Path) -> ApnsJwtProvider:
        """The shared provider for this team + key; loads the key on first use.

        With a ``state_dir``, a stored token of this team + key that the key
        verifies is adopted (reads one small file, at configuration time).

        Raises:
            PushServiceConfigError: the key file is unusable.
        """
        path = Path(key_path).resolve()
        try:
            # A key replaced in place (rotation + reload) gets its own provider.
            version = path.stat().st_mtime_ns
        except OSError as exc:
            raise PushServiceConfigError(f"cannot read APNs key {key_path}: {exc.strerror or exc}") from exc
        cache_key = (team_id, key_id, path, version)
        provider = self._providers.get(cache_key)
        if provider is None:
            key = load_apns_signing_key(key_path)
            stored = on_renew = None
            if self._store is not None:
                store = self._store
                stored = store.load(team_id, key_id, key)

                def on_renew(token: str, issued_at: int) -> None:
                    store.save(team_id, key_id, token, issued_at)

            provider = ApnsJwtProvider(
                team_id, key_id, key, max_age=self._max_age, wall_clock=self._wall_clock,
                stored=stored, on_renew=on_renew,
                shared=(lambda: store.load(team_id, key_id, key)) if self._store is not None else None,
                lock=self._store.lock if self._store is not None else None,
            )
            self._providers[cache_key] = provider
        return provider


class TokenFile:
    """The JSON file ``{"<team>/<key id>": {"token": ..., "iat": ...}}``.

    Best effort: an unreadable or corrupt file means "no stored token", a
    failed write is logged (never with the token) and ignored.  Writes go to
    a 0600 temporary file in the same folder, then ``os.replace`` (atomic:
    readers see the old or the new file, never half of one).  No fsync: the
    file is a few hundred bytes written once per token life from the event
    loop, and losing it to a power cut only costs one new token.
    """

    def __init__(self, path: Path):
        self.path = path

    def lock(self) -> AbstractContextManager[None]:
        """An exclusive lock between the processes sharing this file (workers)."""
        from .shared_tokens import file_lock

        return file_lock(self.path.with_name(self.path.name + ".lock"))

    def load(self, team_id: str, key_id: str, key: ec.EllipticCurvePrivateKey) -> tuple[str, int] | None:
        """The stored ``(token, iat)`` of this team + key if ``key`` verifies it."""
        entry = self._read().get(_entry_name(team_id, key_id))
        if not isinstance(entry, dict):
            return None
        token, issued_at = entry.get("token"), entry.get("iat")
        if not isinstance(token, str) or not isinstance(issued_at, int):
            return None
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, key.public_key(), algorithms=["ES256"],
                                options={"verify_iat": False, "require": ["iss", "iat"]})
        except jwt.PyJWTError:
            logger.warning("ignoring the stored APNs token of team %s key %s: it does not verify "
                           "with the key", team_id, key_id)
            return None
        if header.get("kid") != key_id or claims.get("iss") != team_id or claims.get("iat") != issued_at:
            return None
        return token, issued_at

    def save(self, team_id: str, key_id: str, token: str, issued_at: int) -> None:
        entries = self._read()
        entries[_entry_name(team_id, key_id)] = {"token": token, "iat": issued_at}
        data = json.dumps(entries, indent=1, sort_keys=True).encode()
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor, temporary = tempfile.mkstemp(prefix=".apns-tokens-", dir=folder)  # mode 0600
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            logger.warning("cannot store the APNs token of team %s key %s in %s: %s",
                           team_id, key_id, self.path, exc.strerror or exc)

    def _read(self) -> dict[str, Any]:
        try:
            decoded = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable APNs token file %s: %s", self.path,
                           getattr(exc, "strerror", None) or type(exc).__name__)
            return {}
        return decoded if isinstance(decoded, dict) else {}


def _entry_name(team_id: str, key_id: str) -> str:
    return f"{team_id}/{key_id}"
