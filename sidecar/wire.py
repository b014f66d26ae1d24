"""The ZeroMQ message format between the SIP proxies and the sidecar.

One ZeroMQ frame carries one msgpack map.  Keys are short because every byte
is paid for inside a SIP worker; values are plain msgpack types.  This module
is shared by both ends: the sidecar imports it as ``sidecar.wire``, and the
proxy scripts (Kamailio app_python3, OpenSIPS python) load the very same file
in the proxy's embedded Debian Python.  That is why it imports only the
standard library and ``msgpack``; ``zmq`` is imported lazily, and only by the
:class:`Sender` that runs in the proxy.

Format, version ``v`` = 1 (R = required, O = optional; nil counts as absent
for optional keys):

======  ===============================  =======  ==============================
key     meaning                          type     notes
======  ===============================  =======  ==============================
``v``   format version                   int      R, must be 1
``e``   event                            str      R, incoming_session,
                                                  incoming_conference_request,
                                                  cancel, message, transfer
``ci``  SIP Call-ID                      str      R
``f``   caller (From URI)                str      R
``t``   callee (To URI)                  str      R
``ts``  sent at, UNIX seconds            number   R, the proxy's wall clock
``ttl`` useful life after ``ts``, s      number   O, default per event (45 s
                                                  for calls and cancel); the
                                                  proxies send how long they
                                                  hold the call
``dn``  caller display name              str      O
``mt``  media type                       str      O, audio, video, image,
                                                  chat, sms, file-transfer
``r``   reason (cancel)                  str      O
``sl``  silent                           bool     O, default true
``di``  device id (logging)              str      O
``c``   content (message text)           str      O, for message
``ct``  content type of ``c``            str      O, e.g. text/plain
------  -------------------------------  -------  ------------------------------
**direct push, Sylk style** (to one device)
``ai``  app-id                           str      R
``pl``  platform                         str      R, apple/firebase (aliases ok)
``tk``  device token                     str      R
------  -------------------------------  -------  ------------------------------
**direct push, RFC 8599 style** (contact parameters copied verbatim)
``pp``  pn-provider                      str      R, apns, apns.dev or fcm
``pr``  pn-prid                          str      R, token, or multi-token
                                                  ``tokA:remote&tokB:voip``
``pa``  pn-param                         str      R, apns:
                                                  ``<TeamID>.<BundleID>[.voip]``;
                                                  fcm: the project/sender id
------  -------------------------------  -------  ------------------------------
**account push** (every device stored for the account)
``a``   account ``user@domain``          str      R
======  ===============================  =======  ==============================

A message holds exactly one of the three addressing groups; any other key is
an error (a typo on the proxy side must be loud, not silently ignored).

RFC 8599 mapping (done by :func:`resolve_pn`, at decode time):

* ``pn-provider`` ``apns`` and ``apns.dev`` give platform ``apple``;
  ``apns.dev`` (development builds) marks the message :attr:`WireMessage.sandbox`,
  sent to the application's ``apple_sandbox_push_url``; ``fcm`` gives
  ``firebase``; anything else (``webpush``) is refused.
* apns ``pn-param`` ``<TeamID>.<BundleID>[.<services>]`` gives app-id
  ``<BundleID>``: the team id is cut off, and so is a trailing service label
  (``voip``, ``remote``, or the multi form ``remote&voip``).
* fcm ``pn-param`` is used as the app-id unchanged.
* A multi-token ``pn-prid`` (``tokA:remote&tokB:voip``, Linphone/Flexisip)
  gives the ``voip`` token for call events (incoming_session,
  incoming_conference_request) and the ``remote`` token for the others
  (cancel, message, transfer); when the preferred kind is missing the other
  one is used.  A part whose text after the last ``:`` is not a known service
  is a plain token (FCM tokens contain ``:``).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, NamedTuple
from collections.abc import Callable

import msgpack  # type: ignore[import-untyped]  # no type information shipped

VERSION = 1

#: Largest frame accepted by :func:`decode` (a push is a few hundred bytes).
MAX_FRAME = 64 * 1024

# The event and media-type names are repeated here (not imported from
# sidecar.model) because the proxies load this file on its own; a unit test
# checks that both lists agree.
EVENTS = frozenset(
    {"incoming_session", "incoming_conference_request", "cancel", "message", "transfer"}
)
CALL_EVENTS = frozenset({"incoming_session", "incoming_conference_request"})
MEDIA_TYPES = frozenset({"audio", "video", "image", "chat", "sms", "file-transfer"})

#: pn-provider -> platform.
PN_PROVIDERS = {"apns": "apple", "apns.dev": "apple", "fcm": "firebase"}
_PN_SERVICES = frozenset({"voip", "remote"})

_COMMON_REQUIRED = ("e", "ci", "f", "t", "ts")
_OPTIONAL_STR = ("dn", "mt", "r", "di", "c", "ct")
_SYLK_KEYS = ("ai", "pl", "tk")
_PN_KEYS = ("pp", "pr", "pa")
_ACCOUNT_KEYS = ("a",)
_KNOWN_KEYS = frozenset(
    ("v", "ttl", "sl") + _COMMON_REQUIRED + _OPTIONAL_STR + _SYLK_KEYS + _PN_KEYS + _ACCOUNT_KEYS
)
_KEY_NAMES = {
    "v": "version", "e": "event", "ci": "call-id", "f": "from", "t": "to",
    "ts": "sent-at", "ttl": "ttl", "dn": "display name", "mt": "media type",
    "r": "reason", "sl": "silent", "di": "device id", "ai": "app-id",
    "pl": "platform", "tk": "token", "pp": "pn-provider", "pr": "pn-prid",
    "pa": "pn-param", "a": "account", "c": "content", "ct": "content type",
}  # fmt: skip
_MAX_TTL = 30 * 24 * 3600


class WireError(ValueError):
    """A frame that is not a valid message; the text says what is wrong."""


class WireMessage(NamedTuple):
    """One decoded message (immutable).

    For a direct push, ``app_id``, ``platform`` and ``token`` are always set
    (resolved from the RFC 8599 parameters when the proxy sent those, which
    are kept in ``pn_*`` for logging).  For an account push ``account`` is
    set and those three are None.
    """

    event: str
    call_id: str
    from_uri: str
    to_uri: str
    sent_at: float
    ttl: float | None = None
    display_name: str | None = None
    media_type: str | None = None
    reason: str | None = None
    silent: bool | None = None
    device_id: str | None = None
    app_id: str | None = None
    platform: str | None = None
    token: str | None = None
    pn_provider: str | None = None
    pn_prid: str | None = None
    pn_param: str | None = None
    account: str | None = None
    content: str | None = None
    content_type: str | None = None

    def __repr__(self) -> str:
        # Tokens are not secrets, but they are long: keep log lines readable.
        shown = {k: v for k, v in self._asdict().items() if v is not None}
        for name in ("token", "pn_prid"):
            if name in shown:
                shown[name] = _short(shown[name])
        return "WireMessage(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def sandbox(self) -> bool:
        """For APNs: a development build's token (``pn-provider=apns.dev``)."""
        return self.pn_provider is not None and self.pn_provider.lower() == "apns.dev"

    @property
    def is_account(self) -> bool:
        return self.account is not None

    @property
    def target(self) -> str:
        """Who receives it: the device token, or the account."""
        return self.account if self.account is not None else self.token  # type: ignore[return-value]


