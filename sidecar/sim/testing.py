"""Helpers for tests that talk to the simulator as a client would.

They build what a real sender builds (an APNs provider token, a Google OAuth
assertion, a TLS context trusting the simulator's CA) from a generated
credential set, so a test needs no crypto code of its own.
"""

from __future__ import annotations

import ssl
import time

import jwt

from .creds import SimCredentials
from .oauth import FCM_SCOPE, GRANT_TYPE


def client_ssl_context(creds: SimCredentials, *, client_certificate: bool = False,
                       alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
    """A client context that trusts the simulator (and presents the APNs cert if asked)."""
    context = ssl.create_default_context(cafile=str(creds.ca_file))
    if client_certificate:
        context.load_cert_chain(str(creds.client_cert), str(creds.client_key))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def apns_provider_token(creds: SimCredentials, *, iat: float | None = None,
                        key_id: str | None = None, team_id: str | None = None) -> str:
    """An ES256 provider token signed with the set's .p8 key."""
    claims = {"iss": team_id or creds.team_id, "iat": int(time.time() if iat is None else iat)}
    return jwt.encode(claims, creds.apns_key_file.read_text(), algorithm="ES256",
                      headers={"kid": key_id or creds.key_id})


def oauth_assertion(creds: SimCredentials, audience: str, *, iat: float | None = None,
                    lifetime: float = 3600, scope: str = FCM_SCOPE,
                    issuer: str | None = None) -> str:
    """An RS256 JWT-bearer assertion signed with the service account's key."""
    info = creds.service_account()
    issued = int(time.time() if iat is None else iat)
    claims = {"iss": issuer or info["client_email"], "scope": scope, "aud": audience,
              "iat": issued, "exp": int(issued + lifetime)}
    return jwt.encode(claims, info["private_key"], algorithm="RS256",
                      headers={"kid": info["private_key_id"]})


def oauth_form(assertion: str) -> dict[str, str]:
    """The form body of a token request."""
    return {"grant_type": GRANT_TYPE, "assertion": assertion}
