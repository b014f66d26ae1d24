"""Configuration loading: Sylk option names, paths, and errors that name file, section, option."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings


def write_config(tmp_path: Path, general: str = "", applications: str = "") -> Path:
    (tmp_path / "credentials").mkdir(exist_ok=True)
    (tmp_path / "credentials" / "AuthKey.p8").write_text("not checked here\n")
    (tmp_path / "credentials" / "sa.json").write_text("{}\n")
    (tmp_path / "general.ini").write_text(general)
    (tmp_path / "applications.ini").write_text(applications)
    return tmp_path


APPLE_APP = """
[sylk-ios]
app_id = com.example.sylk.prod
app_type = sylk
app_platform = ios
apple_push_url = 127.0.0.1:2197
apple_key = AuthKey.p8
key_id = KEY1234567
team_id = TEAM123456
"""


def test_defaults_and_sylk_names(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path, "", APPLE_APP)
    settings = load_settings(config_dir)
    assert settings.port == 8400
    assert settings.host == "0.0.0.0"
    assert settings.return_async is True
    assert settings.allowed_hosts == ()
    assert not settings.cassandra.enabled
    app = settings.application("com.example.sylk.prod", "apple")
    assert app is not None
    assert app.platform == "apple"  # 'ios' alias
    assert (app.apple_host, app.apple_port) == ("127.0.0.1", 2197)
    assert app.apple_key == (tmp_path / "credentials" / "AuthKey.p8").resolve()
    assert app.apple_token_auth


def test_server_options_and_absolute_paths(tmp_path: Path) -> None:
    spool = tmp_path / "spool-abs"
    general = f"""
[server]
host = 127.0.0.1
port = 9400
return_async = false
allowed_hosts = 10.0.0.0/8, ::1, 192.168.1.7
spool_dir = {spool}
[applications]
credentials_folder = {tmp_path / 'credentials'}
[Cassandra]
cluster_contact_points = 10.1.1.1, 10.1.1.2:9142, [::1]:9043
keyspace = ks
table = tokens
"""
    settings = load_settings(write_config(tmp_path, general, APPLE_APP))
    assert settings.port == 9400 and settings.return_async is False
    assert ipaddress.ip_network("10.0.0.0/8") in settings.allowed_hosts
    assert ipaddress.ip_network("::1/128") in settings.allowed_hosts
    assert settings.spool_dir == spool
    assert settings.cassandra.contact_points == (
        ("10.1.1.1", 9042), ("10.1.1.2", 9142), ("::1", 9043),
    )
    assert settings.cassandra.table == "tokens"


def problems_of(config_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config_dir)
    return info.value.problems


def test_bad_option_names_file_section_option(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, "[server]\nport = eighty\n", APPLE_APP))
    assert len(problems) == 1
    assert "general.ini" in problems[0] and "[server]" in problems[0] and "port" in problems[0]


def test_bad_allowed_hosts(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, "[server]\nallowed_hosts = 10.0.0.0/8, nonsense\n", APPLE_APP))
    assert any("allowed_hosts" in p and "nonsense" in p for p in problems)


def test_missing_credential_file(tmp_path: Path) -> None:
    apps = APPLE_APP.replace("AuthKey.p8", "Missing.p8")
    problems = problems_of(write_config(tmp_path, "", apps))
    assert any("applications.ini" in p and "[sylk-ios]" in p and "apple_key" in p and "Missing.p8" in p
               for p in problems)


def test_token_auth_needs_key_id_and_team_id(tmp_path: Path) -> None:
    apps = APPLE_APP.replace("key_id = KEY1234567\n", "")
    problems = problems_of(write_config(tmp_path, "", apps))
    assert any("[sylk-ios] key_id" in p for p in problems)


def test_unknown_platform_and_duplicate_app(tmp_path: Path) -> None:
    apps = APPLE_APP + APPLE_APP.replace("[sylk-ios]", "[again]") + """
[weird]
app_id = x
app_platform = pigeon
"""
    problems = problems_of(write_config(tmp_path, "", apps))
    assert any("[weird] app_platform" in p and "pigeon" in p for p in problems)
    assert any("[again] app_id" in p and "already configured" in p for p in problems)


def test_legacy_firebase_key_is_explained(tmp_path: Path) -> None:
    apps = """
[android]
app_id = com.example
app_platform = firebase
firebase_authorization_key = AAAA-legacy-server-key
"""
    problems = problems_of(write_config(tmp_path, "", apps))
    assert len(problems) == 1
    assert "shut down" in problems[0] and "2024" in problems[0]
    assert "firebase_authorization_file" in problems[0]
    assert "AAAA-legacy" not in problems[0]  # never echo a secret


def test_syntax_error_names_file(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, "[server\nport = 1\n", APPLE_APP))
    assert "general.ini" in problems[0] and "parse" in problems[0]


def test_missing_general_ini(tmp_path: Path) -> None:
    assert "general.ini" in problems_of(tmp_path)[0]


def test_workers_and_http_server_options(tmp_path: Path) -> None:
    defaults = load_settings(write_config(tmp_path, "", APPLE_APP))
    assert (defaults.workers, defaults.http_server) == (1, "fast")
    chosen = load_settings(write_config(tmp_path, "[server]\nworkers = 0\nhttp_server = hypercorn\n", APPLE_APP))
    assert (chosen.workers, chosen.http_server) == (0, "hypercorn")
    for bad, option in (("workers = -1", "workers"), ("workers = many", "workers"),
                        ("http_server = nginx", "http_server")):
        problems = problems_of(write_config(tmp_path, f"[server]\n{bad}\n", APPLE_APP))
        assert any("general.ini" in p and "[server]" in p and option in p for p in problems), problems
