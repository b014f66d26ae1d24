"""Pick and open the token store the configuration asks for.

SQLite (``<spool_dir>/push_tokens.sqlite``) unless Cassandra contact points
are configured.  Use it as::

    store = await open_store(settings)
    try:
        ...
    finally:
        await store.aclose()

or ``async with store_context(settings) as store: ...``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from sidecar.config import Settings
from sidecar.store.base import StoreUnavailable, TokenStore

log = logging.getLogger(__name__)


async def open_store(settings: Settings, *, connect: bool = True) -> TokenStore:
    """Open the configured token store.

    For Cassandra a first connection is attempted when ``connect`` is true,
    but a cluster that is down is only logged: the store connects by itself
    on a later call, so the sidecar starts (and answers 503 meanwhile).

    Raises:
        StoreUnavailable: the SQLite file cannot be opened.
        ValueError: invalid Cassandra keyspace/table/consistency settings.
    """
    if settings.cassandra.enabled:
        from sidecar.store.cassandra import CassandraTokenStore

        store = CassandraTokenStore(settings.cassandra)
        if connect:
            try:
                await store.connect()
            except StoreUnavailable as exc:
                log.warning("token store not available yet (will retry on use): %s", exc)
        return store

    from sidecar.store.sqlite import SqliteTokenStore, default_path

    return await SqliteTokenStore.open(default_path(settings.spool_dir))


@contextlib.asynccontextmanager
async def store_context(settings: Settings, *, connect: bool = True) -> AsyncIterator[TokenStore]:
    """``open_store`` as an async context manager that closes the store."""
    store = await open_store(settings, connect=connect)
    try:
        yield store
    finally:
        await store.aclose()
