"""proxy_common/pushsidecar_proxy.py: what the Kamailio and OpenSIPS scripts share.

Loaded here as the proxies load it: by name, from the folder of a script
(each script folder holds it as a symlink to the one file)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from sidecar import wire

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"kamailio": ROOT / "kamailio_app_python" / "pushsidecar_kamailio.py",
           "opensips": ROOT / "opensips_scripts" / "pushsidecar_opensips.py"}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def proxy(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS["opensips"].parent))
    monkeypatch.delitem(sys.modules, "pushsidecar_proxy", raising=False)
    import pushsidecar_proxy

    return pushsidecar_proxy


def test_both_script_folders_hold_the_same_file():
    shared = (ROOT / "proxy_common" / "pushsidecar_proxy.py").resolve()
    for script in SCRIPTS.values():
        assert (script.parent / "pushsidecar_proxy.py").resolve() == shared


def test_both_scripts_use_the_shared_file_and_the_sidecar_wire_module(monkeypatch):
    ksr = types.ModuleType("KSR")
    ksr.pv = types.SimpleNamespace(get=lambda name: None)
    opensips = types.ModuleType("OpenSIPS")
    opensips.LM_ERR = lambda text: None
    monkeypatch.setitem(sys.modules, "KSR", ksr)
    monkeypatch.setitem(sys.modules, "OpenSIPS", opensips)
    for name, script in SCRIPTS.items():
        monkeypatch.syspath_prepend(str(script.parent))
        monkeypatch.delitem(sys.modules, "pushsidecar_proxy", raising=False)
        module = load(script, f"pushsidecar_{name}_under_test")
        assert module.proxy.__file__ == str(script.parent / "pushsidecar_proxy.py")  # found next to the script
        assert module.wire is module.proxy.wire
        assert module.wire.VERSION == wire.VERSION and module.wire.EVENTS == wire.EVENTS


def test_cancel_frames_skip_the_answering_contact_and_log_malformed_ones(proxy):
    logged: list[str] = []
    contacts = ["sip:bob@10.0.0.1;pn-provider=apns;pn-prid=T1;pn-param=TEAM.com.example.app",
                "sip:bob@10.0.0.2;pn-provider=fcm;pn-prid=T2;pn-param=project-1",
                "sip:bob@10.0.0.3;pn-provider=nosuch;pn-prid=T3",
                "sip:bob@10.0.0.4", proxy.NULL, ""]
    frames = list(proxy.cancel_frames(contacts, "sip:bob@10.0.0.1", "c1", "sip:a@h", "sip:bob@h", None,
                                      logged.append))
    assert len(frames) == 1  # the answering one, the malformed one and those without parameters: none
    message = wire.decode(frames[0])
    assert (message.event, message.call_id, message.reason, message.token) == ("cancel", "c1", "cancelled", "T2")
    assert len(logged) == 1 and "c1" in logged[0] and "nosuch" in logged[0]


def test_message_text_display_name_and_values(proxy):
    assert proxy.message_text(None) == "" and proxy.message_text("hi") == "hi"
    long = proxy.message_text("x" * 5000)
    assert len(long) == proxy.MAX_MESSAGE_TEXT and long.endswith("\u2026")
    assert proxy.display_name(' "Bob Smith" ') == "Bob Smith" and proxy.display_name('""') is None
    assert [proxy.value(v) for v in (None, "", "<null>", "x")] == [None, None, None, "x"]
