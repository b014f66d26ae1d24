"""The h2 version our client's patches were checked against, and the patches themselves.

``sidecar/pns/_h2_protocol.py`` leans on h2 behaviour that is not public API:
it overrides ``_receive_goaway_frame`` (a private method), replaces the
``open_outbound_streams`` count h2's ``send_headers`` consults, and swaps the
HPACK ``encoder`` h2 uses.  So h2 is pinned to one exact version in
setup.cfg, and these tests fail when an upgrade (or a moved pin) breaks a
patch: each checks the effect of the patch through h2 itself, not merely
that a name still exists.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import re
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from sidecar.pns._h2_protocol import ClientH2Connection, RustHpackDecoder, RustHpackEncoder, _PlainEncoder

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"


def pinned(name: str) -> str:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    for line in parser["options"]["install_requires"].splitlines():
        match = re.fullmatch(rf"\s*{re.escape(name)}\s*==\s*([\w.]+)\s*", line)
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned with == in setup.cfg install_requires")


@pytest.mark.parametrize("package", ["h2", "jh2"])
def test_installed_h2_and_jh2_are_the_pinned_versions(package):
    assert importlib.metadata.version(package) == pinned(package), (
        f"{package} differs from the version sidecar/pns/_h2_protocol.py was checked against: "
        "re-check its patches and codec adapters (and this file) before moving the pin")


def server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    return conn


def handshake(client, srv) -> None:
    client.initiate_connection()
    srv.receive_data(client.data_to_send())
    client.receive_data(srv.data_to_send())
    srv.receive_data(client.data_to_send())


REQUEST = [(":method", "POST"), (":scheme", "https"), (":authority", "apns"),
           (":path", "/3/device/abcdef0123")]


@pytest.mark.parametrize("patched", [True, False])
def test_answers_after_goaway_reach_the_client_only_with_the_patch(patched):
    client = ClientH2Connection(count_open=lambda: 0) if patched else h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True))
    srv = server()
    handshake(client, srv)
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST, end_stream=True)
    srv.receive_data(client.data_to_send())
    srv.data_to_send()
    # The server's answer to stream 3 arrives after its GOAWAY (last stream 3),
    # in the same read.
    srv.send_headers(3, [(":status", "200")], end_stream=True)
    answer = srv.data_to_send()
    srv.close_connection(last_stream_id=3)
    wire = srv.data_to_send() + answer
    if patched:
        events = client.receive_data(wire)
        kinds = [type(e) for e in events]
        assert h2.events.ConnectionTerminated in kinds and h2.events.ResponseReceived in kinds
    else:
        # h2 itself refuses the promised answer: if this starts passing, h2
        # fixed it and ClientH2Connection._receive_goaway_frame can go.
        with pytest.raises(h2.exceptions.ProtocolError):
            client.receive_data(wire)


def test_send_headers_consults_our_open_stream_count():
    count = {"open": 0}
    client = ClientH2Connection(count_open=lambda: count["open"])
    srv = server()
    handshake(client, srv)
    limit = client.remote_settings.max_concurrent_streams
    count["open"] = limit  # our limiter says every stream is taken
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(1, REQUEST, end_stream=True)
    count["open"] = 0
    client.send_headers(1, REQUEST, end_stream=True)


def test_send_headers_and_answers_go_through_the_rust_codec():
    client = ClientH2Connection(count_open=lambda: 0)
    assert isinstance(client.encoder, RustHpackEncoder) and isinstance(client.decoder, RustHpackDecoder)
    srv = server()
    handshake(client, srv)
    for stream_id in (1, 3, 5):  # the dynamic table at work from the second request on
        client.send_headers(stream_id, REQUEST + [("authorization", "bearer abc.def")], end_stream=True)
        wire = client.data_to_send()
        # Not Huffman-coded: the path's bytes appear literally in the HEADERS frame.
        assert stream_id > 1 or b"/3/device/abcdef0123" in wire
        [received, _] = srv.receive_data(wire)
        assert (b"authorization", b"bearer abc.def") in received.headers
        assert (b":path", b"/3/device/abcdef0123") in received.headers
        srv.send_headers(stream_id, [(":status", "410"), ("apns-id", f"id-{stream_id}")], end_stream=True)
        events = client.receive_data(srv.data_to_send())
        response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert response.headers == [(b":status", b"410"), (b"apns-id", f"id-{stream_id}".encode())]


def test_a_corrupt_header_block_is_a_connection_error():
    client = ClientH2Connection(count_open=lambda: 0)
    srv = server()
    handshake(client, srv)
    client.send_headers(1, REQUEST, end_stream=True)
    srv.receive_data(client.data_to_send())
    # A HEADERS frame on stream 1 whose block indexes a table entry that does not exist.
    frame = b"\x00\x00\x01\x01\x05\x00\x00\x00\x01" + b"\xff"
    with pytest.raises(h2.exceptions.ProtocolError):
        client.receive_data(frame)


def test_hpack_debug_logging_keeps_the_python_codec():
    import logging

    hpack_log = logging.getLogger("hpack")
    previous = hpack_log.level
    hpack_log.setLevel(logging.DEBUG)
    try:
        client = ClientH2Connection(count_open=lambda: 0)
    finally:
        hpack_log.setLevel(previous)
    assert isinstance(client.encoder, _PlainEncoder)
