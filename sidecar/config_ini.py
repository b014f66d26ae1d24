"""Reading INI files the way Sylk Pushserver reads them.

Sylk reads general.ini and applications.ini with Python's configparser, so
an operator's file is Sylk's sample with some lines uncommented: whole-line
comments start with ``;`` or ``#`` (commented-out options such as
``; port = 8400`` and comment lines that contain ``=`` stay comments),
options are ``name = value`` or ``name: value``, option names are
case-insensitive, section names are not, and an indented line continues the
value above it.  We read them with the same rules (configparser itself),
with three choices written down in the README:

* ``%`` is taken literally (no interpolation);
* a value wrapped in matching quotes loses them, so Sylk's sample line
  ``; tls_certificate = ''`` uncommented means "empty", and a list may be
  written ``[]`` or ``[a, b]`` as well as ``a, b``;
* there are no inline comments (configparser has none by default, and
  Sylk's files use none): a value holding `` ;`` or `` #`` is refused with
  a message saying so, rather than silently becoming part of the value.

Validation of what the options mean is in :mod:`sidecar.config`.
"""

from __future__ import annotations

import configparser
import difflib
import re
from pathlib import Path
from collections.abc import Iterable

# A value that looks like "value ; comment" or "value # comment".
_INLINE_COMMENT = re.compile(r"\s[;#]")


class IniError(Exception):
    """The file cannot be read or parsed; ``problems`` name file and line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    """Sections of ``path`` in file order, each ``{option: raw value}``.

    Option names are lower-cased (configparser's rule, and Sylk's).

    Raises:
        IniError: unreadable file, or lines that are not INI; every bad
          line is named with its number.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise IniError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise IniError([f"{path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, comment_prefixes=("#", ";"), inline_comment_prefixes=None,
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise IniError([
            f"{path}: cannot parse line {exc.lineno}: {exc.line.strip()!r} comes before "
            "the first [section] header (or is a broken header)"
        ]) from exc
    except configparser.DuplicateSectionError as exc:
        raise IniError([f"{path}: line {exc.lineno}: section [{exc.section}] appears twice"]) from exc
    except configparser.DuplicateOptionError as exc:
        raise IniError([
            f"{path}: line {exc.lineno}: [{exc.section}] {exc.option} is set twice in that section"
        ]) from exc
    except configparser.ParsingError as exc:
        raise IniError([
            f"{path}: cannot parse line {lineno}: {line.strip()!r} (expected 'name = value', "
            "a [section] header or a comment starting with ; or #)"
            for lineno, line in exc.errors
        ]) from exc
    except configparser.Error as exc:
        raise IniError([f"{path}: cannot parse: {exc}"]) from exc
    return {section: dict(parser.items(section, raw=True)) for section in parser.sections()}


def clean_value(raw: str) -> str:
    """The value without surrounding whitespace and one pair of matching quotes."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].strip()
    return value


def inline_comment(raw: str) -> str | None:
    """The part of ``raw`` that looks like an inline comment, if any."""
    match = _INLINE_COMMENT.search(raw)
    return raw[match.start():].strip() if match else None


def split_list(raw: str) -> list[str]:
    """A comma-separated list: ``a, b``, ``[a, b]``, ``['a', 'b']`` or ``[]``."""
    value = clean_value(raw)
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [item for item in (clean_value(part) for part in value.split(",")) if item]


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (case-insensitive), or None."""
    known = list(known)
    by_lower = {k.lower(): k for k in known}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None