def _short(token: str) -> str:
    return token if len(token) <= 16 else f"{token[:8]}...{token[-4:]}"


# --------------------------------------------------------------------------
# RFC 8599 parameters


def split_prid(prid: str) -> dict[str, str]:
    """Split a ``pn-prid`` into ``{service: token}``; a plain token is under ``""``.

    Raises:
        WireError: empty token or the same service twice.
    """
    tokens: dict[str, str] = {}
    for part in prid.split("&"):
        token, sep, service = part.rpartition(":")
        if not sep or service not in _PN_SERVICES:
            token, service = part, ""
        if not token:
            raise WireError(f"pn-prid {prid!r}: empty token")
        if service in tokens:
            raise WireError(f"pn-prid {prid!r}: more than one {service or 'plain'} token")
        tokens[service] = token
    return tokens


def choose_token(prid: str, event: str) -> str:
    """The token of a (possibly multi-token) ``pn-prid`` to use for ``event``."""
    tokens = split_prid(prid)
    if len(tokens) == 1:
        return next(iter(tokens.values()))
    order = ("voip", "remote", "") if event in CALL_EVENTS else ("remote", "", "voip")
    for service in order:
        if service in tokens:
            return tokens[service]
    raise WireError(f"pn-prid {prid!r}: no usable token")  # pragma: no cover


