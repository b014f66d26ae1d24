"""SQLite token store specifics: file, pragmas, schema, locking, kill -9.

Behaviour shared with Cassandra is in tests/integration/test_store_suite.py.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import trio

from sidecar.config import Settings
from sidecar.store.base import DeviceRecord, StoreUnavailable
from sidecar.store.factory import open_store, store_context
from sidecar.store.sqlite import SqliteTokenStore, default_path


def device(device_id: str, account: str = "alice@example.com") -> DeviceRecord:
    return DeviceRecord(account=account, app_id="com.example.phone", device_id=device_id,
                        platform="firebase", device_token=f"token-{device_id}")


async def test_factory_opens_sqlite_in_spool_dir_when_no_contact_points(tmp_path):
    spool = tmp_path / "spool" / "not-yet-there"
    async with store_context(Settings(config_dir=tmp_path, spool_dir=spool)) as store:
        assert isinstance(store, SqliteTokenStore)
        await store.add(device("d1"))
    assert store.path == spool / "push_tokens.sqlite"
    assert default_path(spool).is_file()


async def test_file_is_wal_with_full_sync_and_sylks_schema(tmp_path):
    store = await open_store(Settings(config_dir=tmp_path, spool_dir=tmp_path))
    try:
        await store.add(device("d1"))
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        await store.aclose()
    other = sqlite3.connect(default_path(tmp_path))
    columns = other.execute("PRAGMA table_info(push_tokens)").fetchall()
    assert [(c[1], c[5]) for c in columns] == [  # name, position in primary key
        ("username", 1), ("domain", 2), ("device_id", 3), ("app_id", 4),
        ("background_token", 0), ("device_token", 0), ("platform", 0),
        ("silent", 0), ("user_agent", 0),
    ]
    assert other.execute(
        "SELECT username, domain, silent FROM push_tokens"
    ).fetchall() == [("alice", "example.com", "1")]
    assert other.execute("PRAGMA user_version").fetchone()[0] == 1
    other.close()


async def test_reopening_keeps_data_and_schema(tmp_path):
    path = tmp_path / "t.sqlite"
    first = await SqliteTokenStore.open(path)
    await first.add(device("d1"))
    await first.aclose()
    second = await SqliteTokenStore.open(path)
    try:
        assert [r.device_id for r in await second.devices("alice@example.com")] == ["d1"]
    finally:
        await second.aclose()


async def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreUnavailable, match="schema version 99"):
        await SqliteTokenStore.open(path)


async def test_unopenable_file_is_store_unavailable(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot open token store"):
        await SqliteTokenStore.open(tmp_path / "a-file" / "t.sqlite")


async def test_writer_waits_for_another_process_lock_within_busy_timeout(tmp_path):
    path = tmp_path / "t.sqlite"
    store = await SqliteTokenStore.open(path, busy_timeout=5.0)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute(
            "INSERT INTO push_tokens VALUES ('bob', 'example.com', 'x', 'a', NULL, 't', 'apple', '1', NULL)"
        )

        async def release_soon():
            await trio.sleep(0.3)
            blocker.execute("COMMIT")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_soon)
            started = trio.current_time()
            await store.add(device("d1"))  # waits for the lock instead of failing
            assert trio.current_time() - started >= 0.25
        assert len(await store.devices("bob@example.com")) == 1
        assert len(await store.devices("alice@example.com")) == 1
    finally:
        blocker.close()
        await store.aclose()


async def test_event_loop_keeps_running_while_a_write_waits(tmp_path):
    path = tmp_path / "t.sqlite"
    store = await SqliteTokenStore.open(path, busy_timeout=1.0)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await trio.sleep(0.05)
            ticks += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.add(device("d1"))
            nursery.cancel_scope.cancel()
        assert ticks >= 10  # ~1 s of waiting on the lock, the loop ticked throughout
    finally:
        blocker.close()
        await store.aclose()


# The writer for the kill -9 test: adds devices one after another and prints
# each index only after add() returned (what "answered 200" means).
_WRITER = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from sidecar.store.base import DeviceRecord
    from sidecar.store.sqlite import SqliteTokenStore

    async def main():
        store = await SqliteTokenStore.open(Path(sys.argv[1]))
        i = 0
        while True:
            await store.add(DeviceRecord(
                account="alice@example.com", app_id="com.example.phone",
                device_id=f"d{i}", platform="apple", device_token="t" * 64))
            print(i, flush=True)
            i += 1

    trio.run(main)
    """
)


async def test_every_acknowledged_add_survives_sigkill(tmp_path):
    path = tmp_path / "push_tokens.sqlite"
    acknowledged: list[int] = []
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
        )
        try:
            buffer = b""
            while len(acknowledged) < 150:
                chunk = await process.stdout.receive_some()
                assert chunk, "writer exited early"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                acknowledged.extend(int(line) for line in lines)
            # Killed in the middle of its next add.
            process.send_signal(signal.SIGKILL)
            # Read what it printed before dying: those adds returned too.
            while chunk := await process.stdout.receive_some():
                buffer += chunk
            acknowledged.extend(int(line) for line in buffer.split(b"\n") if line)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL

    # The database opens cleanly (WAL recovery) and holds every acknowledged add.
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in conn.execute("SELECT device_id FROM push_tokens")}
    conn.close()
    missing = {f"d{i}" for i in acknowledged} - stored
    assert not missing
    store = await SqliteTokenStore.open(path)
    try:
        assert len(await store.devices("alice@example.com")) >= len(acknowledged)
    finally:
        await store.aclose()
