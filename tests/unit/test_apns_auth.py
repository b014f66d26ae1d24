"""The APNs JWT: exact header and claims, one token per team + key, renewal timing."""

from __future__ import annotations

import logging

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.pns.apns_auth import TOKEN_FILE_NAME, ApnsJwtProvider, ApnsTokenCache, load_apns_signing_key
from sidecar.pns.base import PushServiceConfigError


def write_p8(path, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


async def test_token_has_apples_header_and_claims(tmp_path):
    key = write_p8(tmp_path / "AuthKey.p8")
    cache = ApnsTokenCache(wall_clock=lambda: 1_700_000_000.7)
    token = cache.provider("TEAM123456", "KEY1234567", tmp_path / "AuthKey.p8").token()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567"}
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False})
    assert claims == {"iss": "TEAM123456", "iat": 1_700_000_000}


async def test_token_is_reused_then_renewed_at_max_age(autojump_clock):
    wall = [1_000_000.0]
    provider = ApnsJwtProvider(
        "TEAM", "KID", ec.generate_private_key(ec.SECP256R1()), max_age=30 * 60, wall_clock=lambda: wall[0]
    )
    start = trio.current_time()
    first = provider.token()
    for _ in range(1000):
        assert provider.token() == first
        await trio.sleep(1.7)  # 1700 s < 1800 s
        wall[0] += 1.7
    assert provider.renewals == 1
    await trio.sleep_until(start + 30 * 60 - 0.001)
    assert provider.token() == first
    await trio.sleep_until(start + 30 * 60)
    second = provider.token()
    assert second != first and provider.renewals == 2
    assert jwt.decode(second, options={"verify_signature": False})["iat"] == int(wall[0])


async def test_invalidate_renews_once_per_rejected_token(autojump_clock):
    provider = ApnsJwtProvider("TEAM", "KID", ec.generate_private_key(ec.SECP256R1()))
    first = provider.token()
    provider.invalidate("some-other-token")
    assert provider.token() == first
    # 100 in-flight requests all come back 403 with the same token: one renewal.
    for _ in range(100):
        provider.invalidate(first)
    second = provider.token()
    for _ in range(100):
        provider.invalidate(first)
    assert provider.token() == second
    assert provider.renewals == 2


async def test_cache_shares_one_provider_per_team_and_key(tmp_path):
    write_p8(tmp_path / "a.p8")
    write_p8(tmp_path / "b.p8")
    cache = ApnsTokenCache()
    one = cache.provider("TEAM", "KID", tmp_path / "a.p8")
    assert cache.provider("TEAM", "KID", tmp_path / "." / "a.p8") is one
    assert one.token() == cache.provider("TEAM", "KID", tmp_path / "a.p8").token()
    assert cache.provider("TEAM", "KID2", tmp_path / "a.p8") is not one
    assert cache.provider("TEAM", "KID", tmp_path / "b.p8") is not one


def test_max_age_must_stay_within_apples_window():
    for bad in (19 * 60, 60 * 60, 0):
        with pytest.raises(ValueError):
            ApnsTokenCache(max_age=bad)
    ApnsTokenCache(max_age=20 * 60)
    ApnsTokenCache(max_age=59 * 60)


