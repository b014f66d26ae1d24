"""ApnsService against a fake APNs (h2 over memory streams, or TLS on loopback)."""

from __future__ import annotations

import email.utils
import json
import re

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from h2_fake_server import FakeH2Server, FakeRequest, ServerConnection, memory_connector, serve_tls
from sidecar.config import AppConfig
from sidecar.model import Event, Push
from sidecar.pns._answers import parse_retry_after
from sidecar.pns.apns import ApnsService, apns_id_for, classify_apns
from sidecar.pns.apns_auth import ApnsTokenCache
from sidecar.pns.base import ANSWER_GRACE, Notification, PushServiceConfigError, Verdict
from sidecar.pns.http2 import ConnectError

TOKEN = "ab" * 32
HEADERS = {"apns-topic": "com.example.app.voip", "apns-push-type": "voip", "apns-priority": "10",
           "apns-expiration": "0"}


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "AuthKey_KID.p8"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def app_config(key_file, **changes) -> AppConfig:
    fields = dict(
        section="sylk-apple", app_id="com.example.app", app_type="sylk", platform="apple",
        apple_host="apns.test", apple_port=443, apple_key=key_file, key_id="KID", team_id="TEAM",
    )
    fields.update(changes)
    return AppConfig(**fields)


def make_push(token: str = TOKEN) -> Push:
    return Push(
        app_id="com.example.app", platform="apple", token=token, event=Event.INCOMING_SESSION,
        call_id="call-1", from_uri="alice@example.com", to_uri="bob@example.com",
        deadline=1e9, expires_at=2e9,
    )


def notification(payload_size: int = 20, headers=HEADERS) -> Notification:
    return Notification(headers=headers, payload={"event": "incoming_session", "pad": "x" * payload_size})


def answer(status: int, body: dict | None = None, headers: dict[str, str] | None = None):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        conn.server.processed[request.body] += 1
        conn.respond(request, status, headers, json.dumps(body).encode() if body else b"")

    return handler


# ---- pure classification -----------------------------------------------------


@pytest.mark.parametrize(
    "status, reason, verdict",
    [
        (200, "", Verdict.DELIVERED),
        (410, "Unregistered", Verdict.TOKEN_DEAD),
        (410, "ExpiredToken", Verdict.TOKEN_DEAD),
        (400, "BadDeviceToken", Verdict.TOKEN_DEAD),
        (400, "BadTopic", Verdict.REJECTED),
        (400, "DeviceTokenNotForTopic", Verdict.REJECTED),
        (403, "ExpiredProviderToken", Verdict.RETRY),
        (403, "InvalidProviderToken", Verdict.RETRY),
        (403, "BadCertificate", Verdict.REJECTED),
        (404, "BadPath", Verdict.REJECTED),
        (413, "PayloadTooLarge", Verdict.REJECTED),
        (429, "TooManyRequests", Verdict.RETRY),
        (429, "TooManyProviderTokenUpdates", Verdict.RETRY),
        (500, "InternalServerError", Verdict.RETRY),
        (503, "ServiceUnavailable", Verdict.RETRY),
        (503, "Shutdown", Verdict.RETRY),
    ],
)
def test_classification_table(status, reason, verdict):
    assert classify_apns(status, reason) is verdict


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# ---- the service over a fake APNs -------------------------------------------


async def make_service(server, nursery, key_file, cache=None, **changes) -> ApnsService:
    return ApnsService(
        app_config(key_file, **changes), nursery, token_cache=cache or ApnsTokenCache(),
        connector=memory_connector(server), wall_clock=lambda: 1_700_000_000.0,
    )


async def test_delivered_push_sends_the_request_apns_expects(autojump_clock, key_file):
    seen: list[FakeRequest] = []

    def handler(conn, request):
        seen.append(request)
        conn.respond_ok(request)

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        result = await service.send(make_push(), notification())
        await service.aclose()
    assert result.verdict is Verdict.DELIVERED and result.status == 200
    assert result.body == {"apns-id": f"id-{seen[0].stream_id}"}
    assert result.url == f"https://apns.test:443/3/device/{TOKEN}"
    headers = seen[0].headers
    assert headers[":method"] == "POST" and headers[":path"] == f"/3/device/{TOKEN}"
    assert {k: headers[k] for k in HEADERS} == HEADERS
    assert headers["authorization"].startswith("bearer ey")
    assert json.loads(seen[0].body) == {"event": "incoming_session", "pad": "x" * 20}
    assert b" " not in seen[0].body  # compact JSON