def apns_app_id(param: str) -> str:
    """The bundle id inside an APNs ``pn-param`` ``<TeamID>.<BundleID>[.voip]``."""
    team, dot, bundle = param.partition(".")
    if not team or not dot or not bundle:
        raise WireError(f"pn-param {param!r}: expected <TeamID>.<BundleID> for apns")
    head, dot, last = bundle.rpartition(".")
    if all(s in _PN_SERVICES for s in last.split("&")):
        bundle = head  # a trailing service label, or nothing but one
    if not bundle or bundle.startswith(".") or bundle.endswith("."):
        raise WireError(f"pn-param {param!r}: empty bundle id")
    return bundle


def resolve_pn(provider: str, prid: str, param: str | None, event: str) -> tuple[str, str, str]:
    """Map RFC 8599 contact parameters to ``(platform, app_id, token)``.

    Also used by the proxy scripts at REGISTER time to report malformed
    parameters (pass ``event="incoming_session"``).

    Raises:
        WireError: unsupported provider, missing or malformed parameter.
    """
    platform = PN_PROVIDERS.get(provider.lower())
    if platform is None:
        raise WireError(
            f"pn-provider {provider!r} is not supported (use one of {', '.join(PN_PROVIDERS)})"
        )
    if not prid:
        raise WireError("pn-prid is empty")
    if not param:
        raise WireError(f"pn-param is required with pn-provider {provider}")
    token = choose_token(prid, event)
    app_id = apns_app_id(param) if platform == "apple" else param
    return platform, app_id, token


# --------------------------------------------------------------------------
# Contacts (proxy side): the push addressing a REGISTER's Contact carries

#: Sylk/Linphone legacy ``pn-type`` values -> platform.
LEGACY_PN_TYPES = {
    "apple": "apple", "ios": "apple", "apns": "apple",
    "firebase": "firebase", "google": "firebase", "android": "firebase", "fcm": "firebase",
}  # fmt: skip


def contact_uri(contact: str) -> str:
    """The URI of a Contact header value (``<...>`` and header parameters dropped)."""
    start = contact.find("<")
    if start >= 0:
        end = contact.find(">", start)
        return contact[start + 1 : end if end > 0 else len(contact)]
    return contact.partition(";expires=")[0].strip()


def uri_params(uri: str) -> dict[str, str]:
    """``{name: value}`` of the parameters of a SIP URI (``<...>`` optional).

    Names are lower-cased, values percent-decoded; a parameter without ``=``
    has the value ``""``; URI headers (after ``?``) are ignored.
    """
    from urllib.parse import unquote  # here: the sidecar never needs it

    head = contact_uri(uri).partition("?")[0]
    params = {}
    for part in head.split(";")[1:]:
        name, _, value = part.partition("=")
        if name:
            params[name.strip().lower()] = unquote(value.strip())
    return params


def strip_pn_params(uri: str) -> str:
    """A contact URI without its ``pn-*`` parameters (as a proxy relays to it):
    compares a pushed contact with the branch that answered."""
    head, sep, tail = contact_uri(uri).partition("?")
    kept = [part for part in head.split(";") if not part.strip().lower().startswith("pn-")]
    return ";".join(kept) + sep + tail


