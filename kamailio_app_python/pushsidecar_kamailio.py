"""Kamailio app_python3 script: wake sleeping phones through the push sidecar.

Loaded by ``modparam("app_python3", "load", ".../pushsidecar_kamailio.py")``
and called from the native routing script with ``python_exec`` (see the
example ``kamailio.cfg`` next to this file):

``python_exec("register_check")``
    On REGISTER, before ``save("location")``: checks the push parameters of
    the Contact (RFC 8599 ``pn-provider``/``pn-prid``/``pn-param``, or the
    legacy ``pn-type``/``pn-tok``/``app-id``/``pn-silent``).  Malformed ones are
    logged with ``KSR.err`` and ``$var(pn_code)``/``$var(pn_reason)`` are set
    (400, or 555 for an unsupported provider as RFC 8599 asks) for the
    config to reject the REGISTER; ``$var(pn_code)`` is 0 when all is well.
``python_exec("invite_prepare", "$ulc(callee=>addr)\\x1f$ci\\x1f$fu\\x1f$tu\\x1f$fn")``
    On INVITE, after ``reg_fetch_contacts("location", "$ru", "callee")``:
    returns 1 when the callee's contact asks for pushes (the push is built
    and kept for ``invite_send``), -1 when it does not (relay as usual).
    The argument (``INVITE_PVS`` joined by ``\\x1f``) saves reading each
    value with ``KSR.pv.get``; without it the values are read that way.
``python_exec("invite_send")``
    After the INVITE is held (``t_suspend``): sends the push prepared above.
``python_exec("cancel_push", "$sht(pushcall=>$ci)")``
    On CANCEL of a held call: sends a ``cancel`` push to the contact given.

Every method returns an int and catches everything: a Python error left
pending in a worker breaks its next ``python_exec``.

Only the standard library, ``zmq`` and ``msgpack`` are imported (Kamailio
embeds Debian's Python).  The message format comes from the sidecar's own
``sidecar/wire.py``, found in this order:

1. ``$PUSHSIDECAR_WIRE`` (the file, or the folder holding it);
2. ``pushsidecar_wire.py`` next to this script (a symlink to wire.py);
3. ``../sidecar/wire.py`` relative to this script (a source checkout);
4. ``import sidecar.wire`` (the package installed for Debian's python3).

The sidecar endpoint is the config's ``PUSHSIDECAR_ENDPOINT`` define (read
through ``$def``), else ``$PUSHSIDECAR_ENDPOINT``, else
``ipc:///run/pushsidecar/push.sock``; ``PUSHSIDECAR_SNDHWM`` likewise.

``$PUSHSIDECAR_BENCH_TIMING=<path>`` (benchmarks only, see
``bench/bench_kamailio.py``) makes ``mod_init`` return a subclass that times
``invite_prepare``/``invite_send`` into ``<path>.<pid>``; unset, the handler
is the plain class and pays nothing for it.
"""

import importlib.util
import os
import re
import struct
import sys
import time
from urllib.parse import unquote

import msgpack

import KSR  # provided by app_python3


