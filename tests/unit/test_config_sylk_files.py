"""Config files laid out as Sylk Pushserver writes them, edited as an operator does,
and check-config agreeing with the daemon (every problem at once, warnings, --strict).

SYLK_GENERAL / SYLK_APPLICATIONS follow the layout of Sylk's own samples (our
words): ``;`` on almost every line, every option commented out as
``; name = default``, comment lines holding ``=`` and Python-looking values
(``; allowed_hosts = []``, ``; tls_certificate = ''``,
``; payload = {'request': ...}``), sections whose options are all commented
out, and Sylk-only options (``voip``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config_folders import check_config, set_option, uncomment, write_folder
from sidecar.config import ConfigError, load_settings
from sidecar.service import run_daemon
from sidecar.sim.creds import SimCredentials, generate_credentials

SYLK_GENERAL = """\
; The values after the ; are the defaults, uncomment a line only if you
; want to change it

[server]
; host = 0.0.0.0
; port = 8400

; The file containing the X.509 certificate and its private key, unencrypted
; If set, the server listens using TLS
; tls_certificate = ''

; answer after the outgoing push request completed; if false, answer at
; once with 202
; return_async = true

; by default any client may send requests to the server
; IP addresses and networks in CIDR notation are supported
; e.g: 10.10.10.0/24, 127.0.0.1, 192.168.1.2
; allowed_hosts = []

; logs go to the journal; uncomment to also log to a file
; log_file = /var/log/sylk-pushserver/push.log

; If debug is true, headers and payloads of outgoing requests are logged
; debug = False

[applications]
; paths are relative to the config directory

; mobile applications are configured in this file
; config_file = applications.ini

; relative credential paths are relative to this directory
; credentials_folder = credentials

; more applications can be added to this directory
; extra_applications_dir = applications/

; more pns can be added to this directory
; extra_pns_dir = pns/
"""

SYLK_APPLICATIONS = """\
; mobile applications
; the unique key is (app_id, platform)

[myapp-apple]
; app_id = com.example.myapp-ios

; application type: linphone and sylk are supported
; app_type = sylk

; platform: apple or firebase
; app_platform = apple

; apple certificate auth
; apple_certificate = com.myapp-ios.pem
; apple_key = com.myapp-ios.key.pem
; apple_push_url = api.sandbox.push.apple.com

; if voip is True, other headers are generated for the push request
; voip = True

; remote logging of the requests
; log_remote_urls = https://myapp.net, https://example.com

; if log_remote_urls is set, a POST is sent to each url with
; the original request and the final response:
; payload = {'request': push_request, 'response': push_response}

; log_remote_timeout = 5
; log_remote_key = message

[myapp-apple2]
; app_id = com.example.myapp-ios
; app_type = sylk
; app_platform = apple

; apple token auth
; apple_key = AuthKey_KEYID.p8
; key_id = ***Key ID of the key in the p8 file***
; team_id = ***The Apple Team ID of your developer team***
; apple_push_url = api.sandbox.push.apple.com
; voip = True

[myapp-firebase]
; app_id = com.example.myapp
; app_type = sylk
; app_platform = firebase
; firebase_authorization_file = myapp-firebase-adminsdk.json
; firebase_push_url = https://fcm.googleapis.com/v1/projects/myapp-xxxxx/messages:send
; log_remote_urls = https://myapp.net, https://example.com
; payload = {'request': push_request, 'response': push_response}
"""


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> SimCredentials:
    return generate_credentials(tmp_path_factory.mktemp("creds"))


def operator_general() -> str:
    """Sylk's general.ini with two lines uncommented and changed."""
    text = uncomment(SYLK_GENERAL, "port = 8400", "port = 9400")
    text = uncomment(text, "allowed_hosts = []", "allowed_hosts = 10.10.10.0/24, 127.0.0.1, ::1")
    return uncomment(text, "debug = False", "debug = True")


