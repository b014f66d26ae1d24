"""The embedded token store: one SQLite file in spool_dir.

Theory of operation
-------------------
One connection, used by one thread at a time: every operation runs in a trio
worker thread (``trio.to_thread.run_sync``) behind a ``CapacityLimiter(1)``, so
the event loop never waits on the disk and the connection is never shared
between two threads at once (hence ``check_same_thread=False``).  Operations
are not abandoned on cancellation: an add either commits or it does not.

Durability: the journal is WAL.  With WAL a commit appends the transaction to
the ``-wal`` file before ``COMMIT`` returns; the data then sits at least in the
kernel's page cache, which a SIGKILL of our process cannot lose, so even
``synchronous=NORMAL`` survives ``kill -9``.  We use ``synchronous=FULL``
(fsync of the WAL on every commit) so that an add answered 200 also survives a
power cut or kernel crash: devices register rarely, so one fsync per add costs
nothing that matters.

Several sidecar processes on one host may share the file: writes take the
write lock up front (``BEGIN IMMEDIATE``, so two writers never deadlock while
upgrading a read lock) and ``busy_timeout`` makes a writer wait for the other
instead of failing.  A lock held longer than that, or an I/O error, becomes
:class:`StoreUnavailable` (HTTP 503), and the next call simply tries again.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from sidecar.store._account import join_account, record_row, silent_from_text, split_account
from sidecar.store.base import DeviceRecord, StoreUnavailable, TokenStore

T = TypeVar("T")

FILE_NAME = "push_tokens.sqlite"
SCHEMA_VERSION = 1

# Sylk's Cassandra columns, so both backends hold the same thing.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_tokens (
    username         TEXT NOT NULL,
    domain           TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    app_id           TEXT NOT NULL,
    background_token TEXT,
    device_token     TEXT NOT NULL,
    platform         TEXT NOT NULL,
    silent           TEXT NOT NULL DEFAULT '1',
    user_agent       TEXT,
    PRIMARY KEY (username, domain, device_id, app_id)
) WITHOUT ROWID
"""

_COLUMNS = (
    "username, domain, device_id, app_id, background_token, device_token, "
    "platform, silent, user_agent"
)


def default_path(spool_dir: Path) -> Path:
    """Where the store lives for a given spool_dir."""
    return Path(spool_dir) / FILE_NAME


class SqliteTokenStore(TokenStore):
    """Token store in one SQLite file.  Open it with :meth:`open`.

    Args:
        connection: an open connection already set up by :func:`_connect`.
        path: the database file (for messages).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._conn: sqlite3.Connection | None = connection
        self.path = path
        self._limiter = trio.CapacityLimiter(1)
        # Belt and braces next to the limiter: aclose() from another trio run
        # (tests) must not close the connection under a running statement.
        self._thread_lock = threading.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
    ) -> SqliteTokenStore:
        """Open (creating if needed) the database file and its schema.

        Args:
            path: the database file; its folder is created if missing.
            busy_timeout: seconds to wait for another process's write lock.
            synchronous: SQLite's ``synchronous`` pragma (see module docs).

        Raises:
            StoreUnavailable: the file cannot be opened or set up.
        """
        path = Path(path)
        conn = await trio.to_thread.run_sync(_connect, path, busy_timeout, synchronous)
        return cls(conn, path)

    # -- TokenStore ---------------------------------------------------------

    async def add(self, record: DeviceRecord) -> None:
        row = record_row(record)

        def insert(conn: sqlite3.Connection) -> None:
            with _write_transaction(conn):
                conn.execute(
                    f"INSERT OR REPLACE INTO push_tokens ({_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        await self._run(insert)

    async def remove(self, account: str, app_id: str, device_id: str | None = None) -> int:
        username, domain = split_account(account)

        def delete(conn: sqlite3.Connection) -> int:
            with _write_transaction(conn):
                if device_id is None:
                    cursor = conn.execute(
                        "DELETE FROM push_tokens WHERE username = ? AND domain = ? AND app_id = ?",
                        (username, domain, app_id),
                    )
                else:
                    cursor = conn.execute(
                        "DELETE FROM push_tokens WHERE username = ? AND domain = ? "
                        "AND app_id = ? AND device_id = ?",
                        (username, domain, app_id, device_id),
                    )
                return cursor.rowcount

        return await self._run(delete)

    async def devices(self, account: str) -> list[DeviceRecord]:
        username, domain = split_account(account)

        def select(conn: sqlite3.Connection) -> list[DeviceRecord]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM push_tokens WHERE username = ? AND domain = ? "
                "ORDER BY device_id, app_id",
                (username, domain),
            ).fetchall()
            return [_record_from_row(row) for row in rows]

        return await self._run(select)

    async def aclose(self) -> None:
        """Close the connection (idempotent); later calls raise StoreUnavailable."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close, conn, limiter=self._limiter)

    # -- plumbing -----------------------------------------------------------

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._thread_lock:
            conn.close()

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation(connection)`` in a worker thread, mapping errors."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"token store {self.path} is closed")

        def call() -> T:
            with self._thread_lock:
                return operation(conn)

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            # "database is locked" past busy_timeout, disk full, I/O errors.
            raise StoreUnavailable(f"token store {self.path}: {exc}") from exc


def _record_from_row(row: tuple[Any, ...]) -> DeviceRecord:
    (username, domain, device_id, app_id, background_token, device_token,
     platform, silent, user_agent) = row
    return DeviceRecord(
        account=join_account(username, domain),
        app_id=app_id,
        device_id=device_id,
        platform=platform,
        device_token=device_token,
        background_token=background_token,
        silent=silent_from_text(silent),
        user_agent=user_agent,
    )


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolling back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back by itself (some errors do).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _connect(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open and set up the connection (runs in a worker thread)."""
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"bad synchronous mode {synchronous!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open token store {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreUnavailable(f"token store {path}: cannot switch to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        with _write_transaction(conn):
            conn.execute(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"token store {path} has schema version {version}, newer than this "
                    f"program's {SCHEMA_VERSION}"
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailable(f"cannot set up token store {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
