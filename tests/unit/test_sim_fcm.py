"""The simulator's Google side: OAuth token endpoint and FCM HTTP v1 sends."""

import time

import httpx
import pytest

from sidecar.sim import generate_credentials, open_simulator
from sidecar.sim.testing import client_ssl_context, oauth_assertion, oauth_form

FCM_TOKEN = "fcm-token_abc:DEF123456789"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate_credentials(tmp_path_factory.mktemp("creds"), project_id="demo-project")


@pytest.fixture
async def sim(creds):
    async with open_simulator(creds) as sim:
        yield sim


@pytest.fixture(params=[True, False], ids=["h2", "http1"])
async def client(request, creds, sim):
    context = client_ssl_context(creds, alpn=("h2", "http/1.1") if request.param else ())
    async with httpx.AsyncClient(http2=request.param, verify=context,
                                 base_url=sim.base_url) as client:
        yield client


async def fetch_token(client, creds, sim, **options):
    assertion = oauth_assertion(creds, f"{sim.base_url}/token", **options)
    return await client.post("/token", data=oauth_form(assertion))


async def access_token(client, creds, sim):
    response = await fetch_token(client, creds, sim)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def send_url(creds, project=None):
    return f"/v1/projects/{project or creds.project_id}/messages:send"


def fcm_code(response):
    details = response.json()["error"].get("details", [])
    return [d.get("errorCode") for d in details if d["@type"] == FCM_ERROR]


async def test_token_endpoint_issues_access_tokens(client, creds, sim):
    response = await fetch_token(client, creds, sim)
    assert response.status_code == 200
    document = response.json()
    assert document["token_type"] == "Bearer" and document["expires_in"] == 3599
    assert document["access_token"].startswith("ya29.")
    assert sim.token_fetches == 1
    record = sim.requests[-1]
    assert record["http"] == response.http_version.removeprefix("HTTP/")
    assert record["kind"] == "oauth" and record["form"]["assertion"] == "<redacted>"
    assert record["jwt"]["claims"]["iss"] == creds.client_email
    assert document["access_token"] not in str(record)


@pytest.mark.parametrize("options, error", [
    ({"scope": "https://www.googleapis.com/auth/cloud-platform"}, "invalid_scope"),
    ({"lifetime": 7200}, "invalid_grant"),
    ({"iat": time.time() - 7200}, "invalid_grant"),  # expired assertion
    ({"issuer": "someone@else.iam.gserviceaccount.com"}, "invalid_grant"),
])
async def test_token_endpoint_checks_the_assertion(client, creds, sim, options, error):
    response = await fetch_token(client, creds, sim, **options)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert sim.token_fetches == 0


async def test_token_endpoint_checks_audience_signature_and_grant(client, creds, sim):
    wrong_aud = oauth_assertion(creds, "https://oauth2.example.invalid/token")
    response = await client.post("/token", data=oauth_form(wrong_aud))
    assert response.json() == {"error": "invalid_grant",
                               "error_description": "Invalid JWT: Failed audience check."}
    good = oauth_assertion(creds, f"{sim.base_url}/token")
    head, payload, signature = good.split(".")
    tampered = f"{head}.{payload}.{signature[:-6]}AAAAAA"
    response = await client.post("/token", data=oauth_form(tampered))
    assert response.json()["error_description"] == "Invalid JWT Signature."
    response = await client.post("/token", data={"grant_type": "client_credentials",
                                                 "assertion": good})
    assert response.json()["error"] == "unsupported_grant_type"


