"""Kamailio app_python3 script: wake sleeping phones through the push sidecar.

Loaded by ``modparam("app_python3", "load", ".../pushsidecar_kamailio.py")``
and called from the native routing script with ``python_exec`` (see the
example ``kamailio.cfg`` next to this file, which says when each runs):

``register_check``
    REGISTER, before ``save()``: checks the Contact's push parameters
    (RFC 8599 ``pn-provider``/``pn-prid``/``pn-param``, or the legacy
    ``pn-type``/``pn-tok``/``app-id``/``pn-silent``) and its length.  Sets
    ``$var(pn_code)`` (0, or 400/555 to refuse it, with ``$var(pn_reason)``),
    ``$var(ps_wakes)`` (1: a contact that needs pushes registers, so calls
    waiting for it may go on) and ``$var(ps_contact)`` (its URI).
``invite_prepare`` / ``message_prepare`` (argument: ``PREPARE_PVS``)
    INVITE / MESSAGE, after ``reg_fetch_contacts(..., "callee")``: sorts the
    callee's contacts into those that ring directly and those that need a
    push, and builds one push per push contact.  Returns -1 when there is
    none, ``PUSH_ONLY`` (1) when nobody else rings, ``PUSH_AND_RING`` (2)
    when some contacts ring directly (the config reads ``$rc``); sets
    ``$var(ps_pushed)`` (the pushed contacts, kept for the cancel pushes).
``send_prepared``
    Sends the pushes prepared above, LAST: after the call is held or
    relayed, so a phone that wakes at once finds it.  -1 when none could be
    handed to the sidecar (down, queue full, nothing bound: ZMQ_IMMEDIATE
    queues nothing then): the config answers the held call 480 at once
    (fail fast).  No check before holding: it would cost every call a
    system call for the rare call that finds the sidecar away.
``cancel_pushed`` (argument: ``reason<US>answering contact<US>pushed contacts``)
    The call ended (CANCEL, answered, or failed): a ``cancel`` push to each
    pushed contact except the one that answered.

A call push lives as long as the config holds the call (``PS_WAIT_MS``,
sent as the push's ``ttl``): a push that cannot reach the phone in time is
not delivered later.  Every method returns an int and catches everything: a
Python error left pending in a worker breaks its next ``python_exec``.

Only the standard library, ``zmq`` and ``msgpack`` are imported (Kamailio
embeds Debian's Python).  What this script shares with the OpenSIPS one
(finding the sidecar's ``sidecar/wire.py``, which defines the message format
and the contact parsing; the sender; the cancel pushes) is
``pushsidecar_proxy.py``, next to this file: app_python3 puts this file's
folder first on ``sys.path``.

The endpoint, queue size, wait and CURVE key files are the config's
``PUSHSIDECAR_ENDPOINT``, ``PUSHSIDECAR_SNDHWM``, ``PS_WAIT_MS``,
``PUSHSIDECAR_CURVE_SERVER_KEY`` and ``PUSHSIDECAR_CURVE_CLIENT_KEY`` (read
through ``$def``).

``$PUSHSIDECAR_BENCH_TIMING=<path>`` (benchmarks only, see
``bench/bench_proxies.py``) makes ``mod_init`` time ``invite_prepare`` and
``send_prepared`` into ``<path>.<pid>`` (``wire.CallTimer``); unset, the
handler pays nothing for it.
"""

import os
import re
import time

import msgpack
import pushsidecar_proxy as proxy  # next to this file (see above)

import KSR  # provided by app_python3

wire = proxy.wire
uri_params = wire.uri_params
push_target = wire.push_target

# Matches every SDP that media_type() can call anything but audio (and a few
# more, which then take the exact path).
_maybe_not_audio = re.compile(r"m=(?:video|message)", re.IGNORECASE).search


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


_display_name = proxy.display_name
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
#   Kamailio, instead of one KSR.pv.get each; only a second and further
#   contact is read apart.
# * The push parameters of a callee's contact are the same for every call to
#   it: they are parsed, validated and turned into the constant part of the
#   frame once per contact string (per worker); a call fills in its own keys.

