"""sd_notify over a real datagram socket; the unit and tmpfiles files."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

from sidecar.observe import systemd
from sidecar.observe.systemd import Notifier

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "pushsidecar.service"
TMPFILES = ROOT / "config" / "pushsidecar.tmpfiles"


@pytest.fixture
def notify_socket():
    """A datagram socket in the abstract namespace (no path length limits)."""
    name = f"@pushsidecar-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(2)
    yield name, sock
    sock.close()


def receive_all(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    return messages


def test_ready_status_stopping_reloading_on_abstract_socket(notify_socket, monkeypatch):
    name, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert systemd.notify_ready("serving 2 applications")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 applications"
    assert systemd.notify_status("line one\nREADY=1")  # a newline cannot smuggle an assignment
    assert sock.recv(4096) == b"STATUS=line one READY=1"
    assert systemd.notify_reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert systemd.notify_stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_path_socket(tmp_path):
    # Keep the path short: AF_UNIX paths are limited to 107 bytes.
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"sdn-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        path = folder / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(2)
            assert Notifier({"NOTIFY_SOCKET": str(path)}).ready()
            assert sock.recv(4096) == b"READY=1"
    finally:
        shutil.rmtree(folder)


async def test_watchdog_loop_sends_at_half_the_period(notify_socket):
    name, sock = notify_socket
    # WATCHDOG_USEC = 0.1 s: a keep-alive every 0.05 s (real socket: real time).
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval() == pytest.approx(0.05)
    with trio.move_on_after(0.22):
        await notifier.watchdog_loop()
    messages = receive_all(sock)
    assert set(messages) == {"WATCHDOG=1"}
    assert 3 <= len(messages) <= 6, messages


async def test_no_socket_means_cheap_no_ops(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    assert systemd.notify_ready() is False
    assert systemd.notify_stopping() is False
    with trio.CancelScope() as scope:
        scope.cancel()
        await systemd.watchdog_loop()  # returns at once, without even a checkpoint
    assert not scope.cancelled_caught


def test_watchdog_for_another_process_or_unusable_values(notify_socket):
    name, _ = notify_socket
    assert Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": name}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": "@nobody-listens-" + uuid.uuid4().hex}).ready() is False


# -- the unit file and the tmpfiles entry ---------------------------------------------


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("PUSHSIDECAR_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"{tool} is missing but PUSHSIDECAR_REQUIRE_SYSTEMD=1")
        pytest.skip(f"{tool} is not installed (apt-get install systemd); "
                    "set PUSHSIDECAR_REQUIRE_SYSTEMD=1 to fail instead")
    return path


def _rendered_unit(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart pointing at the real pushsidecar script (verify
    checks that the binary exists)."""
    script = Path(sys.executable).parent / "pushsidecar"
    assert script.exists(), f"{script} missing: is the package installed (pip install -e .)?"
    text = UNIT.read_text().replace("/usr/local/bin/pushsidecar", str(script))
    text = text.replace("[Install]", extra + "\n[Install]") if extra else text
    path = tmp_path / "pushsidecar.service"
    path.write_text(text)
    return path


def _verify(tool: str, unit: Path) -> tuple[int, str]:
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_unit_has_the_promised_settings():
    text = UNIT.read_text()
    for line in ["Type=notify", "ExecStart=/usr/local/bin/pushsidecar --config-dir /etc/pushsidecar",
                 "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30", "Restart=on-failure",
                 "User=pushsidecar", "RuntimeDirectory=pushsidecar", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                 "CapabilityBoundingSet=\n"]:
        assert f"\n{line}" in text, line


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    tool = _require("systemd-analyze")
    status, output = _verify(tool, _rendered_unit(tmp_path))
    # verify exits 0 even for unknown keys: every complaint about our file counts.
    problems = [line for line in output.splitlines() if "pushsidecar.service" in line]
    assert status == 0 and not problems, output


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path):
    # The check above can fail: a misspelled key in the same unit is reported.
    tool = _require("systemd-analyze")
    status, output = _verify(tool, _rendered_unit(tmp_path, extra="[Service]\nRestartt=always\n"))
    assert "Restartt" in output


def test_tmpfiles_entry_creates_the_folders(tmp_path):
    tool = _require("systemd-tmpfiles")
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    # The pushsidecar user does not exist here: use ours in a copy.
    text = TMPFILES.read_text().replace(" pushsidecar pushsidecar ", f" {user} {group} ")
    config = tmp_path / "pushsidecar.conf"
    config.write_text(text)
    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run([tool, "--create", f"--root={root}", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for folder in ("run/pushsidecar", "var/spool/pushsidecar", "var/log/pushsidecar"):
        path = root / folder
        assert path.is_dir(), folder
        assert path.stat().st_mode & 0o777 == 0o750, folder