async def test_one_jwt_for_many_pushes_and_services_renewed_at_max_age(autojump_clock, key_file):
    server = FakeH2Server()
    cache = ApnsTokenCache(max_age=40 * 60)
    async with trio.open_nursery() as nursery:
        first = await make_service(server, nursery, key_file, cache)
        second = await make_service(server, nursery, key_file, cache, app_id="com.example.other")

        async def many(service: ApnsService) -> None:
            for _ in range(500):
                assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED
                await trio.sleep(1)

        async with trio.open_nursery() as senders:
            senders.start_soon(many, first)
            senders.start_soon(many, second)
        assert list(server.authorizations.values()) == [1000]
        await trio.sleep(40 * 60 - 500)
        await first.send(make_push(), notification())
        await second.send(make_push(), notification())
        await first.aclose()
        await second.aclose()
    assert sorted(server.authorizations.values()) == [2, 1000]


async def test_rejected_provider_token_is_renewed_and_retried(autojump_clock, key_file):
    def handler(conn, request):
        if len(conn.server.authorizations) == 1:
            conn.respond(request, 403, None, b'{"reason":"ExpiredProviderToken"}')
        else:
            conn.respond_ok(request)

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        refused = await service.send(make_push(), notification())
        delivered = await service.send(make_push(), notification())
        await service.aclose()
    assert (refused.verdict, refused.status, refused.reason) == (Verdict.RETRY, 403, "ExpiredProviderToken")
    assert delivered.verdict is Verdict.DELIVERED
    assert len(server.authorizations) == 2


@pytest.mark.parametrize(
    "status, body, headers, verdict, retry_after",
    [
        (410, {"reason": "Unregistered", "timestamp": 1700000000000}, None, Verdict.TOKEN_DEAD, None),
        (400, {"reason": "BadDeviceToken"}, None, Verdict.TOKEN_DEAD, None),
        (400, {"reason": "BadTopic"}, None, Verdict.REJECTED, None),
        (429, {"reason": "TooManyRequests"}, {"retry-after": "30"}, Verdict.RETRY, 30.0),
        (503, {"reason": "ServiceUnavailable"}, None, Verdict.RETRY, None),
    ],
)
async def test_error_answers_are_classified(autojump_clock, key_file, status, body, headers, verdict, retry_after):
    server = FakeH2Server(handler=answer(status, body, headers))
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        result = await service.send(make_push(), notification())
        await service.aclose()
    assert (result.verdict, result.status, result.reason) == (verdict, status, body["reason"])
    assert result.retry_after == retry_after
    assert result.body == body


async def test_payload_size_limits(autojump_clock, key_file):
    server = FakeH2Server()
    alert = {**HEADERS, "apns-push-type": "alert", "apns-topic": "com.example.app"}
    overhead = len(json.dumps(notification(0).payload, separators=(",", ":")))
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        too_big = await service.send(make_push(), notification(4097 - overhead, alert))
        assert (too_big.verdict, too_big.status, too_big.reason) == (Verdict.REJECTED, 413, "PayloadTooLarge")
        assert server.requests == 0
        fits = await service.send(make_push(), notification(4096 - overhead, alert))
        voip = await service.send(make_push(), notification(5120 - overhead))
        voip_too_big = await service.send(make_push(), notification(5121 - overhead))
        await service.aclose()
    assert fits.verdict is Verdict.DELIVERED and voip.verdict is Verdict.DELIVERED
    assert voip_too_big.status == 413
    assert server.requests == 2


async def test_connection_failures_are_retry_with_status_0(autojump_clock, key_file):
    async def refuse(nursery):
        raise ConnectError("connection refused")

    async with trio.open_nursery() as nursery:
        service = ApnsService(app_config(key_file), nursery, token_cache=ApnsTokenCache(), connector=refuse)
        result = await service.send(make_push(), notification())
        await service.aclose()
    assert (result.verdict, result.status) == (Verdict.RETRY, 0)
    assert "connection refused" in result.reason


async def test_push_processed_before_goaway_is_never_retried(autojump_clock, key_file):
    def handler(conn, request):
        conn.server.processed[request.body] += 1
        conn.goaway(request.stream_id)  # processed, then gone without an answer

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        result = await service.send(make_push(), notification())
        await service.aclose()
    assert (result.verdict, result.status) == (Verdict.REJECTED, 0)
    assert result.reason.startswith("NoResponseAfterGoaway")
    assert sum(server.processed.values()) == 1


# ---- configuration ---------------------------------------------------------


