"""pushclient and pushclient-v2 against a tiny local HTTP server (and ZeroMQ)."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest
import zmq

from sidecar import wire
from sidecar.clients import v1, v2


class Recorder(http.server.ThreadingHTTPServer):
    """Records (method, path, json body); answers ``status`` with ``answer``."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, object]] = []
        self.status = 200
        self.answer: object = {"code": 200, "description": "push notification response",
                               "data": {"code": 200, "reason": "Success"}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def _serve(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, json.loads(raw) if raw else None))
        body = json.dumps(self.server.answer).encode()
        self.send_response(self.server.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_DELETE = _serve

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server():
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield recorder
    recorder.shutdown()
    recorder.server_close()


V1_ARGS = ["--platform", "apple", "--appid", "com.example.app", "--token", "aa11#bb22",
           "--deviceid", "dev-1", "--callid", "call-1@x", "--from", "alice@x", "--to", "bob@x"]


def test_v1_sends_what_sylk_pushclient_sends(server, capsys):
    assert v1.main(["--url", server.url + "/push", *V1_ARGS]) == 0
    method, path, body = server.requests[0]
    assert (method, path) == ("POST", "/push")
    assert body == {
        "app-id": "com.example.app", "platform": "apple", "token": "aa11", "device-id": "dev-1",
        "call-id": "call-1@x", "event": "incoming_session", "from": "alice@x",
        "from-display-name": "alice@x", "to": "bob@x", "media-type": "audio", "silent": "1",
    }
    assert "push sent" in capsys.readouterr().out


def test_v1_cancel_uses_the_second_token_and_root_url_gets_push(server):
    args = [a for a in V1_ARGS]
    args[args.index("aa11#bb22")] = "aa11-bb22"  # Apple tokens are hex: '-' separates too
    assert v1.main(["--url", server.url, *args, "--event", "cancel", "--silent", "0",
                    "--from_name", "Alice", "--mediatype", "video"]) == 0
    _, path, body = server.requests[0]
    assert path == "/push"
    assert body["token"] == "bb22" and body["event"] == "cancel"
    assert body["silent"] == "0" and body["from-display-name"] == "Alice" and body["media-type"] == "video"


def test_v1_firebase_tokens_keep_their_dashes():
    assert v1.pick_token("fcm-tok:APA91-x", "cancel", "firebase") == "fcm-tok:APA91-x"
    assert v1.pick_token("fcm#second", "cancel", "firebase") == "second"
    assert v1.pick_token("voip#", "cancel", "apple") == "voip"
    assert v1.pick_token("abc", "cancel", "apple") == "abc"


@pytest.mark.parametrize("status", [202, 410, 500])
def test_v1_exit_status_is_0_only_on_200(server, capsys, status):
    server.status = status
    server.answer = {"code": status, "description": "push notification response",
                     "data": {"code": 410, "reason": "Unregistered"}}
    assert v1.main(["--url", server.url + "/push", *V1_ARGS]) == 1
    err = capsys.readouterr().err
    assert f"HTTP {status}" in err and "Unregistered" in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_one_clear_line(capsys):
    url = f"http://127.0.0.1:{_closed_port()}/push"
    assert v1.main(["--url", url, *V1_ARGS]) == 1
    err = capsys.readouterr().err
    assert err == f"pushclient: cannot connect to {url}: connection refused\n"
    assert v2.main(["--url", url, "--account", "a@x", "remove", "--appid", "a", "--deviceid", "d"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_v1_requires_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        v1.main(["--platform", "apple"])
    assert exc.value.code == 2
    assert "--appid" in capsys.readouterr().err


def test_v2_add_push_remove(server, capsys):
    base = ["--url", server.url, "--account", "alice@example.com"]
    assert v2.main([*base, "add", "--platform", "apple", "--appid", "com.example.app",
                    "--token", "voip-regular", "--deviceid", "dev-1"]) == 0
    assert v2.main([*base, "push", "--callid", "c-1", "--from", "bob@x", "--event", "cancel",
                    "--badge", "3"]) == 0
    assert v2.main([*base, "push", "--callid", "c-2", "--from", "bob@x", "--to", "alice@x",
                    "--deviceid", "dev 1", "--reason", "gone", "--filename", "f.txt",
                    "--filetype", "text/plain", "--from_name", "Bob", "--mediatype", "sms"]) == 0
    assert v2.main([*base, "remove", "--appid", "com.example.app", "--deviceid", "dev-1"]) == 0
    (m1, p1, add), (m2, p2, push), (m3, p3, push_one), (m4, p4, remove) = server.requests
    assert (m1, p1) == ("POST", "/v2/tokens/alice@example.com")
    assert add == {"app-id": "com.example.app", "platform": "apple", "token": "voip-regular",
                   "device-id": "dev-1", "silent": "1"}
    assert (m2, p2) == ("POST", "/v2/tokens/alice@example.com/push")
    assert push == {"call-id": "c-1", "event": "cancel", "from": "bob@x", "from-display-name": "bob@x",
                    "to": "alice@example.com", "media-type": "audio", "reason": None, "badge": 3,
                    "filename": None, "filetype": None}
    assert (m3, p3) == ("POST", "/v2/tokens/alice@example.com/push/dev%201")
    assert push_one["reason"] == "gone" and push_one["filename"] == "f.txt" and push_one["to"] == "alice@x"
    assert push_one["from-display-name"] == "Bob" and push_one["media-type"] == "sms"
    assert (m4, p4, remove) == ("DELETE", "/v2/tokens/alice@example.com",
                                {"app-id": "com.example.app", "device-id": "dev-1"})
    assert '"description": "push notification response"' in capsys.readouterr().out


def test_v2_not_found_exits_1_and_bad_account_2(server, capsys):
    server.status = 404
    server.answer = {"result": "User not found"}
    assert v2.main(["--url", server.url, "--account", "a@x", "remove", "--appid", "a", "--deviceid", "d"]) == 1
    assert "User not found" in capsys.readouterr().err
    assert v2.main(["--url", server.url, "--account", "nobody", "remove", "--appid", "a", "--deviceid", "d"]) == 2
    assert len(server.requests) == 1


def test_zmq_direct_and_account_pushes():
    context = zmq.Context.instance()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, 3000)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        assert v1.main(["zmq", "--endpoint", endpoint, *V1_ARGS, "--event", "cancel",
                        "--silent", "0", "--reason", "answered elsewhere"]) == 0
        message = wire.decode(pull.recv())
        assert (message.app_id, message.platform, message.token) == ("com.example.app", "apple", "bb22")
        assert message.event == "cancel" and message.call_id == "call-1@x" and message.silent is False
        assert message.reason == "answered elsewhere" and message.device_id == "dev-1"

        assert v1.main(["zmq", "--endpoint", endpoint, "--account", "alice@x", "--callid", "c-2",
                        "--from", "bob@x", "--to", "alice@x", "--ttl", "30"]) == 0
        message = wire.decode(pull.recv())
        assert message.account == "alice@x" and message.ttl == 30 and message.silent is True
    finally:
        pull.close(linger=0)


def test_zmq_bad_addressing_and_nobody_listening(capsys):
    assert v1.main(["zmq", "--callid", "c", "--from", "f", "--to", "t", "--platform", "apple"]) == 2
    assert "give --account, or all of" in capsys.readouterr().err
    endpoint = f"tcp://127.0.0.1:{_closed_port()}"
    assert v1.send_zmq(endpoint, b"frame", timeout_ms=200) == 1
    assert "no sidecar accepted the push" in capsys.readouterr().err
