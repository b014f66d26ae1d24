"""Cassandra-only behaviour: Sylk's schema, mobile_devices, lazy connect.

The shared add/remove/devices behaviour is in test_store_suite.py.  Tests
that need a node take the ``cassandra_settings`` fixture and skip (with the
reason shown by -rs) when there is none.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import trio
from cassandra.cluster import Cluster
from store_fixtures import TcpProxy, unique_account

from sidecar.config import CassandraSettings, Settings
from sidecar.store.base import DeviceRecord, StoreUnavailable
from sidecar.store.cassandra import (
    CassandraTokenStore,
    consistency_level,
    init_schema,
    replication_cql,
    schema_cql,
)
from sidecar.store.factory import open_store


def raw_rows(settings: CassandraSettings, cql: str, params: tuple = ()) -> list:
    """Run one CQL statement on a fresh driver session (in a worker thread)."""
    cluster = Cluster(contact_points=list(settings.contact_points), protocol_version=4)
    try:
        return list(cluster.connect().execute(cql, params))
    finally:
        cluster.shutdown()


async def raw(settings: CassandraSettings, cql: str, params: tuple = ()) -> list:
    return await trio.to_thread.run_sync(raw_rows, settings, cql, params)


def device(account: str, device_id: str, app_id: str = "com.example.phone", **kw) -> DeviceRecord:
    return DeviceRecord(account=account, app_id=app_id, device_id=device_id,
                        platform=kw.pop("platform", "firebase"),
                        device_token=kw.pop("device_token", "tok-" + device_id), **kw)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- no node needed ------------------------------------------------------------


def test_consistency_names_map_to_driver_levels():
    from cassandra import ConsistencyLevel

    assert consistency_level("local_quorum") == ConsistencyLevel.LOCAL_QUORUM
    assert consistency_level(" ONE ") == ConsistencyLevel.ONE
    with pytest.raises(ValueError, match="unknown Cassandra consistency 'MOST'"):
        consistency_level("MOST")


def test_unsafe_keyspace_or_table_names_are_refused():
    points = (("127.0.0.1", 9042),)
    with pytest.raises(ValueError, match="keyspace"):
        CassandraTokenStore(CassandraSettings(contact_points=points, keyspace="x; DROP TABLE y"))
    with pytest.raises(ValueError, match="table"):
        CassandraTokenStore(CassandraSettings(contact_points=points, table="a.b"))
    with pytest.raises(ValueError, match="contact point"):
        CassandraTokenStore(CassandraSettings())


def test_replication_map_quotes_values():
    assert replication_cql({"class": "SimpleStrategy", "replication_factor": 3}) == (
        "{'class': 'SimpleStrategy', 'replication_factor': '3'}"
    )
    assert replication_cql({"class": "NetworkTopologyStrategy", "d'c": 2}) == (
        "{'class': 'NetworkTopologyStrategy', 'd''c': '2'}"
    )
    with pytest.raises(ValueError, match="class"):
        replication_cql({"replication_factor": 1})


def test_schema_is_sylks():
    keyspace, table, marker = schema_cql("ks", "tokens", {"class": "SimpleStrategy"})
    assert keyspace.startswith("CREATE KEYSPACE IF NOT EXISTS ks WITH replication")
    assert "PRIMARY KEY ((username, domain), device_id, app_id)" in table
    assert table.startswith("CREATE TABLE IF NOT EXISTS ks.tokens (")
    assert marker == (
        "CREATE TABLE IF NOT EXISTS ks.mobile_devices (opensipskey text PRIMARY KEY, opensipsval text)"
    )


# -- against a real node -------------------------------------------------------


@pytest.mark.cassandra
async def test_created_tables_have_sylks_columns_and_keys(cassandra_settings):
    rows = await raw(
        cassandra_settings,
        "SELECT table_name, column_name, kind, position, type FROM system_schema.columns "
        "WHERE keyspace_name = %s",
        (cassandra_settings.keyspace,),
    )
    columns = {(r.table_name, r.column_name): (r.kind, r.position, r.type) for r in rows}
    tokens = {name: info for (table, name), info in columns.items() if table == "push_tokens"}
    assert tokens == {
        "username": ("partition_key", 0, "text"),
        "domain": ("partition_key", 1, "text"),
        "device_id": ("clustering", 0, "text"),
        "app_id": ("clustering", 1, "text"),
        "background_token": ("regular", -1, "text"),
        "device_token": ("regular", -1, "text"),
        "platform": ("regular", -1, "text"),
        "silent": ("regular", -1, "text"),
        "user_agent": ("regular", -1, "text"),
    }
    assert columns[("mobile_devices", "opensipskey")] == ("partition_key", 0, "text")
    assert columns[("mobile_devices", "opensipsval")] == ("regular", -1, "text")


@pytest.mark.cassandra
async def test_init_schema_twice_with_custom_table_and_datacenters(cassandra_settings):
    settings = Settings(
        config_dir=Path("."),
        cassandra=dataclasses.replace(
            cassandra_settings, keyspace="pushsidecar_tests_nts", table="sylk_tokens"
        ),
    )
    # SimpleSnitch puts a single node in "datacenter1".
    replication = {"class": "NetworkTopologyStrategy", "datacenter1": 1}
    await init_schema(settings, replication)
    await init_schema(settings, replication)  # a second run changes nothing
    rows = await raw(
        cassandra_settings,
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        ("pushsidecar_tests_nts",),
    )
    assert rows[0].replication == {
        "class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
        "datacenter1": "1",
    }
    store = CassandraTokenStore(settings.cassandra)
    try:
        account = unique_account()
        await store.add(device(account, "d1"))
        stored = await raw(
            cassandra_settings,
            "SELECT device_token FROM pushsidecar_tests_nts.sylk_tokens "
            "WHERE username = %s AND domain = %s",
            tuple(account.split("@")),
        )
        assert [r.device_token for r in stored] == ["tok-d1"]
    finally:
        await store.aclose()


@pytest.mark.cassandra
async def test_mobile_devices_lists_accounts_while_they_have_tokens(cassandra_settings):
    store = CassandraTokenStore(cassandra_settings)
    try:
        account = unique_account()
        assert not await store.has_mobile_devices_entry(account)
        await store.add(device(account, "d1"))
        await store.add(device(account, "d2"))
        await store.add(device(account, "d3", app_id="other.app"))
        assert await store.has_mobile_devices_entry(account)
        assert await store.remove(account, "com.example.phone", "d1") == 1
        assert await store.has_mobile_devices_entry(account)
        assert await store.remove(account, "com.example.phone") == 1  # d2
        assert await store.has_mobile_devices_entry(account)
        assert await store.remove(account, "nothing.here") == 0
        assert await store.has_mobile_devices_entry(account)
        assert await store.remove(account, "other.app", "d3") == 1
        assert not await store.has_mobile_devices_entry(account)
        rows = await raw(
            cassandra_settings,
            f"SELECT opensipskey FROM {cassandra_settings.keyspace}.mobile_devices "
            "WHERE opensipskey = %s",
            (account,),
        )
        assert rows == []
    finally:
        await store.aclose()


@pytest.mark.cassandra
async def test_rows_use_sylks_encoding_both_ways(cassandra_settings):
    ks = cassandra_settings.keyspace
    store = CassandraTokenStore(cassandra_settings)
    try:
        account = unique_account()
        user, domain = account.split("@")
        await store.add(device(account, "ours", silent=False, user_agent="UA"))
        rows = await raw(
            cassandra_settings,
            f"SELECT silent, user_agent, background_token FROM {ks}.push_tokens "
            "WHERE username = %s AND domain = %s",
            (user, domain),
        )
        assert [(r.silent, r.user_agent, r.background_token) for r in rows] == [("0", "UA", None)]
        marker = await raw(
            cassandra_settings,
            f"SELECT opensipsval FROM {ks}.mobile_devices WHERE opensipskey = %s",
            (account,),
        )
        assert [r.opensipsval for r in marker] == ["1"]

        # A row as Sylk Pushserver wrote it reads back as a DeviceRecord.
        await raw(
            cassandra_settings,
            f"INSERT INTO {ks}.push_tokens (username, domain, device_id, app_id, "
            "background_token, device_token, platform, silent, user_agent) "
            "VALUES (%s, %s, 'sylk-dev', 'com.agprojects.sylk', 'bg', 'voip', 'apple', '1', 'None')",
            (user, domain),
        )
        records = {r.device_id: r for r in await store.devices(account)}
        assert records["sylk-dev"] == DeviceRecord(
            account=account, app_id="com.agprojects.sylk", device_id="sylk-dev",
            platform="apple", device_token="voip", background_token="bg",
            silent=True, user_agent="None",
        )
        assert records["ours"].silent is False
    finally:
        await store.aclose()


@pytest.mark.cassandra
async def test_cluster_down_at_start_up_then_connects_when_it_comes_back(
    cassandra_settings, nursery
):
    host, port = cassandra_settings.contact_points[0]
    proxy = TcpProxy(host, port)
    proxy.port = free_port()  # nothing listens there yet: the "cluster" is down
    settings = Settings(
        config_dir=Path("."),
        cassandra=dataclasses.replace(
            cassandra_settings, contact_points=(("127.0.0.1", proxy.port),)
        ),
    )
    # Start-up must survive an unreachable cluster.
    with trio.fail_after(20):
        store = await open_store(settings)
    try:
        account = unique_account()
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await store.devices(account)
        # Within the retry interval calls fail fast instead of waiting on connects.
        with trio.fail_after(0.5):
            with pytest.raises(StoreUnavailable, match="retrying in"):
                await store.devices(account)

        await proxy.start(nursery)
        with trio.fail_after(20):
            while True:
                try:
                    await store.add(device(account, "d1"))
                    break
                except StoreUnavailable:
                    await trio.sleep(0.3)
        assert [r.device_id for r in await store.devices(account)] == ["d1"]
    finally:
        await store.aclose()
        proxy.stop()


@pytest.mark.cassandra
async def test_session_is_rebuilt_after_a_long_outage(cassandra_settings, nursery):
    # The node "moves" (new address); only the contact point (the proxy port)
    # stays the same.  A rebuilt session finds it again from the contact points.
    host, port = cassandra_settings.contact_points[0]
    proxy = TcpProxy(host, port)
    await proxy.start(nursery)
    settings = dataclasses.replace(cassandra_settings, contact_points=(("127.0.0.1", proxy.port),))
    store = CassandraTokenStore(
        settings, connect_timeout=1.0, request_timeout=2.0, reconnect_interval=0.1,
        reconnect_max_delay=60.0, rebuild_after=1.0,
    )
    try:
        account = unique_account()
        await store.add(device(account, "d1"))
        proxy.stop()
        await trio.sleep(0.2)
        # Outage longer than rebuild_after; the driver's own reconnection is
        # now waiting ~minutes (reconnect_max_delay), so only a rebuild helps.
        errors = []
        with trio.fail_after(20):
            deadline = trio.current_time() + 1.5
            while trio.current_time() < deadline:
                with pytest.raises(StoreUnavailable) as caught:
                    await store.devices(account)
                errors.append(str(caught.value))
                await trio.sleep(0.2)
        # First the live session's NoHostAvailable, then fresh connects.
        assert "cannot connect" not in errors[0]
        assert any("cannot connect" in e for e in errors[1:])
        await proxy.start(nursery)
        with trio.fail_after(20):
            while True:
                try:
                    found = await store.devices(account)
                    break
                except StoreUnavailable:
                    await trio.sleep(0.2)
        assert [r.device_id for r in found] == ["d1"]
    finally:
        await store.aclose()
        proxy.stop()


@pytest.mark.cassandra
def test_cli_init_list_remove_on_cassandra(cassandra_settings, tmp_path):
    import io

    from sidecar.store.cli import run_init, run_list, run_remove

    settings = Settings(
        config_dir=tmp_path,
        spool_dir=tmp_path,
        cassandra=dataclasses.replace(cassandra_settings, keyspace="pushsidecar_tests_cli"),
    )
    out = io.StringIO()
    assert run_init(settings, {"class": "SimpleStrategy", "replication_factor": 1}, out=out) == 0
    assert "schema ready: Cassandra" in out.getvalue()
    assert "keyspace pushsidecar_tests_cli" in out.getvalue()
    account = unique_account()

    async def add_one():
        store = CassandraTokenStore(settings.cassandra)
        try:
            await store.add(device(account, "d1"))
        finally:
            await store.aclose()

    trio.run(add_one)
    out = io.StringIO()
    assert run_list(settings, account, out=out) == 0
    assert f"{account}: 1 device(s)" in out.getvalue()
    out = io.StringIO()
    assert run_remove(settings, account, out=out) == 0
    assert out.getvalue() == f"{account}: removed 1 device(s)\n"
    assert not default_sqlite_created(tmp_path)


def default_sqlite_created(folder: Path) -> bool:
    return (folder / "push_tokens.sqlite").exists()


def test_cli_against_an_unreachable_cluster_exits_1(tmp_path):
    import io

    from sidecar.store.cli import run_init, run_list

    settings = Settings(
        config_dir=tmp_path,
        cassandra=CassandraSettings(contact_points=(("127.0.0.1", free_port()),)),
    )
    err = io.StringIO()
    assert run_list(settings, "a@b", err=err) == 1
    assert "token store unavailable (Cassandra 127.0.0.1:" in err.getvalue()
    err = io.StringIO()
    assert run_init(settings, {"class": "SimpleStrategy", "replication_factor": 1}, err=err) == 1
    assert "cannot create the Cassandra schema" in err.getvalue()