def push_target(params: dict[str, str]) -> dict[str, Any] | None:
    """The push addressing in a contact's URI parameters.

    Returns:
        None when the contact does not ask for pushes, else the
        :func:`encode_direct` keyword arguments: ``pn_provider``/``pn_prid``/
        ``pn_param`` (RFC 8599) or ``app_id``/``platform``/``token``
        [/``silent``] (the legacy ``pn-type``/``pn-tok``/``app-id``).

    Raises:
        WireError: the parameters are there but malformed (its text says
            which; "not supported" for an unknown provider, RFC 8599's 555).
    """
    provider = params.get("pn-provider")
    if provider is not None:
        prid = params.get("pn-prid", "")
        param = params.get("pn-param")
        resolve_pn(provider, prid, param, "incoming_session")  # validates
        return {"pn_provider": provider, "pn_prid": prid, "pn_param": param}
    ptype = params.get("pn-type")
    if ptype is None:
        if "pn-prid" in params or "pn-tok" in params:
            raise WireError("pn-prid/pn-tok given without pn-provider/pn-type")
        return None
    platform = LEGACY_PN_TYPES.get(ptype.lower())
    if platform is None:
        raise WireError(f"pn-type {ptype!r} is not supported")
    token = params.get("pn-tok")
    app_id = params.get("app-id")
    if not token:
        raise WireError(f"pn-type {ptype} needs a pn-tok")
    if not app_id:
        raise WireError(f"pn-type {ptype} needs an app-id")
    target: dict[str, Any] = {"app_id": app_id, "platform": platform, "token": token}
    silent = params.get("pn-silent")
    if silent is not None:
        target["silent"] = silent not in ("0", "false", "no")
    return target


# --------------------------------------------------------------------------
# Encoding (proxy side: keep it cheap)

_pack: Callable[[dict[str, Any]], bytes] = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb


