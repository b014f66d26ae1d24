"""Token store on Apache Cassandra, with Sylk Pushserver's schema.

Theory of operation
-------------------
The schema is the original's, so an existing Sylk cluster keeps working (and
OpenSIPS keeps reading ``mobile_devices``)::

    <table> (username, domain, device_id, app_id, background_token,
             device_token, platform, silent ('0'/'1'), user_agent,
             PRIMARY KEY ((username, domain), device_id, app_id))
    mobile_devices (opensipskey text PRIMARY KEY, opensipsval text)
        '1' for every user@domain that has at least one token

cassandra-driver runs its own I/O thread (libev).  Queries are sent with
``execute_async``; the driver thread hands the result back to trio with
``TrioToken.run_sync_soon``, so no query holds a trio worker thread.  Only the
blocking set-up calls (``Cluster()``, ``connect``, ``prepare``, ``shutdown``)
run in a worker thread.

Connecting is lazy: a cluster that is down at start-up does not stop the
sidecar; each call raises :class:`StoreUnavailable` (HTTP 503) and, at most
every ``reconnect_interval`` seconds, tries to connect again.  Once connected,
the driver itself notices nodes going down and coming back (its reconnection
policy).  If the cluster has answered NoHostAvailable for longer than
``rebuild_after`` seconds we drop the whole session and start again from the
contact points, in case the nodes came back under new addresses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from sidecar.config import CassandraSettings, Settings
from sidecar.store._account import join_account, record_row, silent_from_text, split_account
from sidecar.store.base import DeviceRecord, StoreUnavailable, TokenStore

log = logging.getLogger(__name__)

#: v4 is spoken by Cassandra 2.2 up to 5.0, so older Sylk clusters keep working.
DEFAULT_PROTOCOL_VERSION = 4

MOBILE_DEVICES_TABLE = "mobile_devices"

# Keyspace and table names end up inside CQL text: accept plain identifiers only.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")

#: What "the cluster cannot serve us right now" looks like, from the driver.
_UNAVAILABLE_ERRORS = (DriverException, NoHostAvailable, ConnectionException, OSError)


def check_identifier(name: str, what: str) -> str:
    """Return ``name`` if it is a plain CQL identifier, else raise ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid Cassandra {what} name {name!r}")
    return name


def consistency_level(name: str) -> int:
    """Map a name such as ``LOCAL_QUORUM`` to the driver's constant."""
    try:
        return int(ConsistencyLevel.name_to_value[name.strip().upper()])
    except KeyError:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown Cassandra consistency {name!r} (one of {known})") from None


@dataclass(frozen=True, slots=True)
class _Statements:
    insert: PreparedStatement
    mark: PreparedStatement
    select_account: PreparedStatement
    select_one: PreparedStatement
    delete_one: PreparedStatement
    any_left: PreparedStatement
    unmark: PreparedStatement
    is_marked: PreparedStatement


@dataclass(slots=True)
class _Connection:
    cluster: Cluster
    session: Session
    statements: _Statements


