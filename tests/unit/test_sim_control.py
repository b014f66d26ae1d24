"""The simulator's control API, records, credentials and command line."""

import configparser
import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sidecar.sim import generate_credentials, load_credentials, open_simulator
from sidecar.sim.cli import write_config
from sidecar.sim.testing import apns_provider_token, client_ssl_context

TOKEN = "feedface" * 8
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate_credentials(tmp_path_factory.mktemp("creds"))


async def apns_push(client, creds, token=TOKEN):
    return await client.post(f"/3/device/{token}", content=b'{"aps":{}}', headers={
        "authorization": f"bearer {apns_provider_token(creds)}", "apns-topic": "com.example.sylk"})


def test_generated_credentials(creds):
    assert load_credentials(creds.folder) == creds
    ca = x509.load_pem_x509_certificate(creds.ca_file.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)][0] == "127.0.0.1"
    server.verify_directly_issued_by(ca)
    client = x509.load_pem_x509_certificate(creds.client_cert.read_bytes())
    assert client.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == creds.cert_bundle_id
    key = serialization.load_pem_private_key(creds.apns_key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert creds.apns_key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert creds.apns_key_file.name == f"AuthKey_{creds.key_id}.p8"
    assert len(creds.key_id) == 10 and len(creds.team_id) == 10
    account = creds.service_account()
    assert account["type"] == "service_account"
    assert account["private_key_id"] == creds.private_key_id
    rsa_key = serialization.load_pem_private_key(account["private_key"].encode(), None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert creds.service_account_file.stat().st_mode & 0o077 == 0


async def test_control_api_scripts_records_and_resets(creds):
    async with open_simulator(creds, token_update_interval=0) as sim:
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(creds),
                                     base_url=sim.base_url) as client:
            script = {"kind": "apns", "sequence": [{"status": 503, "headers": {"retry-after": "2"}}],
                      "dead_tokens": ["dead1234"], "delay": 0}
            assert (await client.post("/_sim/script", json=script)).json() == {"ok": True}
            first = await apns_push(client, creds)
            assert first.status_code == 503 and first.headers["retry-after"] == "2"
            assert (await apns_push(client, creds, "dead1234")).status_code == 410
            assert (await apns_push(client, creds)).status_code == 200

            listing = (await client.get("/_sim/requests")).json()
            assert listing["total"] == 3
            assert [r["status"] for r in listing["requests"]] == [503, 410, 200]
            later = (await client.get("/_sim/requests?since=2")).json()["requests"]
            assert [r["seq"] for r in later] == [3]
            stats = (await client.get("/_sim/stats")).json()
            assert stats["streams"] == 3 and stats["statuses"] == {"503": 1, "410": 1, "200": 1}

            bad = await client.post("/_sim/script", json={"explode": True})
            assert bad.status_code == 400 and "explode" in bad.json()["error"]
            assert (await client.post("/_sim/reset")).status_code == 200
            assert (await client.get("/_sim/requests")).json()["requests"] == []
            assert sim.dead_tokens == set()
            assert (await apns_push(client, creds, "dead1234")).status_code == 200


async def test_record_file_has_one_redacted_json_line_per_request(creds, tmp_path):
    record_file = tmp_path / "requests.jsonl"
    async with open_simulator(creds, record_file=record_file, token_update_interval=0) as sim:
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(creds),
                                     base_url=sim.base_url) as client:
            token = apns_provider_token(creds)
            for _ in range(3):
                response = await client.post(f"/3/device/{TOKEN}", content=b'{"aps":{"badge":1}}',
                                             headers={"authorization": f"bearer {token}",
                                                      "apns-topic": "com.example.sylk"})
                assert response.status_code == 200
            await sim.wait_requests(3)
    text = record_file.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert token not in text and token.split(".")[2] not in text
    first = lines[0]
    assert first["headers"]["authorization"] == "bearer <redacted>"
    assert first["jwt"]["claims"]["iss"] == creds.team_id
    assert first["jwt"]["header"]["kid"] == creds.key_id
    assert first["body"] == {"aps": {"badge": 1}}
    assert first["method"] == "POST" and first["path"] == f"/3/device/{TOKEN}"
    assert {line["connection"] for line in lines} == {1}
    assert [line["stream"] for line in lines] == [1, 3, 5]


async def test_untrusted_client_certificate_is_refused(creds, tmp_path):
    other = generate_credentials(tmp_path / "other")
    async with open_simulator(creds) as sim:
        context = ssl.create_default_context(cafile=str(creds.ca_file))
        context.load_cert_chain(str(other.client_cert), str(other.client_key))
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(http2=True, verify=context) as client:
                await client.post(f"{sim.base_url}/3/device/{TOKEN}", content=b"{}")
        assert sim.stats().tls_failures == 1
        assert not sim.requests


def test_write_config(creds, tmp_path):
    folder = write_config(tmp_path / "conf", creds, 4443)
    general = configparser.ConfigParser()
    general.read(folder / "general.ini")
    assert general["applications"]["config_file"] == "applications.ini"
    assert general["server"]["spool_dir"] == str(folder / "spool")
    apps = configparser.ConfigParser()
    apps.read(folder / "applications.ini")
    sylk = apps["sylk-apple"]
    assert sylk["apple_push_url"] == "127.0.0.1:4443"
    assert (sylk["key_id"], sylk["team_id"]) == (creds.key_id, creds.team_id)
    assert Path(sylk["apple_key"]) == creds.apns_key_file
    assert Path(apps["linphone-apple"]["apple_certificate"]) == creds.client_cert
    firebase = apps["sylk-firebase"]
    assert firebase["app_platform"] == "firebase"
    assert firebase["firebase_push_url"] == (
        f"https://127.0.0.1:4443/v1/projects/{creds.project_id}/messages:send")
    assert all(Path(apps[s]["tls_ca_file"]) == creds.ca_file for s in apps.sections())


async def test_command_line_serves_and_writes_config(tmp_path):
    config_dir = tmp_path / "conf"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "sidecar.sim", "--write-config", str(config_dir),
         "--record", str(tmp_path / "rec.jsonl")],
        stdout=subprocess.PIPE, cwd=REPO)
    try:
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(4096)
        info = json.loads(line)
        creds = load_credentials(config_dir / "credentials")
        assert creds.service_account()["token_uri"] == f"https://127.0.0.1:{info['port']}/token"
        assert f"127.0.0.1:{info['port']}" in (config_dir / "applications.ini").read_text()
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context(creds),
                                     base_url=info["url"]) as client:
            response = await apns_push(client, creds)
            assert response.status_code == 200
    finally:
        process.terminate()
        with trio.fail_after(10):
            assert await process.wait() == 0
    record = json.loads((tmp_path / "rec.jsonl").read_text().splitlines()[0])
    assert record["status"] == 200
