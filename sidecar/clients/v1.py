"""``pushclient``: send one push through ``POST /push`` (sylk-pushclient's options).

    pushclient --url http://localhost:8400/push --platform apple --appid com.example.app \\
        --token VOIPTOKEN#REGULARTOKEN --deviceid dev1 --callid abc@host \\
        --from alice@example.com --to bob@example.com [--event cancel] [--silent 0]

The token may carry two parts, ``voip#regular`` (or ``voip-regular`` for
Apple tokens, which are hex and so never contain ``-``): ``cancel`` uses the
second part, every other event the first.  The body is what sylk-pushclient
sends (``silent`` as the string ``"1"``/``"0"``), so this client also tests
a server's compatibility.  Exit status 0 only on HTTP 200.

``pushclient zmq ...`` sends the same push over ZeroMQ instead, in the
format of :mod:`sidecar.wire`, the way a SIP proxy does (fire and forget:
the exit status says the message was handed over, not delivered).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from collections.abc import Sequence

import httpx

from ._http import request_json

DEFAULT_URL = "http://localhost:8400/push"
EVENTS = ("incoming_session", "incoming_conference_request", "cancel", "message", "transfer")
# A push may be retried until its deadline (about 45 s) before the server answers.


def pick_token(token: str, event: str, platform: str) -> str:
    """The part of a two-part token to use for ``event``.

    ``#`` always separates the parts; ``-`` only for Apple tokens (FCM tokens
    contain ``-`` themselves).
    """
    separator = "#" if "#" in token else ("-" if "-" in token and _is_apple(platform) else None)
    if separator is None:
        return token
    first, _, second = token.partition(separator)
    if event == "cancel":
        return second or first
    return first


def _is_apple(platform: str) -> bool:
    return platform.strip().lower() in ("apple", "ios", "apns")


def push_url(url: str) -> str:
    """``url`` itself, or ``<url>/push`` when only the server's root was given."""
    parsed = httpx.URL(url)
    if parsed.path in ("", "/"):
        return str(parsed.copy_with(path="/push"))
    return url


def build_body(options: argparse.Namespace) -> dict[str, Any]:
    """The JSON body sylk-pushclient sends for these options."""
    return {
        "app-id": options.appid,
        "platform": options.platform,
        "token": pick_token(options.token, options.event, options.platform),
        "device-id": options.deviceid,
        "call-id": options.callid,
        "event": options.event,
        "from": options.from_uri,
        "from-display-name": options.from_name or options.from_uri,
        "to": options.to,
        "media-type": options.mediatype,
        "silent": options.silent,
    }


