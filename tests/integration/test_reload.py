"""Live reload of the running daemon (a ``pushsidecar`` subprocess).

The daemon polls general.ini, applications.ini and the credential files
every couple of seconds and reloads when one changes; SIGHUP reloads at
once.  These tests change the files under it and check, through pushes to
the in-process simulator, that the change is in force (or, for an invalid
file, that it is not), with no restart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import httpx
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.sim.creds import SimCredentials
from sidecar.sim.server import Simulator

from sidecar_fixtures import sidecar_config
from test_daemon import (
    RELOAD_TIMEOUT, apple_app_id, device_records, metric_value, push_body, records_of_call,
    running_daemon, wait_until,
)

NEW_BUNDLE = "com.example.newapp"


def replace_file(path: Path, text: str | bytes) -> None:
    """Write ``path`` atomically (as editors and config management do)."""
    temporary = path.with_name(path.name + ".new")
    if isinstance(text, bytes):
        temporary.write_bytes(text)
    else:
        temporary.write_text(text)
    os.replace(temporary, path)


def new_app_section(creds: SimCredentials, sim_port: int, *, key_file: Path | None = None) -> str:
    return f"""
[new-apple]
app_id = {NEW_BUNDLE}.prod
app_type = sylk
app_platform = apple
apple_push_url = 127.0.0.1:{sim_port}
apple_key = {key_file or creds.apns_key_file}
key_id = {creds.key_id}
team_id = {creds.team_id}
tls_ca_file = {creds.ca_file}
"""


async def push_status(http: httpx.AsyncClient, app_id: str, call_id: str, platform: str = "apple") -> int:
    return (await http.post("/push", json=push_body(app_id, call_id, platform=platform))).status_code


async def wait_for_status(http: httpx.AsyncClient, app_id: str, status: int, what: str) -> None:
    """Push (every 0.2 s) until the answer is ``status``: the reload is in force."""
    attempts = 0
    last = None
    with trio.move_on_after(RELOAD_TIMEOUT):
        while True:
            attempts += 1
            last = await push_status(http, app_id, f"poll-{attempts}")
            if last == status:
                return
            await trio.sleep(0.2)
    raise AssertionError(f"{what}: still {last} after {attempts} pushes")


async def test_added_app_works_without_restart(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, f"{NEW_BUNDLE}.prod", "before") == 404
            apps = config_dir / "applications.ini"
            replace_file(apps, apps.read_text() + new_app_section(sim_credentials, sim.port))
            await wait_for_status(http, f"{NEW_BUNDLE}.prod", 200, "the added application")
            assert any(r["headers"].get("apns-topic") == f"{NEW_BUNDLE}.voip" for r in device_records(sim))
            await daemon.wait_for_output(r"configuration reloaded \(changed: applications\.ini\): 4 application")
            metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") >= 1
    assert metric_value(metrics, "pushsidecar_outcomes_total", app=f"{NEW_BUNDLE}.prod",
                        platform="apple", outcome="delivered") >= 1


async def test_invalid_file_is_rejected_and_the_old_config_stays(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    app_id = apple_app_id(sim_credentials)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, app_id, "before") == 200
            apps = config_dir / "applications.ini"
            good = apps.read_text()
            mark = len(daemon.text())
            # Adds an app and breaks another: nothing of it may apply.
            replace_file(apps, good.replace("app_platform = firebase", "app_platform = nokia")
                         + new_app_section(sim_credentials, sim.port))
            line = await daemon.wait_for_output(r"ERROR sidecar\.service reload \(.*\) rejected.*", after=mark)
            assert "keeping the running configuration" in line.group(0)
            await daemon.wait_for_output(r"\[sylk-firebase\].*app_platform", after=mark)
            assert await push_status(http, app_id, "after-bad") == 200
            assert await push_status(http, app_id, "after-bad-fcm", platform="firebase") == 200
            assert await push_status(http, f"{NEW_BUNDLE}.prod", "not-added") == 404
            metrics = (await http.get("/metrics")).text
            assert metric_value(metrics, "pushsidecar_config_reloads_total", result="failed") >= 1
            assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") == 0

            # Fixing the file applies it.
            replace_file(apps, good + new_app_section(sim_credentials, sim.port))
            await wait_for_status(http, f"{NEW_BUNDLE}.prod", 200, "the fixed file")
            metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") >= 1
    assert metric_value(metrics, "pushsidecar_outcomes_total", app=app_id, platform="apple",
                        outcome="delivered") >= 2
    assert "Traceback" not in daemon.text()


async def test_removed_app_answers_404(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    linphone = f"{sim_credentials.cert_bundle_id}.prod"
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, linphone, "before") == 200
            apps = config_dir / "applications.ini"
            text = apps.read_text()
            without = re.sub(r"(?ms)^\[linphone-apple\].*?(?=^\[)", "", text)
            assert "linphone-apple" not in without and "[sylk-apple]" in without
            replace_file(apps, without)
            await wait_for_status(http, linphone, 404, "the removed application")
            assert await push_status(http, apple_app_id(sim_credentials), "still-there") == 200
    assert "Traceback" not in daemon.text()


async def test_sighup_reloads_at_once(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            apps = config_dir / "applications.ini"
            replace_file(apps, apps.read_text() + new_app_section(sim_credentials, sim.port))
            mark = len(daemon.text())
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\): 4 application", after=mark)
            # In force as soon as the line is logged, no polling needed.
            assert await push_status(http, f"{NEW_BUNDLE}.prod", "after-hup") == 200
            metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") >= 1


def new_apns_key() -> tuple[bytes, bytes]:
    """A fresh ES256 key: its .p8 (PKCS#8 PEM) and public key PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def config_with_own_key(tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials) -> tuple[Path, Path, str]:
    """A config with one more Apple app whose .p8 key is a copy in this test's
    folder (so the session's key stays intact): (config dir, key file, app-id)."""
    key_file = tmp_path / "AuthKey.p8"
    shutil.copy(sim_credentials.apns_key_file, key_file)
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    apps = config_dir / "applications.ini"
    apps.write_text(apps.read_text() + new_app_section(sim_credentials, sim.port, key_file=key_file))
    return config_dir, key_file, f"{NEW_BUNDLE}.prod"


async def test_credentials_file_change_takes_effect(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir, key_file, app_id = config_with_own_key(tmp_path, sim, sim_credentials)
    try:
        async with running_daemon(config_dir, tmp_path) as daemon:
            async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
                assert await push_status(http, app_id, "old-key") == 200
                connections = sim.stats().connections_accepted

                # Apple now knows only the new key under this key id: the old
                # key's tokens are refused from here on.
                private, public = new_apns_key()
                sim.add_apns_key(sim_credentials.key_id, sim_credentials.team_id, public)
                mark = len(daemon.text())
                replace_file(key_file, private)
                await daemon.wait_for_output(r"configuration reloaded \(changed: AuthKey\.p8\)", after=mark)
                assert await push_status(http, app_id, "new-key") == 200
                # Signed with the new key at the first try, on a new connection.
                assert [r["status"] for r in records_of_call(sim, "new-key")] == [200]
                assert sim.stats().connections_accepted == connections + 1
    finally:
        # The session's simulator credentials: trust the original key again.
        sim.add_apns_key(sim_credentials.key_id, sim_credentials.team_id,
                         sim_credentials.apns_public_key_pem())


async def test_unchanged_apps_keep_their_connections(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    apple = apple_app_id(sim_credentials)
    linphone = f"{sim_credentials.cert_bundle_id}.prod"
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, apple, "a1") == 200
            assert await push_status(http, linphone, "l1") == 200
            connections = sim.stats().connections_accepted
            assert connections == 2

            # Touch another application (the Firebase one) only.
            apps = config_dir / "applications.ini"
            mark = len(daemon.text())
            replace_file(apps, apps.read_text().replace(
                "app_platform = firebase", "app_platform = firebase\nlog_remote_timeout = 3", 1))
            await daemon.wait_for_output(r"configuration reloaded \(changed: applications\.ini\)", after=mark)
            assert await push_status(http, apple, "a2") == 200
            assert await push_status(http, linphone, "l2") == 200
            assert sim.stats().connections_accepted == connections
            metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") >= 1
    assert metric_value(metrics, "pushsidecar_outcomes_total", app=apple, platform="apple",
                        outcome="delivered") == 2
    assert metric_value(metrics, "pushsidecar_outcomes_total", app=linphone, platform="apple",
                        outcome="delivered") == 2


async def test_sighup_applies_a_credentials_change_at_once(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    # `systemctl reload` after replacing a key: in force when the reload is
    # logged, without waiting for the file poller.
    config_dir, key_file, app_id = config_with_own_key(tmp_path, sim, sim_credentials)
    try:
        async with running_daemon(config_dir, tmp_path) as daemon:
            async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
                assert await push_status(http, app_id, "old-key") == 200
                private, public = new_apns_key()
                sim.add_apns_key(sim_credentials.key_id, sim_credentials.team_id, public)
                mark = len(daemon.text())
                replace_file(key_file, private)
                daemon.send_signal(signal.SIGHUP)
                await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\)", after=mark)
                assert await push_status(http, app_id, "new-key") == 200
                assert [r["status"] for r in records_of_call(sim, "new-key")] == [200]
    finally:
        sim.add_apns_key(sim_credentials.key_id, sim_credentials.team_id,
                         sim_credentials.apns_public_key_pem())


async def test_unusable_credentials_reject_the_reload(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    # As at start-up: an added application whose key cannot be used is a
    # configuration error, not a stream of failed pushes.
    bogus = tmp_path / "bogus.p8"
    bogus.write_text("not a key\n")
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            apps = config_dir / "applications.ini"
            mark = len(daemon.text())
            replace_file(apps, apps.read_text() + new_app_section(sim_credentials, sim.port, key_file=bogus))
            await daemon.wait_for_output(r"reload \(.*\) rejected", after=mark)
            await daemon.wait_for_output(r"\[new-apple\].*bogus\.p8", after=mark)
            assert await push_status(http, f"{NEW_BUNDLE}.prod", "bogus") == 404
            assert await push_status(http, apple_app_id(sim_credentials), "still-fine") == 200
            metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="failed") >= 1
    assert metric_value(metrics, "pushsidecar_config_reloads_total", result="ok") == 0


async def test_key_replaced_by_garbage_keeps_the_running_key(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    # The section is unchanged but its key file now holds garbage: the reload
    # is rejected and the service keeps the key it loaded, so pushes go on.
    config_dir, key_file, app_id = config_with_own_key(tmp_path, sim, sim_credentials)
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, app_id, "before") == 200
            mark = len(daemon.text())
            replace_file(key_file, "garbage, not a key\n")
            await daemon.wait_for_output(r"reload \(changed: AuthKey\.p8\) rejected", after=mark)
            await daemon.wait_for_output(r"\[new-apple\].*AuthKey\.p8", after=mark)
            assert await push_status(http, app_id, "after") == 200
            assert [r["status"] for r in records_of_call(sim, "after")] == [200]


async def test_a_push_retrying_across_a_key_change_is_resent_with_the_new_key(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    # The push's first attempt is answered 503 (Retry-After 6 s); during the
    # wait a reload gives its application another key id and key.  The retry
    # is signed with the new key, and the next push too (no flip back).
    config_dir, _, app_id = config_with_own_key(tmp_path, sim, sim_credentials)
    new_private, new_public = new_apns_key()
    new_key_id = "NEWKEY0012"
    sim.add_apns_key(new_key_id, sim_credentials.team_id, new_public)
    new_key_file = tmp_path / "AuthKey_NEW.p8"
    new_key_file.write_bytes(new_private)
    apps = config_dir / "applications.ini"
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, app_id, "warm-up") == 200
            sim.script_status([(503, {"retry-after": "6"})])
            statuses: list[int] = []

            async def push_across() -> None:
                statuses.append(await push_status(http, app_id, "across"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(push_across)
                await wait_until(lambda: bool(records_of_call(sim, "across")), "the first attempt")
                others, name, section = apps.read_text().rpartition("[new-apple]")
                section = section.replace(f"key_id = {sim_credentials.key_id}", f"key_id = {new_key_id}")
                section = re.sub(r"(?m)^apple_key = .*$", f"apple_key = {new_key_file}", section)
                replace_file(apps, others + name + section)
                mark = len(daemon.text())
                daemon.send_signal(signal.SIGHUP)
                await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\)", after=mark)
            assert statuses == [200]
            assert await push_status(http, app_id, "after") == 200
    across = records_of_call(sim, "across")
    assert [r["status"] for r in across] == [503, 200]
    assert [r["jwt"]["header"]["kid"] for r in across] == [sim_credentials.key_id, new_key_id]
    assert [r["jwt"]["header"]["kid"] for r in records_of_call(sim, "after")] == [new_key_id]
    assert "Traceback" not in daemon.text()


async def test_a_push_retrying_when_its_application_is_removed_ends_404(
    tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials
) -> None:
    config_dir, _, app_id = config_with_own_key(tmp_path, sim, sim_credentials)
    apps = config_dir / "applications.ini"
    async with running_daemon(config_dir, tmp_path) as daemon:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
            assert await push_status(http, app_id, "warm-up") == 200
            sim.script_status([(503, {"retry-after": "6"})])
            answers: list[httpx.Response] = []

            async def push_across() -> None:
                answers.append(await http.post("/push", json=push_body(app_id, "removed")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(push_across)
                await wait_until(lambda: bool(records_of_call(sim, "removed")), "the first attempt")
                replace_file(apps, apps.read_text().rpartition("[new-apple]")[0])
                mark = len(daemon.text())
                daemon.send_signal(signal.SIGHUP)
                await daemon.wait_for_output(r"configuration reloaded \(SIGHUP\)", after=mark)
            [answer] = answers
            metrics = (await http.get("/metrics")).text
    assert answer.status_code == 404, answer.text
    assert "not configured (removed by a configuration reload after 1 attempt(s))" in answer.text
    assert [r["status"] for r in records_of_call(sim, "removed")] == [503]  # not resent
    # Counted (under "unknown": the application is no longer configured).
    assert metric_value(metrics, "pushsidecar_outcomes_total", app="unknown", platform="apple",
                        outcome="rejected") == 1
    assert "Traceback" not in daemon.text()
