"""Google OAuth access tokens: service-account loading, the JWT, caching and renewal.

The cache logic runs under MockClock with a fake fetch; the real exchange runs
separately against the simulator's /token endpoint over TLS on loopback.
"""

from __future__ import annotations

import json
import shutil
import os

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.pns.base import PushServiceConfigError
from sidecar.pns.fcm_auth import (
    FCM_SCOPE,
    GRANT_TYPE,
    MIN_FORCED_RENEWAL_INTERVAL,
    OAuthError,
    OAuthTokenCache,
    OAuthTokenProvider,
    fetch_access_token,
    load_service_account,
    make_assertion,
    refresh_margin,
)
from sidecar.pns.tls import client_ssl_context
from sidecar.sim.creds import generate_credentials, load_credentials, write_service_account
from sidecar.sim.server import open_simulator

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account_info(**changes):
    info = {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "kid-0123",
        "private_key": pem(RSA_KEY),
        "client_email": "fcm@demo-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth.test/token",
    }
    info.update(changes)
    return {k: v for k, v in info.items() if v is not None}


def write_json(path, info):
    path.write_text(json.dumps(info))
    return path


class FakeFetch:
    """Hands out tok-1, tok-2... after ``delay`` seconds, or fails while ``failing``."""

    def __init__(self, lifetime: float = 3599, delay: float = 1.0):
        self.lifetime = lifetime
        self.delay = delay
        self.calls = 0
        self.failing = False

    async def __call__(self) -> tuple[str, float]:
        self.calls += 1
        await trio.sleep(self.delay)
        if self.failing:
            raise OAuthError("token endpoint https://oauth.test/token answered 503 temporarily_unavailable")
        return f"tok-{self.calls}", self.lifetime


# ---- loading the service-account file -----------------------------------------


def test_service_account_is_loaded(tmp_path):
    account = load_service_account(write_json(tmp_path / "sa.json", service_account_info()))
    assert account.client_email == "fcm@demo-project.iam.gserviceaccount.com"
    assert account.token_uri == "https://oauth.test/token"
    assert account.project_id == "demo-project" and account.private_key_id == "kid-0123"
    assert "PRIVATE" not in repr(account) and "private_key=" not in repr(account)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "cannot read service-account file"),
        ("{not json", "is not valid JSON (line 1)"),
        ("[1, 2]", "is not a JSON object"),
        (service_account_info(client_email=None), "lacks client_email"),
        (service_account_info(private_key=None, token_uri=None), "lacks private_key, token_uri"),
        (service_account_info(token_uri="http://oauth.test/token"), "is not an https URL"),
        (service_account_info(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
         "private_key is not a PEM private key"),
        (service_account_info(private_key=pem(ec.generate_private_key(ec.SECP256R1()))),
         "private_key is not an RSA key"),
    ],
)
def test_unusable_service_account_files_are_named(tmp_path, content, expected):
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PushServiceConfigError) as info:
        load_service_account(path)
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "BEGIN" not in message and "AAAA" not in message


def test_cache_refuses_a_missing_file_and_a_bad_ca_file(tmp_path):
    cache = OAuthTokenCache()
    with pytest.raises(PushServiceConfigError, match="cannot read service-account file .*missing.json"):
        cache.provider(tmp_path / "missing.json")
    path = write_json(tmp_path / "sa.json", service_account_info())
    with pytest.raises(PushServiceConfigError, match="cannot load CA file .*nope.pem"):
        cache.provider(path, ca_file=tmp_path / "nope.pem")


def test_cache_shares_one_provider_per_file_and_reloads_a_replaced_file(tmp_path):
    cache = OAuthTokenCache()
    first = write_json(tmp_path / "a.json", service_account_info())
    second = write_json(tmp_path / "b.json", service_account_info(client_email="other@x.iam.gserviceaccount.com"))
    provider = cache.provider(first)
    assert cache.provider(tmp_path / "." / "a.json") is provider
    assert cache.provider(second) is not provider
    stat = first.stat()
    write_json(first, service_account_info(project_id="rotated"))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    rotated = cache.provider(first)
    assert rotated is not provider and rotated.account.project_id == "rotated"