def operator_applications() -> str:
    """Sylk's applications.ini: the certificate app and the firebase app filled
    in by uncommenting lines; the token-auth section left all commented out."""
    text = SYLK_APPLICATIONS
    for line in ("app_id = com.example.myapp-ios", "app_type = sylk", "app_platform = apple"):
        head, sep, tail = text.partition("[myapp-apple2]")
        text = uncomment(head, line) + sep + tail  # only in [myapp-apple]
    for line in ("apple_certificate = com.myapp-ios.pem", "apple_key = com.myapp-ios.key.pem",
                 "apple_push_url = api.sandbox.push.apple.com", "voip = True",
                 "log_remote_timeout = 5", "log_remote_key = message"):
        head, sep, tail = text.partition("[myapp-apple2]")
        text = uncomment(head, line) + sep + tail
    head, sep, tail = text.partition("[myapp-firebase]")
    for line in ("app_id = com.example.myapp", "app_type = sylk", "app_platform = firebase",
                 "firebase_authorization_file = myapp-firebase-adminsdk.json",
                 "log_remote_urls = https://myapp.net, https://example.com"):
        tail = uncomment(tail, line)
    return head + sep + tail


def test_sylk_samples_edited_by_an_operator_run_unchanged(tmp_path: Path, creds: SimCredentials) -> None:
    general, applications = operator_general(), operator_applications()
    # Every comment line is still there, the commented-out "payload = {...}" included.
    assert general.count("\n;") == SYLK_GENERAL.count("\n;") - 3
    assert applications.count("; payload = {'request': push_request") == 2
    folder = write_folder(tmp_path / "sylk", general, applications, creds)

    code, out, err = check_config(folder)
    assert code == 0, err
    assert "configuration OK" in out and "2 application(s)" in out
    assert "[myapp-apple2]: no options set (all commented out?); section ignored" in err

    settings = load_settings(folder)
    assert settings.port == 9400 and settings.debug is True
    assert [str(n) for n in settings.allowed_hosts] == ["10.10.10.0/24", "127.0.0.1/32", "::1/128"]
    assert settings.tls_certificate is None and settings.log_to_file is False
    apple = settings.application("com.example.myapp-ios", "apple")
    assert apple is not None and (apple.apple_host, apple.apple_port) == ("api.sandbox.push.apple.com", 443)
    assert apple.apple_certificate == (folder / "credentials" / "com.myapp-ios.pem").resolve()
    assert apple.log_remote_timeout == 5.0 and apple.log_remote_key == "message"
    assert "voip" not in apple.extra  # Sylk's option: read, no effect
    firebase = settings.application("com.example.myapp", "firebase")
    assert firebase is not None
    assert firebase.log_remote_urls == ("https://myapp.net", "https://example.com")


def test_sylk_values_written_the_python_way(tmp_path: Path, creds: SimCredentials) -> None:
    general = uncomment(SYLK_GENERAL, "tls_certificate = ''")  # uncommented as it stands
    general = uncomment(general, "allowed_hosts = []", "allowed_hosts = ['127.0.0.1', '10.0.0.0/8']")
    general = uncomment(general, "log_file = /var/log/sylk-pushserver/push.log",
                        f"log_file = {tmp_path / 'push.log'}")
    settings = load_settings(write_folder(tmp_path / "c", general, operator_applications(), creds))
    assert settings.tls_certificate is None  # '' means empty
    assert [str(n) for n in settings.allowed_hosts] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert settings.log_to_file is True and settings.log_file == tmp_path / "push.log"  # Sylk: log_file alone


def test_inline_comments_are_refused_with_a_reason(tmp_path: Path, creds: SimCredentials) -> None:
    apps = operator_applications().replace("app_type = sylk\n", "app_type = sylk   ; sylk or linphone\n", 1)
    folder = write_folder(tmp_path / "c", SYLK_GENERAL, apps, creds)
    code, _, err = check_config(folder)
    assert code == 2
    assert "[myapp-apple] app_type: the value ends in '; sylk or linphone': inline comments are not supported" in err


