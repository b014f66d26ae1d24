"""Configuration: general.ini + applications.ini -> immutable snapshots.

Option names and meanings follow Sylk Pushserver (see the README); each
problem found is reported with its file, section and option, and start-up
exits with status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any
from collections.abc import Mapping

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
    # Issue 13: worker processes (0: one per core) and the HTTP/1.1 server.
    workers: int = 1
    http_server: str = "fast"  # or hypercorn (see README)
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
    #: readable lines (file [section] option: ...) for what was ignored
    warnings: tuple[str, ...] = ()

    def application(self, app_id: str, platform: str) -> AppConfig | None:
        return self.applications.get((app_id, platform))


class ConfigError(Exception):
    """One or more problems in the configuration files.

    ``problems`` lists readable lines: ``file [section] option: problem``;
    ``warnings`` what was found besides (unknown names...), same form.
    """

    def __init__(self, problems: list[str], warnings: list[str] | tuple[str, ...] = ()):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = list(warnings)


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
workers = integer(min=0, max=64, default=1)
http_server = option('fast', 'hypercorn', default='fast')

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
"""  # noqa: E501 (configobj spec lines cannot be wrapped)

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
BUILTIN_APP_TYPES = frozenset({"sylk", "linphone"})

# Options of Sylk Pushserver's applications.ini that we read and ignore:
# ``voip`` chose Apple's push type there; here the event does.
SYLK_IGNORED_APP_OPTIONS = frozenset({"voip"})


