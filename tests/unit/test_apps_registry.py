"""Loading app types: built-ins, plugins from extra_applications_dir, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.apps.base import AppType
from sidecar.apps.registry import AppTypeLoadError, load_app_types
from sidecar.model import Event, Push

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "config" / "applications"


def test_builtins_without_extra_dir(tmp_path):
    assert set(load_app_types(None)) == {"sylk", "linphone"}
    assert set(load_app_types(tmp_path / "missing")) == {"sylk", "linphone"}
    assert all(isinstance(t, AppType) for t in load_app_types(None).values())


def test_sample_plugin_loads_and_builds():
    types = load_app_types(SAMPLE_DIR)
    sample = types["sample"]
    push = Push(app_id="com.example.app.prod", platform="apple", token="t",
                event=Event.INCOMING_SESSION, call_id="c", from_uri="sip:a@b", to_uri="sip:c@d",
                deadline=1.0, expires_at=1_700_000_045.0, media_type="audio")
    note = sample.build(push, "apple", 1_700_000_000.0)
    assert note.headers["apns-topic"] == "com.example.app"
    assert note.headers["apns-expiration"] == "1700000045"
    fcm = sample.build(push, "firebase", 1_700_000_000.0).payload["message"]
    assert fcm["data"]["call-id"] == "c" and fcm["android"]["ttl"] == "45s"


def test_plugin_dir_with_several_types_and_private_helpers(tmp_path):
    (tmp_path / "_helpers.py").write_text("raise RuntimeError('never imported')\n")
    (tmp_path / "two.py").write_text(
        "from sidecar.apps.base import AppType\n"
        "from sidecar.apps.sylk import SylkAppType\n"  # imported, must not register twice
        "class One(AppType):\n    name = 'one'\n"
        "class Two(SylkAppType):\n    name = 'two'\n"
        "class Nameless(AppType):\n    pass\n"
    )
    assert set(load_app_types(tmp_path)) == {"sylk", "linphone", "one", "two"}


def test_import_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import no_such_module_here\n")
    with pytest.raises(AppTypeLoadError) as info:
        load_app_types(tmp_path)
    assert str(bad) in str(info.value) and "no_such_module_here" in str(info.value)


def test_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "syntax.py"
    bad.write_text("def (:\n")
    with pytest.raises(AppTypeLoadError, match="syntax.py"):
        load_app_types(tmp_path)


def test_duplicate_name_is_an_error(tmp_path):
    (tmp_path / "dup.py").write_text(
        "from sidecar.apps.base import AppType\nclass Mine(AppType):\n    name = 'sylk'\n"
    )
    with pytest.raises(AppTypeLoadError, match="already defined"):
        load_app_types(tmp_path)
