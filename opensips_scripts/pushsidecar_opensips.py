"""OpenSIPS python-module script: send RFC 8599 pushes through the sidecar.

OpenSIPS 3.1+ does the SIP side of RFC 8599 itself (registrar ``pn_enable``):
``lookup()`` returns 2 when every contact of the callee needs a push, raises
``E_UL_CONTACT_REFRESH`` for each of them, and ``event_routing`` injects the
call into the device's new binding when it re-registers.  This script only
turns that event into a sidecar message (see the example ``opensips.cfg``):

``python_exec("contact_refresh")``
    In ``event_route[E_UL_CONTACT_REFRESH]``: push to the contact in
    ``$param(uri)``.  The caller's details are those the INVITE route stored
    with ``cache_store("local", "pnctx_$ci", "$avp(pn_media) $fu $tu $fn")``
    and the event route fetched into ``$avp(pnctx)``.
``python_exec("cancel_push")``
    In the CANCEL route: a ``cancel`` push to the contact in ``$avp(pnct)``.

OpenSIPS 3.4+ lets the script read variables (``msg.get_pseudoVar``).  For
3.1 to 3.3 pass everything as the argument instead, space separated, the
display name last (it may contain spaces)::

    python_exec("contact_refresh", "$param(reason) $param(req_callid) $param(uri) $avp(pnctx)")
    python_exec("cancel_push", "$ci $avp(pnct) $fu $tu")

Every method returns an int (None breaks the NEXT python_exec of the
process) and catches everything.  The file must keep a name of its own (the
module imports it by its base name).  The message format comes from the
sidecar's ``sidecar/wire.py``, found as the Kamailio script finds it:
``$PUSHSIDECAR_WIRE``, ``pushsidecar_wire.py`` next to this file,
``../sidecar/wire.py``, or the installed ``sidecar`` package.  The endpoint
is ``$PUSHSIDECAR_ENDPOINT`` (default ``ipc:///run/pushsidecar/push.sock``).
"""

import importlib.util
import os
import sys
from urllib.parse import unquote

from OpenSIPS import LM_ERR  # the only logging function the module offers


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

NULL = "<null>"  # what get_pseudoVar and argument expansion give for an unset variable

# $param(reason) of E_UL_CONTACT_REFRESH -> our event; others ("reg-refresh",
# "ini-SUBSCRIBE", mid-dialog requests) have no Sylk event and are skipped.
REASON_EVENTS = {"ini-INVITE": "incoming_session", "ini-MESSAGE": "message"}
_DEFAULT_MEDIA = {"incoming_session": "audio", "message": "sms"}  # Sylk requires one


def _log(text):
    try:
        LM_ERR("pushsidecar: " + text + "\n")
    except Exception:
        pass


def _value(text):
    if text is None or text == NULL or text == "":
        return None
    return text


def uri_params(uri):
    """``{name: value}`` of a SIP URI's parameters (lower-case names, decoded values)."""
    start = uri.find("<")
    if start >= 0:
        end = uri.find(">", start)
        uri = uri[start + 1 : end if end > 0 else len(uri)]
    head = uri.partition("?")[0]
    params = {}
    for part in head.split(";")[1:]:
        name, _, value = part.partition("=")
        if name:
            params[name.strip().lower()] = unquote(value.strip())
    return params


def pn_target(contact):
    """``encode_direct`` keyword arguments for an RFC 8599 contact URI.

    Raises:
        wire.WireError: no or malformed push parameters.
    """
    params = uri_params(contact)
    provider = params.get("pn-provider")
    if provider is None:
        raise wire.WireError("contact %s has no pn-provider" % contact)
    prid = params.get("pn-prid", "")
    param = params.get("pn-param")
    wire.resolve_pn(provider, prid, param, "incoming_session")
    return {"pn_provider": provider, "pn_prid": prid, "pn_param": param}


def parse_context(text):
    """``(media, from, to, display_name)`` from ``"$avp(pn_media) $fu $tu $fn"``."""
    parts = (text or "").split(" ", 3)
    parts += [""] * (4 - len(parts))
    media, from_uri, to_uri, display = (_value(p.strip()) for p in parts)
    if display:
        display = display.strip('"').strip() or None
    return media, from_uri, to_uri, display


class PushSidecar:
    """The handler object; one copy per OpenSIPS process after the fork."""

    def __init__(self):
        self.sender = None  # created on first use, in the worker (never in mod_init)
        self.skipped = 0

    def child_init(self, rank):
        return 0

    def _send(self, frame):
        if self.sender is None:
            self.sender = wire.Sender(log=_log)
        return self.sender.send(frame)

    def _pv(self, msg, name):
        try:
            return _value(msg.get_pseudoVar(name))
        except Exception:
            return None

    def contact_refresh(self, msg, arg=None):
        """E_UL_CONTACT_REFRESH: push to ``$param(uri)`` for the pending request."""
        try:
            if arg is not None:
                parts = arg.split(" ", 3)
                parts += [""] * (4 - len(parts))
                reason, call_id, uri = (_value(p) for p in parts[:3])
                context = parts[3]
            else:
                reason = self._pv(msg, "$param(reason)")
                call_id = self._pv(msg, "$param(req_callid)")
                uri = self._pv(msg, "$param(uri)")
                context = self._pv(msg, "$avp(pnctx)")
            event = REASON_EVENTS.get(reason or "")
            if event is None:
                self.skipped += 1
                return 1  # a refresh without a call: nothing to tell the phone
            if not uri or not call_id:
                _log("E_UL_CONTACT_REFRESH without uri or req_callid (reason %s)" % reason)
                return -1
            media, from_uri, to_uri, display = parse_context(context)
            if not from_uri or not to_uri:
                # No stored context (cache miss): address the push as well as we can.
                aor = self._pv(msg, "$param(aor)") if arg is None else None
                to_uri = to_uri or ("sip:" + aor if aor else uri.partition(";")[0])
                from_uri = from_uri or "sip:unknown@invalid"
            try:
                target = pn_target(uri)
            except wire.WireError as exc:
                _log("no push for call %s: %s" % (call_id, exc))
                return -1
            frame = wire.encode_direct(
                event, call_id, from_uri, to_uri, display_name=display,
                media_type=media if event == "incoming_session" and media else _DEFAULT_MEDIA[event],
                **target,
            )
            return 1 if self._send(frame) else -1
        except Exception as exc:
            _log("contact_refresh failed: %r" % (exc,))
            return -1

    def cancel_push(self, msg, arg=None):
        """CANCEL of a call waiting for a woken phone: a ``cancel`` push."""
        try:
            if arg is not None:
                parts = arg.split(" ", 3)
                parts += [""] * (4 - len(parts))
                call_id, contact, from_uri, to_uri = (_value(p) for p in parts)
            else:
                call_id = self._pv(msg, "$ci")
                contact = self._pv(msg, "$avp(pnct)")
                from_uri = self._pv(msg, "$fu")
                to_uri = self._pv(msg, "$tu")
            if not contact:
                return -1  # no push went out for this call
            if not call_id or not from_uri or not to_uri:
                _log("cancel_push: missing call-id, From or To")
                return -1
            try:
                target = pn_target(contact)
            except wire.WireError as exc:
                _log("no cancel push for call %s: %s" % (call_id, exc))
                return -1
            frame = wire.encode_direct("cancel", call_id, from_uri, to_uri,
                                       reason="cancelled", **target)
            return 1 if self._send(frame) else -1
        except Exception as exc:
            _log("cancel_push failed: %r" % (exc,))
            return -1


def mod_init():
    return PushSidecar()
