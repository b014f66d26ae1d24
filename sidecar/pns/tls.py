"""TLS client contexts for push-service connections.

Always verifies the server (the original sidecar did not).  ``ca_file``
replaces the system trust store, which is how tests and staging trust the
simulator's certificate.  ALPN offers only ``h2``: the push services speak
HTTP/2 and nothing else, and the connect helper refuses a server that does
not pick it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .base import PushServiceConfigError


def client_ssl_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """Build a verifying TLS 1.2+ client context offering ALPN ``h2``.

    Args:
        ca_file: PEM file of trusted CA certificates; None uses the system
            trust store.
        cert_file: PEM client certificate (APNs certificate auth); may also
            contain the key.
        key_file: PEM private key of ``cert_file`` when stored apart.

    Raises:
        PushServiceConfigError: a file is missing, unreadable or not valid
            PEM; the message names the file.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise PushServiceConfigError(f"cannot load CA file {ca_file}: {_why(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            names = f"{cert_file}" + (f" / {key_file}" if key_file else "")
            raise PushServiceConfigError(
                f"cannot load client certificate {names}: {_why(exc)}"
            ) from exc
    return context


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
