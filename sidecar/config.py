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
    # where pushes for development builds go (RFC 8599 pn-provider=apns.dev)
    apple_sandbox_host: str = "api.sandbox.push.apple.com"
    apple_sandbox_port: int = 443
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
    # Authentication and overload (issue 11); see _security_settings().
    zmq_curve: Any = None  # CurveServerKeys when [zmq] curve_secret_key is set
    bearer_tokens: tuple[tuple[str, str], ...] = ()  # (client name, token); never logged
    memory_budget_mb: int = 160
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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

GENERAL_SPEC = """
[server]
host = string(default='0.0.0.0')
port = integer(min=0, max=65535, default=8400)
tls_certificate = string(default='')
return_async = boolean(default=True)
allowed_hosts = force_list(default=list())
max_body_size = integer(min=256, max=16777216, default=65536)
log_to_file = boolean(default=False)
log_file = string(default='')
spool_dir = string(default='/var/spool/pushsidecar')
debug = boolean(default=False)
debug_hpack = boolean(default=False)
bearer_tokens_file = string(default='')
memory_budget_mb = integer(min=32, max=65536, default=160)

[applications]
config_file = string(default='applications.ini')
credentials_folder = string(default='credentials')
extra_applications_dir = string(default='applications')
extra_pns_dir = string(default='pns')

[zmq]
enabled = boolean(default=True)
endpoint = string(default='')
run_dir = string(default='/run/pushsidecar')
curve_secret_key = string(default='')
curve_clients = string(default='')

[Cassandra]
cluster_contact_points = force_list(default=list())
keyspace = string(default='sylk_pushserver')
table = string(default='push_tokens')
consistency = option('ANY', 'ONE', 'TWO', 'THREE', 'QUORUM', 'ALL', 'LOCAL_QUORUM', 'EACH_QUORUM', 'LOCAL_ONE', default='LOCAL_ONE')
debug = boolean(default=False)
"""

# Options of one applications.ini section that this module interprets.
APP_OPTIONS = frozenset(
    {
        "app_id",
        "app_type",
        "app_platform",
        "apple_push_url",
        "apple_sandbox_push_url",
        "apple_certificate",
        "apple_key",
        "key_id",
        "team_id",
        "firebase_push_url",
        "firebase_authorization_file",
        "firebase_authorization_key",
        "tls_ca_file",
        "log_remote_urls",
        "log_remote_key",
        "log_remote_timeout",
    }
)

BUILTIN_PLATFORMS = frozenset({"apple", "firebase"})


