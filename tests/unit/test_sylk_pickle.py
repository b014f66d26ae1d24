"""Importing Sylk Pushserver's webrtc_device_tokens pickle."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest

from sidecar.store.base import DeviceRecord
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.store.sylk_pickle import (
    UnsafePickleError,
    import_sylk_pickle,
    load_plain_pickle,
    records_from_sylk_data,
)

SYLK_DATA = {
    "alice@example.com": {
        "com.agprojects.sylk-ios-DEV1": {
            "app_id": "com.agprojects.sylk-ios",
            "platform": "ios",
            "token": "voiptoken",
            "background_token": "regulartoken",
            "device_id": "DEV1",
            "silent": "1",
            "user_agent": "Sylk iOS",
        },
        "com.agprojects.sylk-DEV2": {
            "app_id": "com.agprojects.sylk",
            "platform": "android",
            "token": "fcmtoken",
            "background_token": None,
            "device_id": "DEV2",
            "silent": False,
            "user_agent": None,
        },
    },
    "bob@example.org": {
        "com.agprojects.sylk-ios-X": {
            # Older entries: no device_id field, token still "<voip>-<regular>".
            "app_id": "com.agprojects.sylk-ios",
            "platform": "apple",
            "token": "bobvoip-bobregular",
            "silent": 0,
        },
    },
}


@dataclasses.dataclass
class NotPlainData:
    value: str = "x"


class RunsACommand:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
async def store(tmp_path):
    store = await SqliteTokenStore.open(tmp_path / "tokens.sqlite")
    yield store
    await store.aclose()


def write_pickle(path, data, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
async def test_plain_sylk_file_imports_with_every_pickle_protocol(tmp_path, store, protocol):
    path = write_pickle(tmp_path / "webrtc_device_tokens", SYLK_DATA, protocol)
    report = await import_sylk_pickle(path, store)
    assert (report.accounts, report.devices, report.skipped) == (2, 3, ())
    alice = {r.device_id: r for r in await store.devices("alice@example.com")}
    assert alice == {
        "DEV1": DeviceRecord(
            account="alice@example.com", app_id="com.agprojects.sylk-ios", device_id="DEV1",
            platform="apple", device_token="voiptoken", background_token="regulartoken",
            silent=True, user_agent="Sylk iOS",
        ),
        "DEV2": DeviceRecord(
            account="alice@example.com", app_id="com.agprojects.sylk", device_id="DEV2",
            platform="firebase", device_token="fcmtoken", background_token=None,
            silent=False, user_agent=None,
        ),
    }
    assert await store.devices("bob@example.org") == [
        DeviceRecord(
            account="bob@example.org", app_id="com.agprojects.sylk-ios", device_id="X",
            platform="apple", device_token="bobvoip", background_token="bobregular",
            silent=False,
        )
    ]


async def test_importing_twice_leaves_no_duplicates_and_takes_new_values(tmp_path, store):
    path = write_pickle(tmp_path / "webrtc_device_tokens", SYLK_DATA)
    first = await import_sylk_pickle(path, store)
    assert (first.devices, first.already_present) == (3, 0)
    known = SYLK_DATA["alice@example.com"]["com.agprojects.sylk-DEV2"]
    changed = {"alice@example.com": {"k": dict(known, token="newer")}}
    report = await import_sylk_pickle(write_pickle(tmp_path / "again", changed), store)
    assert (report.devices, report.already_present) == (1, 0)  # new values replace the stored ones
    report = await import_sylk_pickle(path, store)
    assert (report.devices, report.already_present) == (1, 2)  # DEV2 back to the file's token
    alice = await store.devices("alice@example.com")
    assert sorted(r.device_id for r in alice) == ["DEV1", "DEV2"]
    assert len(await store.devices("bob@example.org")) == 1


async def test_class_instance_is_refused_and_named(tmp_path, store):
    data = {"alice@example.com": {"k": NotPlainData()}}
    path = write_pickle(tmp_path / "evil", data)
    with pytest.raises(UnsafePickleError, match=r"refused to load test_sylk_pickle\.NotPlainData"):
        await import_sylk_pickle(path, store)
    assert await store.devices("alice@example.com") == []


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
async def test_reduce_to_os_system_is_refused_without_running_it(tmp_path, store, protocol):
    marker = tmp_path / "it-ran"
    data = {"alice@example.com": {"k": RunsACommand(str(marker))}}
    path = write_pickle(tmp_path / "evil", data, protocol)
    with pytest.raises(UnsafePickleError, match=r"refused to load posix\.system"):
        await import_sylk_pickle(path, store)
    assert not marker.exists()


def test_set_and_bytes_need_globals_in_old_protocols_and_are_refused():
    with pytest.raises(UnsafePickleError, match=r"refused to load (__builtin__|builtins)\.set"):
        load_plain_pickle(pickle.dumps({"a": {1, 2}}, protocol=2))
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        load_plain_pickle(pickle.dumps({"a": b"raw"}, protocol=2))


def test_garbage_is_a_value_error_not_a_crash():
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(pickle.dumps(SYLK_DATA)[:-5])


def test_wrong_shapes_are_skipped_with_reasons():
    records, skipped = records_from_sylk_data({
        "no-at-sign": {"k": {"app_id": "a", "platform": "apple", "token": "t", "device_id": "d"}},
        "carol@example.com": {
            "good": {"app_id": "a", "platform": "fcm", "token": "t", "device_id": "d"},
            "no-token": {"app_id": "a", "platform": "apple", "device_id": "e"},
            "a list": ["not", "a", "dict"],
            "bad-token": {"app_id": "a", "platform": "apple", "token": ["x"], "device_id": "f"},
        },
        "dave@example.com": "not a dict",
    })
    assert [(r.account, r.device_id, r.platform) for r in records] == [
        ("carol@example.com", "d", "firebase")
    ]
    assert len(skipped) == 5
    assert any("no-at-sign" in line for line in skipped)
    assert any("'no-token': no token" in line for line in skipped)
    assert any("'bad-token': token is a list" in line for line in skipped)
    assert any(line.startswith("dave@example.com: devices are a str") for line in skipped)
    with pytest.raises(ValueError, match="holds list"):
        records_from_sylk_data(["not", "a", "dict"])


# -- the file as Sylk Pushserver's FileStorage writes it ------------------------------


def sylk_file_storage_bytes() -> bytes:
    """A token file laid out as Sylk's FileStorage writes it: a
    ``collections.defaultdict()`` of accounts, devices keyed
    "<device-id>-<app-id>", each the add request's fields plus the token split
    on "#", dumped with ``_pickle.dump`` at its default protocol."""
    import _pickle
    import collections
    import io

    tokens = collections.defaultdict()

    def add(account, app_id, platform, token, device_id, silent, user_agent):
        voip, _, regular = token.partition("#")
        data = {"app_id": app_id, "platform": platform, "token": voip, "device_id": device_id,
                "silent": silent, "user_agent": user_agent, "background_token": regular or None}
        key = f"{device_id}-{app_id}"
        if account in tokens:
            tokens[account][key] = data
        else:
            tokens[account] = {key: data}

    add("alice@example.com", "com.agprojects.sylk-ios", "ios", "voipA#regularA", "dev-a1", True, "Sylk/2.9 iOS")
    add("alice@example.com", "com.agprojects.sylk", "android", "fcmA", "dev-a2", False, None)
    add("bob@example.org", "com.agprojects.sylk-ios", "apple", "voipB", "dev-b1", True, "None")
    buffer = io.BytesIO()
    _pickle.dump(tokens, buffer)
    return buffer.getvalue()


async def test_a_real_sylk_file_storage_pickle_imports(tmp_path, store):
    raw = sylk_file_storage_bytes()
    assert b"collections" in raw and b"defaultdict" in raw  # what every real file names
    path = tmp_path / "webrtc_device_tokens"
    path.write_bytes(raw)
    report = await import_sylk_pickle(path, store)
    assert (report.accounts, report.devices, report.already_present, report.skipped) == (2, 3, 0, ())
    alice = {r.device_id: r for r in await store.devices("alice@example.com")}
    assert alice["dev-a1"] == DeviceRecord(
        account="alice@example.com", app_id="com.agprojects.sylk-ios", device_id="dev-a1",
        platform="apple", device_token="voipA", background_token="regularA", silent=True,
        user_agent="Sylk/2.9 iOS")
    assert alice["dev-a2"].platform == "firebase" and alice["dev-a2"].silent is False
    again = await import_sylk_pickle(path, store)
    assert (again.devices, again.already_present) == (0, 3)
    assert len(await store.devices("alice@example.com")) == 2


def test_device_id_from_sylk_key_when_the_entry_lacks_it():
    data = {"carol@example.com": {"phone-7-com.x.app": {"app_id": "com.x.app", "platform": "fcm", "token": "t"}}}
    records, skipped = records_from_sylk_data(data)
    assert skipped == [] and records[0].device_id == "phone-7"


def test_defaultdict_with_a_factory_is_refused_by_name():
    import collections

    with pytest.raises(UnsafePickleError, match="refused to load builtins.list"):
        load_plain_pickle(pickle.dumps(collections.defaultdict(list, {"a@b": {}})))
    # Only collections.defaultdict is let through, not its neighbours.
    with pytest.raises(UnsafePickleError, match="refused to load collections.OrderedDict"):
        load_plain_pickle(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    loaded = load_plain_pickle(pickle.dumps(collections.defaultdict(None, {"a@b": {}})))
    assert isinstance(loaded, collections.defaultdict) and loaded.default_factory is None