def _add_push_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--platform", required=True, help="apple or firebase (ios, android...)")
    parser.add_argument("--appid", required=True, help="application id (app-id)")
    parser.add_argument("--token", required=True, help="device token; voip#regular for two tokens")
    parser.add_argument("--deviceid", default=None, help="device id (for logging)")
    parser.add_argument("--callid", required=True, help="SIP Call-ID")
    parser.add_argument("--event", default="incoming_session", help=f"{', '.join(EVENTS)} (default: %(default)s)")
    parser.add_argument("--from", dest="from_uri", required=True, help="caller SIP URI")
    parser.add_argument("--from_name", default=None, help="caller display name")
    parser.add_argument("--to", required=True, help="callee SIP URI")
    parser.add_argument("--silent", default="1", help="1 or 0: silent push (default: %(default)s)")
    parser.add_argument("--mediatype", default="audio", help="audio, video, sms... (default: %(default)s)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushclient",
        description="Send one push notification through a push server's /push API.",
        epilog="'pushclient zmq --help': send over ZeroMQ instead.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="push URL (default: %(default)s)")
    _add_push_options(parser)
    return parser


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        data = body.get("data")
        description = body.get("description", "")
        if isinstance(data, dict) and data.get("reason"):
            return f"{description}: {data.get('code', '')} {data['reason']}".strip()
        return str(description or body)
    return json.dumps(body)


def post(url: str, body: dict[str, Any], *, transport: httpx.BaseTransport | None = None) -> int:
    """POST ``body`` as JSON and report; returns the exit status."""
    response = request_json("pushclient", "POST", url, body, transport=transport)
    if response is None:
        return 1
    if response.status_code == 200:
        print(f"push sent: {_describe(response)}")
        return 0
    print(f"push failed: HTTP {response.status_code}: {_describe(response)}", file=sys.stderr)
    return 1


# -- pushclient zmq -------------------------------------------------------------------

ZMQ_SEND_TIMEOUT_MS = 3000


def make_zmq_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushclient zmq",
        description=(
            "Send one push over ZeroMQ, as a SIP proxy does: to one device "
            "(--platform/--appid/--token) or to every device of --account."
        ),
    )
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("PUSHSIDECAR_ENDPOINT"),
        help="the sidecar's PULL endpoint (default: $PUSHSIDECAR_ENDPOINT or the wire default)",
    )
    parser.add_argument("--account", default=None, help="push to every device of user@domain")
    parser.add_argument("--platform", default=None)
    parser.add_argument("--appid", default=None)
    parser.add_argument("--token", default=None, help="device token; voip#regular for two tokens")
    parser.add_argument("--deviceid", default=None)
    parser.add_argument("--callid", required=True)
    parser.add_argument("--event", default="incoming_session")
    parser.add_argument("--from", dest="from_uri", required=True)
    parser.add_argument("--from_name", default=None)
    parser.add_argument("--to", required=True)
    parser.add_argument("--silent", default="1")
    parser.add_argument("--mediatype", default="audio")
    parser.add_argument("--reason", default=None, help="cancel reason")
    parser.add_argument("--ttl", type=int, default=None, help="useful life in seconds")
    return parser


def encode_zmq(options: argparse.Namespace) -> bytes:
    """The :mod:`sidecar.wire` frame for these options.

    Raises:
      ValueError: neither --account nor the three of --platform/--appid/--token.
    """
    from .. import wire

    common: dict[str, Any] = dict(
        display_name=options.from_name,
        media_type=options.mediatype,
        reason=options.reason,
        silent=options.silent.strip().lower() not in ("0", "false", "no", "off"),
        ttl=options.ttl,
    )
    if options.account:
        if options.platform or options.appid or options.token:
            raise ValueError("give either --account or --platform/--appid/--token")
        return wire.encode_account(
            options.event, options.callid, options.from_uri, options.to, account=options.account, **common
        )
    if not (options.platform and options.appid and options.token):
        raise ValueError("give --account, or all of --platform, --appid and --token")
    return wire.encode_direct(
        options.event,
        options.callid,
        options.from_uri,
        options.to,
        app_id=options.appid,
        platform=options.platform,
        token=pick_token(options.token, options.event, options.platform),
        device_id=options.deviceid,
        **common,
    )


def send_zmq(endpoint: str, frame: bytes, *, timeout_ms: int = ZMQ_SEND_TIMEOUT_MS) -> int:
    """Hand ``frame`` to the sidecar at ``endpoint``; returns the exit status."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    try:
        # Queue only on a connection that is up, wait at most timeout_ms for
        # one, and let close() flush the message (linger).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        sock.setsockopt(zmq.LINGER, timeout_ms)
        sock.connect(endpoint)
        sock.send(frame)
    except zmq.Again:
        print(f"pushclient: no sidecar accepted the push at {endpoint} within {timeout_ms} ms", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"pushclient: cannot send to {endpoint}: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
        context.term()
    print(f"push queued to {endpoint}")
    return 0


def main_zmq(argv: Sequence[str]) -> int:
    from .. import wire

    options = make_zmq_parser().parse_args(list(argv))
    try:
        frame = encode_zmq(options)
    except (ValueError, wire.WireError) as exc:
        print(f"pushclient zmq: {exc}", file=sys.stderr)
        return 2
    return send_zmq(options.endpoint or wire.DEFAULT_ENDPOINT, frame)


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``pushclient``; returns the exit status (0 only on HTTP 200)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "zmq":
        return main_zmq(args[1:])
    options = make_parser().parse_args(args)
    return post(push_url(options.url), build_body(options))


if __name__ == "__main__":
    sys.exit(main())
