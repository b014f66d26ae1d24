"""The one HTTP exchange both clients make, with their error reporting."""

from __future__ import annotations

import sys
from typing import Any

import httpx

TIMEOUT = 60.0


def request_json(
    prog: str, method: str, url: str, body: dict[str, Any], *,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Response | None:
    """Send ``body`` as JSON; on a transport failure print one readable line
    (prefixed with ``prog``) and return None."""
    try:
        with httpx.Client(timeout=TIMEOUT, transport=transport) as client:
            return client.request(method, url, json=body)
    except httpx.ConnectError as exc:
        print(f"{prog}: cannot connect to {url}: {_reason(exc)}", file=sys.stderr)
    except httpx.TimeoutException:
        print(f"{prog}: no answer from {url} within {TIMEOUT:g} s", file=sys.stderr)
    except httpx.HTTPError as exc:
        print(f"{prog}: request to {url} failed: {_reason(exc)}", file=sys.stderr)
    return None


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host"):
        if known.lower() in text.lower():
            return known.lower()
    return text or type(exc).__name__