def _common(
    event: str, call_id: str, from_uri: str, to_uri: str, sent_at: float | None,
    ttl: float | None, display_name: str | None, media_type: str | None,
    reason: str | None, silent: bool | None, device_id: str | None,
    content: str | None = None, content_type: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    m: dict[str, Any] = {
        "v": VERSION, "e": event, "ci": call_id, "f": from_uri, "t": to_uri,
        "ts": time.time() if sent_at is None else sent_at,
    }  # fmt: skip
    if ttl is not None:
        m["ttl"] = ttl
    if display_name:
        m["dn"] = display_name
    if media_type:
        m["mt"] = media_type
    if reason:
        m["r"] = reason
    if silent is not None:
        m["sl"] = silent
    if device_id:
        m["di"] = device_id
    if content:
        m["c"] = content
    if content_type:
        m["ct"] = content_type
    return m


def encode_direct(
    event: str,
    call_id: str,
    from_uri: str,
    to_uri: str,
    *,
    app_id: str | None = None,
    platform: str | None = None,
    token: str | None = None,
    pn_provider: str | None = None,
    pn_prid: str | None = None,
    pn_param: str | None = None,
    display_name: str | None = None,
    media_type: str | None = None,
    reason: str | None = None,
    silent: bool | None = None,
    device_id: str | None = None,
    content: str | None = None,
    content_type: str | None = None,
    sent_at: float | None = None,
    ttl: float | None = None,
) -> bytes:
    """Encode a push to one device, Sylk style (app-id, platform, token) or
    RFC 8599 style (pn-provider, pn-prid, pn-param).

    Raises:
        WireError: neither (or both) addressing styles given.
    """
    m = _common(event, call_id, from_uri, to_uri, sent_at, ttl, display_name,
                media_type, reason, silent, device_id, content, content_type)  # fmt: skip
    if pn_provider is not None:
        if app_id is not None or platform is not None or token is not None:
            raise WireError("give either pn-provider/pn-prid/pn-param or app-id/platform/token")
        m["pp"] = pn_provider
        m["pr"] = pn_prid
        m["pa"] = pn_param
    else:
        if app_id is None or platform is None or token is None:
            raise WireError("a direct push needs app-id, platform and token (or pn-* params)")
        m["ai"] = app_id
        m["pl"] = platform
        m["tk"] = token
    return _pack(m)


def encode_account(
    event: str,
    call_id: str,
    from_uri: str,
    to_uri: str,
    *,
    account: str,
    display_name: str | None = None,
    media_type: str | None = None,
    reason: str | None = None,
    silent: bool | None = None,
    content: str | None = None,
    content_type: str | None = None,
    sent_at: float | None = None,
    ttl: float | None = None,
) -> bytes:
    """Encode a push to every device stored for ``account`` (``user@domain``)."""
    m = _common(event, call_id, from_uri, to_uri, sent_at, ttl, display_name,
                media_type, reason, silent, None, content, content_type)  # fmt: skip
    m["a"] = account
    return _pack(m)


# --------------------------------------------------------------------------
# Decoding (sidecar side: strict)


def _require_str(m: dict[str, Any], key: str) -> str:
    value = m.get(key)
    if value is None:
        raise WireError(f"missing key {key!r} ({_KEY_NAMES[key]})")
    if type(value) is not str:
        raise WireError(f"key {key!r} ({_KEY_NAMES[key]}) must be a string, not {type(value).__name__}")
    if not value:
        raise WireError(f"key {key!r} ({_KEY_NAMES[key]}) is empty")
    return value


def _optional_str(m: dict[str, Any], key: str) -> str | None:
    value = m.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise WireError(f"key {key!r} ({_KEY_NAMES[key]}) must be a string, not {type(value).__name__}")
    return value or None


def decode(frame: bytes) -> WireMessage:
    """Decode and check one frame.

    Raises:
        WireError: the frame is not msgpack, not a map, of an unknown version,
            or has a missing, unknown, mistyped or malformed key.
    """
    if len(frame) > MAX_FRAME:
        raise WireError(f"frame of {len(frame)} bytes is larger than {MAX_FRAME}")
    try:
        m = _unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not a msgpack frame: {exc.__class__.__name__}: {exc}") from None
    if type(m) is not dict:
        raise WireError(f"frame is a msgpack {type(m).__name__}, not a map")
    get = m.get
    version = get("v")
    if version != VERSION or type(version) is not int:
        raise WireError(f"unknown version {version!r} (this sidecar speaks v={VERSION})")
    if not _KNOWN_KEYS.issuperset(m):
        unknown = sorted(map(str, m.keys() - _KNOWN_KEYS))
        raise WireError(f"unknown keys: {', '.join(unknown)}")

    event = get("e")
    if type(event) is not str or event not in EVENTS:
        _require_str(m, "e")
        raise WireError(f"unknown event {event!r}")
    call_id = get("ci")
    from_uri = get("f")
    to_uri = get("t")
    # Fast path: check the common case with one test, explain failures slowly.
    if not (type(call_id) is str and call_id and type(from_uri) is str and from_uri
            and type(to_uri) is str and to_uri):  # fmt: skip
        for key in ("ci", "f", "t"):
            _require_str(m, key)
    ts = get("ts")
    if type(ts) is not float:
        if ts is None:
            raise WireError("missing key 'ts' (sent-at)")
        if type(ts) is not int:
            raise WireError(f"key 'ts' (sent-at) must be a number, not {type(ts).__name__}")
        ts = float(ts)
    ttl = get("ttl")
    if ttl is not None and (type(ttl) not in (int, float) or not 0 < ttl <= _MAX_TTL):
        raise WireError(f"key 'ttl' must be a number of seconds above 0 and up to {_MAX_TTL}, not {ttl!r}")
    silent = get("sl")
    if silent is not None and type(silent) is not bool:
        raise WireError(f"key 'sl' (silent) must be a boolean, not {type(silent).__name__}")
    media_type = get("mt")
    if media_type is not None and (type(media_type) is not str or media_type not in MEDIA_TYPES):
        _optional_str(m, "mt")
        raise WireError(f"unknown media type {media_type!r}")
    display_name = get("dn")
    reason = get("r")
    device_id = get("di")
    if display_name is not None or reason is not None or device_id is not None:
        display_name = _optional_str(m, "dn")
        reason = _optional_str(m, "r")
        device_id = _optional_str(m, "di")
    content = content_type = None
    if "c" in m or "ct" in m:
        content = _optional_str(m, "c")
        content_type = _optional_str(m, "ct")

    has_sylk = "ai" in m or "pl" in m or "tk" in m
    has_pn = "pp" in m or "pr" in m or "pa" in m
    has_account = "a" in m
    if has_sylk + has_pn + has_account != 1:
        raise WireError(
            "a message needs exactly one of: ai/pl/tk (app-id, platform, token), "
            "pp/pr/pa (pn-provider, pn-prid, pn-param), a (account)"
            + ("; found keys of several" if has_sylk or has_pn or has_account else "; found none")
        )
    app_id = platform = token = provider = prid = param = account = None
    if has_sylk:
        app_id = _require_str(m, "ai")
        platform = _require_str(m, "pl")
        token = _require_str(m, "tk")
    elif has_pn:
        provider = _require_str(m, "pp")
        prid = _require_str(m, "pr")
        param = _optional_str(m, "pa")
        platform, app_id, token = resolve_pn(provider, prid, param, event)
    else:
        account = _require_str(m, "a")
        user, at, domain = account.partition("@")
        if not user or not at or not domain:
            raise WireError(f"account {account!r} must be user@domain")
    # call_id, from_uri and to_uri are non-empty str: checked by the fast path above.
    return WireMessage(
        event, call_id, from_uri, to_uri,  # type: ignore[arg-type]
        ts, ttl, display_name, media_type, reason,
        silent, device_id, app_id, platform, token, provider, prid, param, account,
        content, content_type,
    )  # fmt: skip


# --------------------------------------------------------------------------
# Sender (runs inside the proxy workers)

DEFAULT_ENDPOINT = "ipc:///run/pushsidecar/push.sock"


class RateLimitedLog:
    """Call ``log(text)`` at most once per ``interval`` seconds; count the rest."""

    def __init__(self, log: Callable[[str], Any] | None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._log = log
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self.suppressed = 0

    def __call__(self, text: str) -> bool:
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        if self.suppressed:
            text = f"{text} ({self.suppressed} similar messages suppressed)"
            self.suppressed = 0
        if self._log is not None:
            try:
                self._log(text)
            except Exception:  # a logging failure must not reach the proxy
                pass
        return True


class Sender:
    """A non-blocking ZeroMQ PUSH sender for one proxy process.

    The socket is created on first use in each process (keyed by the pid):
    the proxies load the script in the main process and then fork the
    workers, and a ZeroMQ socket made before the fork silently delivers
    nothing.  :meth:`send` never blocks and never raises: when the queue is
    full (sidecar down or slow) the message is dropped and counted, with a
    log line at most every ``log_interval`` seconds.

    Args:
        endpoint: where the sidecar's PULL socket is bound; default
            ``$PUSHSIDECAR_ENDPOINT`` or ``ipc:///run/pushsidecar/push.sock``.
        sndhwm: messages queued per process before dropping; default
            ``$PUSHSIDECAR_SNDHWM`` or 10000.
        log: a callable taking one line of text (KSR.warn, LM_ERR...).
        getpid: injectable for tests.
        check_pid: compare the pid on every send (a system call); a caller
            that drops its sender after each fork itself (a proxy's
            ``child_init``) may turn it off for a cheaper send.
        curve_server_key: the sidecar's public key file (``sidecar.key``
            from ``pushsidecar keys``) for CURVE over TCP; default
            ``$PUSHSIDECAR_CURVE_SERVER_KEY``.  Needs ``curve_client_key``.
        curve_client_key: this proxy's ``NAME.key_secret`` (its public key
            must be in the sidecar's ``curve_clients`` folder); default
            ``$PUSHSIDECAR_CURVE_CLIENT_KEY``.  The keys are read when the
            socket is made; a missing or unreadable file is logged and the
            pushes are counted as errors (the proxy keeps running).
        immediate: queue only while the sidecar is connected (ZMQ_IMMEDIATE):
            with nothing listening a send fails at once instead of queueing
            a push that would arrive after the call is over, and
            :meth:`ready` says so before the proxy holds a call.  The
            proxies' scripts use it; reconnection is then retried every
            ``reconnect_ms`` (backing off to ``reconnect_max_ms``), so call
            :meth:`connect` early (in ``child_init``): a socket needs a moment
            to connect before its first send.
        connect_wait_ms: how long the first :meth:`ready` or :meth:`send` of a
            new socket may wait for its connection (once per process; for a
            script that cannot connect before its first call).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        sndhwm: int | None = None,
        log: Callable[[str], Any] | None = None,
        log_interval: float = 10.0,
        getpid: Callable[[], int] = os.getpid,
        check_pid: bool = True,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
        immediate: bool = False,
        reconnect_ms: int = 20,
        reconnect_max_ms: int = 100,
        connect_wait_ms: int = 0,
    ) -> None:
        self.endpoint = endpoint or os.environ.get("PUSHSIDECAR_ENDPOINT") or DEFAULT_ENDPOINT
        self.curve_server_key = curve_server_key or os.environ.get("PUSHSIDECAR_CURVE_SERVER_KEY") or None
        self.curve_client_key = curve_client_key or os.environ.get("PUSHSIDECAR_CURVE_CLIENT_KEY") or None
        if sndhwm is None:
            try:
                sndhwm = int(os.environ.get("PUSHSIDECAR_SNDHWM", "10000"))
            except ValueError:
                sndhwm = 10000
        self.sndhwm = sndhwm
        self._getpid = getpid
        self._check_pid = check_pid
        self._immediate = immediate
        self._reconnect = (reconnect_ms, reconnect_max_ms)
        self._pollout = 0
        self._connect_wait_ms = connect_wait_ms
        self._fresh = False  # a new socket that may still be connecting
        self._pid = -1
        self._socket: Any = None
        self._send_frame: Callable[[bytes, int], Any] | None = None
        self._get_option: Callable[[int], Any] = lambda option: 0
        self._context: Any = None
        self._again: type[BaseException] = _NeverRaised
        self._noblock = 0
        # Objects inherited from the parent process: kept, never closed (closing
        # a forked copy of a ZeroMQ context can hang or abort).
        self._inherited: list[Any] = []
        self._log = log
        self._warn = RateLimitedLog(log, log_interval)
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.sockets_created = 0

    def _open(self, pid: int) -> Any:
        import zmq  # lazily: the sidecar imports this module without needing zmq here

        if self._socket is not None:
            self._inherited.append((self._context, self._socket))
            self._socket = self._context = None
        # Read first: a bad key file must not leave a context behind at each try.
        curve = self._curve_options() if self.curve_server_key or self.curve_client_key else []
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in curve:
            sock.setsockopt(option, value)
        if self._immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, self._reconnect[0])
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect[1])
        sock.connect(self.endpoint)
        self._pollout = int(zmq.POLLOUT)
        self._again = zmq.Again
        self._noblock = zmq.NOBLOCK
        self._context = ctx
        self._socket = sock
        # pyzmq's compiled send, not its Python wrapper: a few µs less per call
        # in a SIP worker whose caches are cold between calls.
        try:
            from zmq.backend import Socket as CompiledSocket

            self._send_frame = CompiledSocket.send.__get__(sock)
            self._get_option = CompiledSocket.get.__get__(sock)
        except (ImportError, AttributeError):
            self._send_frame = sock.send
            self._get_option = sock.getsockopt
        self._pid = pid
        self._fresh = self._immediate and self._connect_wait_ms > 0
        self.sockets_created += 1
        return sock

    def _curve_options(self) -> list[tuple[int, bytes]]:
        """Socket options of a CURVE client (raises on a missing or bad key file)."""
        import zmq
        import zmq.auth

        if not (self.curve_server_key and self.curve_client_key):
            raise ValueError("CURVE needs both the sidecar's public key and this proxy's key_secret file")
        server_public, _ = zmq.auth.load_certificate(self.curve_server_key)
        public, secret = zmq.auth.load_certificate(self.curve_client_key)
        if server_public is None or secret is None:
            raise ValueError(f"{self.curve_client_key}: no secret key in it (use the .key_secret file)")
        return [(zmq.CURVE_SERVERKEY, server_public), (zmq.CURVE_PUBLICKEY, public),
                (zmq.CURVE_SECRETKEY, secret)]
    def _await_connection(self) -> None:
        """Once per new socket: give it up to ``connect_wait_ms`` to connect."""
        self._fresh = False
        self._socket.poll(self._connect_wait_ms, self._pollout)

    def connect(self) -> bool:
        """Open this process's socket now (it connects in the background); never raises."""
        try:
            pid = self._getpid()
            if self._socket is None or pid != self._pid:
                self._open(pid)
            return True
        except Exception as exc:
            self.errors += 1
            self._warn(f"pushsidecar: cannot open a socket to {self.endpoint}: {exc.__class__.__name__}: {exc}")
            return False

    def ready(self) -> bool:
        """Could a push be queued right now?  With ``immediate``: the sidecar is
        connected and the queue is not full.  Never blocks, never raises."""
        try:
            if self._socket is None or (self._check_pid and self._getpid() != self._pid):
                if not self.connect():
                    return False
            if self._fresh:
                self._await_connection()
            return bool(self._get_option(_ZMQ_EVENTS) & self._pollout)
        except Exception as exc:
            self.errors += 1
            self._warn(f"pushsidecar: cannot poll {self.endpoint}: {exc.__class__.__name__}: {exc}")
            return False

    def send(self, frame: bytes) -> bool:
        """Queue one frame without blocking; False if it was dropped."""
        try:
            if self._check_pid:
                pid = self._getpid()
                if pid != self._pid:
                    self._open(pid)
            elif self._socket is None:
                self._open(self._getpid())
            if self._fresh:
                self._await_connection()
            self._send_frame(frame, self._noblock)  # type: ignore[misc]
        except self._again:
            self.dropped += 1
            why = "no sidecar connected there, or its queue is full" if self._immediate else "its queue is full"
            self._warn(
                f"pushsidecar: push to {self.endpoint} dropped: {why} "
                f"({self.dropped} dropped so far); is the sidecar running?"
            )
            return False
        except Exception as exc:
            self.errors += 1
            self._warn(f"pushsidecar: cannot send to {self.endpoint}: {exc.__class__.__name__}: {exc}")
            return False
        self.sent += 1
        return True

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors}

    def close(self) -> None:
        """Close this process's socket (tests, proxy shutdown); never raises."""
        if self._socket is None or (self._check_pid and self._pid != self._getpid()):
            return
        try:
            self._socket.close(linger=0)
            self._context.term()
        except Exception:
            pass
        self._socket = self._context = self._send_frame = None
        self._pid = -1


_ZMQ_EVENTS = 15  # zmq.EVENTS (a libzmq constant), without importing zmq here


# --------------------------------------------------------------------------
# Benchmark support for the proxy scripts ($PUSHSIDECAR_BENCH_TIMING)


class CallTimer:
    """Times the two methods a proxy runs per call, for ``bench/bench_proxies.py``.

    :meth:`wrap` replaces ``handler.<first>`` and ``handler.<second>`` (the
    Kamailio script's ``invite_prepare``/``send_prepared``, the OpenSIPS
    script's ``sidecar_ready``/``push``) and :class:`Sender`'s ``send``.  After
    each ``second`` it appends one :attr:`RECORD` to ``<path>.<pid>``, in
    nanoseconds: wall time (``perf_counter_ns``) in ``first``, in ``second``,
    in ``Sender.send`` alone and in an empty timed region (the timer's own
    cost); then thread CPU time in ``first``, in ``second`` and in an empty
    region.  Without ``$PUSHSIDECAR_BENCH_TIMING`` the scripts never make one.
    """

    RECORD = struct.Struct("<7q")

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = -1
        self._fd = -1
        self._first = (0, 0)
        self._sender_ns = 0

    def wrap(self, handler: Any, first: str, second: str) -> Any:
        plain_first, plain_second = getattr(handler, first), getattr(handler, second)
        plain_send = Sender.send
        timer = self

        def timed_send(sender: Sender, frame: bytes) -> bool:
            t0 = time.perf_counter_ns()
            result = plain_send(sender, frame)
            timer._sender_ns = time.perf_counter_ns() - t0
            return result

        def timed_first(*args: Any) -> Any:
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            result = plain_first(*args)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            timer._first = (t1 - t0, c1 - c0)
            return result

        def timed_second(*args: Any) -> Any:
            timer._sender_ns = 0
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            result = plain_second(*args)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            t2 = time.perf_counter_ns()
            empty = time.perf_counter_ns() - t2
            c2 = time.thread_time_ns()
            empty_cpu = time.thread_time_ns() - c2
            timer._write(timer._first[0], t1 - t0, timer._sender_ns, empty,
                         timer._first[1], c1 - c0, empty_cpu)
            return result

        Sender.send = timed_send  # type: ignore[method-assign, assignment]
        setattr(handler, first, timed_first)
        setattr(handler, second, timed_second)
        return handler

    def _write(self, *values: int) -> None:
        try:
            pid = os.getpid()
            if pid != self._pid:  # per process, like the ZeroMQ socket
                self._fd = os.open(f"{self.path}.{pid}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._pid = pid
            os.write(self._fd, self.RECORD.pack(*values))
        except OSError:
            pass


class _NeverRaised(Exception):
    """Stands for zmq.Again until zmq is imported."""
