"""``pushclient-v2``: store, remove and push to tokens (sylk-pushclient-v2's options).

    pushclient-v2 --account alice@example.com add --platform apple --appid com.example.app \\
        --token VOIP-REGULAR --deviceid dev1
    pushclient-v2 --account alice@example.com push --callid abc@host --from bob@example.com
    pushclient-v2 --account alice@example.com remove --appid com.example.app --deviceid dev1

Requests go to ``<url>/v2/tokens/<account>`` (``/push[/<deviceid>]`` for
push).  The bodies are what sylk-pushclient-v2 sends (``silent`` as the
string ``"1"``/``"0"``; ``reason``, ``filename``, ``filetype`` as null when
not given).  The server's JSON answer is printed; exit status 0 only on
HTTP 200.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any
from collections.abc import Sequence
from urllib.parse import quote

import httpx

from ._http import request_json

DEFAULT_URL = "http://localhost:8400"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushclient-v2", description="Manage stored push tokens and push to an account."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="server URL (default: %(default)s)")
    parser.add_argument("--account", required=True, help="user@domain")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{push,add,remove}")

    push = commands.add_parser("push", help="push to the account's devices (or one of them)")
    push.add_argument("--mediatype", default="audio", help="audio, video, sms... (default: %(default)s)")
    push.add_argument("--callid", default=None, help="SIP Call-ID (default: a new UUID)")
    push.add_argument("--event", default="incoming_session", help="default: %(default)s")
    push.add_argument("--from", dest="from_uri", required=True, help="caller SIP URI")
    push.add_argument("--from_name", default=None, help="caller display name")
    push.add_argument("--to", default=None, help="callee SIP URI (default: the account)")
    push.add_argument("--reason", default=None, help="cancel reason")
    push.add_argument("--badge", default=1, help="badge number (default: %(default)s)")
    push.add_argument("--deviceid", default=None, help="push to this device only")
    push.add_argument("--filename", default=None, help="transfer: file name")
    push.add_argument("--filetype", default=None, help="transfer: file type")

    add = commands.add_parser("add", help="store a device token for the account")
    add.add_argument("--platform", required=True, help="apple or firebase")
    add.add_argument("--appid", required=True, help="application id")
    add.add_argument("--token", required=True, help="device token (apple: voip-regular)")
    add.add_argument("--deviceid", required=True, help="device id")
    add.add_argument("--silent", default="1", help="1 or 0 (default: %(default)s)")
    add.add_argument("--user_agent", default=None, help="the device's user agent")

    remove = commands.add_parser("remove", help="remove a stored device")
    remove.add_argument("--appid", required=True, help="application id")
    remove.add_argument("--deviceid", required=True, help="device id")
    return parser


def request_for(options: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """``(method, url, body)`` for the parsed options."""
    base = f"{options.url.rstrip('/')}/v2/tokens/{quote(options.account, safe='@')}"
    if options.command == "push":
        url = f"{base}/push"
        if options.deviceid:
            url += f"/{quote(options.deviceid, safe='')}"
        body: dict[str, Any] = {
            "call-id": options.callid or str(uuid.uuid4()),
            "event": options.event,
            "from": options.from_uri,
            "from-display-name": options.from_name or options.from_uri,
            "to": options.to or options.account,
            "media-type": options.mediatype,
            "reason": options.reason,
            "badge": _badge(options.badge),
            "filename": options.filename,
            "filetype": options.filetype,
        }
        return "POST", url, body
    if options.command == "add":
        body = {
            "app-id": options.appid,
            "platform": options.platform,
            "token": options.token,
            "device-id": options.deviceid,
            "silent": options.silent,
        }
        # sylk-pushclient-v2 sent the string "None" when no user agent was
        # given, which then got stored; leave the key out instead.
        if options.user_agent is not None:
            body["user-agent"] = options.user_agent
        return "POST", base, body
    return "DELETE", base, {"app-id": options.appid, "device-id": options.deviceid}


def _badge(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value  # let the server say what is wrong with it


def send(method: str, url: str, body: dict[str, Any], *, transport: httpx.BaseTransport | None = None) -> int:
    """Send one request, print the answer; returns the exit status."""
    response = request_json("pushclient-v2", method, url, body, transport=transport)
    if response is None:
        return 1
    try:
        shown = json.dumps(response.json(), indent=2, ensure_ascii=False)
    except ValueError:
        shown = response.text.strip()
    stream = sys.stdout if response.status_code == 200 else sys.stderr
    if response.status_code != 200:
        print(f"HTTP {response.status_code}", file=stream)
    print(shown, file=stream)
    return 0 if response.status_code == 200 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``pushclient-v2``; returns the exit status (0 only on HTTP 200)."""
    options = make_parser().parse_args(None if argv is None else list(argv))
    if "@" not in options.account:
        print("pushclient-v2: --account must be user@domain", file=sys.stderr)
        return 2
    method, url, body = request_for(options)
    return send(method, url, body)


if __name__ == "__main__":
    sys.exit(main())
