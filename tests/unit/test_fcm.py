"""FcmService: the pure classifier, and real sends over TLS to the simulator on loopback."""

from __future__ import annotations

import contextlib
import email.utils
import json
import shutil
import logging
import time

import pytest
import trio

from sidecar.config import AppConfig
from sidecar.model import Event, Push
from sidecar.pns.base import Notification, PushServiceConfigError, Verdict
from sidecar.pns.fcm import FcmService, classify_fcm, create_fcm_service, send_url
from sidecar.pns.fcm_auth import OAuthTokenCache
from sidecar.sim.creds import generate_credentials, load_credentials, write_service_account
from sidecar.sim.server import open_simulator

TOKEN = "fcm-token-0123456789"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def google(code: int, status: str, message: str, *details) -> dict:
    error = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def fcm_error(code: str) -> dict:
    return {"@type": FCM_ERROR, "errorCode": code}


def violation(field: str) -> dict:
    return {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": "bad"}]}


# ---- pure classification -------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, verdict, reason, auth_error",
    [
        (200, {"name": "projects/p/messages/1"}, Verdict.DELIVERED, "OK", False),
        (404, google(404, "NOT_FOUND", "Requested entity was not found.", fcm_error("UNREGISTERED")),
         Verdict.TOKEN_DEAD, "UNREGISTERED", False),
        (403, google(403, "PERMISSION_DENIED", "SenderId mismatch", fcm_error("SENDER_ID_MISMATCH")),
         Verdict.TOKEN_DEAD, "SENDER_ID_MISMATCH", False),
        (400, google(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                     fcm_error("INVALID_ARGUMENT")), Verdict.TOKEN_DEAD, "INVALID_ARGUMENT", False),
        # INVALID_ARGUMENT without a payload field to blame: the token.
        (400, google(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", fcm_error("INVALID_ARGUMENT")),
         Verdict.TOKEN_DEAD, "INVALID_ARGUMENT", False),
        (400, google(400, "INVALID_ARGUMENT", "Invalid value", violation("message.token")),
         Verdict.TOKEN_DEAD, "INVALID_ARGUMENT", False),
        # ... a payload field to blame: our payload, keep the token.
        (400, google(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value' (TYPE_STRING), 1",
                     violation("message.data[0].value")),
         Verdict.REJECTED, "INVALID_ARGUMENT: Invalid value at 'message.data[0].value' (TYPE_STRING), 1", False),
        (400, google(400, "INVALID_ARGUMENT", "Message is too big", fcm_error("INVALID_ARGUMENT"),
                     violation("message")),
         Verdict.REJECTED, "INVALID_ARGUMENT: Message is too big", False),
        (400, google(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
         Verdict.REJECTED, "INVALID_ARGUMENT: Invalid JSON payload received.", False),
        (401, google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
         Verdict.REJECTED, "UNAUTHENTICATED: Request had invalid authentication credentials.", True),
        (401, google(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
                     fcm_error("THIRD_PARTY_AUTH_ERROR")),
         Verdict.REJECTED, "THIRD_PARTY_AUTH_ERROR: Auth error from APNS or Web Push Service", True),
        (403, google(403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied"),
         Verdict.REJECTED, "PERMISSION_DENIED: Permission 'cloudmessaging.messages.create' denied", True),
        (429, google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", fcm_error("QUOTA_EXCEEDED")),
         Verdict.RETRY, "QUOTA_EXCEEDED", False),
        (500, google(500, "INTERNAL", "Internal error", fcm_error("INTERNAL")), Verdict.RETRY, "INTERNAL", False),
        (503, google(503, "UNAVAILABLE", "The service is unavailable", fcm_error("UNAVAILABLE")),
         Verdict.RETRY, "UNAVAILABLE", False),
        (502, {"text": "<html>Bad Gateway</html>"}, Verdict.RETRY, "HTTP 502", False),
        (404, google(404, "NOT_FOUND", "Method not found."), Verdict.REJECTED, "NOT_FOUND: Method not found.", False),
        (413, None, Verdict.REJECTED, "HTTP 413", False),
    ],
)
def test_classification_table(status, body, verdict, reason, auth_error):
    judged = classify_fcm(status, body)
    assert (judged.verdict, judged.reason, judged.auth_error) == (verdict, reason, auth_error)


def app_config(**changes) -> AppConfig:
    fields = dict(section="sylk-android", app_id="com.example.sylk", app_type="sylk", platform="firebase")
    fields.update(changes)
    return AppConfig(**fields)


def test_send_url_defaults_to_google_and_honours_firebase_push_url():
    assert send_url(app_config(), "my-proj") == "https://fcm.googleapis.com/v1/projects/my-proj/messages:send"
    custom = "https://fcm.staging.example:8443/v1/projects/p/messages:send"
    assert send_url(app_config(firebase_push_url=custom), "my-proj") == custom
    with pytest.raises(PushServiceConfigError, match=r"\[sylk-android\].*no project_id"):
        send_url(app_config(), None)
    with pytest.raises(PushServiceConfigError, match="not an https URL"):
        send_url(app_config(firebase_push_url="http://fcm.test/v1/projects/p/messages:send"), "p")


# ---- the service against the simulator ---------------------------------------------------


def make_push(token: str = TOKEN) -> Push:
    return Push(
        app_id="com.example.sylk", platform="firebase", token=token, event=Event.INCOMING_SESSION,
        call_id="call-1", from_uri="alice@example.com", to_uri="bob@example.com",
        deadline=1e9, expires_at=2e9,
    )


def notification(token: str = TOKEN, **data) -> Notification:
    data = data or {"event": "incoming_session", "call-id": "call-1"}
    return Notification(headers={}, payload={
        "message": {"token": token, "data": data, "android": {"priority": "high", "ttl": "60s"}},
    })


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


def sim_app(sim, **changes) -> AppConfig:
    creds = sim.credentials
    fields = dict(
        firebase_authorization_file=creds.service_account_file,
        firebase_push_url=f"https://127.0.0.1:{sim.port}/v1/projects/{creds.project_id}/messages:send",
        tls_ca_file=creds.ca_file,
    )
    fields.update(changes)
    return app_config(**fields)


@contextlib.asynccontextmanager
async def fcm_service(app: AppConfig, cache: OAuthTokenCache | None = None):
    async with trio.open_nursery() as nursery:
        service = FcmService(app, nursery, oauth_cache=cache or OAuthTokenCache())
        try:
            yield service
        finally:
            await service.aclose()


async def test_delivered_push_sends_what_fcm_expects(sim):
    async with fcm_service(sim_app(sim)) as service:
        result = await service.send(make_push(), notification())
    assert result.verdict is Verdict.DELIVERED and result.status == 200
    assert result.url == f"https://127.0.0.1:{sim.port}/v1/projects/sim-project/messages:send"
    assert result.body["name"].startswith("projects/sim-project/messages/")
    record = sim.requests[-1]
    assert record["kind"] == "fcm" and record["http"] == "2" and record["method"] == "POST"
    assert record["path"] == "/v1/projects/sim-project/messages:send"
    assert record["headers"]["authorization"] == "Bearer <redacted>"
    assert record["headers"]["content-type"] == "application/json"
    assert record["body"] == notification().payload


async def test_one_oauth_fetch_serves_a_thousand_pushes_on_one_connection(sim):
    async with fcm_service(sim_app(sim)) as service:
        results = []

        async def push_one():
            results.append(await service.send(make_push(), notification()))

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(push_one)
        stats = service.statistics()
    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 1000
    assert sim.token_fetches == 1 and stats["oauth_fetches"] == 1
    assert stats["connects"] == 1
    assert len({r["connection"] for r in sim.requests if r["kind"] == "fcm"}) == 1


async def test_fifty_concurrent_first_pushes_cause_one_fetch(sim):
    sim.delay = 0.05  # keep them all in flight together
    async with fcm_service(sim_app(sim)) as service:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(service.send, make_push(), notification())
    assert sim.token_fetches == 1
    assert sim.stats().statuses == {200: 51}  # 50 pushes + 1 token


async def test_token_shared_by_applications_of_one_service_account(sim):
    cache = OAuthTokenCache()
    async with fcm_service(sim_app(sim), cache) as first, fcm_service(sim_app(sim, app_id="other"), cache) as second:
        assert (await first.send(make_push(), notification())).verdict is Verdict.DELIVERED
        assert (await second.send(make_push(), notification())).verdict is Verdict.DELIVERED
    assert sim.token_fetches == 1


async def test_access_token_is_renewed_before_it_expires(creds):
    # Real sockets, so real time: a 1 s token is renewed after 0.9 s.
    async with open_simulator(creds, access_token_lifetime=1) as sim:
        write_service_account(creds, sim.port)
        async with fcm_service(sim_app(sim)) as service:
            for _ in range(5):
                assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED
            assert sim.token_fetches == 1
            await trio.sleep(0.95)
            assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED
            assert sim.token_fetches == 2
            assert sim.stats().statuses.get(401) is None  # renewed before FCM refused it


async def test_expired_access_token_is_renewed_and_the_push_resent_once(sim):
    async with fcm_service(sim_app(sim)) as service:
        assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED
        sim.expire_access_tokens()
        result = await service.send(make_push(), notification())
        assert result.verdict is Verdict.DELIVERED
        assert sim.token_fetches == 2 and service.auth_retries == 1
        assert [r["status"] for r in sim.requests if r["kind"] == "fcm"] == [200, 401, 200]


async def test_credentials_refused_twice_are_rejected_with_an_error_log(sim, caplog):
    sim.script_status([(401, {}, "THIRD_PARTY_AUTH_ERROR")] * 2, kind="fcm")
    with caplog.at_level(logging.ERROR, logger="sidecar.pns.fcm"):
        async with fcm_service(sim_app(sim)) as service:
            result = await service.send(make_push(), notification())
    assert result.verdict is Verdict.REJECTED and result.status == 401
    assert result.reason.startswith("FCM refused our credentials: THIRD_PARTY_AUTH_ERROR")
    assert sim.token_fetches == 2  # one renewal, not one per attempt
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "[sylk-android]" in errors[0] and "com.example.sylk" in errors[0]
    assert "ya29" not in caplog.text and "eyJ" not in caplog.text


async def test_wrong_project_is_refused_without_a_fetch_per_push(sim):
    # The service account belongs to sim-project; the URL names another project.
    app = sim_app(sim, firebase_push_url=f"https://127.0.0.1:{sim.port}/v1/projects/other/messages:send")
    async with fcm_service(app) as service:
        results = [await service.send(make_push(), notification()) for _ in range(5)]
    assert {(r.verdict, r.status) for r in results} == {(Verdict.REJECTED, 403)}
    assert "PERMISSION_DENIED" in results[0].reason
    assert sim.token_fetches == 2  # the first refusal renews once; the rest are throttled


@pytest.mark.parametrize(
    "setup, verdict, status, reason",
    [
        (lambda sim: sim.dead_tokens.add(TOKEN), Verdict.TOKEN_DEAD, 404, "UNREGISTERED"),
        (lambda sim: sim.bad_tokens.add(TOKEN), Verdict.TOKEN_DEAD, 400, "INVALID_ARGUMENT"),
        (lambda sim: sim.token_projects.__setitem__(TOKEN, "other-project"), Verdict.TOKEN_DEAD, 403,
         "SENDER_ID_MISMATCH"),
        (lambda sim: sim.script_status([500], kind="fcm"), Verdict.RETRY, 500, "INTERNAL"),
        (lambda sim: sim.script_status([(404, {}, "UNREGISTERED")], kind="fcm"), Verdict.TOKEN_DEAD, 404,
         "UNREGISTERED"),
    ],
)
async def test_error_answers_from_the_simulator_are_classified(sim, setup, verdict, status, reason):
    setup(sim)
    async with fcm_service(sim_app(sim)) as service:
        result = await service.send(make_push(), notification())
    assert (result.verdict, result.status, result.reason) == (verdict, status, reason)
    assert result.body["error"]["code"] == status


async def test_payload_errors_are_rejected_with_googles_message(sim):
    async with fcm_service(sim_app(sim)) as service:
        result = await service.send(make_push(), notification(event="message", badge=3))
    assert result.verdict is Verdict.REJECTED and result.status == 400
    assert result.reason.startswith("INVALID_ARGUMENT: Invalid value at 'message.data[1].value'")


async def test_retry_after_in_seconds_and_as_a_date(sim):
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    sim.script_status([(429, {"retry-after": "60"}), (503, {"retry-after": date})], kind="fcm")
    async with fcm_service(sim_app(sim)) as service:
        quota = await service.send(make_push(), notification())
        unavailable = await service.send(make_push(), notification())
    assert (quota.verdict, quota.status, quota.reason, quota.retry_after) == (
        Verdict.RETRY, 429, "QUOTA_EXCEEDED", 60.0)
    assert unavailable.verdict is Verdict.RETRY and unavailable.status == 503
    assert 115 <= unavailable.retry_after <= 120


async def test_oauth_failure_is_retry_naming_oauth(sim):
    sim.script_status([(503, {}, "temporarily_unavailable")], kind="oauth")
    async with fcm_service(sim_app(sim)) as service:
        result = await service.send(make_push(), notification())
    assert result.verdict is Verdict.RETRY and result.status == 0
    assert result.reason.startswith("OAuth token unavailable: token endpoint https://127.0.0.1:")
    assert "503: temporarily_unavailable" in result.reason
    assert not [r for r in sim.requests if r["kind"] == "fcm"]  # nothing sent without a token


async def test_connection_failure_is_retry_with_status_0(sim):
    with trio.socket.socket() as unused:  # a port nobody listens on
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    app = sim_app(sim, firebase_push_url=f"https://127.0.0.1:{port}/v1/projects/sim-project/messages:send")
    async with fcm_service(app) as service:
        result = await service.send(make_push(), notification())
    assert result.verdict is Verdict.RETRY and result.status == 0
    assert result.reason.startswith("ConnectError") and str(port) in result.url


async def test_dropped_connection_is_retry(sim):
    async with fcm_service(sim_app(sim)) as service:
        assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED
        sim.drop_connection_after(0, kind="fcm")
        result = await service.send(make_push(), notification())
        assert result.verdict is Verdict.RETRY and result.status == 0
        assert (await service.send(make_push(), notification())).verdict is Verdict.DELIVERED


# ---- configuration errors -----------------------------------------------------------------


async def test_configuration_errors_fail_at_construction(tmp_path, creds):
    good = json.loads(creds.service_account_file.read_text())
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    no_keys = tmp_path / "no-keys.json"
    no_keys.write_text(json.dumps({k: v for k, v in good.items() if k not in ("client_email", "private_key")}))
    no_project = tmp_path / "no-project.json"
    no_project.write_text(json.dumps({k: v for k, v in good.items() if k != "project_id"}))
    cases = [
        (app_config(), "needs firebase_authorization_file"),
        (app_config(firebase_authorization_file=tmp_path / "missing.json"),
         f"cannot read service-account file {tmp_path / 'missing.json'}"),
        (app_config(firebase_authorization_file=bad_json), f"{bad_json} is not valid JSON"),
        (app_config(firebase_authorization_file=no_keys), f"{no_keys} lacks client_email, private_key"),
        (app_config(firebase_authorization_file=no_project), "has no project_id; add it or set firebase_push_url"),
        (app_config(firebase_authorization_file=no_project, firebase_push_url="https://fcm.test/v1/x",
                    tls_ca_file=tmp_path / "no-ca.pem"), "cannot load CA file"),
    ]
    async with trio.open_nursery() as nursery:
        for app, expected in cases:
            with pytest.raises(PushServiceConfigError) as info:
                FcmService(app, nursery, oauth_cache=OAuthTokenCache())
            assert expected in str(info.value)
        # Without project_id an explicit URL is enough; the factory works without a cache.
        service = create_fcm_service(
            app_config(firebase_authorization_file=no_project, firebase_push_url="https://fcm.test/v1/x"), nursery)
        assert service.platform == "firebase"
        await service.aclose()
