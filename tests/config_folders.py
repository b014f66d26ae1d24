"""Config folders as an operator builds them: INI text plus real credentials.

The credentials are real (generated keys and certificates, the simulator's
set), copied to the file names the INI text gives, so that ``check-config``
parses them as the daemon would.
"""

from __future__ import annotations

import io
import re
import shutil
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from sidecar.cli import main as pushsidecar
from sidecar.config_ini import clean_value, read_ini
from sidecar.model import canonical_platform
from sidecar.sim.creds import SimCredentials

REPO = Path(__file__).resolve().parent.parent


def uncomment(text: str, commented: str, replacement: str | None = None) -> str:
    """``text`` with the one line ``; <commented>`` made active (and changed to
    ``replacement``), every other line kept as it is."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if re.fullmatch(rf"[;#]\s*{re.escape(commented)}\s*", line.rstrip("\n"))]
    assert len(hits) == 1, f"{commented!r} is commented out {len(hits)} times"
    lines[hits[0]] = (replacement if replacement is not None else commented) + "\n"
    return "".join(lines)


def set_option(text: str, option: str, value: str, *, section: str) -> str:
    """Change the active line ``option = ...`` of ``[section]`` to ``value``."""
    out, current = [], None
    changed = 0
    for line in text.splitlines(keepends=True):
        header = re.fullmatch(r"\[(.+)\]\s*", line.rstrip("\n"))
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"{re.escape(option)}\s*[=:]", line):
            line = f"{option} = {value}\n"
            changed += 1
        out.append(line)
    assert changed == 1, f"[{section}] {option} found {changed} times"
    return "".join(out)


def write_folder(folder: Path, general: str, applications: str, creds: SimCredentials) -> Path:
    """general.ini + applications.ini in ``folder``, and a real credential at
    every path applications.ini names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "general.ini").write_text(general)
    (folder / "applications.ini").write_text(applications)
    credentials = folder / "credentials"
    general_sections = read_ini(folder / "general.ini")
    if "credentials_folder" in general_sections.get("applications", {}):
        credentials = folder / clean_value(general_sections["applications"]["credentials_folder"])
    for section in read_ini(folder / "applications.ini").values():
        options = {k: clean_value(v) for k, v in section.items()}
        platform = canonical_platform(options.get("app_platform", ""))
        wanted: dict[str, Path] = {}
        if platform == "apple" and options.get("apple_certificate"):
            wanted[options["apple_certificate"]] = creds.client_cert
            if options.get("apple_key"):
                wanted[options["apple_key"]] = creds.client_key
        elif platform == "apple" and options.get("apple_key"):
            wanted[options["apple_key"]] = creds.apns_key_file
        if platform == "firebase" and options.get("firebase_authorization_file"):
            wanted[options["firebase_authorization_file"]] = creds.service_account_file
        if options.get("tls_ca_file"):
            wanted[options["tls_ca_file"]] = creds.ca_file
        for name, source in wanted.items():
            target = credentials / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return folder


def check_config(folder: Path, *extra: str) -> tuple[int, str, str]:
    """``pushsidecar check-config --config-dir folder [extra...]``: (exit, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = pushsidecar(["check-config", "--config-dir", str(folder), *extra])
    return code, out.getvalue(), err.getvalue()


def ini_blocks(markdown: str) -> list[str]:
    """The bodies of the ```ini fenced blocks of a Markdown text."""
    blocks = re.findall(r"^( *)```ini\n(.*?)^\1```", markdown, flags=re.DOTALL | re.MULTILINE)
    # A block inside a list item is indented: take the indentation off.
    return [textwrap.dedent(body) for _, body in blocks]
