"""The OpenSIPS python script, against a stand-in of the `OpenSIPS` module, for
what a real OpenSIPS cannot be made to do: hand the script a broken ``msg`` or
a nonsense argument.  Every flow is tested on real OpenSIPS 3.4 and 3.6 in
tests/integration/test_proxy_calls.py."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from sidecar import wire

SCRIPT = Path(__file__).resolve().parents[2] / "opensips_scripts" / "pushsidecar_opensips.py"


@pytest.fixture
def script(monkeypatch):
    logged: list[str] = []
    fake = types.ModuleType("OpenSIPS")
    fake.LM_ERR = logged.append
    monkeypatch.setitem(sys.modules, "OpenSIPS", fake)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as OpenSIPS does: pushsidecar_proxy.py is there
    spec = importlib.util.spec_from_file_location("pushsidecar_opensips_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.logged = logged
    return module


def test_script_uses_the_sidecar_wire_module(script):
    assert script.wire.VERSION == wire.VERSION
    assert script.wire.EVENTS == wire.EVENTS


def test_every_method_returns_an_int_even_when_everything_breaks(script, monkeypatch):
    # None or a non-int from a method breaks the NEXT python_exec of the process.
    monkeypatch.setenv("PUSHSIDECAR_ENDPOINT", "tcp://127.0.0.1:1")
    handler = script.mod_init()

    class Broken:
        def get_pseudoVar(self, name):
            raise SystemError("msg used after the call")

    for method in (handler.sidecar_ready, handler.push, handler.cancel_pushed, handler.cancel_one):
        assert type(method(Broken())) is int
        assert type(method(Broken(), "ini-INVITE c1 sip:b@h;pn-provider=apns 30 audio")) is int
        assert type(method(None, 12345)) is int  # nonsense argument: caught
    assert type(handler.child_init(20000)) is int
    assert script.logged  # and each failure was said


def test_a_refresh_without_a_call_sends_nothing(script):
    handler = script.mod_init()
    assert handler.push(None, "reg-refresh - sip:b@h;pn-provider=apns 30 -") == -1
    assert handler.skipped == 1 and handler.sender is None
