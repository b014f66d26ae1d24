"""One-way import of Sylk Pushserver's local token file into a token store.

Sylk kept its tokens in ``<spool_dir>/webrtc_device_tokens``: its FileStorage
pickles a ``collections.defaultdict`` (with no default factory) of::

    {account: {"<device-id>-<app-id>": {"app_id", "platform", "token",
               "device_id", "silent", "user_agent", "background_token"}}}

Unpickling runs whatever the file says, so the file is read with an
unpickler that may build nothing but the containers and scalars pickle makes
without importing a name (dicts, lists, tuples, strings, numbers, booleans
and None) plus exactly one class, ``collections.defaultdict``, and that only
without a default factory (what Sylk writes).  Anything else (a class
instance, ``os.system`` by way of ``__reduce__``, even ``set``, or a
defaultdict whose factory is a function) stops the import with an error
naming it.

Importing again finds the devices already stored with the same values and
leaves them alone (the store's key is account, app-id, device-id): the
import is idempotent, and says how many were already present.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from sidecar.model import canonical_platform
from sidecar.store._account import silent_from_text, split_account
from sidecar.store.base import DeviceRecord, TokenStore

FILE_NAME = "webrtc_device_tokens"


class UnsafePickleError(ValueError):
    """The pickle asks for something other than plain data."""


def _sylk_defaultdict(*args: Any) -> collections.defaultdict[Any, Any]:
    """What the pickle's ``collections.defaultdict`` name resolves to: the
    class itself, called by REDUCE with the default factory, which must be
    None (Sylk's ``defaultdict()``)."""
    if args not in ((), (None,)):
        raise UnsafePickleError(
            f"refused collections.defaultdict with default factory {args[0]!r}: "
            "a Sylk token file has none"
        )
    return collections.defaultdict()


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what needs no global, and Sylk's top-level defaultdict."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "defaultdict"):
            return _sylk_defaultdict
        raise UnsafePickleError(
            f"refused to load {module}.{name}: only plain dicts (and Sylk's "
            "collections.defaultdict), lists, strings, numbers, booleans and None "
            "are accepted in a Sylk token file"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused persistent id {pid!r} in a Sylk token file")


def load_plain_pickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing plain data only.

    Raises:
        UnsafePickleError: the pickle names a global or a persistent id.
        ValueError: the bytes are not a valid pickle.
    """
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbage pickles raise many types
        raise ValueError(f"not a readable pickle: {exc!r}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did.

    ``devices`` were written (new, or replacing a stored device with other
    values), ``already_present`` were stored with the same values and left
    alone; ``accounts`` counts the accounts of both.  ``skipped`` has one
    readable line per entry that could not be imported.
    """

    accounts: int
    devices: int
    skipped: tuple[str, ...] = ()
    already_present: int = 0


def records_from_sylk_data(data: Any) -> tuple[list[DeviceRecord], list[str]]:
    """Turn the unpickled structure into DeviceRecords.

    Returns:
        (records, skipped): entries that cannot be stored are described in
        ``skipped`` instead of stopping the import.

    Raises:
        ValueError: the top level is not a dict.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a Sylk token file holds a dict, this one holds {type(data).__name__}")
    records: list[DeviceRecord] = []
    skipped: list[str] = []
    for account, devices in data.items():
        if not isinstance(account, str):
            skipped.append(f"account {account!r}: not a string")
            continue
        try:
            split_account(account)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        if not isinstance(devices, Mapping):
            skipped.append(f"{account}: devices are a {type(devices).__name__}, not a dict")
            continue
        for key, entry in devices.items():
            try:
                records.append(_record(account, key, entry))
            except ValueError as exc:
                skipped.append(f"{account} {key!r}: {exc}")
    return records, skipped


def _record(account: str, key: Any, entry: Any) -> DeviceRecord:
    if not isinstance(entry, Mapping):
        raise ValueError(f"entry is a {type(entry).__name__}, not a dict")

    def text(name: str, required: bool) -> str | None:
        value = entry.get(name)
        if value is None or value == "":
            if required:
                raise ValueError(f"no {name}")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{name} is a {type(value).__name__}")
        return str(value)

    app_id = text("app_id", True)
    assert app_id is not None
    device_id = text("device_id", False)
    if device_id is None and isinstance(key, str):
        # Sylk's key is "<device-id>-<app-id>"; accept "<app-id>-<device-id>" too.
        if key.endswith("-" + app_id):
            device_id = key[: -len(app_id) - 1]
        elif key.startswith(app_id + "-"):
            device_id = key[len(app_id) + 1 :]
    if not device_id:
        raise ValueError("no device_id")
    platform = canonical_platform(text("platform", True) or "")
    token = text("token", True)
    assert token is not None
    background_token = text("background_token", False)
    if background_token is None and platform == "apple" and "-" in token:
        # "<voip>-<regular>", as the v2 API splits it.
        token, background_token = token.split("-", 1)
    return DeviceRecord(
        account=account,
        app_id=app_id,
        device_id=device_id,
        platform=platform,
        device_token=token,
        background_token=background_token,
        silent=silent_from_text(entry.get("silent", True)),
        user_agent=text("user_agent", False),
    )


async def import_sylk_pickle(path: Path, store: TokenStore) -> ImportReport:
    """Read Sylk's token file at ``path`` and add every device to ``store``.

    Raises:
        UnsafePickleError: the file is not plain data (nothing is imported).
        ValueError: the file is not a Sylk token pickle (nothing is imported).
        OSError: the file cannot be read.
        StoreUnavailable: the store failed part-way (rerunning is safe).
    """
    raw = await trio.Path(path).read_bytes()
    data = load_plain_pickle(raw)
    records, skipped = records_from_sylk_data(data)
    written = present = 0
    stored: dict[str, set[DeviceRecord]] = {}
    for record in records:
        if record.account not in stored:
            stored[record.account] = set(await store.devices(record.account))
        if record in stored[record.account]:
            present += 1
            continue
        await store.add(record)
        written += 1
    accounts = len({record.account for record in records})
    return ImportReport(accounts=accounts, devices=written, skipped=tuple(skipped),
                        already_present=present)
