"""Google OAuth2 access tokens for FCM HTTP v1, from a service-account JSON file.

Theory of operation
-------------------
FCM wants ``authorization: Bearer <access token>``.  A token comes from the
service account's ``token_uri``: we sign an RS256 JWT (header ``kid`` =
``private_key_id``; claims ``iss``, ``scope``, ``aud`` = token_uri, ``iat``,
``exp`` = iat + 3600) and POST it form-encoded as a JWT-bearer grant.  The
answer lives about an hour (``expires_in``), so ONE token serves every push of
that service account until shortly before it expires (the original sidecar
fetched one per push).

- One :class:`OAuthTokenProvider` per service-account file, shared through a
  process-wide :class:`OAuthTokenCache` (passed in, never a global), so
  applications and reloads sharing a file share its token.
- Concurrent callers share one fetch: a trio.Lock serialises fetchers and
  whoever gets it second finds the fresh token (or the failure) and does not
  fetch again.  While one caller renews a token that still works, the others
  keep using it instead of waiting.
- Renewal starts ``refresh_margin(expires_in)`` before expiry (5 minutes for
  the usual hour, 10% for short lifetimes); times are on the trio clock so
  MockClock tests can skip hours.  Only the JWT's ``iat`` uses wall-clock time.
- After a failed fetch, callers fail fast for a short backoff instead of
  hammering the token endpoint at push rate.
- :meth:`OAuthTokenProvider.invalidate` forces a renewal after FCM refused the
  token (401/403), at most once per ``MIN_FORCED_RENEWAL_INTERVAL`` so broken
  credentials cannot turn into a fetch per push.

Secrets (the private key, the assertion, access tokens) never reach a log
line or an exception message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import ssl
import time
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .backoff import backoff_delay
from .base import PushServiceConfigError
from .tls import client_ssl_context

logger = logging.getLogger("sidecar.pns.fcm")

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google's maximum
FETCH_TIMEOUT = 10.0
MIN_FORCED_RENEWAL_INTERVAL = 30.0
REQUIRED_FIELDS = ("client_email", "private_key", "token_uri")

#: one access-token fetch: returns (access_token, expires_in seconds); raises OAuthError
TokenFetcher = Callable[[], Awaitable[tuple[str, float]]]


class OAuthError(Exception):
    """Getting an access token failed; the message is safe to log (no secrets)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a service-account JSON we use.  ``repr`` hides the key."""

    path: Path
    client_email: str
    token_uri: str
    project_id: str | None
    private_key_id: str | None
    private_key: rsa.RSAPrivateKey = dataclasses.field(repr=False)


def load_service_account(path: Path) -> ServiceAccount:
    """Read and check a Google service-account JSON file.

    Raises:
        PushServiceConfigError: the file is missing, unreadable, not JSON, lacks
            client_email / private_key / token_uri, or its key is not an RSA
            PEM key; the message names the file and the problem (never the key).
    """
    where = f"service-account file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PushServiceConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PushServiceConfigError(f"{where} is not UTF-8 text (expected JSON)") from None
    try:
        info = json.loads(text)
    except ValueError as exc:
        # The position is useful; the offending text could be the key, so omit it.
        raise PushServiceConfigError(
            f"{where} is not valid JSON (line {getattr(exc, 'lineno', '?')})"
        ) from None
    if not isinstance(info, dict):
        raise PushServiceConfigError(f"{where} is not a JSON object")
    missing = [name for name in REQUIRED_FIELDS if not isinstance(info.get(name), str) or not info[name].strip()]
    if missing:
        raise PushServiceConfigError(f"{where} lacks {', '.join(missing)} (is it a service-account key?)")
    token_uri = info["token_uri"].strip()
    if urlsplit(token_uri).scheme != "https" or not urlsplit(token_uri).hostname:
        raise PushServiceConfigError(f"{where}: token_uri {token_uri!r} is not an https URL")
    try:
        key = load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise PushServiceConfigError(f"{where}: private_key is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PushServiceConfigError(f"{where}: private_key is not an RSA key (RS256 needs one)")
    return ServiceAccount(
        path=Path(path),
        client_email=info["client_email"].strip(),
        token_uri=token_uri,
        project_id=_optional(info, "project_id"),
        private_key_id=_optional(info, "private_key_id"),
        private_key=key,
    )


def _optional(info: dict[str, Any], name: str) -> str | None:
    value = info.get(name)
    return value.strip() or None if isinstance(value, str) else None


def make_assertion(account: ServiceAccount, now: float) -> str:
    """The signed JWT-bearer assertion for ``account`` at wall-clock ``now``."""
    iat = int(now)
    claims = {
        "iss": account.client_email,
        "scope": FCM_SCOPE,
        "aud": account.token_uri,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


def refresh_margin(expires_in: float) -> float:
    """How long before expiry to renew: 5 minutes, or 10% of short lifetimes."""
    return min(300.0, 0.1 * expires_in)


async def fetch_access_token(
    account: ServiceAccount,
    ssl_context: ssl.SSLContext | None,
    *,
    wall_clock: Callable[[], float] = time.time,
    timeout: float = FETCH_TIMEOUT,
) -> tuple[str, float]:
    """Exchange a fresh assertion for an access token at ``account.token_uri``.

    Args:
        account: the service account.
        ssl_context: trust for the token endpoint; None: the system store.
        wall_clock: UNIX time for the assertion's ``iat``.
        timeout: seconds for the whole exchange.

    Returns:
        ``(access_token, expires_in)``.

    Raises:
        OAuthError: transport failure, error answer, or an unreadable answer.
    """
    uri = account.token_uri
    form = {"grant_type": GRANT_TYPE, "assertion": make_assertion(account, wall_clock())}
    try:
        async with httpx.AsyncClient(verify=ssl_context or True, http2=True, timeout=timeout) as client:
            response = await client.post(uri, data=form, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise OAuthError(f"cannot reach token endpoint {uri}: {type(exc).__name__}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200:
        detail = ""
        if isinstance(answer, dict):
            # Google's error/error_description never echo the assertion.
            detail = ": " + " ".join(str(answer.get(k, "")) for k in ("error", "error_description")).strip()
        raise OAuthError(f"token endpoint {uri} answered {response.status_code}{detail[:300]}")
    if not isinstance(answer, dict):
        raise OAuthError(f"token endpoint {uri} answered 200 without a JSON object")
    token, expires_in = answer.get("access_token"), answer.get("expires_in", 3600)
    if not isinstance(token, str) or not token:
        raise OAuthError(f"token endpoint {uri} answered 200 without access_token")
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        raise OAuthError(f"token endpoint {uri} answered an unreadable expires_in") from None
    if not lifetime > 0:
        raise OAuthError(f"token endpoint {uri} answered expires_in={lifetime:g}")
    return token, lifetime


class OAuthTokenProvider:
    """The current access token of one service account; see the module docstring.

    Args:
        fetch: gets a new ``(token, expires_in)``; raises OAuthError.
        name: a label for log lines (the client_email).
        account: the service account, when built from a file (for project_id).
        failure_backoff: ``(consecutive failures) -> seconds`` during which
            callers fail fast with the last error instead of fetching again.
    """

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        name: str,
        account: ServiceAccount | None = None,
        failure_backoff: Callable[[int], float] = lambda n: backoff_delay(n, None, base=1.0, cap=30.0),
    ):
        self.account = account
        self._fetch = fetch
        self._name = name
        self._failure_backoff = failure_backoff
        self._lock = trio.Lock()
        self._token = ""
        self._refresh_at = -math.inf  # trio clock: renew from here on
        self._usable_until = -math.inf  # trio clock: never send it after this
        self._completed = 0  # fetches finished (success or failure)
        self._failures = 0  # consecutive
        self._last_error: str | None = None
        self._failed_until = -math.inf
        self._last_forced = -math.inf
        self.fetches = 0

    async def token(self) -> str:
        """The access token to send now, fetching one when due.

        Checkpoints only when it has to wait for a fetch.

        Raises:
            OAuthError: no usable token and fetching failed (now, or recently:
                within the failure backoff the last error is raised again).
        """
        now = trio.current_time()
        if now < self._refresh_at:
            return self._token
        usable = now < self._usable_until
        if usable and (self._lock.locked() or now < self._failed_until):
            return self._token  # being renewed, or renewal failed just now: it still works
        if now < self._failed_until and self._last_error is not None:
            raise OAuthError(self._last_error)
        seen = self._completed
        async with self._lock:
            now = trio.current_time()
            if now < self._refresh_at:
                return self._token
            if self._completed != seen and self._last_error is not None:
                # A fetch failed while we queued: share its failure, do not repeat it.
                if now < self._usable_until:
                    return self._token
                raise OAuthError(self._last_error)
            return await self._renew()

    async def _renew(self) -> str:
        started = trio.current_time()  # the server's clock starts before our answer arrives
        try:
            token, expires_in = await self._fetch()
        except OAuthError as exc:
            self._completed += 1
            self._failures += 1
            self._last_error = str(exc)
            self._failed_until = trio.current_time() + self._failure_backoff(self._failures)
            logger.warning("OAuth token for %s: fetch failed (%d in a row): %s", self._name, self._failures, exc)
            if trio.current_time() < self._usable_until:
                return self._token
            raise
        self._completed += 1
        self._failures = 0
        self._last_error = None
        self._failed_until = -math.inf
        self.fetches += 1
        margin = refresh_margin(expires_in)
        self._token = token
        self._refresh_at = started + expires_in - margin
        self._usable_until = started + expires_in - margin / 5
        logger.info("OAuth token for %s: new access token, valid %.0f s", self._name, expires_in)
        return token

    def invalidate(self, rejected: str) -> bool:
        """FCM refused ``rejected`` (401/403): renew it before the next use.

        Returns:
            True when :meth:`token` will now give (or is getting) a different
            token, so resending makes sense; False when this token was itself
            a forced renewal less than MIN_FORCED_RENEWAL_INTERVAL ago (the
            credentials, not the token, are the problem).
        """
        if not rejected:
            return False
        if rejected != self._token or self._refresh_at == -math.inf:
            return True  # already replaced, or its renewal is already due
        now = trio.current_time()
        if now - self._last_forced < MIN_FORCED_RENEWAL_INTERVAL:
            return False
        self._last_forced = now
        self._refresh_at = self._usable_until = -math.inf
        logger.warning("OAuth token for %s: refused by FCM; renewing it", self._name)
        return True

    def statistics(self) -> dict[str, Any]:
        return {"fetches": self.fetches, "fetch_failures": self._failures}


class OAuthTokenCache:
    """Process-wide: one :class:`OAuthTokenProvider` per service-account file.

    Create one at start-up and pass it to every FcmService.  A file replaced in
    place (key rotation + reload) gets a new provider.

    Args:
        wall_clock: UNIX time, for the assertion's ``iat``.
        shared_dir: a spool folder shared by worker processes: their tokens
            are shared through it (:mod:`sidecar.pns.shared_tokens`); None:
            this process only.
    """

    def __init__(self, *, wall_clock: Callable[[], float] = time.time, shared_dir: Path | None = None):
        self._wall_clock = wall_clock
        self._shared_dir = shared_dir
        self._providers: dict[tuple[Path, int, Path | None], OAuthTokenProvider] = {}

    def provider(self, service_account_file: Path, *, ca_file: Path | None = None) -> OAuthTokenProvider:
        """The shared provider of this file; loads and checks it on first use.

        Args:
            service_account_file: the service-account JSON.
            ca_file: CA file trusted for the token endpoint (None: system store).

        Raises:
            PushServiceConfigError: the file or the CA file is unusable.
        """
        path = Path(service_account_file).resolve()
        try:
            version = path.stat().st_mtime_ns
        except OSError as exc:
            raise PushServiceConfigError(
                f"cannot read service-account file {service_account_file}: {exc.strerror or exc}"
            ) from None
        cache_key = (path, version, Path(ca_file).resolve() if ca_file else None)
        provider = self._providers.get(cache_key)
        if provider is None:
            account = load_service_account(path)
            context = client_ssl_context(ca_file=ca_file) if ca_file else None

            async def fetch() -> tuple[str, float]:
                return await fetch_access_token(account, context, wall_clock=self._wall_clock)

            if self._shared_dir is not None:
                from .shared_tokens import SharedOAuthFetch

                entry = f"{account.client_email}/{account.private_key_id or '-'}@{account.token_uri}"
                fetch = SharedOAuthFetch(self._shared_dir, entry, fetch, wall_clock=self._wall_clock)

            provider = OAuthTokenProvider(fetch, name=account.client_email, account=account)
            self._providers[cache_key] = provider
        return provider
