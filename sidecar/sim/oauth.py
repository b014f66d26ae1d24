"""Google's OAuth2 token endpoint for service accounts (JWT bearer grant).

``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
and an RS256 ``assertion`` signed by a registered service account answers an
opaque access token; FCM requests then present it and :class:`AccessTokens`
says whether it is (still) good and for which project.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import urllib.parse
from typing import Any
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization

from .exchange import Incoming, Reply
from .faults import Fault

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_LIFETIME = 3600
_CLOCK_SKEW = 60
_SHORT_LIVED = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.")
DEFAULT_ERROR = {400: "invalid_grant", 401: "invalid_client", 403: "access_denied",
                 429: "rate_limit_exceeded", 500: "internal_failure", 503: "temporarily_unavailable"}


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    project_id: str
    private_key_id: str
    public_key: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    client_email: str
    project_id: str
    expires_at: float


class AccessTokens:
    """The access tokens handed out, with their project and expiry (wall clock)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._grants: dict[str, Grant] = {}
        self._clock = clock

    def issue(self, account: ServiceAccount, lifetime: float) -> str:
        token = "ya29.sim-" + secrets.token_urlsafe(32)
        self._grants[token] = Grant(account.client_email, account.project_id,
                                    self._clock() + lifetime)
        return token

    def lookup(self, token: str) -> Grant | None:
        """The grant behind a valid, unexpired token; None otherwise."""
        grant = self._grants.get(token)
        if grant is None or grant.expires_at <= self._clock():
            return None
        return grant

    def known(self, token: str) -> bool:
        return token in self._grants

    def expire_all(self) -> None:
        """Make every token handed out so far expired (tests of refresh)."""
        self._grants = {t: dataclasses.replace(g, expires_at=0.0) for t, g in self._grants.items()}

    def clear(self) -> None:
        self._grants.clear()


class OAuthService:
    """Answers ``POST /token``.

    Args:
        tokens: where issued access tokens are kept.
        audiences: the ``aud`` values accepted (this endpoint's URLs); a
            callable so the port can be filled in once the server listens.
        lifetime: ``expires_in`` of issued tokens, in seconds.
        clock: wall-clock seconds.
    """

    def __init__(self, tokens: AccessTokens, audiences: Callable[[], set[str]], *,
                 lifetime: float = 3599, clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.lifetime = lifetime
        self.fetches = 0
        self._audiences = audiences
        self._clock = clock
        self._accounts: dict[str, ServiceAccount] = {}

    def add_service_account(self, info: dict[str, Any]) -> ServiceAccount:
        """Register a service account from its JSON (its private key stays unused)."""
        private = serialization.load_pem_private_key(info["private_key"].encode(), None)
        account = ServiceAccount(info["client_email"], info["project_id"],
                                 info["private_key_id"], private.public_key())
        self._accounts[account.private_key_id] = account
        return account

    def validate(self, req: Incoming) -> Reply | None:
        """Check the grant; None when a token may be issued."""
        if req.path != "/token":
            return _error(404, "invalid_request", "Not Found")
        if req.method != "POST":
            return _error(405, "invalid_request", "Method not allowed")
        form = parse_form(req.body)
        if form.get("grant_type") != GRANT_TYPE:
            return _error(400, "unsupported_grant_type",
                          f"Invalid grant_type: {form.get('grant_type', '')}")
        assertion = form.get("assertion")
        if not assertion:
            return _error(400, "invalid_request", "Missing required parameter: assertion")
        problem = self._check_assertion(assertion)
        return _error(400, *problem) if problem else None

    def grant(self, req: Incoming) -> Reply:
        """Issue an access token for a validated request."""
        header = jwt.get_unverified_header(parse_form(req.body)["assertion"])
        account = self._accounts[header["kid"]]
        token = self.tokens.issue(account, self.lifetime)
        self.fetches += 1
        return Reply.json(200, {"access_token": token, "expires_in": int(self.lifetime),
                                "token_type": "Bearer"})

    def fault_reply(self, fault: Fault, req: Incoming) -> Reply:
        if fault.status == 200:
            return self.grant(req)
        code = fault.reason or DEFAULT_ERROR.get(fault.status, "internal_failure")
        return _error(fault.status, code, "scripted failure", headers=tuple(fault.headers.items()))

    def _check_assertion(self, assertion: str) -> tuple[str, str] | None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return ("invalid_grant", "Invalid JWT: malformed")
        account = self._accounts.get(header.get("kid"))
        if account is None or header.get("alg") != "RS256":
            return ("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_aud": False, "verify_nbf": False})
        except jwt.PyJWTError:
            return ("invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != account.client_email:
            return ("invalid_grant", "Invalid JWT: iss does not match the key")
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return ("invalid_scope", f"Invalid OAuth scope or ID token audience provided: "
                                     f"{claims.get('scope', '')!r}")
        if claims.get("aud") not in self._audiences():
            return ("invalid_grant", "Invalid JWT: Failed audience check.")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
            return ("invalid_grant", _SHORT_LIVED)
        now = self._clock()
        if exp - iat > MAX_LIFETIME or exp <= now or iat > now + _CLOCK_SKEW:
            return ("invalid_grant", _SHORT_LIVED)
        return None


def parse_form(body: bytes) -> dict[str, str]:
    """Decode an ``application/x-www-form-urlencoded`` body (last value wins)."""
    return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _error(status: int, code: str, description: str,
           headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply.json(status, {"error": code, "error_description": description},
                      headers=headers, reason=code)