def _load_wire():
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = []
    given = os.environ.get("PUSHSIDECAR_WIRE")
    if given:
        candidates.append(given if given.endswith(".py") else os.path.join(given, "wire.py"))
    candidates.append(os.path.join(here, "pushsidecar_wire.py"))
    candidates.append(os.path.join(here, os.pardir, "sidecar", "wire.py"))
    for path in candidates:
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("pushsidecar_wire", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["pushsidecar_wire"] = module
            spec.loader.exec_module(module)
            return module
    from sidecar import wire  # installed package

    return wire


wire = _load_wire()

# Matches every SDP that media_type() can call anything but audio (and a few
# more, which then take the exact path).
_maybe_not_audio = re.compile(r"m=(?:video|message)", re.IGNORECASE).search

_LEGACY_PLATFORMS = {"apple": "apple", "ios": "apple", "apns": "apple",
                     "firebase": "firebase", "google": "firebase", "android": "firebase",
                     "fcm": "firebase"}  # fmt: skip


def uri_params(uri):
    """``{name: value}`` of the parameters of a SIP URI (``<...>`` optional).

    Names are lower-cased, values percent-decoded; a parameter without ``=``
    has the value ``""``.
    """
    start = uri.find("<")
    if start >= 0:
        end = uri.find(">", start)
        uri = uri[start + 1 : end if end > 0 else len(uri)]
    head, _, _ = uri.partition("?")  # drop URI headers
    parts = head.split(";")
    params = {}
    for part in parts[1:]:
        name, _, value = part.partition("=")
        if name:
            params[name.strip().lower()] = unquote(value.strip())
    return params


def push_target(params):
    """Push addressing from contact parameters.

    Returns:
        None when the contact does not ask for pushes, else a dict of
        ``encode_direct`` keyword arguments (pn_* or app_id/platform/token).

    Raises:
        wire.WireError: the parameters are there but malformed.
    """
    provider = params.get("pn-provider")
    if provider is not None:
        prid = params.get("pn-prid", "")
        param = params.get("pn-param")
        wire.resolve_pn(provider, prid, param, "incoming_session")  # validates
        return {"pn_provider": provider, "pn_prid": prid, "pn_param": param}
    ptype = params.get("pn-type")
    if ptype is None:
        if "pn-prid" in params or "pn-tok" in params:
            raise wire.WireError("pn-prid/pn-tok given without pn-provider/pn-type")
        return None
    platform = _LEGACY_PLATFORMS.get(ptype.lower())
    if platform is None:
        raise wire.WireError("pn-type %r is not supported" % ptype)
    token = params.get("pn-tok")
    app_id = params.get("app-id")
    if not token:
        raise wire.WireError("pn-type %s needs a pn-tok" % ptype)
    if not app_id:
        raise wire.WireError("pn-type %s needs an app-id" % ptype)
    target = {"app_id": app_id, "platform": platform, "token": token}
    silent = params.get("pn-silent")
    if silent is not None:
        target["silent"] = silent not in ("0", "false", "no")
    return target


def media_type(body):
    """The Sylk media type of an SDP offer: video, chat, file-transfer or audio."""
    if not body or not _maybe_not_audio(body):  # an audio offer needs no loop in Python
        return "audio"
    kinds = set()
    for line in body.splitlines():
        if line.startswith("m="):
            kinds.add(line[2:].split(" ", 1)[0].lower())
    if "video" in kinds:
        return "video"
    if "message" in kinds:  # MSRP
        return "file-transfer" if "a=file-selector" in body else "chat"
    return "audio"


def _display_name(value):
    if not value:
        return None
    value = value.strip().strip('"').strip()
    return value or None


_get = KSR.pv.get  # bound once: no attribute lookups per value
_now = time.time
_pack = msgpack.Packer(use_bin_type=True).pack  # as wire.py packs


def _pv(name):
    value = _get(name)
    return value if isinstance(value, str) else None


# -- The INVITE hot path ------------------------------------------------------
#
# In a Kamailio worker the interpreter starts each call with cold CPU caches
# (other processes ran since its last call), so every Python operation costs
# several times what it costs in a loop: the hot path does as few as it can.
#
# * kamailio.cfg passes the values in ONE python_exec argument, expanded by
#   Kamailio, instead of one KSR.pv.get each.
# * The push parameters of a callee's contact are the same for every call to
#   it: they are parsed, validated and turned into the constant part of the
#   frame once per contact string (per worker); a call fills in its own keys.

#: What kamailio.cfg passes to ``python_exec("invite_prepare", ...)``, in this
#: order, joined by FIELD_SEP.  The SDP body is read apart: it can outgrow the
#: buffer Kamailio expands an argument into.
INVITE_PVS = ("$ulc(callee=>addr)", "$ci", "$fu", "$tu", "$fn")
FIELD_SEP = "\x1f"  # a control character: not in a SIP URI, Call-ID or display name
_NULL = "<null>"  # how Kamailio prints a variable without a value

#: Keys of wire.py's format filled per call; the rest of an incoming_session
#: frame depends on the contact only.
_CALL_KEYS = ("ci", "f", "t", "ts", "dn", "mt")
_CACHE_MAX = 4096  # contacts remembered per worker; emptied when full


def _call_template(target):
    """The contact-dependent part of an incoming_session frame, as a dict.

    Made by ``wire.encode_direct`` itself, minus the per-call keys, so the
    format stays wire.py's.
    """
    m = msgpack.unpackb(wire.encode_direct("incoming_session", "-", "-", "-", sent_at=0.0, **target),
                        raw=False)
    for key in _CALL_KEYS:
        m.pop(key, None)
    return m


def _contact_entry(cache, contact):
    """Work out (and remember in ``cache``) what ``contact`` means for a call.

    Returns:
        A frame template (dict) when the contact asks for pushes, False when
        it does not, or the ``wire.WireError`` of its malformed parameters.
    """
    try:
        target = push_target(uri_params(contact))
        entry = False if target is None else _call_template(target)
    except wire.WireError as exc:
        entry = exc
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[contact] = entry
    return entry


def _incoming_session(template, call_id, from_uri, to_uri, display_name, body):
    """One call's frame: ``wire.encode_direct`` minus the target checks done once."""
    m = template.copy()
    m["ci"] = call_id
    m["f"] = from_uri
    m["t"] = to_uri
    m["ts"] = _now()
    if display_name:
        display_name = _display_name(display_name)
        if display_name:
            m["dn"] = display_name
    m["mt"] = media_type(body) if body else "audio"
    return _pack(m)


def _fast_encoding_agrees():
    """True when ``_incoming_session`` decodes exactly like ``encode_direct``.

    Checked once at start-up: should wire.py's format move on, the script
    falls back to ``encode_direct`` per call (slower, still right) and says so.
    """
    try:
        for target in ({"pn_provider": "apns", "pn_prid": "t1:remote&t2:voip", "pn_param": "T.b.voip"},
                       {"app_id": "a", "platform": "firebase", "token": "t", "silent": False}):
            for name, body in (('"Bob" ', "v=0\r\nm=video 1 RTP/AVP 0\r\n"), (None, None)):
                fast = _incoming_session(_call_template(target), "c", "sip:a@h", "sip:b@h", name, body)
                fields = msgpack.unpackb(fast, raw=False)
                slow = wire.encode_direct("incoming_session", "c", "sip:a@h", "sip:b@h", sent_at=fields["ts"],
                                          display_name=_display_name(name), media_type=media_type(body),
                                          **target)
                if fields != msgpack.unpackb(slow, raw=False) or wire.decode(fast) != wire.decode(slow):
                    return False
        return True
    except Exception:
        return False


#: Senders inherited through fork(): kept referenced, never used nor closed.
_inherited = []


class PushSidecar:
    """The handler object app_python3 calls; one copy per Kamailio process."""

    def __init__(self):
        self.sender = None  # made on first use, in the worker (never in mod_init)
        self.frame = None
        self.contacts = {}  # contact URI -> _contact_entry()
        self.fast = _fast_encoding_agrees()
        if not self.fast:
            KSR.err("pushsidecar: wire format self-check failed: using wire.encode_direct per call\n")

    def child_init(self, rank):
        # Runs in each new process: one made before a fork is never used (nor
        # closed) after it, every process makes its own.
        if self.sender is not None:
            _inherited.append(self.sender)
            self.sender = None
        return 0

    def _send(self, frame):
        sender = self.sender
        if sender is None:
            endpoint = _pv("$def(PUSHSIDECAR_ENDPOINT)") or None
            hwm = _pv("$def(PUSHSIDECAR_SNDHWM)")
            # Made in the process that uses it (child_init drops inherited
            # ones), so its pid is known here: no getpid() system call per send.
            # child_init drops a sender inherited through fork(), so the
            # per-send pid check (a system call) is not needed here.
            sender = self.sender = wire.Sender(
                endpoint, sndhwm=int(hwm) if hwm and hwm.isdigit() else None,
                log=lambda text: KSR.warn(text + "\n"), check_pid=False,
            )
        return sender.send(frame)

    # -- REGISTER ----------------------------------------------------------

    def register_check(self, msg, arg=None):
        try:
            KSR.pv.seti("$var(pn_code)", 0)
            contact = _pv("$hdr(Contact)")
            if not contact or contact.strip() == "*":
                return 1
            try:
                push_target(uri_params(contact))
            except wire.WireError as exc:
                code = 555 if "not supported" in str(exc) else 400
                reason = "Push Notification Service Not Supported" if code == 555 else "Bad push parameters"
                KSR.err("pushsidecar: REGISTER of %s rejected (%d): bad push parameters in Contact %s: %s\n"
                        % (_pv("$tu"), code, contact, exc))
                KSR.pv.seti("$var(pn_code)", code)
                KSR.pv.sets("$var(pn_reason)", reason)
                return -1
            return 1
        except Exception as exc:
            KSR.err("pushsidecar: register_check failed: %r\n" % (exc,))
            return 1

    # -- INVITE ------------------------------------------------------------

    def invite_prepare(self, msg, arg=None):
        self.frame = None
        try:
            fields = arg.split(FIELD_SEP) if arg else ()
            if len(fields) != 5 or _NULL in fields:
                fields = _fetch_fields(fields)
            contact, call_id, from_uri, to_uri, name = fields
            if not contact:
                return -1
            entry = self.contacts.get(contact)
            if entry is None:
                entry = _contact_entry(self.contacts, contact)
            if entry.__class__ is not dict:
                if entry:  # malformed parameters: said on every call, as without the cache
                    KSR.err("pushsidecar: no push for call %s: contact %s has bad push parameters: %s\n"
                            % (call_id, contact, entry))
                return -1
            body = _get("$rb")
            if self.fast and call_id and from_uri and to_uri:
                self.frame = _incoming_session(entry, call_id, from_uri, to_uri, name,
                                               body if body.__class__ is str else None)
            else:  # a value is missing, or the self-check failed: the general encoder
                self.frame = wire.encode_direct(
                    "incoming_session", call_id, from_uri, to_uri, display_name=_display_name(name),
                    media_type=media_type(body if body.__class__ is str else None),
                    **push_target(uri_params(contact)),
                )
            return 1
        except Exception as exc:
            KSR.err("pushsidecar: invite_prepare failed: %r\n" % (exc,))
            return -1

    def invite_send(self, msg, arg=None):
        try:
            frame = self.frame
            if frame is None:
                KSR.err("pushsidecar: invite_send without invite_prepare\n")
                return -1
            self.frame = None
            return 1 if self._send(frame) else -1
        except Exception as exc:
            KSR.err("pushsidecar: invite_send failed: %r\n" % (exc,))
            return -1

    # -- CANCEL ------------------------------------------------------------

    def cancel_push(self, msg, contact=None):
        try:
            if not contact:
                return -1
            target = push_target(uri_params(contact))
            if target is None:
                return -1
            reason = _pv("$hdr(Reason)")
            frame = wire.encode_direct(
                "cancel", _pv("$ci"), _pv("$fu"), _pv("$tu"),
                reason=reason or "cancelled", **target,
            )
            return 1 if self._send(frame) else -1
        except Exception as exc:
            KSR.err("pushsidecar: cancel_push failed: %r\n" % (exc,))
            return -1


def _fetch_fields(fields):
    """The INVITE_PVS values, read one by one where the argument has none.

    For an older config (no argument), a value holding FIELD_SEP, and values
    printed as ``<null>``: also a legal Call-ID or display name, so read again
    to tell them apart.  Missing values are None, as ``_pv`` gives them.
    """
    if len(fields) != len(INVITE_PVS):
        return [_pv(name) for name in INVITE_PVS]
    return [_pv(name) if value == _NULL else value for name, value in zip(INVITE_PVS, fields)]


class _TimedPushSidecar(PushSidecar):
    """Benchmark-only variant, used when ``$PUSHSIDECAR_BENCH_TIMING`` is set.

    For each call it appends one record of seven little-endian int64 to
    ``<PUSHSIDECAR_BENCH_TIMING>.<pid>``, in nanoseconds: wall time
    (``perf_counter_ns``) in ``invite_prepare``, in ``invite_send``, in
    ``Sender.send`` alone and in an empty timed region (the timer's own
    cost); then thread CPU time (``thread_time_ns``) in ``invite_prepare``,
    in ``invite_send`` and in an empty region.  The write happens after the
    timed regions; the normal handler carries none of this.
    """

    RECORD = struct.Struct("<7q")

    def __init__(self, path):
        super().__init__()
        self._timing_path = path
        self._timing_pid = -1
        self._timing_fd = -1
        self._prepare = (0, 0)
        self._sender_ns = 0

    def _send(self, frame):
        t0 = time.perf_counter_ns()
        result = PushSidecar._send(self, frame)
        self._sender_ns = time.perf_counter_ns() - t0
        return result

    def invite_prepare(self, msg, arg=None):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        result = PushSidecar.invite_prepare(self, msg, arg)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        self._prepare = (t1 - t0, c1 - c0)
        return result

    def invite_send(self, msg, arg=None):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        result = PushSidecar.invite_send(self, msg, arg)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        t2 = time.perf_counter_ns()
        empty = time.perf_counter_ns() - t2
        c2 = time.thread_time_ns()
        empty_cpu = time.thread_time_ns() - c2
        try:
            pid = os.getpid()
            if pid != self._timing_pid:  # per process, like the ZeroMQ socket
                self._timing_fd = os.open("%s.%d" % (self._timing_path, pid),
                                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._timing_pid = pid
            os.write(self._timing_fd, self.RECORD.pack(
                self._prepare[0], t1 - t0, self._sender_ns, empty,
                self._prepare[1], c1 - c0, empty_cpu))
        except Exception as exc:
            KSR.err("pushsidecar: bench timing failed: %r\n" % (exc,))
        return result


def mod_init():
    timing = os.environ.get("PUSHSIDECAR_BENCH_TIMING")
    if timing:
        return _TimedPushSidecar(timing)
    return PushSidecar()
