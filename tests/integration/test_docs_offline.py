"""/docs and /redoc in a real browser with the network off.

Debian's headless Chromium loads the pages from the running sidecar.  Its
network is cut off but for 127.0.0.1: every host name resolves to nothing
(``--host-resolver-rules``) and anything not on loopback goes to a proxy
that is not there.  The pages must still render the API's operations, so
their scripts and styles come from the sidecar itself (the fastapi-offline
package's copies of Swagger UI and ReDoc), and the browser's own network log
must show no request of the page for any other host.

Chromium is installed by scripts/setup.sh; without it the test is skipped
with the reason printed, or fails when PUSHSIDECAR_REQUIRE_CHROMIUM=1 (as
scripts/test.sh sets).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
import trio

from sidecar_fixtures import running_sidecar, sidecar_config

CHROMIUM = shutil.which("chromium")

if CHROMIUM is None:
    if os.environ.get("PUSHSIDECAR_REQUIRE_CHROMIUM") == "1":
        raise RuntimeError("chromium not found (Debian package chromium; scripts/setup.sh installs it)")
    pytest.skip("chromium not found: install Debian's chromium (scripts/setup.sh does)",
                allow_module_level=True)


async def render(url: str, profile: Path, net_log: Path) -> str:
    """The DOM of ``url`` once its scripts ran, as headless Chromium sees it offline."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
        # The network is off, but for the sidecar on loopback.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=20000",  # let the page fetch /openapi.json and render it
        "--dump-dom", url,
    ]
    with trio.fail_after(120):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs the page asked for: requests started with the page as initiator,
    and the page itself (Chromium's own background requests have none)."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") == start_job and (
                params.get("initiator") == origin or params.get("url", "").startswith(origin)):
            urls.append(params["url"])
    return urls


@pytest.mark.parametrize(("page", "expected"), [
    # Swagger UI lists each operation with its path ...
    ("/docs", ['data-path="/push"', 'data-path="/v2/tokens/{account}/push"', 'data-path="/health"']),
    # ... ReDoc with its summary and path.
    ("/redoc", ["Send one push notification (Sylk v1)", "/v2/tokens/{account}/push"]),
])
async def test_the_api_pages_work_offline_in_a_real_browser(tmp_path, sim, sim_credentials, page, expected):
    config_dir = sidecar_config(tmp_path, sim_credentials, sim.port)
    async with running_sidecar(config_dir) as handle:
        net_log = tmp_path / "netlog.json"
        dom = await render(handle.http_url + page, tmp_path / "profile", net_log)
    for text in expected:
        assert text in dom, f"{text!r} not rendered by {page}"
    urls = page_requests(net_log, handle.http_url)
    assert handle.http_url + "/openapi.json" in urls  # it did render from our document
    assert {urllib.parse.urlsplit(url).hostname for url in urls} == {"127.0.0.1"}, urls