def find_config_dir(explicit: str | Path | None) -> Path:
    """The config dir: the given one, else /etc/pushsidecar, else ./config."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise ConfigError([f"config folder {path} {what} (--config-dir)"])
        return path
    for candidate in (Path("/etc/pushsidecar"), Path("config")):
        if (candidate / "general.ini").is_file():
            return candidate.resolve()
    raise ConfigError(
        ["no general.ini found in /etc/pushsidecar or ./config; pass --config-dir DIR"]
    )


def general_spec() -> dict[str, dict[str, str]]:
    """GENERAL_SPEC as ``{section: {option: check}}``: the names general.ini may use."""
    import configobj

    spec = configobj.ConfigObj(GENERAL_SPEC.splitlines(), list_values=False, _inspec=True)
    return {section: dict(spec[section]) for section in spec.sections}


def load_settings(
    config_dir: str | Path,
    *,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
) -> Settings:
    """Read and validate general.ini and applications.ini below ``config_dir``.

    ``pns_names`` are the platforms an application may name (built-ins plus
    plugins); ``app_type_names`` the app types (None: do not check).  Raises
    :class:`ConfigError` listing every problem found in both files (and the
    warnings); the returned settings carry the warnings.
    """
    settings, problems, warnings = read_settings(
        config_dir, pns_names=pns_names, app_type_names=app_type_names)
    if problems or settings is None:
        raise ConfigError(problems, warnings)
    return settings


def read_settings(
    config_dir: str | Path,
    *,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
    with_applications: bool = True,
) -> tuple[Settings | None, list[str], list[str]]:
    """Like :func:`load_settings`, but returns ``(settings, problems, warnings)``.

    ``settings`` is None only when general.ini cannot be read at all;
    otherwise options that failed are replaced by their defaults and the
    applications that failed are left out, so that callers (check-config)
    can go on checking what did load.  ``with_applications=False`` reads
    general.ini only (the token store commands need nothing else).
    """
    from .config_ini import IniError, read_ini

    config_dir = Path(config_dir).resolve()
    general_path = config_dir / "general.ini"
    problems: list[str] = []
    warnings: list[str] = []
    if not config_dir.is_dir():
        return None, [f"config folder {config_dir} does not exist"], warnings
    if not general_path.is_file():
        return None, [f"{general_path}: file not found"], warnings
    try:
        raw = read_ini(general_path)
    except IniError as exc:
        return None, exc.problems, warnings

    data, value_problems, value_warnings = _general_values(general_path, raw)
    problems += value_problems
    warnings += value_warnings
    general, validation_problems = _validated_general(general_path, data)
    problems += validation_problems

    server = general["server"]
    apps_section = general["applications"]

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

    tls_certificate = resolve_path(config_dir, server["tls_certificate"])
    if tls_certificate is not None and not tls_certificate.is_file():
        problems.append(
            f"{general_path} [server] tls_certificate: file {tls_certificate} not found"
        )
    log_file = resolve_path(config_dir, server["log_file"])
    # Sylk logs to log_file whenever it is set; log_to_file = false turns that off.
    log_to_file = server["log_to_file"] if "log_to_file" in data.get("server", {}) else log_file is not None
    if log_to_file and log_file is None:
        problems.append(f"{general_path} [server] log_file: required when log_to_file is on")

    credentials_folder = resolve_path(config_dir, apps_section["credentials_folder"]) or config_dir
    applications_file = resolve_path(config_dir, apps_section["config_file"]) or (config_dir / "applications.ini")

    applications: dict[tuple[str, str], AppConfig] = {}
    if not with_applications:
        pass
    elif not applications_file.is_file():
        problems.append(f"{general_path} [applications] config_file: file {applications_file} not found")
    else:
        applications, app_problems, app_warnings = read_applications(
            applications_file,
            credentials_folder=credentials_folder,
            pns_names=pns_names,
            app_type_names=app_type_names,
        )
        problems.extend(app_problems)
        warnings.extend(app_warnings)

    security = _security_settings(general, general_path, config_dir, problems)
    cassandra = general["Cassandra"]
    zmq_section = general["zmq"]
    run_dir = resolve_path(config_dir, zmq_section["run_dir"]) or Path("/run/pushsidecar")
    settings = Settings(
        config_dir=config_dir,
        host=server["host"],
        port=server["port"],
        tls_certificate=tls_certificate,
        return_async=server["return_async"],
        allowed_hosts=tuple(allowed),
        max_body_size=server["max_body_size"],
        log_to_file=log_to_file,
        log_file=log_file,
        spool_dir=resolve_path(config_dir, server["spool_dir"]) or config_dir,
        debug=server["debug"],
        debug_hpack=server["debug_hpack"],
        workers=server["workers"],
        http_server=server["http_server"],
        applications_file=applications_file,
        credentials_folder=credentials_folder,
        extra_applications_dir=resolve_path(config_dir, apps_section["extra_applications_dir"]),
        extra_pns_dir=resolve_path(config_dir, apps_section["extra_pns_dir"]),
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
        warnings=tuple(warnings),
    )
    return settings, problems, warnings


def _general_values(
    path: Path, raw: dict[str, dict[str, str]],
) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """The known options of general.ini, cleaned (lists split): ``(values, problems, warnings)``."""
    from .config_ini import clean_value, closest, inline_comment, split_list

    spec = general_spec()
    problems: list[str] = []
    warnings: list[str] = []
    data: dict[str, dict[str, Any]] = {}
    for section, options in raw.items():
        known = spec.get(section)
        if known is None:
            warnings.append(_unknown(path, f"[{section}]", "section", closest(section, spec), brackets=True))
            continue
        values: dict[str, Any] = {}
        for option, value in options.items():
            if option not in known:
                warnings.append(_unknown(path, f"[{section}] {option}", "option", closest(option, known)))
                continue
            comment = inline_comment(value)
            if comment is not None:
                problems.append(_inline_comment_problem(path, section, option, comment))
                continue
            is_list = known[option].startswith(("force_list", "list"))
            values[option] = split_list(value) if is_list else clean_value(value)
        data[section] = values
    return data, problems, warnings


def _validated_general(path: Path, data: dict[str, dict[str, Any]]) -> tuple[Any, list[str]]:
    """``data`` checked and typed by GENERAL_SPEC: ``(configobj, problems)``.

    An option that fails is reported and replaced by its default, so the
    rest of the configuration can still be checked.
    """
    import configobj
    import validate  # type: ignore[import-untyped]  # configobj's, no type information

    general = configobj.ConfigObj(data, configspec=GENERAL_SPEC.splitlines(), interpolation=False)
    result = general.validate(validate.Validator(), preserve_errors=True)
    if result is True:
        return general, []
    problems = []
    for sections, option, error in configobj.flatten_errors(general, result):
        where = "".join(f"[{s}]" for s in sections)
        what = option if option is not None else "(section)"
        problems.append(f"{path} {where} {what}: {error or 'missing'}")
        if option is not None:
            section_values = general
            for name in sections:
                section_values = section_values[name]
            section_values.pop(option, None)
    general = configobj.ConfigObj(
        {s: dict(general[s].items()) for s in general.sections},
        configspec=GENERAL_SPEC.splitlines(), interpolation=False)
    general.validate(validate.Validator(), preserve_errors=True)
    return general, problems


def _unknown(path: Path, where: str, what: str, hint: str | None, *, brackets: bool = False) -> str:
    """The warning for an unknown section or option, with the closest known name."""
    if hint is not None:
        hint = f" (did you mean [{hint}]?)" if brackets else f" (did you mean {hint}?)"
    return f"{path} {where}: unknown {what}{hint or ''}; ignored"


def _inline_comment_problem(path: Path, section: str, option: str, comment: str) -> str:
    return (f"{path} [{section}] {option}: the value ends in {comment!r}: inline comments are not "
            "supported (nor by Sylk Pushserver); put the comment on a line of its own")


def load_applications(
    path: Path,
    *,
    credentials_folder: Path,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
) -> dict[tuple[str, str], AppConfig]:
    """Read applications.ini: one application per section.  Raises ConfigError."""
    applications, problems, warnings = read_applications(
        path, credentials_folder=credentials_folder, pns_names=pns_names,
        app_type_names=app_type_names)
    if problems:
        raise ConfigError(problems, warnings)
    return applications


def read_applications(
    path: Path,
    *,
    credentials_folder: Path,
    pns_names: frozenset[str] | set[str] = BUILTIN_PLATFORMS,
    app_type_names: frozenset[str] | set[str] | None = None,
) -> tuple[dict[tuple[str, str], AppConfig], list[str], list[str]]:
    """Read applications.ini: ``(applications, problems, warnings)``.

    A section with a problem is left out of ``applications``; the others
    are kept, so every problem of the file is found in one pass.
    """
    from .config_ini import IniError, clean_value, closest, inline_comment, read_ini, split_list
    from .model import canonical_platform

    problems: list[str] = []
    warnings: list[str] = []
    applications: dict[tuple[str, str], AppConfig] = {}
    try:
        ini = read_ini(path)
    except IniError as exc:
        return applications, exc.problems, warnings
    for section, raw_options in ini.items():
        section_problems = len(problems)
        if not raw_options:
            warnings.append(f"{path} [{section}]: no options set (all commented out?); section ignored")
            continue
        options: dict[str, str] = {}
        for option, value in raw_options.items():
            comment = inline_comment(value)
            if comment is not None:
                problems.append(_inline_comment_problem(path, section, option, comment))
            else:
                options[option] = clean_value(value)

        # These helpers are called within this iteration only: the loop
        # variables they read are the current section's.
        def problem(option: str, text: str) -> None:
            problems.append(f"{path} [{section}] {option}: {text}")  # noqa: B023

        def text(option: str, default: str | None = None) -> str | None:
            value = options.get(option, default)  # noqa: B023
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
                # Sylk's sample writes "credentials/x.json" for a path that is
                # relative to credentials_folder already.
                beside = (credentials_folder.parent / Path(value).expanduser()).resolve()
                hint = (f" ({beside} exists: paths are relative to credentials_folder "
                        f"{credentials_folder})") if beside.is_file() else ""
                problem(option, f"file {resolved} not found{hint}")
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
            url = text("apple_push_url") or "api.push.apple.com"
            try:
                values["apple_host"], values["apple_port"] = _host_port(url, 443)
            except ValueError as exc:
                problem("apple_push_url", str(exc))
            sandbox_url = text("apple_sandbox_push_url") or "api.sandbox.push.apple.com"
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

        urls = split_list(raw_options.get("log_remote_urls", ""))
        timeout_text = text("log_remote_timeout", "2")
        try:
            timeout = float(timeout_text or 2)
            if timeout <= 0:
                raise ValueError
        except ValueError:
            problem("log_remote_timeout", f"{timeout_text!r} is not a positive number of seconds")
            timeout = 2.0
        extra = {k: v for k, v in options.items()
                 if k not in APP_OPTIONS and k not in SYLK_IGNORED_APP_OPTIONS}
        if platform in BUILTIN_PLATFORMS and (app_type or "sylk") in BUILTIN_APP_TYPES:
            # Plugins read their own options from ``extra``: only built-ins are checked.
            for option in extra:
                warnings.append(_unknown(path, f"[{section}] {option}", "option", closest(option, APP_OPTIONS)))
        if not app_id or len(problems) > section_problems:
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
    if not applications and not problems:
        warnings.append(f"{path}: no applications configured: every push will be refused "
                        "(404 ... app is not configured)")
    return applications, problems, warnings


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


def resolve_path(base: Path, value: str) -> Path | None:
    """An option's path, relative to ``base`` (None when the option is empty)."""
    if not value:
        return None
    return (base / Path(value).expanduser()).resolve()