def find_config_dir(explicit: str | Path | None) -> Path:
    """The config dir: the given one, else /etc/pushsidecar, else ./config."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    for candidate in (Path("/etc/pushsidecar"), Path("config")):
        if (candidate / "general.ini").is_file():
            return candidate.resolve()
    raise ConfigError(
        ["no general.ini found in /etc/pushsidecar or ./config; pass --config-dir DIR"]
    )


def load_settings(
    config_dir: str | Path,
    *,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
) -> Settings:
    """Read and validate general.ini and applications.ini below ``config_dir``.

    ``pns_names`` are the platforms an application may name (built-ins plus
    plugins); ``app_type_names`` the app types (None: do not check).  Raises
    :class:`ConfigError` listing every problem found.
    """
    import configobj
    import validate

    config_dir = Path(config_dir).resolve()
    general_path = config_dir / "general.ini"
    problems: list[str] = []
    if not general_path.is_file():
        raise ConfigError([f"{general_path}: file not found"])
    general = _read_ini(general_path, configspec=GENERAL_SPEC.splitlines())
    result = general.validate(validate.Validator(), preserve_errors=True)
    if result is not True:
        for sections, option, error in configobj.flatten_errors(general, result):
            where = "".join(f"[{s}]" for s in sections)
            what = option if option is not None else "(section)"
            problems.append(f"{general_path} {where} {what}: {error or 'missing'}")
        raise ConfigError(problems)

    server = general["server"]
    apps_section = general["applications"]

    def path_option(section: str, option: str, base: Path, value: str) -> Path | None:
        if not value:
            return None
        return (base / Path(value).expanduser()).resolve()

    allowed: list[IPNetwork] = []
    for entry in server["allowed_hosts"]:
        entry = entry.strip()
        if not entry:
            continue
        try:
            allowed.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            problems.append(
                f"{general_path} [server] allowed_hosts: {entry!r} is not an IP address or network"
            )

    contact_points: list[tuple[str, int]] = []
    for entry in general["Cassandra"]["cluster_contact_points"]:
        entry = entry.strip()
        if not entry:
            continue
        try:
            contact_points.append(_host_port(entry, 9042))
        except ValueError as exc:
            problems.append(f"{general_path} [Cassandra] cluster_contact_points: {exc}")

    tls_certificate = path_option("server", "tls_certificate", config_dir, server["tls_certificate"])
    if tls_certificate is not None and not tls_certificate.is_file():
        problems.append(
            f"{general_path} [server] tls_certificate: file {tls_certificate} not found"
        )
    log_file = path_option("server", "log_file", config_dir, server["log_file"])
    if server["log_to_file"] and log_file is None:
        problems.append(f"{general_path} [server] log_file: required when log_to_file is on")

    credentials_folder = path_option(
        "applications", "credentials_folder", config_dir, apps_section["credentials_folder"]
    ) or config_dir
    applications_file = path_option(
        "applications", "config_file", config_dir, apps_section["config_file"]
    ) or (config_dir / "applications.ini")

    applications: dict[tuple[str, str], AppConfig] = {}
    if not applications_file.is_file():
        problems.append(f"{general_path} [applications] config_file: file {applications_file} not found")
    else:
        try:
            applications = load_applications(
                applications_file,
                credentials_folder=credentials_folder,
                pns_names=pns_names,
                app_type_names=app_type_names,
            )
        except ConfigError as exc:
            problems.extend(exc.problems)

    security = _security_settings(general, general_path, config_dir, path_option, problems)
    if problems:
        raise ConfigError(problems)

    cassandra = general["Cassandra"]
    zmq_section = general["zmq"]
    run_dir = path_option("zmq", "run_dir", config_dir, zmq_section["run_dir"]) or Path("/run/pushsidecar")
    return Settings(
        config_dir=config_dir,
        host=server["host"],
        port=server["port"],
        tls_certificate=tls_certificate,
        return_async=server["return_async"],
        allowed_hosts=tuple(allowed),
        max_body_size=server["max_body_size"],
        log_to_file=server["log_to_file"],
        log_file=log_file,
        spool_dir=path_option("server", "spool_dir", config_dir, server["spool_dir"])
        or config_dir,
        debug=server["debug"],
        debug_hpack=server["debug_hpack"],
        applications_file=applications_file,
        credentials_folder=credentials_folder,
        extra_applications_dir=path_option(
            "applications", "extra_applications_dir", config_dir, apps_section["extra_applications_dir"]
        ),
        extra_pns_dir=path_option("applications", "extra_pns_dir", config_dir, apps_section["extra_pns_dir"]),
        zmq_enabled=zmq_section["enabled"],
        zmq_endpoint=zmq_section["endpoint"],
        run_dir=run_dir,
        **security,
        cassandra=CassandraSettings(
            contact_points=tuple(contact_points),
            keyspace=cassandra["keyspace"],
            table=cassandra["table"],
            consistency=cassandra["consistency"],
            debug=cassandra["debug"],
        ),
        applications=applications,
    )


def load_applications(
    path: Path,
    *,
    credentials_folder: Path,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
) -> dict[tuple[str, str], AppConfig]:
    """Read applications.ini: one application per section."""
    from .model import canonical_platform

    ini = _read_ini(path)
    problems: list[str] = []
    applications: dict[tuple[str, str], AppConfig] = {}
    for section in ini.sections:
        options = ini[section]

        def problem(option: str, text: str) -> None:
            problems.append(f"{path} [{section}] {option}: {text}")

        def text(option: str, default: str | None = None) -> str | None:
            value = options.get(option, default)
            if isinstance(value, list):
                value = ",".join(value)
            if value is not None:
                value = str(value).strip()
            return value or default

        def credential(option: str) -> Path | None:
            value = text(option)
            if value is None:
                return None
            resolved = (credentials_folder / Path(value).expanduser()).resolve()
            if not resolved.is_file():
                problem(option, f"file {resolved} not found")
            return resolved

        app_id = text("app_id")
        platform_name = text("app_platform")
        app_type = text("app_type", "sylk")
        if not app_id:
            problem("app_id", "required")
        if not platform_name:
            problem("app_platform", "required")
            continue
        platform = canonical_platform(platform_name)
        if platform not in pns_names:
            known = ", ".join(sorted(pns_names))
            problem("app_platform", f"unknown push service {platform_name!r} (known: {known})")
        if app_type_names is not None and app_type not in app_type_names:
            known = ", ".join(sorted(app_type_names))
            problem("app_type", f"unknown app type {app_type!r} (known: {known})")

        values: dict[str, Any] = {}
        tls_ca_file = credential("tls_ca_file")
        if platform == "apple":
            url = text("apple_push_url", "api.push.apple.com")
            try:
                values["apple_host"], values["apple_port"] = _host_port(url, 443)
            except ValueError as exc:
                problem("apple_push_url", str(exc))
            sandbox_url = text("apple_sandbox_push_url", "api.sandbox.push.apple.com")
            try:
                values["apple_sandbox_host"], values["apple_sandbox_port"] = _host_port(sandbox_url, 443)
            except ValueError as exc:
                problem("apple_sandbox_push_url", str(exc))
            certificate = credential("apple_certificate")
            key = credential("apple_key")
            values["apple_certificate"] = certificate
            values["apple_key"] = key
            values["key_id"] = text("key_id")
            values["team_id"] = text("team_id")
            if key is None:
                problem(
                    "apple_key",
                    "required: a .p8 key with key_id and team_id (token auth), "
                    "or the private key of apple_certificate (certificate auth)",
                )
            elif certificate is None:
                for option in ("key_id", "team_id"):
                    if not values[option]:
                        problem(option, "required for token auth (apple_key without apple_certificate)")
        elif platform == "firebase":
            values["firebase_push_url"] = text("firebase_push_url")
            if text("firebase_authorization_file") is None:
                if text("firebase_authorization_key"):
                    problem(
                        "firebase_authorization_key",
                        "the legacy FCM API (server key) was shut down by Google in 2024; "
                        "set firebase_authorization_file to a service-account JSON file "
                        "(FCM HTTP v1) instead",
                    )
                else:
                    problem("firebase_authorization_file", "required (service-account JSON file)")
            else:
                values["firebase_authorization_file"] = credential("firebase_authorization_file")

        urls = options.get("log_remote_urls", [])
        if isinstance(urls, str):
            urls = [urls]
        timeout_text = text("log_remote_timeout", "2")
        try:
            timeout = float(timeout_text or 2)
            if timeout <= 0:
                raise ValueError
        except ValueError:
            problem("log_remote_timeout", f"{timeout_text!r} is not a positive number of seconds")
            timeout = 2.0
        extra = {k: v for k, v in options.items() if k not in APP_OPTIONS}
        if not app_id:
            continue
        app = AppConfig(
            section=section,
            app_id=app_id,
            app_type=app_type or "sylk",
            platform=platform,
            tls_ca_file=tls_ca_file,
            log_remote_urls=tuple(u.strip() for u in urls if u.strip()),
            log_remote_key=text("log_remote_key"),
            log_remote_timeout=timeout,
            extra=extra,
            **values,
        )
        if app.key in applications:
            problem("app_id", f"{app_id} on {platform} is already configured in section "
                    f"[{applications[app.key].section}]")
            continue
        applications[app.key] = app
    if problems:
        raise ConfigError(problems)
    return applications


def _read_ini(path: Path, configspec: list[str] | None = None) -> Any:
    import configobj

    try:
        return configobj.ConfigObj(
            str(path), configspec=configspec, file_error=True, interpolation=False,
            encoding="utf-8",
        )
    except configobj.ConfigObjError as exc:
        details = "; ".join(str(e) for e in getattr(exc, "errors", [])) or str(exc)
        raise ConfigError([f"{path}: cannot parse: {details}"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or 'https://host:port/...' -> (host, port)."""
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if not text:
        raise ValueError(f"{value!r} has no host")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _security_settings(general: Any, general_path: Path, config_dir: Path, path_option: Any,
                       problems: list[str]) -> dict[str, Any]:
    """CURVE keys, bearer tokens and the memory budget (appends to ``problems``)."""
    from .ingress.bearer import BearerTokenError, load_bearer_tokens
    from .ingress.curve import CurveKeyError, load_server_keys

    server, zmq_section = general["server"], general["zmq"]
    result: dict[str, Any] = {"memory_budget_mb": server["memory_budget_mb"]}
    secret = path_option("zmq", "curve_secret_key", config_dir, zmq_section["curve_secret_key"])
    clients = path_option("zmq", "curve_clients", config_dir, zmq_section["curve_clients"])
    if secret is not None or clients is not None:
        if secret is None or clients is None:
            problems.append(f"{general_path} [zmq] curve_secret_key and curve_clients: set both or neither")
        else:
            try:
                result["zmq_curve"] = load_server_keys(secret, clients)
            except CurveKeyError as exc:
                problems.append(f"{general_path} [zmq] {exc.option}: {exc}")
    tokens_file = path_option("server", "bearer_tokens_file", config_dir, server["bearer_tokens_file"])
    if tokens_file is not None:
        try:
            result["bearer_tokens"] = load_bearer_tokens(tokens_file)
        except BearerTokenError as exc:
            problems.append(f"{general_path} [server] bearer_tokens_file: {exc}")
    return result

