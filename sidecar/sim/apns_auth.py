"""APNs provider-token (JWT, ES256) checks, the way Apple applies them.

Verifying an ECDSA signature costs far more than the rest of a request, and a
well-behaved client reuses one token for many minutes, so verified tokens are
cached by their exact string; only the cheap age check runs per request.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization

_CACHE_LIMIT = 10_000
_CLOCK_SKEW = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Verdict:
    team_id: str | None
    key_id: str | None
    iat: float
    reason: str | None  # a permanent failure (bad signature, unknown key...)


class ProviderTokenChecker:
    """Checks ``authorization: bearer <JWT>`` headers against registered keys.

    Args:
        max_age: seconds after ``iat`` when Apple calls a token expired.
        min_update_interval: a different token for the same (team, key)
            sooner than this after the previous change is refused with 429.
        clock: wall-clock seconds (``iat`` is wall-clock time).
    """

    def __init__(self, *, max_age: float = 3600.0, min_update_interval: float = 1200.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_age = max_age
        self.min_update_interval = min_update_interval
        self._clock = clock
        self._keys: dict[str, tuple[str, object]] = {}  # kid -> (team id, public key)
        self._verdicts: dict[str, _Verdict] = {}
        self._current: dict[tuple[str, str], tuple[str, float]] = {}  # -> (token, since)

    def add_key(self, key_id: str, team_id: str, public_key_pem: bytes) -> None:
        """Accept tokens signed by this key for this team."""
        self._keys[key_id] = (team_id, serialization.load_pem_public_key(public_key_pem))
        self._verdicts.clear()

    def reset(self) -> None:
        """Forget token history (not the keys)."""
        self._verdicts.clear()
        self._current.clear()

    def check(self, authorization: str | None) -> str | None:
        """Return None if the request may proceed, else Apple's reason."""
        if not authorization:
            return "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        verdict = self._verdicts.get(token)
        if verdict is None:
            verdict = self._verify(token)
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[token] = verdict
        if verdict.reason:
            return verdict.reason
        now = self._clock()
        if now - verdict.iat > self.max_age:
            return "ExpiredProviderToken"
        if verdict.iat > now + _CLOCK_SKEW:
            return "InvalidProviderToken"
        slot = (verdict.team_id, verdict.key_id)
        current = self._current.get(slot)
        if current is None or current[0] == token:
            if current is None:
                self._current[slot] = (token, now)
            return None
        if now - current[1] < self.min_update_interval:
            return "TooManyProviderTokenUpdates"
        self._current[slot] = (token, now)
        return None

    def _verify(self, token: str) -> _Verdict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return _Verdict(None, None, 0.0, "InvalidProviderToken")
        kid = header.get("kid")
        entry = self._keys.get(kid) if isinstance(kid, str) else None
        if entry is None or header.get("alg") != "ES256":
            return _Verdict(None, None, 0.0, "InvalidProviderToken")
        team_id, public_key = entry
        try:
            claims = jwt.decode(
                token, public_key, algorithms=["ES256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "verify_aud": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            return _Verdict(None, None, 0.0, "InvalidProviderToken")
        iat = claims.get("iat")
        if claims.get("iss") != team_id or not isinstance(iat, (int, float)):
            return _Verdict(None, None, 0.0, "InvalidProviderToken")
        return _Verdict(team_id, kid, float(iat), None)
