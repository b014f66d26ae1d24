"""``pushsidecar store ...`` on the SQLite store (Cassandra init is covered by
tests/integration/test_store_cassandra.py through init_schema)."""

from __future__ import annotations

import argparse
import io
import pickle
import sqlite3
from pathlib import Path

import pytest

from sidecar.config import Settings
from sidecar.store.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    _UsageError,
    add_store_commands,
    replication_options,
    run_import_sylk_pickle,
    run_init,
    run_list,
    run_remove,
)
from sidecar.store.sqlite import default_path

GOOD = {
    "alice@example.com": {
        f"app.{n}-dev{n}": {
            "app_id": f"app.{n}", "platform": "fcm", "token": f"tok{n}",
            "device_id": f"dev{n}", "silent": "1", "user_agent": "UA",
        }
        for n in (1, 2)
    }
}


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


def settings(tmp_path: Path) -> Settings:
    return Settings(config_dir=tmp_path, spool_dir=tmp_path / "spool")


def call(fn, *args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fn(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def stored(tmp_path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(default_path(tmp_path / "spool"))
    try:
        return conn.execute("SELECT app_id, device_id FROM push_tokens ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pushsidecar")
    top.add_argument("--config-dir", dest="config_dir")
    add_store_commands(top.add_subparsers(dest="command"))
    return top


def test_arguments_parse_into_handlers():
    args = parser().parse_args(["--config-dir", "/etc/x", "store", "remove", "a@b", "--app-id", "A"])
    assert (args.config_dir, args.account, args.app_id, args.device_id) == ("/etc/x", "a@b", "A", None)
    assert callable(args.handler)
    args = parser().parse_args(["store", "init", "--datacenter", "dc1:3", "--config-dir", "/c"])
    assert (args.datacenter, args.config_dir) == (["dc1:3"], "/c")
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["store"])  # an action is required
    assert exit_info.value.code == 2


def test_replication_options():
    assert replication_options(None, None, []) == {"class": "SimpleStrategy", "replication_factor": 1}
    assert replication_options("SimpleStrategy", 3, []) == {"class": "SimpleStrategy", "replication_factor": 3}
    assert replication_options(None, None, ["dc1:3", "dc-2:1"]) == {
        "class": "NetworkTopologyStrategy", "dc1": 3, "dc-2": 1,
    }
    for bad in [("SimpleStrategy", None, ["dc1:3"]), (None, 2, ["dc1:3"]), (None, None, ["dc1"]),
                (None, None, ["dc1:0"]), ("NetworkTopologyStrategy", None, []), (None, 0, [])]:
        with pytest.raises(_UsageError):
            replication_options(*bad)


def test_handler_with_bad_replication_exits_2(tmp_path, capsys):
    args = parser().parse_args(["store", "init", "--datacenter", "nonsense"])
    args.config_dir = str(tmp_path)
    (tmp_path / "general.ini").write_text(f"[server]\nspool_dir = {tmp_path / 'spool'}\n")
    (tmp_path / "applications.ini").write_text("")
    assert args.handler(args) == EXIT_USAGE
    assert "--datacenter wants NAME:RF" in capsys.readouterr().err


def test_handler_loads_the_configuration(tmp_path, capsys):
    (tmp_path / "general.ini").write_text(f"[server]\nspool_dir = {tmp_path / 'spool'}\n")
    (tmp_path / "applications.ini").write_text("")
    args = parser().parse_args(["--config-dir", str(tmp_path), "store", "list", "bob@example.com"])
    assert args.handler(args) == EXIT_OK
    assert "bob@example.com: 0 device(s)" in capsys.readouterr().out
    assert default_path(tmp_path / "spool").is_file()


def test_store_commands_read_general_ini_only(tmp_path, capsys):
    """A token import may run before applications.ini is put right."""
    (tmp_path / "general.ini").write_text(f"; Sylk style\n[server]\n; port = 8400\nspool_dir = {tmp_path / 'spool'}\n")
    (tmp_path / "applications.ini").write_text("[a]\napp_id = x\napp_platform = firebase\n"
                                               "firebase_authorization_file = missing.json\n")
    args = parser().parse_args(["--config-dir", str(tmp_path), "store", "list", "bob@example.com"])
    assert args.handler(args) == EXIT_OK
    assert "bob@example.com: 0 device(s)" in capsys.readouterr().out


def test_handler_with_broken_configuration_exits_2(tmp_path, capsys):
    args = parser().parse_args(["--config-dir", str(tmp_path / "missing"), "store", "list", "a@b"])
    assert args.handler(args) == EXIT_USAGE
    assert "configuration errors" in capsys.readouterr().err


def test_init_creates_the_sqlite_file(tmp_path):
    code, out, err = call(run_init, settings(tmp_path), {"class": "SimpleStrategy", "replication_factor": 1})
    assert code == EXIT_OK
    assert f"schema ready: SQLite {default_path(tmp_path / 'spool')}" in out
    assert "apply to Cassandra only" in err
    assert stored(tmp_path) == []


def test_import_list_remove(tmp_path):
    s = settings(tmp_path)
    pickle_file = tmp_path / "webrtc_device_tokens"
    pickle_file.write_bytes(pickle.dumps(GOOD))
    code, out, _ = call(run_import_sylk_pickle, s, pickle_file)
    assert code == EXIT_OK
    assert "imported 2, already present 0 (devices of 1 account(s))" in out
    code, out, _ = call(run_import_sylk_pickle, s, pickle_file)  # idempotent, and says so
    assert code == EXIT_OK
    assert "imported 0, already present 2 (devices of 1 account(s))" in out
    assert stored(tmp_path) == [("app.1", "dev1"), ("app.2", "dev2")]

    code, out, _ = call(run_list, s, "alice@example.com")
    assert code == EXIT_OK
    assert out.splitlines()[0] == "alice@example.com: 2 device(s)"
    assert "app-id app.1  device-id dev1  platform firebase  silent yes" in out
    assert "token            tok2" in out
    assert "user-agent       UA" in out

    assert call(run_remove, s, "alice@example.com", "app.1", "nope")[:2] == (
        EXIT_OK, "alice@example.com: removed 0 device(s)\n")
    assert call(run_remove, s, "alice@example.com", None, "dev2")[0] == EXIT_OK
    assert stored(tmp_path) == [("app.1", "dev1")]
    code, out, _ = call(run_remove, s, "alice@example.com")
    assert (code, out) == (EXIT_OK, "alice@example.com: removed 1 device(s)\n")
    assert stored(tmp_path) == []


def test_import_refuses_unsafe_pickle(tmp_path):
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({"a@b": {"k": Evil()}}))
    code, out, err = call(run_import_sylk_pickle, settings(tmp_path), evil)
    assert code == EXIT_FAILURE
    assert "refused to load builtins.print" in err
    code, _, err = call(run_import_sylk_pickle, settings(tmp_path), tmp_path / "missing")
    assert code == EXIT_FAILURE
    assert "No such file" in err


def test_bad_account_is_a_usage_error(tmp_path):
    code, _, err = call(run_list, settings(tmp_path), "no-at-sign")
    assert code == EXIT_USAGE
    assert "user@domain" in err
    assert call(run_remove, settings(tmp_path), "a@")[0] == EXIT_USAGE


def test_unreachable_store_exits_1(tmp_path):
    (tmp_path / "spool").write_text("a file where the spool folder should be")
    code, _, err = call(run_list, settings(tmp_path), "a@b")
    assert code == EXIT_FAILURE
    assert "token store unavailable (SQLite" in err
