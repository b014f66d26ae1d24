"""The simulator's TLS side: one listening port for token and certificate auth.

A port cannot both require and not require a client certificate, so the
server *asks* for one (``CERT_OPTIONAL``): a connection that presents a
certificate signed by the simulator's CA uses APNs certificate auth, one that
presents none uses token auth (and FCM/OAuth, which ignore certificates).  A
certificate from another CA fails the handshake, as Apple's would.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

ALPN_PROTOCOLS = ["h2", "http/1.1"]


def server_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """A server context offering h2 and http/1.1 that asks for client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.load_verify_locations(cafile=str(ca_file))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def client_certificate_topic(peer_cert: dict[str, Any] | None) -> str | None:
    """The bundle id a client certificate speaks for: its subject UID, else CN.

    Apple's CNs look like ``Apple Push Services: com.example.app``; the part
    after the colon is the bundle id.
    """
    if not peer_cert:
        return None
    fields: dict[str, str] = {}
    for rdn in peer_cert.get("subject", ()):
        for name, value in rdn:
            fields.setdefault(name, value)
    if "userId" in fields:
        return fields["userId"]
    common_name = fields.get("commonName")
    if common_name is None:
        return None
    return common_name.rpartition(":")[2].strip() or None