# ---- the assertion ----------------------------------------------------------------


def test_assertion_has_googles_header_and_claims(tmp_path):
    account = load_service_account(write_json(tmp_path / "sa.json", service_account_info()))
    assertion = make_assertion(account, 1_700_000_000.9)
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": "kid-0123", "typ": "JWT"}
    claims = jwt.decode(
        assertion, RSA_KEY.public_key(), algorithms=["RS256"], audience="https://oauth.test/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "fcm@demo-project.iam.gserviceaccount.com",
        "scope": FCM_SCOPE,
        "aud": "https://oauth.test/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }


def test_refresh_margin():
    assert refresh_margin(3599) == 300.0
    assert refresh_margin(60) == 6.0


# ---- caching and renewal (virtual time, fake fetch) ---------------------------------


async def test_one_fetch_serves_until_the_margin_then_renews(autojump_clock):
    fetch = FakeFetch(lifetime=3599, delay=1.0)
    provider = OAuthTokenProvider(fetch, name="test")
    start = trio.current_time()
    assert await provider.token() == "tok-1"
    for _ in range(1000):
        assert await provider.token() == "tok-1"
        await trio.sleep(3.2)  # 3200 s of pushes
    assert fetch.calls == 1
    # Renewal is due expires_in - 5 min after the fetch STARTED.
    await trio.sleep_until(start + 3599 - 300 - 0.01)
    assert await provider.token() == "tok-1"
    await trio.sleep_until(start + 3599 - 300)
    assert await provider.token() == "tok-2"
    assert fetch.calls == 2 and provider.fetches == 2


async def test_short_lifetimes_renew_at_ninety_percent(autojump_clock):
    fetch = FakeFetch(lifetime=60, delay=0)
    provider = OAuthTokenProvider(fetch, name="test")
    start = trio.current_time()
    await provider.token()
    await trio.sleep_until(start + 53.99)
    assert await provider.token() == "tok-1"
    await trio.sleep_until(start + 54)
    assert await provider.token() == "tok-2"


async def test_concurrent_first_callers_share_one_fetch(autojump_clock):
    fetch = FakeFetch(delay=2.0)
    provider = OAuthTokenProvider(fetch, name="test")
    tokens = []

    async def caller():
        tokens.append(await provider.token())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(caller)
    assert tokens == ["tok-1"] * 50 and fetch.calls == 1


async def test_callers_keep_the_old_token_while_it_is_renewed(autojump_clock):
    fetch = FakeFetch(lifetime=3599, delay=5.0)
    provider = OAuthTokenProvider(fetch, name="test")
    start = trio.current_time()
    await provider.token()
    await trio.sleep_until(start + 3599 - 300 + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(provider.token)  # starts the renewal, takes 5 s
        await trio.testing.wait_all_tasks_blocked()
        before = trio.current_time()
        assert await provider.token() == "tok-1"  # no waiting for the renewal
        assert trio.current_time() == before
    assert await provider.token() == "tok-2" and fetch.calls == 2


async def test_a_failed_fetch_is_shared_then_retried_after_backoff(autojump_clock):
    fetch = FakeFetch(delay=1.0)
    fetch.failing = True
    provider = OAuthTokenProvider(fetch, name="test", failure_backoff=lambda failures: 10.0 * failures)
    errors = []

    async def caller():
        try:
            await provider.token()
        except OAuthError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(caller)
    assert fetch.calls == 1 and len(errors) == 20 and "503" in errors[0]
    # Within the backoff: fail fast, no new fetch.
    await trio.sleep(9)
    with pytest.raises(OAuthError, match="503"):
        await provider.token()
    assert fetch.calls == 1
    await trio.sleep(1)
    fetch.failing = False
    assert await provider.token() == "tok-2" and fetch.calls == 2


async def test_a_failed_renewal_keeps_using_the_still_valid_token(autojump_clock):
    fetch = FakeFetch(lifetime=3599, delay=0)
    provider = OAuthTokenProvider(fetch, name="test")
    start = trio.current_time()
    await provider.token()
    fetch.failing = True
    await trio.sleep_until(start + 3599 - 300)
    assert await provider.token() == "tok-1"  # renewal failed; 5 min of validity left
    assert fetch.calls == 2
    await trio.sleep_until(start + 3599 - 1)  # past the safety margin: unusable
    with pytest.raises(OAuthError):
        await provider.token()


async def test_a_cancelled_fetch_does_not_strand_the_waiters(autojump_clock):
    fetch = FakeFetch(delay=10.0)
    provider = OAuthTokenProvider(fetch, name="test")
    got = []

    async def impatient():
        with trio.move_on_after(1):
            await provider.token()

    async def patient():
        got.append(await provider.token())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(impatient)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(patient)
    assert got == ["tok-2"] and fetch.calls == 2


async def test_invalidate_renews_once_per_refused_token_and_is_throttled(autojump_clock):
    fetch = FakeFetch(delay=0)
    provider = OAuthTokenProvider(fetch, name="test")
    first = await provider.token()
    assert provider.invalidate("not-the-current-one") is True  # already replaced: resend
    assert await provider.token() == first and fetch.calls == 1
    # 100 in-flight sends come back 401 with the same token: one renewal.
    assert all(provider.invalidate(first) for _ in range(100))
    second = await provider.token()
    assert second != first and fetch.calls == 2
    # The fresh token is refused at once too: the credentials are broken; no fetch storm.
    assert provider.invalidate(second) is False
    assert await provider.token() == second and fetch.calls == 2
    await trio.sleep(MIN_FORCED_RENEWAL_INTERVAL)
    assert provider.invalidate(second) is True
    assert await provider.token() == "tok-3"


# ---- the real exchange, over TLS against the simulator --------------------------------


@pytest.fixture(scope="module")
def template_credentials(tmp_path_factory):
    # Key generation dominates the run time: make one set, copy it per test.
    return generate_credentials(tmp_path_factory.mktemp("creds"))


@pytest.fixture
def creds(template_credentials, tmp_path):
    shutil.copytree(template_credentials.folder, tmp_path / "creds")
    return load_credentials(tmp_path / "creds")


@pytest.fixture
async def sim(creds):
    async with open_simulator(creds) as simulator:
        write_service_account(creds, simulator.port)
        yield simulator


async def test_real_exchange_with_the_simulator(sim):
    creds = sim.credentials
    cache = OAuthTokenCache()
    provider = cache.provider(creds.service_account_file, ca_file=creds.ca_file)
    token = await provider.token()
    assert token.startswith("ya29.") and sim.token_fetches == 1
    record = sim.requests[-1]
    assert record["kind"] == "oauth" and record["status"] == 200
    assert record["form"]["grant_type"] == GRANT_TYPE
    assert record["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert record["jwt"]["header"]["kid"] == creds.private_key_id
    assert record["jwt"]["claims"]["aud"] == f"https://127.0.0.1:{sim.port}/token"
    assert await provider.token() == token and sim.token_fetches == 1


async def test_oauth_error_answers_name_the_failure_but_no_secret(sim):
    creds = sim.credentials
    account = load_service_account(creds.service_account_file)
    context = client_ssl_context(ca_file=creds.ca_file)
    sim.script_status([(400, {}, "invalid_grant")], kind="oauth")
    with pytest.raises(OAuthError) as info:
        await fetch_access_token(account, context)
    message = str(info.value)
    assert "answered 400: invalid_grant scripted failure" in message and "/token" in message
    assert "eyJ" not in message  # no JWT


async def test_untrusted_token_endpoint_is_an_oauth_error(sim):
    account = load_service_account(sim.credentials.service_account_file)
    with pytest.raises(OAuthError, match="cannot reach token endpoint"):
        await fetch_access_token(account, None)  # system trust does not know the simulator's CA
    assert sim.token_fetches == 0
