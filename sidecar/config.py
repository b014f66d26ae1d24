"""Configuration: general.ini + applications.ini -> immutable snapshots.

Option names and meanings follow Sylk Pushserver (see the README); each
problem found is reported with its file, section and option, and start-up
exits with status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any, Mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class CassandraSettings:
    contact_points: tuple[tuple[str, int], ...] = ()
    keyspace: str = "sylk_pushserver"
    table: str = "push_tokens"
    consistency: str = "LOCAL_ONE"
    debug: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.contact_points)


@dataclasses.dataclass(frozen=True, slots=True)
class AppConfig:
    """One section of applications.ini.  Paths are absolute."""

    section: str
    app_id: str
    app_type: str
    platform: str  # canonical: apple, firebase, or a plugin's name
    # apple
    apple_host: str = "api.push.apple.com"
    apple_port: int = 443
    apple_certificate: Path | None = None
    apple_key: Path | None = None
    key_id: str | None = None
    team_id: str | None = None
    # firebase
    firebase_push_url: str | None = None
    firebase_authorization_file: Path | None = None
    # all
    tls_ca_file: Path | None = None
    log_remote_urls: tuple[str, ...] = ()
    log_remote_key: str | None = None
    log_remote_timeout: float = 2.0
    #: options this module does not know, for plugins (raw strings)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.app_id, self.platform)

    @property
    def apple_token_auth(self) -> bool:
        return self.apple_certificate is None and self.apple_key is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    config_dir: Path
    host: str = "0.0.0.0"
    port: int = 8400
    tls_certificate: Path | None = None
    return_async: bool = True
    allowed_hosts: tuple[IPNetwork, ...] = ()
    max_body_size: int = 64 * 1024
    log_to_file: bool = False
    log_file: Path | None = None
    spool_dir: Path = Path("/var/spool/pushsidecar")
    debug: bool = False
    debug_hpack: bool = False
    applications_file: Path = Path("applications.ini")
    credentials_folder: Path = Path("credentials")
    extra_applications_dir: Path | None = None
    extra_pns_dir: Path | None = None
    zmq_endpoint: str = ""  # empty: ipc://<run_dir>/push.sock
    zmq_enabled: bool = True
    run_dir: Path = Path("/run/pushsidecar")
    cassandra: CassandraSettings = CassandraSettings()
    applications: Mapping[tuple[str, str], AppConfig] = dataclasses.field(default_factory=dict)

    def application(self, app_id: str, platform: str) -> AppConfig | None:
        return self.applications.get((app_id, platform))


class ConfigError(Exception):
    """One or more problems in the configuration files.

    ``problems`` lists readable lines: ``file [section] option: problem``.
    """

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
