"""The running daemon: one nursery that owns every task, reload and stop.

Theory of operation: :func:`run_sidecar` loads the configuration, opens the
token store, builds the :class:`Runtime` (the object both ingresses talk
to), then starts, in one nursery: the push services' background tasks, the
HTTP API (Hypercorn's trio worker), the ZeroMQ PULL loop, the config
watcher and the signal handler.  SIGTERM/SIGINT stop the ingresses first,
give pushes in flight a few seconds to end, then cancel everything.  SIGHUP
(``systemctl reload``) reopens the log file and reloads the configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .apps.base import AppType
from .apps.registry import load_app_types
from .config import AppConfig, ConfigError, Settings
from .dispatch import Dispatcher
from .model import Outcome, OutcomeKind, Push
from .observe.metrics import Metrics
from .pns.base import PushService
from .pns.registry import PushServices, builtin_factories, load_plugin_classes
from .store.base import TokenStore

logger = logging.getLogger("sidecar.service")

STOP_GRACE_SECONDS = 5.0


class StartupError(Exception):
    """The daemon cannot start serving (a port or endpoint in use...); one line."""


def load_all(config_dir: Path) -> tuple[Settings, dict[str, AppType], dict[str, type[PushService]]]:
    """Load settings and plugins together, so applications can name plugin
    platforms and app types.  Raises ConfigError (with every problem)."""
    settings, app_types, pns_plugins, problems, warnings = read_all(config_dir)
    if problems or settings is None:
        raise ConfigError(problems, warnings)
    return settings, app_types, pns_plugins


def read_all(config_dir: Path) -> tuple[
    Settings | None, dict[str, AppType], dict[str, type[PushService]], list[str], list[str]
]:
    """Settings, app types and push-service plugins, with every problem and
    warning found: ``(settings, app_types, pns_plugins, problems, warnings)``."""
    # Plugins live in folders named by general.ini, so read it twice: once
    # leniently to find the folders, then strictly with the plugin names.
    from .config import read_settings
    from .plugins import PluginError

    probe, problems, _ = read_settings(config_dir, pns_names=_ANY, app_type_names=None)
    if probe is None:
        return None, {}, {}, problems, []
    try:
        pns_plugins = load_plugin_classes(probe.extra_pns_dir)
        app_types = load_app_types(probe.extra_applications_dir)
    except PluginError as exc:
        return None, {}, {}, [*problems, str(exc)], []
    pns_names = {"apple", "firebase", *pns_plugins}
    settings, problems, warnings = read_settings(
        config_dir, pns_names=pns_names, app_type_names=set(app_types))
    return settings, app_types, pns_plugins, problems, warnings


def apply_push_services(settings: Settings, services: PushServices,
                        changed_files: frozenset[Path] = frozenset()) -> list[str]:
    """Put the applications' push services in force (keys, certificates and
    service accounts are read and parsed now), all or nothing: the problems
    are what start-up or a reload refuses, one line per application (empty:
    in force).  The daemon, a reload and ``check-config`` call this."""
    return [f"{settings.applications_file} [{app.section}]: {problem}"
            for app, problem in services.apply(settings.applications, changed_files=changed_files)]


def server_tls_problems(settings: Settings) -> list[str]:
    """The HTTP API's certificate and key (``tls_certificate``) as the server will load them."""
    import ssl

    if settings.tls_certificate is None:
        return []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_certificate, settings.tls_certificate)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return [f"{settings.config_dir / 'general.ini'} [server] tls_certificate: cannot load "
                f"{settings.tls_certificate} as a PEM certificate and private key: {why}"]
    return []


def check_configuration(config_dir: Path) -> tuple[Settings | None, list[str], list[str]]:
    """Everything the daemon checks before it serves, all at once:
    ``(settings, problems, warnings)``.  Opens no connection, writes nothing."""
    settings, _, pns_plugins, problems, warnings = read_all(config_dir)
    if settings is None:
        return None, problems, warnings

    async def check_credentials() -> list[str]:
        async with trio.open_nursery() as nursery:
            factories = builtin_factories(debug_hpack=False, state_dir=None)
            factories.update(pns_plugins)
            services = PushServices(nursery, factories)
            try:
                return apply_push_services(settings, services)
            finally:
                await services.aclose()
                nursery.cancel_scope.cancel()

    return settings, problems + server_tls_problems(settings) + trio.run(check_credentials), warnings