#: What kamailio.cfg passes to ``invite_prepare``/``message_prepare``, in
#: this order, joined by FIELD_SEP.  The body is read apart: it can outgrow
#: the buffer Kamailio expands an argument into.
PREPARE_PVS = ("$ulc(callee=>count)", "$ulc(callee=>addr)", "$ci", "$fu", "$tu", "$fn")
FIELD_SEP = "\x1f"  # a control character: not in a SIP URI, Call-ID or display name
CONTACT_SEP = "\x1e"  # between the pushed contacts kept in $var(ps_pushed)
_NULL = proxy.NULL  # how Kamailio prints a variable without a value
_UNREAD = object()  # the SDP of this INVITE was not read yet

#: Keys of wire.py's format filled per call; the rest of a frame depends on
#: the contact (and the wait) only.
_CALL_KEYS = ("ci", "f", "t", "ts", "dn", "mt")
_CACHE_MAX = 4096  # contacts remembered per worker; emptied when full
DEFAULT_WAIT_MS = 30000
DEFAULT_CONTACT_MAX = 1024  # Kamailio's MAX_URI_SIZE: a longer URI cannot be relayed


def _call_template(target, ttl):
    """The contact-dependent part of an incoming_session frame, as a dict.

    Made by ``wire.encode_direct`` itself, minus the per-call keys, so the
    format stays wire.py's.
    """
    m = msgpack.unpackb(wire.encode_direct("incoming_session", "-", "-", "-", sent_at=0.0, ttl=ttl,
                                           **target), raw=False)
    for key in _CALL_KEYS:
        m.pop(key, None)
    return m


def _contact_entry(cache, contact, ttl):
    """Work out (and remember in ``cache``) what ``contact`` means for a call.

    Returns:
        A frame template (dict) when the contact asks for pushes, False when
        it does not, or the ``wire.WireError`` of its malformed parameters.
    """
    try:
        target = push_target(uri_params(contact))
        entry = False if target is None else _call_template(target, ttl)
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
                fast = _incoming_session(_call_template(target, 30.0), "c", "sip:a@h", "sip:b@h", name, body)
                fields = msgpack.unpackb(fast, raw=False)
                slow = wire.encode_direct("incoming_session", "c", "sip:a@h", "sip:b@h", sent_at=fields["ts"],
                                          display_name=_display_name(name), media_type=media_type(body),
                                          ttl=30.0, **target)
                if fields != msgpack.unpackb(slow, raw=False) or wire.decode(fast) != wire.decode(slow):
                    return False
        return True
    except Exception:
        return False


def _expires_zero(contact, expires_header):
    """True for a de-registration (``Expires: 0`` or ``;expires=0``)."""
    if expires_header is not None and expires_header.strip() == "0":
        return True
    tail = contact[contact.find(">") + 1:] if ">" in contact else ""
    return re.search(r";\s*expires\s*=\s*0*(?:;|$|\s)", tail + ";", re.IGNORECASE) is not None


def _def_int(name, default):
    value = _pv("$def(%s)" % name)
    return int(value) if value and value.isdigit() else default


_PROC_TIMER = -1  # Kamailio's rank of its timer process
PUSH_ONLY = 1  # invite_prepare: pushes ready, no contact rings directly
PUSH_AND_RING = 2  # invite_prepare: pushes ready, and contacts that ring directly

#: Senders inherited through fork(): kept referenced, never used nor closed.
_inherited = []


