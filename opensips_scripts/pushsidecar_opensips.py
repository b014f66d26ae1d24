"""OpenSIPS python-module script: send RFC 8599 pushes through the sidecar.

OpenSIPS 3.4+ does the SIP side of RFC 8599 itself (registrar ``pn_enable``):
``lookup()`` rings the contacts that need no push, raises
``E_UL_CONTACT_REFRESH`` for each contact that does, and ``event_routing``
forks the call to the device when it registers again.  This script turns
those events into sidecar messages (see the example ``opensips.cfg``, which
says when each method runs):

``sidecar_ready``
    Before ``lookup()``: 1 when the sidecar can take pushes now.  When it
    cannot, the config does not hold a call for a push (fail fast).
``push`` (argument: ``"$avp(reason) $avp(req_callid) $avp(uri) $shv(ps_wait) $var(ctx)"``)
    For one E_UL_CONTACT_REFRESH: a push to the contact ``$avp(uri)``, an
    ``incoming_session`` living ``ps_wait`` seconds (as long as the call
    waits for the phone) or a ``message`` carrying the text the config kept
    in ``$var(text)``/``$var(text_type)``.  ``ctx`` is
    ``"<media> <from> <to> <display name>"`` stored at the INVITE.  A
    refresh for no request (``reg-refresh``) is skipped.
``cancel_pushed`` (argument: ``"<reason>|<answering branch URI>|<pushed contacts>"``)
    The call ended: a ``cancel`` push to each pushed contact (space
    separated) except the one that answered.
``cancel_one`` (argument: ``"<reason>|<call-id>|<contact>|<context>"``)
    The call ended while route[PUSH] (which runs apart from the call) sent
    its push: that push is cancelled at once.

Every method returns an int (None breaks the NEXT python_exec of the
process) and catches everything.  The file must keep a name of its own (the
module imports it by its base name).  What this script shares with the
Kamailio one (finding the sidecar's ``sidecar/wire.py``, which defines the
message format and the contact parsing; the sender; the cancel pushes) is
``pushsidecar_proxy.py``, next to this file: the module puts this file's
folder first on ``sys.path``.  The endpoint is the config's ``$shv(ps_endpoint)`` (else ``$PUSHSIDECAR_ENDPOINT``,
else ``ipc:///run/pushsidecar/push.sock``); CURVE key files
``$shv(ps_curve_server_key)`` and ``$shv(ps_curve_client_key)``.
"""

import os

import pushsidecar_proxy as proxy  # next to this file (see above)
from OpenSIPS import LM_ERR  # the only logging function the module offers

wire = proxy.wire
_value = proxy.value  # None for what get_pseudoVar and argument expansion give for an unset variable

# $avp(reason) of E_UL_CONTACT_REFRESH -> our event; others ("reg-refresh",
# "ini-SUBSCRIBE", mid-dialog requests) have no Sylk event and are skipped.
REASON_EVENTS = {"ini-INVITE": "incoming_session", "ini-MESSAGE": "message"}
#: How long a process's first push may wait for its new socket to connect.
CONNECT_WAIT_MS = 50


def _log_raw(text):
    try:
        LM_ERR(text + "\n")
    except Exception:
        pass


def _log(text):
    _log_raw("pushsidecar: " + text)


def pn_target(contact):
    """``encode_direct`` keyword arguments for an RFC 8599 contact URI.

    Raises:
        wire.WireError: no or malformed push parameters.
    """
    target = wire.push_target(wire.uri_params(contact))
    if target is None:
        raise wire.WireError("contact %s has no push parameters" % contact)
    return target


def parse_context(text):
    """``(media, from, to, display_name)`` from ``"$var(media) $fu $tu $fn"``."""
    parts = (text or "").split(" ", 3)
    parts += [""] * (4 - len(parts))
    media, from_uri, to_uri, display = (_value(p.strip()) for p in parts)
    return media, from_uri, to_uri, proxy.display_name(display)