class _AnyName(frozenset[str]):
    def __contains__(self, item: object) -> bool:  # accepts every platform name
        return True


_ANY = _AnyName()


class Runtime:
    """What the ingresses see: current settings, app types, dispatch, store.

    ``settings`` and ``app_types`` are replaced atomically by a reload; a
    request reads them once and works with that snapshot.
    """

    def __init__(
        self,
        settings: Settings,
        app_types: dict[str, AppType],
        services: PushServices,
        store: TokenStore,
        nursery: trio.Nursery,
        *,
        listeners: list[Callable[..., None]] | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.app_types = app_types
        self.services = services
        self.store = store
        self.metrics = metrics or Metrics()
        self.metrics.set_applications(settings.applications)  # label values stay bounded
        from .budget import limits_for

        self.dispatcher = Dispatcher(services, listeners=listeners, metrics=self.metrics,
                                     max_in_flight=limits_for(settings.memory_budget_mb).in_flight)
        self._nursery = nursery
        self.proxy_ingress: Any = None  # set once the ZeroMQ socket is bound
        #: command-line values that replace general.ini's (--ip, --port; None: not given)
        self.overrides: dict[str, Any] = {}

    async def dispatch(self, push: Push, app: AppConfig, app_type: AppType) -> Outcome:
        return await self.dispatcher.dispatch(push, app, app_type)

    def spawn(self, push: Push, app: AppConfig, app_type: AppType) -> None:
        """Send in the background (``return_async = false``)."""
        self._nursery.start_soon(self.dispatcher.dispatch, push, app, app_type)

    def drop(self, push: Push, app: AppConfig | None, reason: str, kind: OutcomeKind) -> Outcome:
        """Record the outcome of a push that will never be dispatched (see Dispatcher.drop)."""
        return self.dispatcher.drop(push, app, reason, kind=kind)

    def apply_settings(self, settings: Settings, app_types: dict[str, AppType]) -> None:
        """Swap in a reloaded configuration (its services are already in force)."""
        self.settings = settings
        self.app_types = app_types
        self.metrics.set_applications(settings.applications)


def refresh_metrics(runtime: Runtime) -> None:
    """Copy the counters kept by the push services and the ZeroMQ ingress into
    the metrics (called at each scrape: nothing on the push path)."""
    metrics = runtime.metrics
    for (app_id, platform), stats in runtime.services.statistics().items():
        service = f"{platform}:{app_id}"
        metrics.set_connections(service, 1 if stats.get("connected") else 0)
        # The first connect is not a reconnect.
        metrics.advance_reconnects(service, max(int(stats.get("connects", 0)) - 1, 0))
        if "jwt_renewals" in stats:
            metrics.advance_renewals(service, "jwt", int(stats["jwt_renewals"]))
        if "oauth_fetches" in stats:
            metrics.advance_renewals(service, "oauth", int(stats["oauth_fetches"]))
    proxy = runtime.proxy_ingress
    if proxy is not None:
        counters = proxy.counters
        metrics.advance_zmq_rejected("undecodable", counters.bad)
        metrics.advance_zmq_rejected("expired", counters.expired)
        metrics.advance_zmq_rejected("duplicate", counters.duplicates)
        metrics.advance_zmq_rejected("overloaded", counters.shed)
        metrics.advance_zmq_rejected("unauthorised_client", counters.clients_refused)
        metrics.advance_zmq_rejected("invalid", proxy.rejected)


class SidecarHandle:
    """What :func:`run_sidecar` reports once it is ready (tests use it)."""

    def __init__(self, runtime: Runtime, http_urls: list[str], zmq_endpoint: str | None, stop: Callable[[], None]):
        self.runtime = runtime
        self.http_urls = http_urls
        self.zmq_endpoint = zmq_endpoint
        self.stop = stop

    @property
    def http_url(self) -> str:
        return self.http_urls[0]


async def run_sidecar(
    config_dir: Path,
    *,
    ip: str | None = None,
    port: int | None = None,
    handle_signals: bool = True,
    log_handle: Any = None,
    task_status: trio.TaskStatus[SidecarHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the sidecar until stopped (SIGTERM/SIGINT or ``handle.stop()``).

    Raises ConfigError (bad configuration, including unusable credentials).
    """
    from .ingress.http import create_http_app
    from .observe import systemd
    from .observe.remote import RemoteLogger
    from .store.factory import open_store
    from .store.instrumented import InstrumentedStore

    from .workers import WORKER_COUNT_ENV, WORKER_ZMQ_ENV, metrics_folder, worker_index

    settings, app_types, pns_plugins = load_all(config_dir)
    for warning in settings.warnings:
        logger.warning("configuration: %s", warning)
    if ip is not None or port is not None:
        settings = _override(settings, ip=ip, port=port)
    worker = worker_index()
    if worker is not None and os.environ.get(WORKER_ZMQ_ENV):
        # One of N workers: the supervisor routes the proxies' frames to our own socket.
        settings = dataclasses.replace(settings, zmq_endpoint=os.environ[WORKER_ZMQ_ENV])
    problems = server_tls_problems(settings)
    if problems:
        raise ConfigError(problems)
    stop_requested = trio.Event()
    raw_store = await open_store(settings)
    try:
        with _unwrap_config_error():
            async with trio.open_nursery() as nursery:
                factories = builtin_factories(debug_hpack=settings.debug_hpack, state_dir=settings.spool_dir,
                                              shared_oauth=worker is not None)
                for name, cls in pns_plugins.items():
                    factories[name] = cls
                services = PushServices(nursery, factories)
                problems = apply_push_services(settings, services)
                if problems:
                    raise ConfigError(problems)
                metrics = Metrics()
                store = InstrumentedStore(
                    raw_store, metrics, "cassandra" if settings.cassandra.enabled else "sqlite")
                remote_logger = RemoteLogger(metrics=metrics)
                await nursery.start(remote_logger.run)
                runtime = Runtime(settings, app_types, services, store, nursery,
                                  listeners=[remote_logger], metrics=metrics)
                runtime.overrides = {"host": ip, "port": port}
                metrics.add_refresh(lambda: refresh_metrics(runtime))
                if worker is not None:
                    from .observe.worker_metrics import WorkerMetrics

                    shared = WorkerMetrics(metrics, metrics_folder(settings.run_dir), worker,
                                           int(os.environ.get(WORKER_COUNT_ENV, "1")))
                    metrics.render = shared.render  # type: ignore[method-assign]  # /metrics adds all up
                    nursery.start_soon(shared.publish_loop)

                http_done = trio.Event()
                http_urls = await nursery.start(
                    _serve_http, create_http_app(runtime), runtime, settings, stop_requested, http_done)
                zmq_endpoint = None
                if settings.zmq_enabled:
                    zmq_endpoint = await nursery.start(_serve_zmq, runtime, settings)
                watcher = ConfigWatcher(runtime, config_dir)
                await watcher.remember_files()
                nursery.start_soon(watcher.watch)
                if handle_signals:
                    nursery.start_soon(_handle_signals, watcher, stop_requested, log_handle)
                nursery.start_soon(systemd.watchdog_loop)
                systemd.notify_ready()
                logger.info(
                    "pushsidecar ready: http %s, zmq %s, %d application(s), store %s",
                    ", ".join(http_urls), zmq_endpoint or "off", len(settings.applications),
                    "cassandra" if settings.cassandra.enabled else "sqlite",
                )
                # Start-up objects (modules, config, TLS contexts) live for good:
                # keep them out of the garbage collector's full scans, which
                # otherwise add milliseconds to the latency tail under load.
                gc.freeze()
                task_status.started(SidecarHandle(runtime, http_urls, zmq_endpoint, stop_requested.set))
                await stop_requested.wait()
                systemd.notify_stopping()
                logger.info("stopping: %d push(es) in flight", runtime.dispatcher.in_flight)
                with trio.move_on_after(STOP_GRACE_SECONDS):
                    while runtime.dispatcher.in_flight:
                        await trio.sleep(0.05)
                    # Pushes are done; let the HTTP server write their answers
                    # (it returns once its requests are answered).
                    await http_done.wait()
                await services.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await raw_store.aclose()
    logger.info("stopped")


@contextlib.contextmanager
def _unwrap_config_error() -> Iterator[None]:
    """Raise a ConfigError (or StartupError) from the nursery as itself, not in
    an ExceptionGroup, so callers (``run_daemon``: exit 2, or 1) can catch it
    with a plain ``except``."""
    from .ingress.endpoint_guard import EndpointError

    try:
        yield
    except BaseExceptionGroup as group:
        startup, rest = group.split((StartupError, EndpointError))
        if startup is not None and rest is None:
            raise StartupError("; ".join(str(exc) for exc in leaf_exceptions(startup))) from group
        errors, rest = group.split(ConfigError)
        if errors is None or rest is not None:
            raise
        problems = [p for exc in leaf_exceptions(errors) for p in exc.problems]
        raise ConfigError(problems) from group


def leaf_exceptions(group: BaseExceptionGroup) -> Iterator[Any]:
    """The exceptions of a (nested) group, groups flattened."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaf_exceptions(exc)
        else:
            yield exc


def _override(settings: Settings, *, ip: str | None, port: int | None) -> Settings:
    changes: dict[str, Any] = {}
    if ip is not None:
        changes["host"] = ip
    if port is not None:
        changes["port"] = port
    return dataclasses.replace(settings, **changes)


async def _serve_http(app: Any, runtime: Runtime, settings: Settings, stop_requested: trio.Event,
                      done: trio.Event, *, task_status: trio.TaskStatus[list[str]]) -> None:
    """Serve the HTTP API until ``stop_requested``; set ``done`` once every
    request was answered (or it failed).

    Plain HTTP/1.1 goes to our httptools server (``http_server = fast``, the
    default: about a third of Hypercorn's CPU per request); TLS and
    ``http_server = hypercorn`` to Hypercorn.  Both serve the same ASGI app.
    """
    try:
        if settings.tls_certificate is None and settings.http_server == "fast":
            from .ingress.endpoint_guard import http_in_use_message, is_address_in_use
            from .ingress.fast_http import FastHttpServer, open_listener

            try:
                listener = await open_listener(settings.host, settings.port, reuse_port=_reuse_port())
            except OSError as exc:  # as for Hypercorn below: one line, no traceback
                if is_address_in_use(exc):
                    raise StartupError(http_in_use_message(settings.host, settings.port)) from exc
                raise StartupError(f"cannot listen for HTTP on {settings.host}:{settings.port}: "
                                   f"{exc.strerror or exc}") from exc
            server = FastHttpServer(app, runtime, lambda: runtime.settings)
            await server.serve_on(listener, stop_requested, task_status=task_status)
        else:
            await _serve_http_until_stopped(app, settings, stop_requested, task_status=task_status)
    finally:
        done.set()


def _reuse_port() -> bool:
    """Whether this process is one of several workers sharing the port."""
    from .workers import worker_index

    return worker_index() is not None


async def _serve_http_until_stopped(app: Any, settings: Settings, stop_requested: trio.Event,
                                    *, task_status: trio.TaskStatus[list[str]]) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("sidecar.http.server")
    config.keep_alive_max_requests = 100000
    config.graceful_timeout = STOP_GRACE_SECONDS
    if _reuse_port():
        config.workers = 2  # not used to fork (we do): makes Hypercorn bind with SO_REUSEPORT
    if settings.tls_certificate is not None:
        config.certfile = str(settings.tls_certificate)
        config.keyfile = str(settings.tls_certificate)
    # Bind here, where a port in use is a plain OSError (inside Hypercorn it
    # would come out of nested nurseries), then hand the sockets over.
    from .ingress.endpoint_guard import http_in_use_message, is_address_in_use

    try:
        sockets = config.create_sockets()
    except OSError as exc:
        if is_address_in_use(exc):
            raise StartupError(http_in_use_message(settings.host, settings.port)) from exc
        raise StartupError(f"cannot listen for HTTP on {settings.host}:{settings.port}: "
                           f"{exc.strerror or exc}") from exc
    config.bind = [f"fd://{sock.detach()}" for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]]
    await serve(app, config, shutdown_trigger=stop_requested.wait, task_status=task_status)


async def _handle_signals(
    watcher: ConfigWatcher, stop_requested: trio.Event, log_handle: Any
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if log_handle is not None:
                    log_handle.reopen()  # logrotate moved the file
                await watcher.reload(reason="SIGHUP")
            else:
                logger.info("received %s", signal.Signals(signum).name)
                stop_requested.set()


def reload_config(
    runtime: Runtime, config_dir: Path, *, reason: str, changed_files: frozenset[Path] = frozenset()
) -> bool:
    """Load the configuration again; keep the old one if the new one is invalid.

    The services of new and changed applications, and of applications whose
    credential files changed on disk, are built (credentials loaded and
    checked) before anything is swapped: if one fails, the reload is
    rejected and the running services, old keys included, stay in force.
    Otherwise the services of changed and removed applications are retired
    (drained, then closed; see :class:`~sidecar.pns.registry.PushServices`).
    """
    from .observe import systemd

    def reject(problems: list[str]) -> bool:
        logger.error("reload (%s) rejected, keeping the running configuration:\n  %s",
                     reason, "\n  ".join(problems))
        runtime.metrics.config_reload(False)
        systemd.notify_ready()
        return False

    systemd.notify_reloading()
    try:
        settings, app_types, _ = load_all(config_dir)
    except ConfigError as exc:
        return reject(exc.problems)
    problems = apply_push_services(settings, runtime.services, changed_files)
    if problems:
        return reject(problems)
    current = runtime.settings
    overrides = runtime.overrides
    wanted = _override(settings, ip=overrides.get("host"), port=overrides.get("port"))
    restart = restart_needed(current, wanted, tls_file_changed=current.tls_certificate in changed_files)
    # What is listened on stays as it is until a restart.
    settings = dataclasses.replace(
        wanted, host=current.host, port=current.port, tls_certificate=current.tls_certificate,
        zmq_enabled=current.zmq_enabled, zmq_endpoint=current.zmq_endpoint, run_dir=current.run_dir)
    runtime.apply_settings(settings, app_types)
    runtime.metrics.config_reload(True)
    systemd.notify_ready()
    for warning in settings.warnings:
        if warning not in current.warnings:
            logger.warning("configuration: %s", warning)
    if restart:
        logger.warning("configuration reloaded (%s): %d application(s); not applied until a restart "
                       "(systemctl restart pushsidecar): %s",
                       reason, len(settings.applications), "; ".join(restart))
    else:
        logger.info("configuration reloaded (%s): %d application(s)", reason, len(settings.applications))
    return True


def restart_needed(running: Settings, loaded: Settings, *, tls_file_changed: bool = False) -> list[str]:
    """The changed settings that only a restart applies: what is listened on."""
    def zmq_endpoint(settings: Settings) -> str:
        if not settings.zmq_enabled:
            return "off"
        return settings.zmq_endpoint or f"ipc://{settings.run_dir}/push.sock"

    changes = []
    for label, old, new in (
        ("[server] host", running.host, loaded.host),
        ("[server] port", running.port, loaded.port),
        ("[server] tls_certificate", running.tls_certificate or "(none)", loaded.tls_certificate or "(none)"),
        ("[zmq] endpoint", zmq_endpoint(running), zmq_endpoint(loaded)),
    ):
        if old != new:
            changes.append(f"{label} {old} -> {new}")
    if tls_file_changed and running.tls_certificate == loaded.tls_certificate:
        changes.append(f"[server] tls_certificate file {running.tls_certificate} changed")
    return changes


def run_daemon(config_dir: str | None, *, ip: str | None, port: int | None, debug: bool) -> int:
    """The foreground daemon behind ``pushsidecar``: exit 0 on a clean stop,
    2 on a configuration error."""
    import sys

    from .config import find_config_dir
    from .observe.log import setup_logging

    try:
        path = find_config_dir(config_dir)
        settings, _, _ = load_all(path)
    except ConfigError as exc:
        print("configuration errors:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    try:
        log_handle = setup_logging(
            debug=debug or settings.debug,
            log_to_file=settings.log_to_file,
            log_file=settings.log_file,
            debug_hpack=settings.debug_hpack,
            debug_cassandra=settings.cassandra.debug,
        )
    except OSError as exc:
        print(f"cannot start: cannot open the log file {settings.log_file} ([server] log_file): "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    from .workers import run_supervisor, worker_count, worker_index

    if worker_index() is None and worker_count(settings) > 1:
        return run_supervisor(path, settings, ip=ip, port=port, debug=debug)
    try:
        trio.run(lambda: run_sidecar(path, ip=ip, port=port, log_handle=log_handle))
    except ConfigError as exc:
        print("configuration errors:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve_zmq(runtime: Runtime, settings: Settings, *, task_status: trio.TaskStatus[str]) -> None:
    """The ZeroMQ PULL socket of the proxy scripts, feeding the same dispatcher."""
    from functools import partial

    from .budget import limits_for
    from .ingress.proxy import ProxyIngress
    from .ingress.zmq import serve_zmq

    endpoint = settings.zmq_endpoint or f"ipc://{settings.run_dir}/push.sock"
    async with trio.open_nursery() as nursery:
        limits = limits_for(settings.memory_budget_mb)
        proxy = ProxyIngress(runtime, nursery, max_dispatches=limits.in_flight)
        runtime.proxy_ingress = proxy
        curve = settings.zmq_curve
        bound = await nursery.start(partial(
            serve_zmq, endpoint, proxy.handle, counters=proxy.counters, on_discard=proxy.discard,
            ipc_dir_mode=0o750, ipc_socket_mode=0o660,
            rcvhwm=limits.zmq_queue,
            overloaded=lambda: proxy.overloaded() or runtime.dispatcher.is_full(_zmq_pending(runtime, proxy)),
            curve=curve,
            allowed_clients=lambda: (runtime.settings.zmq_curve or curve).clients,
        ))
        proxy.endpoint = bound  # the peer= of its pushes' log lines
        task_status.started(bound)


def _zmq_pending(runtime: Runtime, proxy: Any) -> int:
    """Messages the ZeroMQ reader handed over whose push task has not started yet.

    Every message the reader lets through (or discards) reaches the
    dispatcher once as a ``zmq`` push, through ``dispatch`` or ``drop``; the
    difference is what is still queued as tasks, which the in-flight count
    does not see yet.  (An account message fans out to several pushes, so
    the estimate errs low, never high.)
    """
    c = proxy.counters
    arrived = runtime.dispatcher.received_from.get("zmq", 0)
    pending: int = max(0, c.accepted + c.expired + c.duplicates + c.shed - arrived)
    return pending


CONFIG_POLL_SECONDS = 2.0


def _file_stamps(paths: set[Path]) -> dict[Path, tuple[float, int] | None]:
    stamps: dict[Path, tuple[float, int] | None] = {}
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            stamps[path] = None
        else:
            stamps[path] = (info.st_mtime, info.st_size)
    return stamps


def _watched_files(settings: Settings, config_dir: Path) -> set[Path]:
    from .pns.registry import credential_files

    files = {config_dir / "general.ini", settings.applications_file}
    if settings.tls_certificate is not None:
        files.add(settings.tls_certificate)  # a renewed certificate: say it needs a restart
    for app in settings.applications.values():
        files |= credential_files(app)
    return files


class ConfigWatcher:
    """Reloads the configuration when its files change, on a poll or on SIGHUP.

    Both paths share the files' last seen stamps, so a SIGHUP after a key was
    replaced also retires the services using that key (the new one is in
    force when the reload is logged), and the next poll does not reload again.
    """

    def __init__(self, runtime: Runtime, config_dir: Path):
        self._runtime = runtime
        self._config_dir = config_dir
        self._stamps: dict[Path, tuple[float, int] | None] = {}
        self._lock = trio.Lock()  # one reload at a time (poll vs. SIGHUP)

    async def remember_files(self) -> None:
        """Take the stamps of the files in use now (call at start-up)."""
        files = _watched_files(self._runtime.settings, self._config_dir)
        self._stamps = await trio.to_thread.run_sync(_file_stamps, files)

    async def reload(self, reason: str | None = None) -> bool:
        """Reload if a file changed, or always when ``reason`` is given.

        Returns:
          True if a new configuration is in force.
        """
        async with self._lock:
            runtime = self._runtime
            files = _watched_files(runtime.settings, self._config_dir)
            current = await trio.to_thread.run_sync(_file_stamps, files | self._stamps.keys())
            changed = {p for p in current if current[p] != self._stamps.get(p)}
            if reason is None:
                if not changed:
                    return False
                reason = "changed: " + ", ".join(sorted(p.name for p in changed))
            self._stamps = current
            if not reload_config(runtime, self._config_dir, reason=reason,
                                 changed_files=frozenset(changed)):
                return False
            # The new configuration may name other files: stamp those too,
            # keeping the stamps just read (a change since then is seen next time).
            files = _watched_files(runtime.settings, self._config_dir)
            added = await trio.to_thread.run_sync(_file_stamps, files - current.keys())
            self._stamps = {p: current[p] for p in files & current.keys()} | added
            return True

    async def watch(self) -> None:
        """Poll the config and credential files; reload when one changes.

        Polling (every couple of seconds, a few stat calls) is portable and
        cheap; inotify would add a dependency for no gain at this scale.
        """
        while True:
            await trio.sleep(CONFIG_POLL_SECONDS)
            await self.reload()
