"""The simulator's APNs side, over real TLS + HTTP/2 (httpx) on 127.0.0.1."""

import time
import uuid

import httpx
import pytest

from sidecar.sim import Fault, generate_credentials, open_simulator
from sidecar.sim.testing import apns_provider_token, client_ssl_context

TOKEN = "a1b2c3d4" * 8
TOPIC = "com.example.sylk"


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate_credentials(tmp_path_factory.mktemp("creds"))


@pytest.fixture
async def sim(creds):
    async with open_simulator(creds, token_update_interval=0) as sim:
        yield sim


@pytest.fixture
async def client(creds, sim):
    async with httpx.AsyncClient(http2=True, verify=client_ssl_context(creds),
                                 base_url=sim.base_url) as client:
        yield client


@pytest.fixture
async def cert_client(creds, sim):
    context = client_ssl_context(creds, client_certificate=True)
    async with httpx.AsyncClient(http2=True, verify=context, base_url=sim.base_url) as client:
        yield client


def headers(creds, **overrides):
    base = {
        "authorization": f"bearer {apns_provider_token(creds)}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


async def push(client, creds, token=TOKEN, body=b'{"aps":{"alert":"hi"}}', method="POST", **hdrs):
    return await client.request(method, f"/3/device/{token}", headers=headers(creds, **hdrs),
                                content=body)


async def test_valid_push_answers_200_with_generated_apns_id(client, creds, sim):
    response = await push(client, creds)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert uuid.UUID(response.headers["apns-id"])
    record = sim.requests[-1]
    assert record["status"] == 200 and record["kind"] == "apns"
    assert record["apns_id"] == response.headers["apns-id"]


async def test_apns_id_is_echoed(client, creds):
    apns_id = str(uuid.uuid4())
    response = await push(client, creds, apns_id=apns_id)
    assert response.status_code == 200
    assert response.headers["apns-id"] == apns_id


@pytest.mark.parametrize("overrides, status, reason", [
    ({"apns_topic": None}, 400, "MissingTopic"),
    ({"apns_push_type": "shout"}, 400, "InvalidPushType"),
    ({"apns_push_type": "voip"}, 400, "InvalidPushType"),  # voip needs a .voip topic
    ({"apns_priority": "7"}, 400, "BadPriority"),
    ({"apns_push_type": "background", "apns_priority": "10"}, 400, "BadPriority"),
    ({"apns_expiration": "soon"}, 400, "BadExpirationDate"),
    ({"apns_collapse_id": "x" * 65}, 400, "BadCollapseId"),
    ({"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
    ({"authorization": None}, 403, "MissingProviderToken"),
])
async def test_header_rules(client, creds, overrides, status, reason):
    response = await push(client, creds, **overrides)
    assert response.status_code == status
    assert response.json() == {"reason": reason}


async def test_voip_on_voip_topic_and_background_priority_5_are_fine(client, creds):
    voip = await push(client, creds, apns_push_type="voip", apns_topic=TOPIC + ".voip",
                      apns_expiration=str(int(time.time()) + 60))
    assert voip.status_code == 200
    background = await push(client, creds, apns_push_type="background", apns_priority="5")
    assert background.status_code == 200


async def test_path_method_token_and_payload_rules(client, creds):
    assert (await client.post("/4/device/" + TOKEN, headers=headers(creds),
                              content=b"{}")).json() == {"reason": "BadPath"}
    response = await push(client, creds, method="PUT")
    assert (response.status_code, response.json()) == (405, {"reason": "MethodNotAllowed"})
    response = await push(client, creds, token="xyz-not-hex")
    assert (response.status_code, response.json()) == (400, {"reason": "BadDeviceToken"})
    response = await push(client, creds, token="")
    assert response.json() == {"reason": "MissingDeviceToken"}
    response = await push(client, creds, body=b"")
    assert (response.status_code, response.json()) == (400, {"reason": "PayloadEmpty"})
    response = await push(client, creds, body=b"x" * 4097)
    assert (response.status_code, response.json()) == (413, {"reason": "PayloadTooLarge"})
    voip = dict(apns_push_type="voip", apns_topic=TOPIC + ".voip")
    assert (await push(client, creds, body=b"x" * 5120, **voip)).status_code == 200
    assert (await push(client, creds, body=b"x" * 5121, **voip)).status_code == 413


async def test_duplicate_headers(client, creds):
    fields = list(headers(creds).items()) + [("apns-topic", TOPIC)]
    response = await client.post(f"/3/device/{TOKEN}", headers=fields, content=b"{}")
    assert (response.status_code, response.json()) == (400, {"reason": "DuplicateHeaders"})


async def test_provider_token_checks(client, creds):
    old = apns_provider_token(creds, iat=time.time() - 3700)
    response = await push(client, creds, authorization=f"bearer {old}")
    assert (response.status_code, response.json()) == (403, {"reason": "ExpiredProviderToken"})
    unknown_kid = apns_provider_token(creds, key_id="ZZZZZZZZZZ")
    response = await push(client, creds, authorization=f"bearer {unknown_kid}")
    assert (response.status_code, response.json()) == (403, {"reason": "InvalidProviderToken"})
    wrong_team = apns_provider_token(creds, team_id="OTHERTEAM1")
    response = await push(client, creds, authorization=f"bearer {wrong_team}")
    assert response.json() == {"reason": "InvalidProviderToken"}
    good = apns_provider_token(creds)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    response = await push(client, creds, authorization=f"bearer {forged}")
    assert response.json() == {"reason": "InvalidProviderToken"}


async def test_too_many_provider_token_updates(creds):
    async with open_simulator(creds, token_update_interval=1200) as sim:
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(creds),
                                     base_url=sim.base_url) as client:
            first = apns_provider_token(creds, iat=time.time() - 10)
            second = apns_provider_token(creds, iat=time.time())
            assert first != second
            assert (await push(client, creds, authorization=f"bearer {first}")).status_code == 200
            assert (await push(client, creds, authorization=f"bearer {first}")).status_code == 200
            response = await push(client, creds, authorization=f"bearer {second}")
            assert (response.status_code, response.json()) == (
                429, {"reason": "TooManyProviderTokenUpdates"})


async def test_certificate_auth(cert_client, creds, sim):
    bundle = creds.cert_bundle_id
    no_token = {"authorization": None, "apns_topic": bundle}
    response = await push(cert_client, creds, **no_token)
    assert response.status_code == 200
    response = await push(cert_client, creds, authorization=None, apns_topic=bundle + ".voip",
                          apns_push_type="voip")
    assert response.status_code == 200
    response = await push(cert_client, creds, authorization=None, apns_topic="com.other.app")
    assert (response.status_code, response.json()) == (400, {"reason": "TopicDisallowed"})
    # Apple defaults the topic to the certificate's.
    assert (await push(cert_client, creds, authorization=None, apns_topic=None)).status_code == 200
    assert sim.requests[-1]["client_certificate_topic"] == bundle


async def test_dead_bad_and_foreign_tokens(client, creds, sim):
    sim.dead_tokens.add("dead0000dead")
    sim.bad_tokens.add("bad00000bad0")
    sim.token_topics["0123456789ab"] = "com.other.app"
    before = time.time() * 1000
    response = await push(client, creds, token="dead0000dead")
    body = response.json()
    assert response.status_code == 410 and body["reason"] == "Unregistered"
    assert before - 1000 <= body["timestamp"] <= time.time() * 1000 + 1000
    response = await push(client, creds, token="bad00000bad0")
    assert (response.status_code, response.json()) == (400, {"reason": "BadDeviceToken"})
    response = await push(client, creds, token="0123456789ab")
    assert response.json() == {"reason": "DeviceTokenNotForTopic"}


async def test_scripted_faults_apply_in_order_then_normal_service(client, creds, sim):
    sim.script_status([(503, {"retry-after": "1"}), (429, {}, "TooManyRequests"),
                       Fault(status=500, reason="InternalServerError")])
    first = await push(client, creds)
    assert first.status_code == 503 and first.headers["retry-after"] == "1"
    assert first.json() == {"reason": "ServiceUnavailable"}
    assert (await push(client, creds)).json() == {"reason": "TooManyRequests"}
    assert (await push(client, creds)).status_code == 500
    assert (await push(client, creds)).status_code == 200
    assert [r["status"] for r in sim.requests] == [503, 429, 500, 200]


async def test_invalid_requests_do_not_consume_the_script(client, creds, sim):
    sim.script_status([503])
    assert (await push(client, creds, apns_priority="3")).status_code == 400
    assert (await push(client, creds)).status_code == 503


async def test_scripted_delay(client, creds, sim):
    sim.script_status([Fault(status=200, delay=0.3)])
    started = time.monotonic()
    assert (await push(client, creds)).status_code == 200
    assert time.monotonic() - started >= 0.3