class PushSidecar:
    """The handler object; one copy per OpenSIPS process after the fork."""

    def __init__(self):
        self.sender = None  # created on first use, in the worker (never in mod_init)
        self.skipped = 0

    def child_init(self, rank):
        return 0

    def _sender(self, msg):
        if self.sender is None:
            # The module gives child_init no way to read $shv(ps_endpoint): the
            # socket is made at a process's first call, which waits for it a moment.
            self.sender = proxy.connect_sender(
                self._pv(msg, "$shv(ps_endpoint)"), self._pv(msg, "$shv(ps_curve_server_key)"),
                self._pv(msg, "$shv(ps_curve_client_key)"), _log_raw, connect_wait_ms=CONNECT_WAIT_MS)
        return self.sender

    def _pv(self, msg, name):
        try:
            return _value(msg.get_pseudoVar(name))
        except Exception:
            return None

    def sidecar_ready(self, msg, arg=None):
        """1 when the sidecar can take a push now, else -1 (logged)."""
        try:
            sender = self._sender(msg)
            if sender.ready():
                return 1
            _log("call %s: the sidecar at %s cannot take pushes now: no device will be woken"
                 % (self._pv(msg, "$ci"), sender.endpoint))
            return -1
        except Exception as exc:
            _log("sidecar_ready failed: %r" % (exc,))
            return -1

    def push(self, msg, arg=None):
        """E_UL_CONTACT_REFRESH: push to the contact for the pending request."""
        try:
            parts = (arg or "").split(" ", 4)
            parts += [""] * (5 - len(parts))
            reason, call_id, uri, wait = (_value(p) for p in parts[:4])
            event = REASON_EVENTS.get(reason or "")
            if event is None:
                self.skipped += 1
                return -1  # a refresh without a call: nothing to tell the phone
            if not uri or not call_id:
                _log("E_UL_CONTACT_REFRESH without uri or req_callid (reason %s)" % reason)
                return -1
            media, from_uri, to_uri, display = parse_context(parts[4])
            if not from_uri or not to_uri:
                _log("no push for call %s: no From/To in the context %r" % (call_id, parts[4]))
                return -1
            try:
                target = pn_target(uri)
            except wire.WireError as exc:
                _log("no push for call %s: %s" % (call_id, exc))
                return -1
            if event == "message":
                text = proxy.message_text(self._pv(msg, "$var(text)"))
                frame = wire.encode_direct(
                    event, call_id, from_uri, to_uri, display_name=display, media_type="sms",
                    content=text, content_type=self._pv(msg, "$var(text_type)") or "text/plain",
                    **target,
                )
            else:
                ttl = float(wait) if wait and wait.isdigit() and int(wait) > 0 else None
                frame = wire.encode_direct(
                    event, call_id, from_uri, to_uri, display_name=display,
                    media_type=media or "audio", ttl=ttl, **target,
                )
            return 1 if self._sender(msg).send(frame) else -1
        except Exception as exc:
            _log("push failed: %r" % (exc,))
            return -1

    def cancel_one(self, msg, arg=None):
        """The call ended while route[PUSH] sent its push: cancel that one at once.

        Argument ``"<reason>|<call-id>|<contact>|<context>"`` (the context as for ``push``).
        """
        try:
            reason, call_id, contact, context = ((arg or "").split("|", 3) + ["", "", ""])[:4]
            _, from_uri, to_uri, _ = parse_context(context)
            if not _value(call_id) or not _value(contact) or not from_uri or not to_uri:
                _log("cancel_one: missing call-id, contact, From or To in %r" % (arg,))
                return -1
            frame = wire.encode_direct("cancel", call_id, from_uri, to_uri,
                                       reason=_value(reason) or "cancelled", **pn_target(contact))
            return 1 if self._sender(msg).send(frame) else -1
        except Exception as exc:
            _log("cancel_one failed: %r" % (exc,))
            return -1

    def cancel_pushed(self, msg, arg=None):
        """The call is over: a ``cancel`` push to each pushed contact but the answering one."""
        try:
            reason, answered, pushed = ((arg or "").split("|", 2) + ["", ""])[:3]
            contacts = [c for c in pushed.split() if _value(c)]
            if not contacts:
                return -1  # no push went out for this call
            call_id, from_uri, to_uri = self._pv(msg, "$ci"), self._pv(msg, "$fu"), self._pv(msg, "$tu")
            if not call_id or not from_uri or not to_uri:
                _log("cancel_pushed: missing call-id, From or To")
                return -1
            sender = self._sender(msg)
            sent = 0
            for frame in proxy.cancel_frames(contacts, answered, call_id, from_uri, to_uri, _value(reason), _log):
                if sender.send(frame):
                    sent += 1
            return 1 if sent else -1
        except Exception as exc:
            _log("cancel_pushed failed: %r" % (exc,))
            return -1


def mod_init():
    handler = PushSidecar()
    timing = os.environ.get("PUSHSIDECAR_BENCH_TIMING")
    if timing:  # benchmarks only (bench/bench_proxies.py): time the two calls per INVITE
        wire.CallTimer(timing).wrap(handler, "sidecar_ready", "push")
    return handler
