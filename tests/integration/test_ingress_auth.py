"""Authenticated ingress: CURVE on ZeroMQ over TCP, bearer tokens and TLS on HTTP.

Real sidecars on 127.0.0.1 (ports chosen by the kernel) against the simulator;
the CURVE clients are real ``wire.Sender`` sockets, the TLS client is httpx
verifying the listener's certificate.
"""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from sidecar import wire
from sidecar.cli import main as cli_main
from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import TOKEN, running_sidecar, sidecar_config
from test_goaway_end_to_end import call_body


def with_server_options(config_dir: Path, *lines: str) -> Path:
    general = config_dir / "general.ini"
    added = "".join(f"{line}\n" for line in lines)
    general.write_text(general.read_text().replace("[server]\n", "[server]\n" + added, 1))
    return config_dir


def direct_frame(call_id: str, creds: SimCredentials) -> bytes:
    return wire.encode_direct("incoming_session", call_id, "sip:alice@example.com", "sip:bob@example.com",
                              app_id=f"{creds.token_bundle_id}.prod", platform="apple", token=TOKEN,
                              media_type="audio")


def test_keys_command_writes_a_private_secret(tmp_path: Path, capsys) -> None:
    assert cli_main(["keys", str(tmp_path / "k"), "proxy1"]) == 0
    secret = tmp_path / "k" / "proxy1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and (tmp_path / "k" / "proxy1.key").is_file()
    assert cli_main(["keys", str(tmp_path / "k"), "proxy1"]) == 2  # never overwrites a key


async def test_curve_lets_allowed_proxies_in_and_counts_strangers(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    clients = keys / "clients"
    for folder, name in ((keys, "sidecar"), (keys, "proxy"), (strangers, "mallory")):
        assert cli_main(["keys", str(folder), name]) == 0
    clients.mkdir()
    (clients / "proxy.key").write_text((keys / "proxy.key").read_text())
    config = sidecar_config(tmp_path, sim_credentials, sim.port)
    general = config / "general.ini"
    general.write_text(general.read_text().replace(
        f"endpoint = ipc://{tmp_path}/push.sock",
        f"endpoint = tcp://127.0.0.1:*\ncurve_secret_key = {keys}/sidecar.key_secret\ncurve_clients = {clients}"))
    async with running_sidecar(config) as handle:
        counters = handle.runtime.proxy_ingress.counters
        server_key = str(keys / "sidecar.key")
        stranger = wire.Sender(handle.zmq_endpoint, curve_server_key=server_key,
                               curve_client_key=str(strangers / "mallory.key_secret"))
        plain = wire.Sender(handle.zmq_endpoint)  # no CURVE at all
        proxy = wire.Sender(handle.zmq_endpoint, curve_server_key=server_key,
                            curve_client_key=str(keys / "proxy.key_secret"))
        try:
            for i in range(5):
                assert stranger.send(direct_frame(f"evil{i}", sim_credentials))
                assert plain.send(direct_frame(f"plain{i}", sim_credentials))
            assert proxy.send(direct_frame("friend", sim_credentials))
            with trio.fail_after(20):
                while not [r for r in sim.requests if r["kind"] == "apns"]:
                    await trio.sleep(0.05)
                while counters.clients_refused == 0:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)  # time for any stranger frame that got through
        finally:
            for sender in (stranger, plain, proxy):
                sender.close()
        assert counters.frames == 1 and counters.accepted == 1
        assert [r["body"]["call-id"] for r in sim.requests if r["kind"] == "apns"] == ["friend"]
        async with httpx.AsyncClient(base_url=handle.http_url) as client:
            metrics = (await client.get("/metrics")).text
        assert 'pushsidecar_zmq_rejected_frames_total{reason="unauthorised_client"}' in metrics


async def test_bad_curve_configuration_names_the_option(tmp_path: Path, sim: Simulator, sim_credentials) -> None:
    from sidecar.config import ConfigError, load_settings

    config = sidecar_config(tmp_path, sim_credentials, sim.port)
    general = config / "general.ini"
    general.write_text(general.read_text().replace(
        "run_dir =", f"curve_secret_key = {tmp_path}/missing.key_secret\ncurve_clients = {tmp_path}\nrun_dir =", 1))
    with pytest.raises(ConfigError) as info:
        load_settings(config, pns_names={"apple", "firebase"}, app_type_names={"sylk", "linphone"})
    assert "[zmq] curve_secret_key" in str(info.value) and "missing.key_secret" in str(info.value)


SECRET = "s3cret-token-of-sylkserver-0123456789"


async def test_bearer_tokens_are_required_and_never_logged(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name token\nsylkserver {SECRET}\nscripts another-token-0123456789abcdef\n")
    config = with_server_options(sidecar_config(tmp_path, sim_credentials, sim.port),
                                 f"bearer_tokens_file = {tokens}")
    async with running_sidecar(config) as handle:
        async with httpx.AsyncClient(base_url=handle.http_url) as client:
            body = call_body(sim_credentials, "b1")
            for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"},
                            {"authorization": f"Basic {SECRET}"}, {"authorization": f"Bearer {SECRET[:-1]}"}):
                reply = await client.post("/push", json=body, headers=headers)
                assert reply.status_code == 401 and reply.json()["code"] == 401
                assert set(reply.json()) == {"code", "description", "data"}
                assert reply.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get("/health")).status_code == 200  # liveness stays open
            assert (await client.get("/metrics")).status_code == 401
            reply = await client.post("/push", json=body, headers={"authorization": f"Bearer {SECRET}"})
            assert reply.status_code == 200, reply.text
            reply = await client.post("/v2/tokens/alice@example.com", headers={
                "authorization": "bearer another-token-0123456789abcdef"},
                json={"app-id": "x", "platform": "apple", "token": "t", "device-id": "d"})
            assert reply.status_code != 401
    assert [r["body"]["call-id"] for r in sim.requests if r["kind"] == "apns"] == ["b1"]
    assert SECRET not in caplog.text and SECRET[:-1] not in caplog.text


async def test_tls_listener_serves_a_verifying_client(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = tmp_path / "server.pem"
    pem.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = with_server_options(sidecar_config(tmp_path, sim_credentials, sim.port),
                                 f"tls_certificate = {pem}")
    async with running_sidecar(config) as handle:
        url = handle.http_url.replace("http://", "https://")
        async with httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            assert (await client.get("/health")).status_code == 200
            reply = await client.post("/push", json=call_body(sim_credentials, "tls1"))
            assert reply.status_code == 200, reply.text
        async with httpx.AsyncClient(base_url=url, verify=True) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/health")  # the certificate really is checked
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=handle.http_url) as plain:
                await plain.get("/health")  # plain HTTP is not served on a TLS port