async def test_send_with_valid_access_token(client, creds, sim):
    token = await access_token(client, creds, sim)
    message = {"message": {"token": FCM_TOKEN, "data": {"event": "incoming_session"},
                           "android": {"priority": "high", "ttl": "60s"}}}
    response = await client.post(send_url(creds), json=message,
                                 headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["name"].startswith(f"projects/{creds.project_id}/messages/")
    record = sim.requests[-1]
    assert record["headers"]["authorization"] == "Bearer <redacted>"
    assert record["body"] == message


async def test_send_authentication(client, creds, sim):
    message = {"message": {"token": FCM_TOKEN}}
    response = await client.post(send_url(creds), json=message)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    response = await client.post(send_url(creds), json=message,
                                 headers={"authorization": "Bearer made-up"})
    assert response.status_code == 401
    token = await access_token(client, creds, sim)
    sim.expire_access_tokens()
    response = await client.post(send_url(creds), json=message,
                                 headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    token = await access_token(client, creds, sim)
    response = await client.post(send_url(creds, "other-project"), json=message,
                                 headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize("message, field", [
    ({"token": FCM_TOKEN, "data": {"badge": 1}}, "message.data[0].value"),
    ({"token": FCM_TOKEN, "data": {"a": "b", "metadata": {"x": "y"}}}, "message.data[1].value"),
    ({"token": FCM_TOKEN, "android": {"priority": "urgent"}}, "message.android.priority"),
    ({"token": FCM_TOKEN, "android": {"ttl": "60"}}, "message.android.ttl"),
    ({"token": FCM_TOKEN, "android": {"ttl": "2419201s"}}, "message.android.ttl"),
    ({"token": FCM_TOKEN, "topic": "news"}, "message"),
    ({"data": {"a": "b"}}, "message"),
    ({"token": FCM_TOKEN, "priority": "high"}, "message.priority"),
    ({"token": FCM_TOKEN, "data": {"blob": "x" * 4100}}, "message"),
])
async def test_payload_rules_name_the_field(client, creds, sim, message, field):
    token = await access_token(client, creds, sim)
    response = await client.post(send_url(creds), json={"message": message},
                                 headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    violations = [v for d in error["details"] if d["@type"] == BAD_REQUEST
                  for v in d["fieldViolations"]]
    assert [v["field"] for v in violations] == [field]


async def test_token_fates(client, creds, sim):
    token = await access_token(client, creds, sim)
    auth = {"authorization": f"Bearer {token}"}
    sim.dead_tokens.add("dead-token-123")
    sim.bad_tokens.add("bad-token-1234")
    sim.token_projects["foreign-token-1"] = "another-project"
    response = await client.post(send_url(creds), json={"message": {"token": "dead-token-123"}},
                                 headers=auth)
    assert (response.status_code, fcm_code(response)) == (404, ["UNREGISTERED"])
    response = await client.post(send_url(creds), json={"message": {"token": "bad-token-1234"}},
                                 headers=auth)
    assert (response.status_code, fcm_code(response)) == (400, ["INVALID_ARGUMENT"])
    assert "registration token" in response.json()["error"]["message"]
    response = await client.post(send_url(creds), json={"message": {"token": "no spaces!"}},
                                 headers=auth)
    assert (response.status_code, fcm_code(response)) == (400, ["INVALID_ARGUMENT"])
    response = await client.post(send_url(creds), json={"message": {"token": "foreign-token-1"}},
                                 headers=auth)
    assert (response.status_code, fcm_code(response)) == (403, ["SENDER_ID_MISMATCH"])


async def test_scripted_fcm_and_oauth_faults(client, creds, sim):
    sim.script_status([(500, {})], kind="oauth")
    assert (await fetch_token(client, creds, sim)).status_code == 500
    token = await access_token(client, creds, sim)
    sim.script_status([(429, {"retry-after": "60"}), 503], kind="fcm")
    auth = {"authorization": f"Bearer {token}"}
    message = {"message": {"token": FCM_TOKEN}}
    response = await client.post(send_url(creds), json=message, headers=auth)
    assert (response.status_code, fcm_code(response)) == (429, ["QUOTA_EXCEEDED"])
    assert response.headers["retry-after"] == "60"
    response = await client.post(send_url(creds), json=message, headers=auth)
    assert (response.status_code, fcm_code(response)) == (503, ["UNAVAILABLE"])
    assert (await client.post(send_url(creds), json=message, headers=auth)).status_code == 200
    assert sim.token_fetches == 1
