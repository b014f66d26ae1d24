"""Token store fixtures: a real Cassandra for the session, and one store suite
fixture (``store_backend``) parametrized over SQLite and Cassandra.

Load it from tests/conftest.py (``pytest_plugins = ["store_fixtures"]``, or
``from store_fixtures import *``); tests/ is on sys.path there.

Cassandra comes from, in order:
  * PUSHSIDECAR_CASSANDRA_HOST (+ PUSHSIDECAR_CASSANDRA_PORT, default 9042): a
    node someone already runs;
  * PUSHSIDECAR_CASSANDRA=1 (CI sets it): ``.ci/cassandra.sh start`` in a
    temporary folder, stopped at the end of the session;
  * otherwise every Cassandra test is skipped with a visible reason (-rs).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import trio

from sidecar.config import CassandraSettings
from sidecar.store.base import TokenStore

REPO = Path(__file__).resolve().parent.parent
CASSANDRA_SCRIPT = REPO / ".ci" / "cassandra.sh"
TEST_KEYSPACE = "pushsidecar_tests"
SKIP_REASON = (
    "no Cassandra: set PUSHSIDECAR_CASSANDRA=1 to start one with .ci/cassandra.sh "
    "(Java 17 + Maven), or PUSHSIDECAR_CASSANDRA_HOST/PORT to use a running node"
)


@dataclasses.dataclass(frozen=True)
class CassandraNode:
    host: str
    port: int


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory: pytest.TempPathFactory) -> CassandraNode:
    """A reachable Cassandra node, or a skip explaining how to get one."""
    host = os.environ.get("PUSHSIDECAR_CASSANDRA_HOST")
    if host:
        yield CassandraNode(host, int(os.environ.get("PUSHSIDECAR_CASSANDRA_PORT", "9042")))
        return
    if os.environ.get("PUSHSIDECAR_CASSANDRA") != "1":
        pytest.skip(SKIP_REASON)
    folder = tmp_path_factory.mktemp("cassandra")
    started = subprocess.run(
        ["bash", str(CASSANDRA_SCRIPT), "start", str(folder)],
        capture_output=True, text=True, timeout=600,
    )
    if started.returncode != 0:
        # Asked for explicitly: failing to start is an error, not a skip.
        pytest.fail(
            f".ci/cassandra.sh start failed ({started.returncode}):\n"
            f"{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    port = int((folder / "native_port").read_text())
    try:
        yield CassandraNode("127.0.0.1", port)
    finally:
        subprocess.run(["bash", str(CASSANDRA_SCRIPT), "stop", str(folder)],
                       capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def cassandra_settings(cassandra_node: CassandraNode) -> CassandraSettings:
    """Settings for the session's test keyspace, created once (schema included)."""
    from sidecar.store.cassandra import init_schema

    settings = CassandraSettings(
        contact_points=((cassandra_node.host, cassandra_node.port),),
        keyspace=TEST_KEYSPACE,
        consistency="ONE",
    )
    trio.run(init_schema, settings, {"class": "SimpleStrategy", "replication_factor": 1})
    return settings


def unique_account(prefix: str = "user") -> str:
    """An account no other test (or earlier run against the same node) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.test"


# -- a TCP proxy, to take Cassandra "down" without touching the node --------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port; can be stopped and restarted
    on the same port, dropping every connection, like a node that dies."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._scope = trio.CancelScope()
        nursery.start_soon(self._serve, listeners, self._scope)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.serve_listeners(self._handle, listeners)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:

                async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                    try:
                        while data := await source.receive_some(65536):
                            await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)


# -- the store suite's backends -------------------------------------------------


class Backend:
    """What the store suite needs from a backend."""

    name = ""

    async def open_store(self) -> TokenStore:
        raise NotImplementedError

    async def make_unavailable(self) -> None:
        """From now on the store's calls must raise StoreUnavailable."""
        raise NotImplementedError

    async def make_available(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    """SQLite; "unavailable" = another connection holds the write lock."""

    name = "sqlite"

    def __init__(self, folder: Path):
        self.folder = folder
        self.stores: list[TokenStore] = []
        self._blocker = None

    @property
    def path(self) -> Path:
        from sidecar.store.sqlite import default_path

        return default_path(self.folder)

    async def open_store(self) -> TokenStore:
        from sidecar.store.sqlite import SqliteTokenStore

        store = await SqliteTokenStore.open(self.path, busy_timeout=0.2)
        self.stores.append(store)
        return store

    async def make_unavailable(self) -> None:
        import sqlite3

        self._blocker = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        self._blocker.execute("BEGIN EXCLUSIVE")

    async def make_available(self) -> None:
        if self._blocker is not None:
            self._blocker.execute("ROLLBACK")
            self._blocker.close()
            self._blocker = None

    async def aclose(self) -> None:
        await self.make_available()
        for store in self.stores:
            await store.aclose()


class CassandraBackend(Backend):
    """Cassandra through a TcpProxy; "unavailable" = the proxy is stopped."""

    name = "cassandra"

    def __init__(self, settings: CassandraSettings, nursery: trio.Nursery):
        host, port = settings.contact_points[0]
        self.proxy = TcpProxy(host, port)
        self.direct_settings = settings
        self.nursery = nursery
        self.stores: list[TokenStore] = []

    @property
    def settings(self) -> CassandraSettings:
        return dataclasses.replace(
            self.direct_settings, contact_points=(("127.0.0.1", self.proxy.port),)
        )

    async def start(self) -> None:
        await self.proxy.start(self.nursery)

    async def open_store(self, **options) -> TokenStore:
        from sidecar.store.cassandra import CassandraTokenStore

        # Short timers so that outage and recovery tests take seconds.
        options = {
            "connect_timeout": 2.0,
            "request_timeout": 3.0,
            "reconnect_interval": 0.2,
            "reconnect_max_delay": 0.5,
            "rebuild_after": 5.0,
            **options,
        }
        store = CassandraTokenStore(self.settings, **options)
        self.stores.append(store)
        return store

    async def make_unavailable(self) -> None:
        self.proxy.stop()
        await trio.sleep(0.1)  # let the driver see its sockets close

    async def make_available(self) -> None:
        await self.proxy.start(self.nursery)

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()
        self.proxy.stop()


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def store_backend_kind(request: pytest.FixtureRequest) -> tuple[str, CassandraSettings | None]:
    """The backend's name, and for Cassandra its settings.

    A sync fixture on purpose: the Cassandra session fixtures call trio.run,
    which cannot happen inside the test's own trio run.
    """
    if request.param == "cassandra":
        return request.param, request.getfixturevalue("cassandra_settings")
    return request.param, None


@pytest.fixture
async def store_backend(store_backend_kind, tmp_path: Path, nursery):
    """A :class:`Backend` of each kind; Cassandra ones skip without a node."""
    kind, settings = store_backend_kind
    if kind == "sqlite":
        made: Backend = SqliteBackend(tmp_path)
    else:
        made = CassandraBackend(settings, nursery)
        await made.start()
    try:
        yield made
    finally:
        with trio.CancelScope(shield=True):
            await made.aclose()
