"""Run a private Kamailio or OpenSIPS, and sipp, for the integration tests.

Each proxy runs in the foreground from its example configuration
(kamailio_app_python/kamailio.cfg, opensips_scripts/opensips.cfg) with only
the values an operator edits at its top changed: listener (a free port),
script path, sidecar endpoint and wait.  sipp runs the scenarios in
tests/integration/sipp.

OpenSIPS is built from the vendored tarballs by scripts/build_opensips.sh
(scripts/test.sh does it and exports PUSHSIDECAR_OPENSIPS_<version>); the
tests find the cached build otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFG_TEMPLATE = ROOT / "kamailio_app_python" / "kamailio.cfg"
SCRIPT = ROOT / "kamailio_app_python" / "pushsidecar_kamailio.py"
OPENSIPS_CFG = ROOT / "opensips_scripts" / "opensips.cfg"
OPENSIPS_SCRIPT = ROOT / "opensips_scripts" / "pushsidecar_opensips.py"
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
REQUIRE_ENV = "PUSHSIDECAR_REQUIRE_KAMAILIO"
REQUIRE_OPENSIPS_ENV = "PUSHSIDECAR_REQUIRE_OPENSIPS"
#: proxy name in the tests -> OpenSIPS release built from ../shared/vendor
OPENSIPS_VERSIONS = {"opensips-3.4": "3.4.18", "opensips-3.6": "3.6.8"}
PROXIES = ("kamailio", *OPENSIPS_VERSIONS)


def _tool(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    return found


KAMAILIO = _tool("kamailio") or "kamailio"
SIPP = _tool("sipp") or "sipp"


def require_tools() -> None:
    """Skip (or, in CI, fail loudly) when Kamailio, its Python module or sipp is missing."""
    missing = [tool for tool in ("kamailio", "sipp") if _tool(tool) is None]
    module_dirs = [Path("/usr/lib/x86_64-linux-gnu/kamailio/modules"),
                   Path("/usr/lib/aarch64-linux-gnu/kamailio/modules"),
                   Path("/usr/lib/kamailio/modules"), Path("/usr/local/lib64/kamailio/modules")]
    if not any((d / "app_python3.so").exists() for d in module_dirs):
        missing.append("kamailio app_python3 module (kamailio-python3-modules)")
    try:
        subprocess.run(["/usr/bin/python3", "-c", "import zmq, msgpack"], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        missing.append("python3-zmq/python3-msgpack for /usr/bin/python3")
    skip_or_fail("Kamailio", REQUIRE_ENV, missing)


def skip_or_fail(what: str, require_env: str, missing: list[str]) -> None:
    """With components missing: fail when ``require_env`` is 1 (CI), else skip, saying why."""
    if not missing:
        return
    reason = "missing: " + ", ".join(missing)
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{require_env}=1 but {reason}", pytrace=False)
    print(f"SKIPPED {what} integration tests: {reason}")
    pytest.skip(reason)


def free_udp_port(count: int = 1) -> int:
    """A UDP port free on 127.0.0.1, with the ``count - 1`` ports after it free too."""
    for _ in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        socks = [probe]
        try:
            for offset in range(1, count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_config(template: str, values: dict[str, str]) -> str:
    """Replace the value of each ``#!substdef "!NAME!value!g"`` line named in ``values``."""
    out = template
    for name, value in values.items():
        pattern = re.compile(rf'^#!substdef "!{re.escape(name)}!.*!g"$', re.MULTILINE)
        if "!" in value:
            raise ValueError(f"{name}: '!' cannot appear in a substdef value")
        replacement = f'#!substdef "!{name}!{value}!g"'
        out, count = pattern.subn(lambda _m, text=replacement: text, out)
        if count != 1:
            raise KeyError(f"no #!substdef line for {name} in the template")
    return out