class PushSidecar:
    """The handler object app_python3 calls; one copy per Kamailio process."""

    def __init__(self):
        self.sender = None  # made in the process that uses it (never in mod_init)
        self.frames = []
        self.frames_call_id = None
        self.sdp = _UNREAD
        self.wait_ttl = None  # seconds a call push lives: the config's PS_WAIT_MS
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
        if rank > 0 or rank == _PROC_TIMER:
            # SIP workers, and the timer process that runs the failure routes
            # (the cancel pushes of calls nobody answered): connect now, a socket
            # needs a moment to connect before its first send.
            try:
                self._sender()
            except Exception as exc:
                KSR.err("pushsidecar: child_init(%d): %r\n" % (rank, exc))
        return 0

    def _sender(self):
        sender = self.sender
        if sender is None:
            # child_init drops a sender inherited through fork(), so the
            # per-send pid check (a system call) is not needed here.
            sender = self.sender = proxy.connect_sender(
                _pv("$def(PUSHSIDECAR_ENDPOINT)"), _pv("$def(PUSHSIDECAR_CURVE_SERVER_KEY)"),
                _pv("$def(PUSHSIDECAR_CURVE_CLIENT_KEY)"), lambda text: KSR.warn(text + "\n"),
                sndhwm=_def_int("PUSHSIDECAR_SNDHWM", 10000) or None, check_pid=False,
            )
        return sender

    def _ttl(self):
        ttl = self.wait_ttl
        if ttl is None:
            ttl = self.wait_ttl = _def_int("PS_WAIT_MS", DEFAULT_WAIT_MS) / 1000.0
        return ttl

    # -- REGISTER ----------------------------------------------------------

    def register_check(self, msg, arg=None):
        try:
            KSR.pv.seti("$var(pn_code)", 0)
            KSR.pv.seti("$var(ps_wakes)", 0)
            self._sender()  # connect early: a socket needs a moment before its first send
            contact = _pv("$hdr(Contact)")
            if not contact or contact.strip() == "*":
                return 1
            uri = wire.contact_uri(contact)
            limit = _def_int("PS_CONTACT_MAX", DEFAULT_CONTACT_MAX)
            try:
                if len(uri) > limit:
                    raise ValueError("Contact URI of %d characters is longer than %d" % (len(uri), limit))
                target = push_target(uri_params(uri))
            except (wire.WireError, ValueError) as exc:
                code = 555 if "not supported" in str(exc) else 400
                reason = ("Push Notification Service Not Supported" if code == 555
                          else "Contact Too Long" if isinstance(exc, ValueError) else "Bad push parameters")
                KSR.err("pushsidecar: REGISTER of %s rejected (%d): Contact %s: %s\n"
                        % (_pv("$tu"), code, contact[:200], exc))
                KSR.pv.seti("$var(pn_code)", code)
                KSR.pv.sets("$var(pn_reason)", reason)
                return -1
            if target is not None and not _expires_zero(contact, _pv("$hdr(Expires)")):
                KSR.pv.seti("$var(ps_wakes)", 1)
                KSR.pv.sets("$var(ps_contact)", uri)
            return 1
        except Exception as exc:
            KSR.err("pushsidecar: register_check failed: %r\n" % (exc,))
            return 1

    # -- INVITE and MESSAGE --------------------------------------------------

    def _callee_contacts(self, count, first):
        """The contact URIs of reg_fetch_contacts' "callee" profile."""
        contacts = [first] if first else []
        for index in range(1, count):
            contact = _pv("$(ulc(callee=>addr)[%d])" % index)
            if contact:
                contacts.append(contact)
        return contacts

    def _prepare(self, arg, make_frame):
        """Sort the callee's contacts and prepare one frame per push contact.

        ``make_frame(template, contact, fields)`` builds the frame of one
        push contact.  Returns 1 when pushes are ready to send, else -1.
        """
        self.frames = []
        fields = arg.split(FIELD_SEP) if arg else ()
        if len(fields) != len(PREPARE_PVS) or _NULL in fields:
            fields = _fetch_fields(fields)
        count, first = fields[0], fields[1]
        count = int(count) if count and count.isdigit() else (1 if first else 0)
        cache = self.contacts
        frames = []
        pushed = []
        direct = 0
        for contact in (first,) if count == 1 else self._callee_contacts(count, first):
            entry = cache.get(contact)
            if entry is None:
                entry = _contact_entry(cache, contact, self._ttl())
            if entry.__class__ is dict:
                frames.append(make_frame(entry, contact, fields))
                pushed.append(contact)
            else:
                if entry:  # malformed parameters (refused at REGISTER since): ring it as it is
                    KSR.err("pushsidecar: call %s: contact %s has bad push parameters (%s): no push\n"
                            % (fields[2], contact[:200], entry))
                direct += 1
        self.frames = frames
        if not frames:
            return -1
        self.frames_call_id = fields[2]
        KSR.pv.sets("$var(ps_pushed)", CONTACT_SEP.join(pushed))
        return PUSH_AND_RING if direct else PUSH_ONLY

    def invite_prepare(self, msg, arg=None):
        try:
            self.sdp = _UNREAD  # read for the first push contact only
            return self._prepare(arg, self._call_frame)
        except Exception as exc:
            KSR.err("pushsidecar: invite_prepare failed: %r\n" % (exc,))
            self.frames = []
            return -1

    def _call_frame(self, template, contact, fields):
        body = self.sdp
        if body is _UNREAD:
            body = _get("$rb")
            body = self.sdp = body if body.__class__ is str else None
        call_id, from_uri, to_uri, name = fields[2], fields[3], fields[4], fields[5]
        if self.fast and call_id and from_uri and to_uri:
            return _incoming_session(template, call_id, from_uri, to_uri, name, body)
        # a value is missing, or the self-check failed: the general encoder
        return wire.encode_direct(
            "incoming_session", call_id, from_uri, to_uri, display_name=_display_name(name),
            media_type=media_type(body), ttl=self._ttl(), **push_target(uri_params(contact)),
        )

    def message_prepare(self, msg, arg=None):
        try:
            text = proxy.message_text(_pv("$rb"))
            content_type = (_pv("$cT") or "text/plain").strip()

            def frame(template, contact, fields):
                # The text travels in the push (the config answers 202): it
                # stays useful for the message's default life, not the wait's.
                return wire.encode_direct(
                    "message", fields[2], fields[3], fields[4], display_name=_display_name(fields[5]),
                    media_type="sms", content=text, content_type=content_type,
                    **push_target(uri_params(contact)),
                )

            return self._prepare(arg, frame)
        except Exception as exc:
            KSR.err("pushsidecar: message_prepare failed: %r\n" % (exc,))
            self.frames = []
            return -1

    def send_prepared(self, msg, arg=None):
        try:
            frames = self.frames
            self.frames = []
            if not frames:
                return -1
            sender = self._sender()
            sent = 0
            for frame in frames:
                if sender.send(frame):
                    sent += 1
            if not sent:
                KSR.err("pushsidecar: call %s: no push could be handed to the sidecar at %s: %d device(s) "
                        "not woken\n" % (self.frames_call_id, sender.endpoint, len(frames)))
                return -1
            return 1
        except Exception as exc:
            KSR.err("pushsidecar: send_prepared failed: %r\n" % (exc,))
            return -1

    # -- The end of a call ---------------------------------------------------

    def cancel_pushed(self, msg, arg=None):
        try:
            reason, answered, pushed = ((arg or "").split(FIELD_SEP, 2) + ["", ""])[:3]
            if not pushed or pushed == _NULL:
                return -1
            sender = self._sender()
            sent = 0
            for frame in proxy.cancel_frames(pushed.split(CONTACT_SEP), answered, _pv("$ci"), _pv("$fu"),
                                             _pv("$tu"), reason, lambda text: KSR.err("pushsidecar: %s\n" % text)):
                if sender.send(frame):
                    sent += 1
            return 1 if sent else -1
        except Exception as exc:
            KSR.err("pushsidecar: cancel_pushed failed: %r\n" % (exc,))
            return -1


def _fetch_fields(fields):
    """The PREPARE_PVS values, read one by one where the argument has none.

    For an older config (no argument), a value holding FIELD_SEP, and values
    printed as ``<null>``: also a legal Call-ID or display name, so read again
    to tell them apart.  Missing values are None, as ``_pv`` gives them.
    """
    if len(fields) != len(PREPARE_PVS):
        return [_pv(name) for name in PREPARE_PVS]
    return [_pv(name) if value == _NULL else value for name, value in zip(PREPARE_PVS, fields, strict=True)]


def mod_init():
    handler = PushSidecar()
    timing = os.environ.get("PUSHSIDECAR_BENCH_TIMING")
    if timing:  # benchmarks only: the plain handler pays nothing for it
        wire.CallTimer(timing).wrap(handler, "invite_prepare", "send_prepared")
    return handler
