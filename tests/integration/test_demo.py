"""``pushsidecar demo`` as a newcomer runs it: what it prints works as printed,
and its folder of generated private keys is gone after Ctrl-C (unless --keep)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from test_daemon import BIN, PUSHSIDECAR, daemon_env


async def run_demo_until_ready(tmp_path: Path, *args: str) -> tuple[trio.Process, Path, str]:
    output = tmp_path / "demo.out"
    with open(output, "wb") as sink:
        # TMPDIR: its temporary folder lands in this test's folder.
        process = await trio.lowlevel.open_process(
            [PUSHSIDECAR, "demo", "--port", "0", *args], stdin=subprocess.DEVNULL,
            stdout=sink, stderr=subprocess.STDOUT, env=daemon_env(TMPDIR=str(tmp_path)))
    with trio.fail_after(60):
        while "Ctrl-C stops." not in output.read_text():
            assert process.returncode is None, output.read_text()
            await trio.sleep(0.1)
    text = output.read_text()
    folder = Path(re.search(r"configuration: (\S+)/config\n", text).group(1))
    return process, folder, text


def printed_command(text: str, starts: str) -> list[str]:
    [line] = [line.strip() for line in text.splitlines() if line.strip().startswith(starts)]
    return shlex.split(line)


async def stop(process: trio.Process, output: Path) -> str:
    process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        assert await process.wait() == 0
    return output.read_text()


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl not installed")
async def test_demo_prints_commands_that_work_and_removes_its_keys(tmp_path: Path) -> None:
    process, folder, text = await run_demo_until_ready(tmp_path)
    try:
        assert "sample push -> HTTP 200" in text
        assert (folder / "credentials").is_dir()  # the private keys, while it runs
        # The simulator's record, with curl and its CA, as printed.
        curl = printed_command(text, "curl -s --cacert")
        records = json.loads((await trio.run_process(curl, capture_stdout=True)).stdout)
        assert records["total"] >= 1 and records["requests"][0]["kind"] == "apns"
        # The trace command, as printed.
        trace = printed_command(text, "pushsidecar trace")
        story = (await trio.run_process([str(BIN / trace[0]), *trace[1:]], capture_stdout=True)).stdout.decode()
        assert "call demo-call-1" in story and "DELIVERED" in story
        # HEAD /health answers.
        url = re.search(r"sidecar API: (http://\S+)", text).group(1)
        head = await trio.run_process(["curl", "-sI", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/health"],
                                      capture_stdout=True)
        assert head.stdout == b"200"
    finally:
        text = await stop(process, tmp_path / "demo.out")
    assert not folder.exists()
    assert f"removed {folder} (it held generated private keys; --keep keeps it)" in text


async def test_demo_keep_leaves_its_folder(tmp_path: Path) -> None:
    process, folder, _ = await run_demo_until_ready(tmp_path, "--keep")
    text = await stop(process, tmp_path / "demo.out")
    assert folder.is_dir() and (folder / "pushsidecar.log").is_file()
    assert f"kept {folder}" in text