def test_unusable_key_files_are_named(tmp_path):
    with pytest.raises(PushServiceConfigError, match="missing.p8"):
        load_apns_signing_key(tmp_path / "missing.p8")
    garbage = tmp_path / "garbage.p8"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(PushServiceConfigError, match="garbage.p8") as info:
        load_apns_signing_key(garbage)
    assert "nope" not in str(info.value)
    rsa_file = tmp_path / "rsa.p8"
    write_p8(rsa_file, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(PushServiceConfigError, match="rsa.p8.*P-256"):
        load_apns_signing_key(rsa_file)
    with pytest.raises(PushServiceConfigError, match="missing.p8"):
        ApnsTokenCache().provider("TEAM", "KID", tmp_path / "missing.p8")


# ---- tokens kept across restarts (state_dir) ----------------------------------


async def test_two_caches_on_one_state_dir_share_the_token(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="sidecar")
    write_p8(tmp_path / "AuthKey.p8")
    state = tmp_path / "spool"
    wall = [1_700_000_000.0]
    before_restart = ApnsTokenCache(state_dir=state, wall_clock=lambda: wall[0])
    first = before_restart.provider("TEAM", "KID", tmp_path / "AuthKey.p8").token()
    stored = state / TOKEN_FILE_NAME
    assert stored.stat().st_mode & 0o777 == 0o600
    # No temporary left behind (the lock file the workers share is kept).
    assert sorted(p.name for p in state.iterdir()) == [TOKEN_FILE_NAME, TOKEN_FILE_NAME + ".lock"]
    wall[0] += 10 * 60  # restarted ten minutes later
    after_restart = ApnsTokenCache(state_dir=state, wall_clock=lambda: wall[0])
    provider = after_restart.provider("TEAM", "KID", tmp_path / "AuthKey.p8")
    assert provider.token() == first
    assert provider.renewals == 0
    # Another key id in the same folder gets its own token and keeps the first.
    other = after_restart.provider("TEAM", "KID2", tmp_path / "AuthKey.p8").token()
    assert other != first
    assert ApnsTokenCache(state_dir=state, wall_clock=lambda: wall[0]).provider(
        "TEAM", "KID", tmp_path / "AuthKey.p8").token() == first
    assert "reusing the stored APNs token" in caplog.text
    assert first not in caplog.text and other not in caplog.text  # never logged


async def test_stored_token_is_replaced_after_max_age(tmp_path, autojump_clock):
    write_p8(tmp_path / "AuthKey.p8")
    state = tmp_path / "spool"
    wall = [1_700_000_000.0]
    old = ApnsTokenCache(state_dir=state, max_age=30 * 60, wall_clock=lambda: wall[0])
    first = old.provider("TEAM", "KID", tmp_path / "AuthKey.p8").token()
    wall[0] += 30 * 60  # the stored token is max_age old: not reused
    new_cache = ApnsTokenCache(state_dir=state, max_age=30 * 60, wall_clock=lambda: wall[0])
    second = new_cache.provider("TEAM", "KID", tmp_path / "AuthKey.p8").token()
    assert second != first
    assert jwt.decode(second, options={"verify_signature": False})["iat"] == int(wall[0])
    assert (state / TOKEN_FILE_NAME).stat().st_mode & 0o777 == 0o600
    # The file now holds the new token: a third process adopts it...
    wall[0] += 60
    third = ApnsTokenCache(state_dir=state, max_age=30 * 60, wall_clock=lambda: wall[0])
    provider = third.provider("TEAM", "KID", tmp_path / "AuthKey.p8")
    assert provider.token() == second
    # ...and renews it when its remaining life (29 minutes) is over, on the trio clock.
    await trio.sleep(29 * 60 - 1)
    assert provider.token() == second
    await trio.sleep(1)
    assert provider.token() != second


async def test_stored_token_of_another_key_or_a_corrupt_file_is_ignored(tmp_path):
    write_p8(tmp_path / "a.p8")
    write_p8(tmp_path / "b.p8")
    state = tmp_path / "spool"
    from_a = ApnsTokenCache(state_dir=state).provider("TEAM", "KID", tmp_path / "a.p8").token()
    # Same team and key id, different key file: the stored token does not verify.
    from_b = ApnsTokenCache(state_dir=state).provider("TEAM", "KID", tmp_path / "b.p8").token()
    assert from_b != from_a
    (state / TOKEN_FILE_NAME).write_text("{not json")
    fresh = ApnsTokenCache(state_dir=state).provider("TEAM", "KID", tmp_path / "b.p8")
    assert fresh.token() not in (from_a, from_b)
    assert (state / TOKEN_FILE_NAME).read_text().startswith("{")  # rewritten cleanly


async def test_unwritable_state_dir_does_not_stop_sending(tmp_path):
    write_p8(tmp_path / "AuthKey.p8")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    provider = ApnsTokenCache(state_dir=blocker).provider("TEAM", "KID", tmp_path / "AuthKey.p8")
    assert provider.token()  # the write failed (logged), the token is still usable
