"""APNs token authentication: one ES256 JWT per (team, key), shared and renewed rarely.

Apple's rules (see shared/reference/push-services.md): a token whose ``iat``
is over an hour old is refused (403 ExpiredProviderToken), and changing
tokens more often than every 20 minutes earns 429 TooManyProviderTokenUpdates.
So every request and every connection of the same team + key share ONE token
(a process-wide :class:`ApnsTokenCache`, passed in, never a global), renewed
after ``max_age`` (default 40 minutes) or when APNs rejects it.

The token's age is measured on the trio clock so MockClock tests can skip
ahead; only the ``iat`` claim uses wall-clock time (injectable).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .base import PushServiceConfigError

logger = logging.getLogger("sidecar.pns.apns")

DEFAULT_MAX_AGE = 40 * 60.0
MIN_MAX_AGE = 20 * 60.0
MAX_MAX_AGE = 60 * 60.0


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
    except (ValueError, TypeError) as exc:
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
    """

    def __init__(
        self,
        team_id: str,
        key_id: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        wall_clock: Callable[[], float] = time.time,
    ):
        if not MIN_MAX_AGE <= max_age < MAX_MAX_AGE:
            raise ValueError(f"max_age must be between {MIN_MAX_AGE:.0f} and {MAX_MAX_AGE:.0f} seconds")
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
        if trio.current_time() - self._made_at >= self._max_age:
            self._renew()
        return self._token

    def invalidate(self, rejected: str) -> None:
        """APNs refused ``rejected`` (403 Expired/InvalidProviderToken): renew next time.

        Only the current token can be invalidated, so the many in-flight
        requests that carried the same rejected token cause one renewal.
        """
        if rejected and rejected == self._token:
            self._made_at = -math.inf
            logger.warning("APNs rejected the token of team %s key %s; renewing it", self._team_id, self._key_id)

    def _renew(self) -> None:
        self._token = jwt.encode(
            {"iss": self._team_id, "iat": int(self._wall_clock())},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id, "typ": None},  # Apple's header is exactly {alg, kid}
        )
        self._made_at = trio.current_time()
        self.renewals += 1
        logger.info("new APNs token for team %s key %s", self._team_id, self._key_id)


class ApnsTokenCache:
    """Process-wide: one :class:`ApnsJwtProvider` per (team, key id, key file version).

    Create one at start-up and pass it to every ApnsService, so applications
    (and reloads) sharing a key share its token.

    Args:
        max_age: passed to each provider.
        wall_clock: passed to each provider.
    """

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE, wall_clock: Callable[[], float] = time.time):
        if not MIN_MAX_AGE <= max_age < MAX_MAX_AGE:
            raise ValueError(f"max_age must be between {MIN_MAX_AGE:.0f} and {MAX_MAX_AGE:.0f} seconds")
        self._max_age = max_age
        self._wall_clock = wall_clock
        self._providers: dict[tuple[str, str, Path, int], ApnsJwtProvider] = {}

    def provider(self, team_id: str, key_id: str, key_path: Path) -> ApnsJwtProvider:
        """The shared provider for this team + key; loads the key on first use.

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
            provider = ApnsJwtProvider(team_id, key_id, key, max_age=self._max_age, wall_clock=self._wall_clock)
            self._providers[cache_key] = provider
        return provider
