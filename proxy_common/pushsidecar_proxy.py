"""What the Kamailio and the OpenSIPS scripts share: finding wire.py, the sender, the pushes' common parts.

Each proxy script imports this file by its name, ``pushsidecar_proxy``:
both proxies put the folder of the script they load first on ``sys.path``,
and this file stands next to each script (in the source tree as a symlink
to ``proxy_common/pushsidecar_proxy.py``; an installation copies it).

Like the scripts, it imports only the standard library and ``msgpack``
(through wire.py; ``zmq`` when sending): the proxies embed Debian's Python.
The message format and the contact parsing are the sidecar's own
``sidecar/wire.py``, found in this order:

1. ``$PUSHSIDECAR_WIRE`` (the file, or the folder holding it);
2. ``pushsidecar_wire.py`` next to the script (a symlink to wire.py);
3. ``../sidecar/wire.py`` relative to the script (a source checkout);
4. ``import sidecar.wire`` (the package installed for Debian's python3).

It is loaded by path under the name ``pushsidecar_wire``, so the sidecar's
virtualenv is never added to the proxy's ``sys.path``.
"""

import importlib.util
import os
import sys

#: What both proxies print for a variable without a value.
NULL = "<null>"
#: A SIP MESSAGE's text travels in the push: APNs takes 4 KB in all.
MAX_MESSAGE_TEXT = 2000


def load_wire(here):
    """The sidecar's wire module, looked for from the script folder ``here``."""
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


# The folder this file was imported from: the script's (not the symlink's target).
wire = load_wire(os.path.dirname(os.path.abspath(__file__)))


def value(text):
    """A proxy variable's text, or None when unset (None, empty or ``<null>``)."""
    if text is None or text == NULL or text == "":
        return None
    return text


def display_name(text):
    """A From display name without its quotes and spaces, or None."""
    if not text:
        return None
    text = text.strip().strip('"').strip()
    return text or None


def message_text(text):
    """A MESSAGE's text, cut to what a push can carry."""
    text = text or ""
    return text[:MAX_MESSAGE_TEXT - 1] + "\u2026" if len(text) > MAX_MESSAGE_TEXT else text


def connect_sender(endpoint, curve_server_key, curve_client_key, log, **options):
    """A connected ``wire.Sender`` to the sidecar, as both proxies want it.

    With ``immediate``, nothing is queued while the sidecar is away: a push
    sent after the call ended would ring for nothing.  Empty values are
    unset (the default endpoint, no CURVE).  ``options``: the proxy's own
    ``wire.Sender`` arguments.
    """
    sender = wire.Sender(endpoint or None, log=log, immediate=True, curve_server_key=curve_server_key or None,
                         curve_client_key=curve_client_key or None, **options)
    sender.connect()
    return sender


def cancel_frames(contacts, answered, call_id, from_uri, to_uri, reason, log):
    """The ``cancel`` frames for the pushed ``contacts`` of a call that ended.

    The contact that ``answered`` (compared without its push parameters)
    gets none, nor does one without push parameters; one with malformed
    parameters is logged (``log(text)``) and skipped, the others still go.
    """
    answered = wire.strip_pn_params(answered) if value(answered) else None
    for contact in contacts:
        if not value(contact) or (answered is not None and wire.strip_pn_params(contact) == answered):
            continue
        try:
            target = wire.push_target(wire.uri_params(contact))
        except wire.WireError as exc:
            log("no cancel push for call %s: %s" % (call_id, exc))
            continue
        if target is not None:
            yield wire.encode_direct("cancel", call_id, from_uri, to_uri, reason=reason or "cancelled", **target)
