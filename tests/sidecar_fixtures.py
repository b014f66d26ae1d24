"""Fixtures that run the real sidecar (in this trio loop) against the simulator.

Everything listens on 127.0.0.1 with ports chosen by the kernel, and keeps
its files in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from sidecar.service import SidecarHandle, run_sidecar
from sidecar.sim.cli import write_config
from sidecar.sim.creds import SimCredentials, generate_credentials, write_service_account
from sidecar.sim.server import Simulator, open_simulator

TOKEN = "0123456789abcdef" * 4


@contextlib.asynccontextmanager
async def running_sidecar(config_dir: Path) -> AsyncIterator[SidecarHandle]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: run_sidecar(
            config_dir, handle_signals=False, task_status=task_status))
        try:
            yield handle
        finally:
            handle.stop()


def sidecar_config(tmp_path: Path, creds: SimCredentials, sim_port: int, extra_general: str = "") -> Path:
    """A config dir for a sidecar that talks to the simulator (HTTP port 0)."""
    config_dir = write_config(tmp_path / "config", creds, sim_port, sidecar_port=0)
    general = config_dir / "general.ini"
    general.write_text(
        general.read_text()
        + f"\n[zmq]\nendpoint = ipc://{tmp_path}/push.sock\nrun_dir = {tmp_path}\n"
        + extra_general
    )
    return config_dir


@pytest.fixture(scope="session")
def sim_credentials(tmp_path_factory: pytest.TempPathFactory) -> SimCredentials:
    return generate_credentials(tmp_path_factory.mktemp("sim-creds"))


@pytest.fixture
async def sim(sim_credentials: SimCredentials) -> AsyncIterator[Simulator]:
    async with open_simulator(sim_credentials, token_update_interval=0) as simulator:
        write_service_account(sim_credentials, simulator.port)
        simulator.add_service_account(sim_credentials.service_account())
        yield simulator


@pytest.fixture
async def sidecar(tmp_path: Path, sim: Simulator, sim_credentials: SimCredentials) -> AsyncIterator[SidecarHandle]:
    async with running_sidecar(sidecar_config(tmp_path, sim_credentials, sim.port)) as handle:
        yield handle


@pytest.fixture
async def client(sidecar: SidecarHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sidecar.http_url, timeout=120) as http:
        yield http
