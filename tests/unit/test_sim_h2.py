"""The simulator's HTTP/2 behaviour seen by a raw h2 client: SETTINGS, GOAWAY, drops."""

import json

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio

from sidecar.sim import generate_credentials, open_simulator
from sidecar.sim.testing import apns_provider_token, client_ssl_context

TOKEN = "0a1b2c3d4e5f6789"
MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


class RawClient:
    """A bare h2 client that records everything the server does."""

    def __init__(self, stream):
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.responses = {}
        self.resets = {}
        self.goaway = None
        self.closed = False
        self.settings_seen = []

    @classmethod
    async def connect(cls, port, context):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
        await stream.do_handshake()
        client = cls(stream)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self):
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def post(self, path, headers, body=b""):
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"),
                  (":path", path), *headers.items()]
        self.conn.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        return stream_id

    def get(self, path):
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "https"),
                                           (":authority", "127.0.0.1"), (":path", path)],
                               end_stream=True)
        return stream_id

    async def pump(self):
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id] = {"headers": dict(event.headers), "body": b"",
                                                   "ended": False}
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses[event.stream_id]["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if MAX_STREAMS in event.changed_settings:
                    self.settings_seen.append(event.changed_settings[MAX_STREAMS].new_value)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                # h2 refuses frames after a GOAWAY, but streams up to
                # last_stream_id are still answered (RFC 9113 §6.8).
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        await self.flush()

    async def wait(self, condition, timeout=5):
        with trio.fail_after(timeout):
            while not condition() and not self.closed:
                await self.pump()

    def status(self, stream_id):
        response = self.responses.get(stream_id)
        return int(response["headers"][b":status"]) if response else None

    async def aclose(self):
        await trio.aclose_forcefully(self.stream)


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate_credentials(tmp_path_factory.mktemp("creds"))


@pytest.fixture
async def sim(creds):
    async with open_simulator(creds, token_update_interval=0, apns_max_streams=500) as sim:
        yield sim


def apns_headers(creds):
    return {"authorization": f"bearer {apns_provider_token(creds)}",
            "apns-topic": "com.example.sylk", "apns-push-type": "alert"}


async def connect(sim, creds, **options):
    return await RawClient.connect(sim.port, client_ssl_context(creds, **options))


async def test_token_connection_starts_with_one_stream_then_raises(sim, creds):
    client = await connect(sim, creds)
    await client.wait(lambda: client.settings_seen)
    assert client.settings_seen == [1]
    stream_id = client.post(f"/3/device/{TOKEN}", apns_headers(creds), b"{}")
    await client.flush()
    await client.wait(lambda: client.status(stream_id) and len(client.settings_seen) == 2)
    assert client.status(stream_id) == 200
    assert client.settings_seen == [1, 500]
    await client.aclose()


async def test_failed_request_keeps_the_single_stream_limit(sim, creds):
    client = await connect(sim, creds)
    headers = apns_headers(creds)
    headers["authorization"] = "bearer not-a-jwt"
    stream_id = client.post(f"/3/device/{TOKEN}", headers, b"{}")
    await client.flush()
    await client.wait(lambda: client.status(stream_id))
    assert client.status(stream_id) == 403
    assert client.settings_seen == [1]
    await client.aclose()


async def test_any_fcm_answer_raises_the_limit_to_fcm_streams(sim, creds):
    client = await connect(sim, creds)
    stream_id = client.post(f"/v1/projects/{creds.project_id}/messages:send",
                            {"authorization": "Bearer unknown"}, b'{"message": {}}')
    await client.flush()
    await client.wait(lambda: client.status(stream_id) and len(client.settings_seen) == 2)
    assert client.status(stream_id) == 401
    assert client.settings_seen == [1, 100]
    await client.aclose()


async def test_certificate_connection_starts_with_the_full_limit(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    await client.wait(lambda: client.settings_seen)
    assert client.settings_seen == [500]
    await client.aclose()


async def test_streams_over_the_advertised_limit_are_refused(sim, creds):
    client = await connect(sim, creds)
    # Sent before reading the server's SETTINGS: legal, but over the limit of 1.
    sim.delay = 0.2
    first = client.post(f"/3/device/{TOKEN}", apns_headers(creds), b"{}")
    second = client.post(f"/3/device/{TOKEN}", apns_headers(creds), b"{}")
    await client.flush()
    await client.wait(lambda: client.status(first) and second in client.resets)
    assert client.status(first) == 200
    assert client.resets[second] == h2.errors.ErrorCodes.REFUSED_STREAM
    assert sim.stats().refused_streams == 1
    await client.aclose()


async def test_goaway_after_n_streams(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    sim.goaway_after(3)
    headers = {"apns-topic": creds.cert_bundle_id}
    ids = [client.post(f"/3/device/{TOKEN}", headers, b"{}") for _ in range(5)]
    await client.flush()
    await client.wait(lambda: client.closed)
    assert client.goaway is not None
    assert client.goaway.last_stream_id == ids[2]
    assert [client.status(i) for i in ids] == [200, 200, 200, None, None]
    assert len(sim.requests) == 3  # streams above last_stream_id were never seen
    assert sim.stats().goaways_sent == 1
    assert sim.faults.goaway is None  # one-shot
    await client.aclose()


async def test_goaway_with_explicit_last_stream_id_answers_in_flight_streams(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    sim.delay = 0.2  # keep streams in flight when the GOAWAY goes
    sim.goaway_after(4, last_stream_id=3, error_code=0, debug_data=b'{"reason":"Shutdown"}')
    headers = {"apns-topic": creds.cert_bundle_id}
    ids = [client.post(f"/3/device/{TOKEN}", headers, b"{}") for _ in range(4)]
    assert ids == [1, 3, 5, 7]
    await client.flush()
    await client.wait(lambda: client.closed)
    assert client.goaway.last_stream_id == 3
    assert client.goaway.additional_data == b'{"reason":"Shutdown"}'
    assert [client.status(i) for i in ids] == [200, 200, None, None]
    outcomes = [(r["stream"], r["status"], r.get("outcome")) for r in sim.requests]
    assert outcomes == [(1, 200, None), (3, 200, None), (5, None, "refused"), (7, None, "refused")]
    await client.aclose()


async def test_drop_connection_after_n(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    sim.drop_connection_after(2)
    headers = {"apns-topic": creds.cert_bundle_id}
    ids = [client.post(f"/3/device/{TOKEN}", headers, b"{}") for _ in range(4)]
    await client.flush()
    with trio.fail_after(5):
        try:
            await client.wait(lambda: False)
        except trio.BrokenResourceError:
            client.closed = True
    assert client.closed and client.goaway is None
    await client.aclose()
    assert [client.status(i) for i in ids] == [200, 200, None, None]
    assert [r.get("outcome") for r in sim.requests] == [None, None, "dropped"]
    assert sim.stats().connections_dropped == 1
    # The next connection is served normally.
    again = await connect(sim, creds, client_certificate=True)
    stream_id = again.post(f"/3/device/{TOKEN}", headers, b"{}")
    await again.flush()
    await again.wait(lambda: again.status(stream_id))
    assert again.status(stream_id) == 200
    await again.aclose()


async def test_scripted_reset(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    sim.script_status([{"status": 503, "reset": 2}])
    stream_id = client.post(f"/3/device/{TOKEN}", {"apns-topic": creds.cert_bundle_id}, b"{}")
    await client.flush()
    await client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == h2.errors.ErrorCodes.INTERNAL_ERROR
    await client.aclose()


async def test_large_control_answer_respects_flow_control(sim, creds):
    client = await connect(sim, creds, client_certificate=True)
    headers = {"apns-topic": creds.cert_bundle_id}
    body = json.dumps({"aps": {"alert": "x" * 3000}}).encode()
    for round_ in range(1, 5):  # 40 records of ~3 kB: well over the 64 kB window
        for _ in range(10):
            client.post(f"/3/device/{TOKEN}", headers, body)
        await client.flush()
        expected = 10 * round_
        await client.wait(lambda: len(client.responses) == expected and all(  # noqa: B023 (awaited here)
            r["ended"] for r in client.responses.values()))
    stream_id = client.get("/_sim/requests")
    await client.flush()
    await client.wait(lambda: stream_id in client.responses and client.responses[stream_id]["ended"])
    document = json.loads(client.responses[stream_id]["body"])
    assert len(client.responses[stream_id]["body"]) > 120_000
    assert len(document["requests"]) == 40
    await client.aclose()
