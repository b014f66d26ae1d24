"""A simulator of APNs, FCM and Google OAuth for tests, demos and staging.

One TLS port on 127.0.0.1 serves, by path, the APNs provider API
(``/3/device/<token>``, token or certificate auth), FCM HTTP v1
(``/v1/projects/<p>/messages:send``), Google's OAuth token endpoint
(``/token``) and a control API (``/_sim/``).  It speaks HTTP/2 (h2 on trio,
so GOAWAY, SETTINGS and dropped connections are under control) and HTTP/1.1
(ALPN picks).  See :mod:`sidecar.sim.server` for the in-process API,
:mod:`sidecar.sim.creds` for the credentials it trusts and
:mod:`sidecar.sim.cli` for ``pushsidecar simulate``.
"""

from .creds import (
    SimCredentials,
    ensure_credentials,
    generate_credentials,
    load_credentials,
    write_service_account,
)
from .faults import Fault
from .server import Simulator, SimStats, open_simulator

__all__ = [
    "Fault",
    "SimCredentials",
    "SimStats",
    "Simulator",
    "ensure_credentials",
    "generate_credentials",
    "load_credentials",
    "open_simulator",
    "write_service_account",
]