async def test_bad_credentials_are_refused_at_construction(tmp_path, key_file):
    cache = ApnsTokenCache()
    async with trio.open_nursery() as nursery:
        with pytest.raises(PushServiceConfigError, match="missing.p8"):
            ApnsService(app_config(tmp_path / "missing.p8"), nursery, token_cache=cache)
        with pytest.raises(PushServiceConfigError, match="team_id"):
            ApnsService(app_config(key_file, team_id=None), nursery, token_cache=cache)
        with pytest.raises(PushServiceConfigError, match="apple_certificate or apple_key"):
            ApnsService(app_config(None), nursery, token_cache=cache)
        bad_cert = tmp_path / "cert.pem"
        bad_cert.write_text("nope")
        with pytest.raises(PushServiceConfigError, match="cert.pem"):
            ApnsService(app_config(key_file, apple_certificate=bad_cert), nursery, token_cache=cache)
        with pytest.raises(PushServiceConfigError, match="ca.pem"):
            ApnsService(app_config(key_file, tls_ca_file=tmp_path / "ca.pem"), nursery, token_cache=cache)


async def test_certificate_auth_accepts_a_pem_pair(tmp_path):
    ca = trustme.CA()
    client = ca.issue_cert("com.example.app")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    async with trio.open_nursery() as nursery:
        app = app_config(tmp_path / "key.pem", apple_certificate=tmp_path / "cert.pem")
        service = ApnsService(app, nursery, token_cache=ApnsTokenCache())
        assert service.statistics()["connected"] is False  # nothing opened yet


async def test_real_tls_path_with_configured_ca(tmp_path, key_file):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = FakeH2Server()
    async with trio.open_nursery() as nursery:
        port = await serve_tls(server, nursery, ca)
        app = app_config(key_file, apple_host="127.0.0.1", apple_port=port, tls_ca_file=tmp_path / "ca.pem")
        service = ApnsService(app, nursery, token_cache=ApnsTokenCache())
        results = []

        async def one() -> None:
            results.append(await service.send(make_push(), notification()))

        async with trio.open_nursery() as senders:
            for _ in range(50):
                senders.start_soon(one)
        await service.aclose()
        nursery.cancel_scope.cancel()
    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 50
    assert results[0].url == f"https://127.0.0.1:{port}/3/device/{TOKEN}"
    assert len(server.connections) == 1 and len(server.authorizations) == 1


# ---- apns-id and deadlines -------------------------------------------------


async def test_apns_id_is_derived_from_call_event_and_token(autojump_clock, key_file):
    seen: list[FakeRequest] = []

    def handler(conn, request):
        seen.append(request)
        conn.respond_ok(request)

    server = FakeH2Server(handler=handler)
    async with trio.open_nursery() as nursery:
        service = await make_service(server, nursery, key_file)
        for push in (make_push(), make_push(), make_push(token="cd" * 32)):
            await service.send(push, notification())
        await service.aclose()
    ids = [request.headers["apns-id"] for request in seen]
    assert ids[0] == ids[1] == apns_id_for(make_push()) != ids[2]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", ids[0])


def late_answer(delay: float):
    def handler(conn: ServerConnection, request: FakeRequest) -> None:
        async def later() -> None:
            await trio.sleep(delay)
            conn.respond_ok(request)
            await conn.flush()

        conn.server.nursery.start_soon(later)

    return handler


@pytest.mark.parametrize("delay, verdict", [(3.0, Verdict.DELIVERED), (60.0, Verdict.RETRY)])
async def test_a_sent_request_outlives_the_deadline_by_the_grace_only(autojump_clock, key_file, delay, verdict):
    server = FakeH2Server(handler=late_answer(delay))
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        service = await make_service(server, nursery, key_file)
        start = trio.current_time()
        push = make_push().replace(deadline=start + 1.0)
        result = await service.send(push, notification())
        elapsed = trio.current_time() - start
        await service.aclose()
        nursery.cancel_scope.cancel()
    assert result.verdict is verdict, result
    if verdict is Verdict.DELIVERED:  # what the service said, 2 s after the deadline
        assert elapsed == pytest.approx(3.0)
    else:  # given up 5 s after the deadline; it may have been delivered
        assert elapsed == pytest.approx(1.0 + ANSWER_GRACE)
        assert result.fate_unknown and result.reason.startswith("NoAnswerInTime")


async def test_a_push_not_sent_by_its_deadline_expires(autojump_clock, key_file):
    async def never(nursery):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        service = ApnsService(app_config(key_file), nursery, token_cache=ApnsTokenCache(), connector=never)
        push = make_push().replace(deadline=trio.current_time() + 2.0)
        result = await service.send(push, notification())
        await service.aclose()
    assert result.verdict is Verdict.EXPIRED and result.reason.startswith("NotSentInTime")