def test_unknown_names_are_warnings_with_the_closest_name_and_strict_makes_them_errors(
    tmp_path: Path, creds: SimCredentials,
) -> None:
    general = operator_general() + "\n[Cassandara]\ncluster_contact_points = 10.0.0.1\n"
    general = general.replace("port = 9400\n", "port = 9400\ndebgu = true\n")
    apps = operator_applications().replace("\nvoip = True\n", "\nvoip = True\ntls_ca_fle = ca.pem\n", 1)
    folder = write_folder(tmp_path / "c", general, apps, creds)
    code, out, err = check_config(folder)
    assert code == 0 and "4 warning(s)" in out  # and [myapp-apple2], all commented out
    assert f"{folder / 'general.ini'} [Cassandara]: unknown section (did you mean [Cassandra]?); ignored" in err
    assert f"{folder / 'general.ini'} [server] debgu: unknown option (did you mean debug?); ignored" in err
    assert (f"{folder / 'applications.ini'} [myapp-apple] tls_ca_fle: unknown option "
            "(did you mean tls_ca_file?); ignored") in err
    assert not load_settings(folder).cassandra.enabled  # so the store stays SQLite: hence the warning
    code, _, err = check_config(folder, "--strict")
    assert code == 2 and "errors with --strict" in err


def test_zero_applications_is_a_warning(tmp_path: Path, creds: SimCredentials) -> None:
    folder = write_folder(tmp_path / "c", SYLK_GENERAL, SYLK_APPLICATIONS, creds)
    code, out, err = check_config(folder)
    assert code == 0 and "0 application(s)" in out
    assert "no applications configured: every push will be refused" in err
    assert check_config(folder, "--strict")[0] == 2


def broken_credentials(folder: Path) -> None:
    """A .p8 that is not a key, a service account without private_key."""
    (folder / "credentials" / "AuthKey_KEYID.p8").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    account = folder / "credentials" / "myapp-firebase-adminsdk.json"
    info = json.loads(account.read_text())
    del info["private_key"]
    account.write_text(json.dumps(info))


def token_auth_applications() -> str:
    text = operator_applications()
    head, sep, tail = text.partition("[myapp-apple2]")
    body, sep2, rest = tail.partition("[myapp-firebase]")
    for line, new in (("app_id = com.example.myapp-ios", "app_id = com.example.other-ios"),
                      ("app_type = sylk", None), ("app_platform = apple", None),
                      ("apple_key = AuthKey_KEYID.p8", None),
                      ("key_id = ***Key ID of the key in the p8 file***", "key_id = KEYID12345"),
                      ("team_id = ***The Apple Team ID of your developer team***", "team_id = TEAM123456")):
        body = uncomment(body, line, new)
    return head + sep + body + sep2 + rest


def test_check_config_parses_credentials_and_names_every_problem_of_both_files(
    tmp_path: Path, creds: SimCredentials,
) -> None:
    general = set_option(operator_general(), "port", "eighty", section="server")
    apps = token_auth_applications().replace("app_platform = firebase", "app_platform = pigeon")
    apps = apps + "\n[android]\napp_id = com.example.two\napp_platform = firebase\n" \
                  "firebase_authorization_file = myapp-firebase-adminsdk.json\n"
    folder = write_folder(tmp_path / "c", general, apps, creds)
    broken_credentials(folder)
    code, _, err = check_config(folder)
    assert code == 2
    errors = err.split("configuration warnings")[0]
    assert "general.ini [server] port: the value \"eighty\" is of the wrong type" in errors
    assert "[myapp-firebase] app_platform: unknown push service 'pigeon'" in errors
    assert "[myapp-apple2]: APNs key" in errors and "is not a PEM private key" in errors
    assert "[android]: " in errors and "lacks private_key" in errors
    assert len([line for line in errors.splitlines() if line.startswith("  ")]) == 4


def test_what_check_config_refuses_the_daemon_refuses_and_the_reverse(
    tmp_path: Path, creds: SimCredentials, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = write_folder(tmp_path / "c", operator_general(), token_auth_applications(), creds)
    assert check_config(folder)[0] == 0
    broken_credentials(folder)
    code, _, err = check_config(folder)
    assert code == 2
    capsys.readouterr()
    assert run_daemon(str(folder), ip="127.0.0.1", port=0, debug=False) == 2
    daemon_err = capsys.readouterr().err
    for line in err.splitlines():
        if line.startswith("  ") and "APNs key" in line:
            assert line.strip() in daemon_err
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "nowhere")


def test_a_missing_config_folder_is_one_clear_line(tmp_path: Path) -> None:
    code, _, err = check_config(tmp_path / "missing")
    assert code == 2
    assert f"config folder {tmp_path / 'missing'} does not exist" in err
