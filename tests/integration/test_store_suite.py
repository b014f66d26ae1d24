"""One behaviour suite for every token store backend (SQLite and Cassandra).

The ``store_backend`` fixture (tests/store_fixtures.py) runs each test on both; the
Cassandra run skips, with its reason, when no node is available.
"""

from __future__ import annotations

import pytest
import trio
from store_fixtures import unique_account

from sidecar.store.base import DeviceRecord, StoreUnavailable


def record(account: str, app_id: str = "com.example.phone", device_id: str = "dev-1", **fields):
    values = dict(
        platform="apple",
        device_token="aa" * 32,
        background_token=None,
        silent=True,
        user_agent=None,
    )
    values.update(fields)
    return DeviceRecord(account=account, app_id=app_id, device_id=device_id, **values)


def by_key(records: list[DeviceRecord]) -> dict[tuple[str, str], DeviceRecord]:
    return {(r.app_id, r.device_id): r for r in records}


async def test_add_then_devices_returns_every_field(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    full = record(
        account,
        platform="apple",
        device_token="voip-token",
        background_token="regular-token",
        silent=False,
        user_agent="Sylk/5.0 (iOS)",
    )
    await store.add(full)
    assert await store.devices(account) == [full]


async def test_adding_the_same_device_again_replaces_it(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    await store.add(record(account, device_token="old", user_agent="v1"))
    await store.add(record(account, device_token="new", user_agent=None, silent=False))
    assert await store.devices(account) == [
        record(account, device_token="new", user_agent=None, silent=False)
    ]


async def test_device_key_is_app_id_plus_device_id(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    await store.add(record(account, app_id="app.a", device_id="d1", device_token="t1"))
    await store.add(record(account, app_id="app.b", device_id="d1", device_token="t2"))
    await store.add(record(account, app_id="app.a", device_id="d2", device_token="t3"))
    found = by_key(await store.devices(account))
    assert {key: r.device_token for key, r in found.items()} == {
        ("app.a", "d1"): "t1",
        ("app.b", "d1"): "t2",
        ("app.a", "d2"): "t3",
    }


async def test_accounts_are_separate_by_user_and_by_domain(store_backend):
    store = await store_backend.open_store()
    base = unique_account()
    user, domain = base.split("@")
    same_user_other_domain = f"{user}@other.{domain}"
    other_user_same_domain = f"x{user}@{domain}"
    await store.add(record(base, device_token="mine"))
    assert await store.devices(same_user_other_domain) == []
    assert await store.devices(other_user_same_domain) == []
    await store.add(record(same_user_other_domain, device_token="theirs"))
    assert [r.device_token for r in await store.devices(base)] == ["mine"]
    assert [r.device_token for r in await store.devices(same_user_other_domain)] == ["theirs"]


async def test_remove_one_device(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    await store.add(record(account, device_id="d1"))
    await store.add(record(account, device_id="d2"))
    assert await store.remove(account, "com.example.phone", "d1") == 1
    assert [r.device_id for r in await store.devices(account)] == ["d2"]
    # Already gone, wrong app, unknown account: nothing to remove.
    assert await store.remove(account, "com.example.phone", "d1") == 0
    assert await store.remove(account, "other.app", "d2") == 0
    assert await store.remove(unique_account(), "com.example.phone", "d2") == 0
    assert [r.device_id for r in await store.devices(account)] == ["d2"]


async def test_remove_without_device_id_removes_all_devices_of_that_app(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    await store.add(record(account, app_id="app.a", device_id="d1"))
    await store.add(record(account, app_id="app.a", device_id="d2"))
    await store.add(record(account, app_id="app.b", device_id="d1"))
    assert await store.remove(account, "app.a") == 2
    assert list(by_key(await store.devices(account))) == [("app.b", "d1")]


async def test_account_without_at_sign_is_refused(store_backend):
    store = await store_backend.open_store()
    with pytest.raises(ValueError, match="user@domain"):
        await store.add(record("no-domain"))
    with pytest.raises(ValueError):
        await store.devices("no-domain")
    with pytest.raises(ValueError):
        await store.remove("@domain.only", "app")


async def test_concurrent_adds_all_land(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(store.add, record(account, device_id=f"d{i:02}", device_token=f"t{i}"))
    found = by_key(await store.devices(account))
    assert sorted(device for _, device in found) == [f"d{i:02}" for i in range(40)]
    assert found[("com.example.phone", "d07")].device_token == "t7"


async def test_two_stores_on_the_same_backend_share_data(store_backend):
    # Two sidecar processes on one SQLite file, or two on one cluster.
    first = await store_backend.open_store()
    second = await store_backend.open_store()
    account = unique_account()
    await first.add(record(account, device_token="from-first"))
    assert [r.device_token for r in await second.devices(account)] == ["from-first"]
    assert await second.remove(account, "com.example.phone") == 1
    assert await first.devices(account) == []


async def test_unavailable_backend_raises_store_unavailable_then_recovers(store_backend):
    store = await store_backend.open_store()
    account = unique_account()
    await store.add(record(account, device_id="before"))

    await store_backend.make_unavailable()
    with trio.fail_after(15):
        with pytest.raises(StoreUnavailable):
            await store.add(record(account, device_id="during"))

    await store_backend.make_available()
    # The store recovers by itself; the Cassandra driver needs a moment to
    # notice the node is back.
    with trio.fail_after(30):
        while True:
            try:
                await store.add(record(account, device_id="after"))
                break
            except StoreUnavailable:
                await trio.sleep(0.2)
    found = {r.device_id for r in await store.devices(account)}
    assert found == {"before", "after"}


async def test_closed_store_raises_store_unavailable(store_backend):
    store = await store_backend.open_store()
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.devices(unique_account())
