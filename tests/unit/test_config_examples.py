"""Every INI example we show an operator passes check-config (--strict: no
warning either): the two .sample files, and each ```ini block of the README,
read from the files themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from config_folders import REPO, check_config, ini_blocks, write_folder
from sidecar.config_ini import read_ini
from sidecar.sim.creds import SimCredentials, generate_credentials

GENERAL_SAMPLE = REPO / "config" / "general.ini.sample"
APPLICATIONS_SAMPLE = REPO / "config" / "applications.ini.sample"
GENERAL_SECTIONS = {"server", "applications", "zmq", "Cassandra"}


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> SimCredentials:
    return generate_credentials(tmp_path_factory.mktemp("creds"))


def readme_examples() -> list[str]:
    blocks = ini_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 3, "the Configuration and migration sections show INI examples"
    return blocks


def test_the_samples_pass_as_they_are(tmp_path: Path, creds: SimCredentials) -> None:
    folder = write_folder(tmp_path / "samples", GENERAL_SAMPLE.read_text(),
                          APPLICATIONS_SAMPLE.read_text(), creds)
    code, out, err = check_config(folder, "--strict")
    assert code == 0, err
    assert "3 application(s)" in out


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_each_readme_ini_example_passes(tmp_path: Path, creds: SimCredentials, index: int) -> None:
    block = readme_examples()[index]
    (tmp_path / "probe.ini").write_text(block)
    sections = set(read_ini(tmp_path / "probe.ini"))
    if sections & GENERAL_SECTIONS:  # a general.ini example, with the sample's applications
        general, applications = block, APPLICATIONS_SAMPLE.read_text()
    else:
        general, applications = GENERAL_SAMPLE.read_text(), block
    folder = write_folder(tmp_path / "example", general, applications, creds)
    code, _, err = check_config(folder, "--strict")
    assert code == 0, f"README ini example {index + 1}:\n{block}\n{err}"