class CassandraTokenStore(TokenStore):
    """Token store on a Cassandra cluster (see the module docs).

    The constructor does no I/O; the first call (or :meth:`connect`) connects.

    Args:
        settings: contact points, keyspace, table, consistency, debug.
        protocol_version: native protocol version, set explicitly so the
            driver does not try newer ones and warn.
        connect_timeout: seconds for one connection attempt to a node.
        request_timeout: seconds for one query.
        reconnect_interval: after a failed connect, calls fail fast with
            StoreUnavailable for this long before trying again.
        reconnect_max_delay: ceiling of the driver's exponential reconnection
            delay to a node it saw go down.
        rebuild_after: seconds of NoHostAvailable after which the session is
            dropped and rebuilt from the contact points.
    """

    def __init__(
        self,
        settings: CassandraSettings,
        *,
        protocol_version: int = DEFAULT_PROTOCOL_VERSION,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        reconnect_interval: float = 2.0,
        reconnect_max_delay: float = 30.0,
        rebuild_after: float = 60.0,
    ):
        if not settings.contact_points:
            raise ValueError("Cassandra store needs at least one contact point")
        self._settings = settings
        self.keyspace = check_identifier(settings.keyspace, "keyspace")
        self.table = check_identifier(settings.table, "table")
        self._consistency = consistency_level(settings.consistency)
        self._protocol_version = protocol_version
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._reconnect_interval = reconnect_interval
        self._reconnect_max_delay = reconnect_max_delay
        self._rebuild_after = rebuild_after

        self._conn: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._next_connect_at = float("-inf")
        self._last_connect_error = ""
        self._unavailable_since: float | None = None
        self._closed = False
        if settings.debug:
            logging.getLogger("cassandra").setLevel(logging.DEBUG)

    # -- TokenStore ---------------------------------------------------------

    async def add(self, record: DeviceRecord) -> None:
        row = record_row(record)  # checks the account before connecting
        conn = await self._connection()
        s = conn.statements
        # One logged batch: the token and the OpenSIPS marker go in together.
        batch = BatchStatement(batch_type=BatchType.LOGGED)
        batch.add(s.insert, row)
        batch.add(s.mark, (record.account,))
        await self._execute(conn, batch)

    async def remove(self, account: str, app_id: str, device_id: str | None = None) -> int:
        username, domain = split_account(account)
        conn = await self._connection()
        s = conn.statements
        if device_id is None:
            rows = await self._execute(conn, s.select_account, (username, domain))
            doomed = [row.device_id for row in rows if row.app_id == app_id]
        else:
            rows = await self._execute(conn, s.select_one, (username, domain, device_id, app_id))
            doomed = [device_id] if rows else []
        if not doomed:
            return 0
        # All rows are in one partition, so an unlogged batch is atomic here.
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for one in doomed:
            batch.add(s.delete_one, (username, domain, one, app_id))
        await self._execute(conn, batch)
        # The account's last token went: OpenSIPS must stop seeing it.
        if not await self._execute(conn, s.any_left, (username, domain)):
            await self._execute(conn, s.unmark, (account,))
        return len(doomed)

    async def devices(self, account: str) -> list[DeviceRecord]:
        username, domain = split_account(account)
        conn = await self._connection()
        rows = await self._execute(conn, conn.statements.select_account, (username, domain))
        return [
            DeviceRecord(
                account=join_account(username, domain),
                app_id=row.app_id,
                device_id=row.device_id,
                platform=row.platform or "",
                device_token=row.device_token or "",
                background_token=row.background_token,
                silent=silent_from_text(row.silent),
                user_agent=row.user_agent,
            )
            for row in rows
        ]

    async def has_mobile_devices_entry(self, account: str) -> bool:
        """Whether ``mobile_devices`` lists the account (what OpenSIPS reads)."""
        conn = await self._connection()
        rows = await self._execute(conn, conn.statements.is_marked, (account,))
        return bool(rows) and rows[0].opensipsval == "1"

    async def connect(self) -> None:
        """Connect now instead of on first use.

        Raises:
            StoreUnavailable: the cluster cannot be reached (a later call
                tries again by itself).
        """
        await self._connection()

    async def aclose(self) -> None:
        """Shut the driver down (idempotent)."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.cluster.shutdown)

    # -- connection management ----------------------------------------------

    async def _connection(self) -> _Connection:
        if self._closed:
            raise StoreUnavailable("Cassandra token store is closed")
        conn = self._conn
        if conn is not None:
            return conn
        async with self._connect_lock:
            if self._conn is not None:
                return self._conn
            now = trio.current_time()
            if now < self._next_connect_at:
                raise StoreUnavailable(
                    f"Cassandra unavailable ({self._last_connect_error}); "
                    f"retrying in {self._next_connect_at - now:.1f} s"
                )
            try:
                self._conn = await trio.to_thread.run_sync(self._connect_blocking)
            except StoreUnavailable as exc:
                self._last_connect_error = str(exc)
                self._next_connect_at = trio.current_time() + self._reconnect_interval
                log.warning("%s", exc)
                raise
            log.info(
                "connected to Cassandra %s, keyspace %s",
                _describe(self._settings.contact_points),
                self.keyspace,
            )
            self._unavailable_since = None
            return self._conn

    def _connect_blocking(self) -> _Connection:
        """Build the cluster, connect and prepare (runs in a worker thread)."""
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=self._consistency,
            request_timeout=self._request_timeout,
        )
        cluster = None
        try:
            cluster = Cluster(
                contact_points=list(self._settings.contact_points),
                protocol_version=self._protocol_version,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                connect_timeout=self._connect_timeout,
                control_connection_timeout=self._connect_timeout,
                reconnection_policy=ExponentialReconnectionPolicy(
                    base_delay=min(1.0, self._reconnect_max_delay),
                    max_delay=self._reconnect_max_delay,
                ),
            )
            session = cluster.connect(self.keyspace)
            statements = _prepare(session, self.table)
        except Exception as exc:  # driver, resolver and socket errors alike
            if cluster is not None:
                cluster.shutdown()
            where = _describe(self._settings.contact_points)
            raise StoreUnavailable(
                f"cannot connect to Cassandra {where} keyspace {self.keyspace}: {exc}"
            ) from exc
        return _Connection(cluster, session, statements)

    async def _drop_connection(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
            log.warning("Cassandra unreachable for %.0f s: reconnecting from scratch",
                        self._rebuild_after)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.cluster.shutdown)

    # -- queries ------------------------------------------------------------

    async def _execute(
        self, conn: _Connection, statement: Any, params: Sequence[Any] | None = None
    ) -> list[Any]:
        """Run one statement; return its (first page of) rows.

        Raises:
            StoreUnavailable: the cluster could not answer.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[tuple[bool, Any]] = []

        def deliver(ok: bool, value: Any) -> None:  # in the trio thread
            result.append((ok, value))
            done.set()

        def from_driver(ok: bool, value: Any) -> None:  # in the driver's thread
            try:
                token.run_sync_soon(deliver, ok, value)
            except trio.RunFinishedError:
                pass  # nobody is waiting any more

        try:
            future = conn.session.execute_async(statement, params)
            future.add_callbacks(
                callback=lambda rows: from_driver(True, rows),
                errback=lambda exc: from_driver(False, exc),
            )
        except _UNAVAILABLE_ERRORS as exc:
            await self._note_failure(conn, exc)
            raise StoreUnavailable(f"Cassandra: {exc}") from exc
        # Cancelled here, the query still completes in the driver; the
        # answer is then simply dropped.
        await done.wait()
        ok, value = result[0]
        if ok:
            self._unavailable_since = None
            return list(value or ())
        if isinstance(value, _UNAVAILABLE_ERRORS):
            await self._note_failure(conn, value)
            raise StoreUnavailable(f"Cassandra: {value}") from value
        raise value

    async def _note_failure(self, conn: _Connection, exc: BaseException) -> None:
        if not isinstance(exc, NoHostAvailable):
            return
        now = trio.current_time()
        if self._unavailable_since is None:
            self._unavailable_since = now
        elif now - self._unavailable_since >= self._rebuild_after:
            self._unavailable_since = None
            await self._drop_connection(conn)