@dataclasses.dataclass
class Proxy:
    """A running proxy: Kamailio or OpenSIPS (``name`` is one of PROXIES)."""

    name: str
    port: int
    endpoint: str
    run_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_kamailio(tmp: Path, *, endpoint: str, wait_ms: int, children: int = 2,
                   sndhwm: int = 10000, env: dict[str, str] | None = None,
                   shm_mb: int = 64, curve: tuple[str, str] | None = None) -> Proxy:
    """Render the example config and start Kamailio in the foreground; wait until it answers.

    ``env`` adds variables to Kamailio's environment (the caller's PUSHSIDECAR_*
    variables are never passed on; e.g. ``PUSHSIDECAR_BENCH_TIMING`` must come here).
    """
    run_dir = tmp / "kamailio-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    cfg = render_config(CFG_TEMPLATE.read_text(), {
        "PS_LISTEN": f"udp:127.0.0.1:{port}",
        "PS_SCRIPT": str(SCRIPT),
        "PUSHSIDECAR_ENDPOINT": endpoint,
        "PUSHSIDECAR_SNDHWM": str(sndhwm),
        "PS_WAIT_MS": str(wait_ms),
        "PS_CHILDREN": str(children),
        "PUSHSIDECAR_CURVE_SERVER_KEY": curve[0] if curve else "",
        "PUSHSIDECAR_CURVE_CLIENT_KEY": curve[1] if curve else "",
    })
    cfg_path = run_dir / "kamailio.cfg"
    cfg_path.write_text(cfg)
    check = subprocess.run([KAMAILIO, "-c", "-f", str(cfg_path)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, f"kamailio -c failed:\n{check.stdout}\n{check.stderr}"
    log_path = run_dir / "kamailio.log"
    kam_env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSIDECAR_")}
    kam_env.update(env or {})
    process = subprocess.Popen(
        [KAMAILIO, "-f", str(cfg_path), "-DD", "-E", "-Y", str(run_dir),
         "-P", str(run_dir / "kamailio.pid"), "-m", str(shm_mb), "-M", "8", "-w", str(run_dir)],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=kam_env,
    )
    kam = Proxy("kamailio", port, endpoint, run_dir, process, log_path)
    try:
        _wait_until_answering(kam)
    except BaseException:
        kam.stop()
        raise
    return kam


def _wait_until_answering(kam: Proxy, timeout: float = 15.0) -> None:
    """Send OPTIONS until the proxy answers (the example configs reply 405 to OPTIONS)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        me = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            if kam.process.poll() is not None:
                raise AssertionError(f"{kam.name} exited with {kam.process.returncode}:\n{kam.log()}")
            n += 1
            s.sendto((
                f"OPTIONS sip:ping@127.0.0.1:{kam.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKping{n}\r\n"
                f"From: <sip:ping@127.0.0.1>;tag=p{n}\r\nTo: <sip:ping@127.0.0.1>\r\n"
                f"Call-ID: ping-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", kam.port))
            try:
                if s.recv(4096).startswith(b"SIP/2.0 "):
                    return
            except TimeoutError:
                continue
    raise AssertionError(f"{kam.name} did not answer within {timeout} s:\n{kam.log()}")


@dataclasses.dataclass
class SippRun:
    name: str
    process: subprocess.Popen
    log_dir: Path
    started: float
    proxy: Proxy


    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"sipp {self.name} still running after {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        text = []
        for path in sorted(self.log_dir.glob("*")):
            if path.is_file():
                text.append(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        # What the proxy made of it: a failed call is explained there, not in sipp's logs.
        text.append(f"--- {self.proxy.name} log (last 80 lines)\n" + "\n".join(self.proxy.log().splitlines()[-80:]))
        return "\n".join(text)

    def assert_ok(self, timeout: float = 30.0) -> float:
        """Wait for sipp to end; assert every call succeeded; return the elapsed seconds."""
        code = self.wait(timeout)
        assert code == 0, f"sipp {self.name} exit status {code}:\n{self.output()}"
        return time.monotonic() - self.started


def sipp(tmp: Path, name: str, scenario: str, kam: Proxy, *, calls: int = 1, rate: float = 10,
         keys: dict[str, str] | None = None, local_port: int | None = None,
         timeout_s: int = 20, pause_ms: int = 200) -> SippRun:
    """Start sipp on ``scenario`` against ``kam``; ``keys`` become ``-key name value``;
    ``pause_ms`` is the length of a scenario's plain ``<pause/>``."""
    log_dir = tmp / f"sipp-{name}"
    log_dir.mkdir(parents=True, exist_ok=True)
    args = [
        SIPP, f"127.0.0.1:{kam.port}", "-sf", str(SIPP_DIR / scenario),
        "-i", "127.0.0.1", "-p", str(local_port or free_udp_port()),
        "-mp", str(free_udp_port(4)), "-cp", str(free_udp_port()),
        "-m", str(calls), "-r", str(rate), "-timeout", f"{timeout_s}s", "-timeout_error",
        "-d", str(pause_ms),
        "-nostdin",
        "-trace_err", "-trace_msg", "-message_file", str(log_dir / "messages.log"),
        "-error_file", str(log_dir / "errors.log"),
    ]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    out = (log_dir / "stdout.log").open("wb")
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=log_dir)
    return SippRun(name, process, log_dir, time.monotonic(), kam)


# -- OpenSIPS -------------------------------------------------------------------


def opensips_prefix(name: str) -> Path | None:
    """The install folder of OpenSIPS ``name`` (see OPENSIPS_VERSIONS), or None."""
    version = OPENSIPS_VERSIONS[name]
    given = os.environ.get("PUSHSIDECAR_OPENSIPS_" + version.replace(".", "_"))
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pushsidecar"
    builds = sorted(cache.glob(f"opensips-{version}-*/sbin/opensips"), key=lambda p: p.stat().st_mtime)
    return builds[-1].parent.parent if builds else None


def require_opensips(name: str) -> Path:
    """The OpenSIPS install to use; skip (or, in CI, fail loudly) without one."""
    missing = []
    prefix = opensips_prefix(name)
    if prefix is None or not (prefix / "sbin" / "opensips").exists():
        missing.append(f"OpenSIPS {OPENSIPS_VERSIONS[name]} (bash scripts/build_opensips.sh "
                       f"{OPENSIPS_VERSIONS[name]})")
    if _tool("sipp") is None:
        missing.append("sipp")
    skip_or_fail("OpenSIPS", REQUIRE_OPENSIPS_ENV, missing)
    assert prefix is not None
    return prefix


def render_opensips_config(template: str, values: dict[str, str]) -> str:
    """Change the values an operator edits at the top of opensips.cfg.

    ``values`` keys: ``socket``, ``mpath``, ``ps_endpoint``, ``ps_wait``,
    ``script_name``; each must match exactly one line.
    """
    patterns = {
        "socket": (r"^socket = .*$", "socket = {}"),
        "mpath": (r'^mpath = ".*"$', 'mpath = "{}"'),
        "ps_curve_server_key": (r'^modparam\("cfgutils", "shvset", "ps_curve_server_key=s:.*"\)$',
                                'modparam("cfgutils", "shvset", "ps_curve_server_key=s:{}")'),
        "ps_curve_client_key": (r'^modparam\("cfgutils", "shvset", "ps_curve_client_key=s:.*"\)$',
                                'modparam("cfgutils", "shvset", "ps_curve_client_key=s:{}")'),
        "ps_endpoint": (r'^modparam\("cfgutils", "shvset", "ps_endpoint=s:.*"\)$',
                        'modparam("cfgutils", "shvset", "ps_endpoint=s:{}")'),
        "ps_wait": (r'^modparam\("cfgutils", "shvset", "ps_wait=i:.*"\)$',
                    'modparam("cfgutils", "shvset", "ps_wait=i:{}")'),
        "script_name": (r'^modparam\("python", "script_name", ".*"\)$',
                        'modparam("python", "script_name", "{}")'),
    }
    out = template
    for name, value in values.items():
        pattern, line = patterns[name]
        replacement = line.format(value)
        out, count = re.subn(pattern, lambda _m, text=replacement: text, out, flags=re.MULTILINE)
        if count != 1:
            raise KeyError(f"{name}: {count} lines match {pattern!r} in opensips.cfg")
    return out


def start_opensips(tmp: Path, name: str, *, endpoint: str, wait_ms: int,
                   env: dict[str, str] | None = None, shm_mb: int = 64,
                   curve: tuple[str, str] | None = None) -> Proxy:
    """Render the example opensips.cfg and start OpenSIPS ``name`` in the foreground."""
    prefix = require_opensips(name)
    run_dir = tmp / f"{name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    modules = prefix / "lib64" / "opensips" / "modules"
    if not modules.exists():
        modules = prefix / "lib" / "opensips" / "modules"
    cfg = render_opensips_config(OPENSIPS_CFG.read_text(), {
        "socket": f"udp:127.0.0.1:{port}",
        "mpath": f"{modules}/",
        "ps_endpoint": endpoint,
        "ps_wait": str(max(1, round(wait_ms / 1000))),
        "script_name": str(OPENSIPS_SCRIPT),
        "ps_curve_server_key": curve[0] if curve else "",
        "ps_curve_client_key": curve[1] if curve else "",
    })
    cfg_path = run_dir / "opensips.cfg"
    cfg_path.write_text(cfg)
    binary = str(prefix / "sbin" / "opensips")
    check = subprocess.run([binary, "-C", "-f", str(cfg_path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"opensips -C failed:\n{check.stdout}\n{check.stderr}"
    log_path = run_dir / "opensips.log"
    os_env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSIDECAR_")}
    os_env.update(env or {})
    process = subprocess.Popen(
        [binary, "-F", "-f", str(cfg_path), "-m", str(shm_mb), "-M", "8", "-w", str(run_dir)],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=os_env,
    )
    proxy = Proxy(name, port, endpoint, run_dir, process, log_path)
    try:
        _wait_until_answering(proxy)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def start_proxy(name: str, tmp: Path, *, endpoint: str, wait_ms: int,
                curve: tuple[str, str] | None = None) -> Proxy:
    """Start the proxy ``name`` (one of PROXIES) from its example configuration;
    ``curve``: (the sidecar's public key file, this proxy's secret key file)."""
    if name == "kamailio":
        require_tools()
        return start_kamailio(tmp, endpoint=endpoint, wait_ms=wait_ms, curve=curve)
    return start_opensips(tmp, name, endpoint=endpoint, wait_ms=wait_ms, curve=curve)