def _security_settings(general: Any, general_path: Path, config_dir: Path,
                       problems: list[str]) -> dict[str, Any]:
    """CURVE keys, bearer tokens and the memory budget (appends to ``problems``)."""
    from .key_files import BearerTokenError, CurveKeyError, load_bearer_tokens, load_server_keys

    server, zmq_section = general["server"], general["zmq"]
    result: dict[str, Any] = {"memory_budget_mb": server["memory_budget_mb"]}
    secret = resolve_path(config_dir, zmq_section["curve_secret_key"])
    clients = resolve_path(config_dir, zmq_section["curve_clients"])
    if secret is not None or clients is not None:
        if secret is None or clients is None:
            problems.append(f"{general_path} [zmq] curve_secret_key and curve_clients: set both or neither")
        else:
            try:
                result["zmq_curve"] = load_server_keys(secret, clients)
            except CurveKeyError as exc:
                problems.append(f"{general_path} [zmq] {exc.option}: {exc}")
    tokens_file = resolve_path(config_dir, server["bearer_tokens_file"])
    if tokens_file is not None:
        try:
            result["bearer_tokens"] = load_bearer_tokens(tokens_file)
        except BearerTokenError as exc:
            problems.append(f"{general_path} [server] bearer_tokens_file: {exc}")
    return result