def _prepare(session: Session, table: str) -> _Statements:
    columns = (
        "username, domain, device_id, app_id, background_token, device_token, "
        "platform, silent, user_agent"
    )
    key = "username = ? AND domain = ?"
    return _Statements(
        insert=session.prepare(
            f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        mark=session.prepare(
            f"INSERT INTO {MOBILE_DEVICES_TABLE} (opensipskey, opensipsval) VALUES (?, '1')"
        ),
        select_account=session.prepare(f"SELECT {columns} FROM {table} WHERE {key}"),
        select_one=session.prepare(
            f"SELECT device_id FROM {table} WHERE {key} AND device_id = ? AND app_id = ?"
        ),
        delete_one=session.prepare(
            f"DELETE FROM {table} WHERE {key} AND device_id = ? AND app_id = ?"
        ),
        any_left=session.prepare(f"SELECT device_id FROM {table} WHERE {key} LIMIT 1"),
        unmark=session.prepare(
            f"DELETE FROM {MOBILE_DEVICES_TABLE} WHERE opensipskey = ?"
        ),
        is_marked=session.prepare(
            f"SELECT opensipsval FROM {MOBILE_DEVICES_TABLE} WHERE opensipskey = ?"
        ),
    )


def _describe(contact_points: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in contact_points)


# -- schema -------------------------------------------------------------------


def replication_cql(replication: Mapping[str, Any]) -> str:
    """Render a replication map as a CQL map literal, quoting every value."""
    if "class" not in replication:
        raise ValueError("replication needs a 'class' (SimpleStrategy, NetworkTopologyStrategy)")

    def quote(value: Any) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    return "{" + ", ".join(f"{quote(k)}: {quote(v)}" for k, v in replication.items()) + "}"


def schema_cql(keyspace: str, table: str, replication: Mapping[str, Any]) -> list[str]:
    """The statements that create the keyspace and both tables (idempotent)."""
    keyspace = check_identifier(keyspace, "keyspace")
    table = check_identifier(table, "table")
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} "
        f"WITH replication = {replication_cql(replication)}",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{table} ("
        "username text, domain text, device_id text, app_id text, "
        "background_token text, device_token text, platform text, silent text, "
        "user_agent text, PRIMARY KEY ((username, domain), device_id, app_id))",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{MOBILE_DEVICES_TABLE} ("
        "opensipskey text PRIMARY KEY, opensipsval text)",
    ]


async def init_schema(
    settings: Settings | CassandraSettings,
    replication: Mapping[str, Any],
    *,
    protocol_version: int = DEFAULT_PROTOCOL_VERSION,
    timeout: float = 30.0,
) -> None:
    """Create the keyspace (with ``replication``) and both tables; safe to rerun.

    Args:
        settings: the sidecar's Settings (or just its CassandraSettings).
        replication: e.g. ``{"class": "SimpleStrategy", "replication_factor": 1}``
            or ``{"class": "NetworkTopologyStrategy", "dc1": 3}``.

    Raises:
        StoreUnavailable: the cluster cannot be reached or refused a statement.
    """
    cassandra = settings.cassandra if isinstance(settings, Settings) else settings
    if not cassandra.contact_points:
        raise ValueError("no Cassandra contact points configured")
    statements = schema_cql(cassandra.keyspace, cassandra.table, replication)

    def run() -> None:
        cluster = Cluster(
            contact_points=list(cassandra.contact_points),
            protocol_version=protocol_version,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: ExecutionProfile(
                    load_balancing_policy=DCAwareRoundRobinPolicy(),
                    consistency_level=ConsistencyLevel.ONE,
                    request_timeout=timeout,
                )
            },
            connect_timeout=min(timeout, 10.0),
            control_connection_timeout=min(timeout, 10.0),
        )
        try:
            session = cluster.connect()
            # execute() waits for schema agreement after each DDL statement.
            for cql in statements:
                session.execute(cql)
        finally:
            cluster.shutdown()

    try:
        await trio.to_thread.run_sync(run)
    except Exception as exc:
        raise StoreUnavailable(f"cannot create the Cassandra schema: {exc}") from exc
