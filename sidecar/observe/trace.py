"""``pushsidecar trace CALL-ID``: the story of one call's pushes, from the log.

Reads the ``event=...`` key=value lines written by :mod:`sidecar.observe.log`
(and any other line tagged ``[call_id request_id]``) from a log file, from
stdin, or from ``journalctl -u pushsidecar``, keeps those of the call, and
prints them in time order: where each push came from, for which device, each
attempt at the push service and the outcome; then a one-line summary that
says whether every push received has an outcome.

This is a command-line tool, not daemon code: it reads synchronously.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import shutil
import subprocess
import sys
from typing import IO, TextIO
from collections.abc import Iterable, Iterator

from .log import parse_fields

JOURNAL_UNIT = "pushsidecar"

# "2024-05-01 12:00:00.123 " (our file format) or journalctl's short-iso(-precise)
# "2024-05-01T12:00:00.123456+00:00 host pushsidecar[42]: ".
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:?\d\d|Z)?)\s")
_CONTEXT = re.compile(r"\[(\S+) (\S+)\] (.*)$")
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) ")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One log line about the call."""

    order: int  # position in the input: the tie-breaker for equal times
    timestamp: str  # as written ("" when the line has none)
    level: str
    request_id: str
    fields: dict[str, str]  # empty for a free-text line
    text: str  # the message after the [call_id request_id] tag

    @property
    def event(self) -> str:
        return self.fields.get("event", "")


def entries_for_call(lines: Iterable[str], call_id: str) -> list[Entry]:
    """The entries about ``call_id`` in ``lines``, in time order."""
    found: list[Entry] = []
    needle = call_id
    for order, raw in enumerate(lines):
        if needle not in raw:  # cheap pre-filter: most lines are about other calls
            continue
        line = raw.rstrip("\n")
        stamp_match = _TIMESTAMP.match(line)
        timestamp = stamp_match.group(1) if stamp_match else ""
        level_match = _LEVEL.search(line)
        level = level_match.group(1) if level_match else ""
        # The [call_id request_id] tag comes right after "LEVEL logger ".
        context = _CONTEXT.match(line, level_match.end()) if level_match else None
        if context:
            text = context.group(3)
        else:
            text = line[level_match.end():] if level_match else line
        fields = parse_fields(text) if "event=" in text else {}
        if fields.get("call_id") == call_id:
            request_id = fields.get("request_id", "-")
        elif context and context.group(1) == call_id:
            request_id = context.group(2)
            fields = fields if fields.get("call_id") in (None, call_id) else {}
        else:
            continue
        found.append(Entry(order, timestamp, level, request_id, fields, text))
    # One writer writes the log in time order; sorting by time (stable) also
    # merges rotated files given in any order.  Normalise "T" vs " ".
    found.sort(key=lambda e: (e.timestamp.replace("T", " ")[:23], e.order))
    return found


def _short_time(timestamp: str) -> str:
    if not timestamp:
        return "-"
    return timestamp.replace("T", " ")[11:23] or timestamp


def describe(entry: Entry) -> str:
    """One readable line for ``entry``."""
    f = entry.fields
    device = f.get("device", "-")
    where = f"req={entry.request_id}"
    if device not in ("", "-"):
        where += f" device={device}"
    if entry.event == "received":
        origin = f.get("source", "?")
        if f.get("peer", "-") != "-":
            origin += f" ({f['peer']})"
        return (
            f"received   {where} from {origin}: {f.get('push_event', '?')} "
            f"for {f.get('app', '?')}/{f.get('platform', '?')} token={f.get('token', '-')}"
        )
    if entry.event == "attempt":
        status = f.get("status", "?")
        text = f"attempt {f.get('attempt', '?'):<3}{where} -> {status} {f.get('reason', '')}".rstrip()
        if f.get("url", "-") != "-":
            text += f" [{f['url']}]"
        if "seconds" in f:
            text += f" in {f['seconds']}s"
        return text
    if entry.event == "outcome":
        return (
            f"outcome    {where} {f.get('kind', '?').upper()} code={f.get('code', '?')} "
            f"attempts={f.get('attempts', '?')} {f.get('reason', '')}"
        ).rstrip()
    label = (entry.level or "log").lower()
    return f"{label:<10} {where} {entry.text}"


def render_story(call_id: str, entries: list[Entry], out: TextIO) -> None:
    """Print the story of ``call_id``, then a summary line."""
    if not entries:
        out.write(f"call {call_id}: nothing in the log\n")
        return
    out.write(f"call {call_id}\n")
    for entry in entries:
        out.write(f"  {_short_time(entry.timestamp):<12}  {describe(entry)}\n")
    received = {e.request_id for e in entries if e.event == "received"}
    outcomes: dict[str, str] = {}
    for e in entries:
        if e.event == "outcome":
            outcomes[e.request_id] = e.fields.get("kind", "?")
    kinds: dict[str, int] = {}
    for kind in outcomes.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "no outcome"
    pending = sorted(received - outcomes.keys())
    out.write(f"summary: {len(received)} push(es) received; {summary}")
    if pending:
        out.write(f"; NO OUTCOME (yet) for {', '.join(pending)}")
    out.write("\n")


# -- input --------------------------------------------------------------------------


def _journal_lines(unit: str) -> Iterator[str]:
    # short-iso-precise: sortable timestamps, like our file format.
    command = ["journalctl", "-u", unit, "--no-pager", "-o", "short-iso-precise"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        yield from proc.stdout


def open_input(log: str | None, stdin: IO[str] | None = None) -> tuple[Iterable[str], str]:
    """Where to read: ``--log FILE`` (``-`` = stdin), piped stdin, or the journal.

    Returns:
      The lines and a description of the source.

    Raises:
      OSError: the file cannot be read.
      LookupError: no source is available.
    """
    stdin = stdin if stdin is not None else sys.stdin
    if log == "-":
        return stdin, "stdin"
    if log:
        return open(log, encoding="utf-8", errors="replace"), log
    if stdin is not None and not stdin.isatty():
        return stdin, "stdin"
    if shutil.which("journalctl"):
        return _journal_lines(JOURNAL_UNIT), f"journalctl -u {JOURNAL_UNIT}"
    raise LookupError("no log to read: give --log FILE (or pipe the log on stdin)")


def run_trace(args: argparse.Namespace, *, stdin: IO[str] | None = None, out: TextIO | None = None) -> int:
    """The ``trace`` sub-command.  Returns the exit status (1: nothing found)."""
    out = out or sys.stdout
    try:
        lines, _source = open_input(args.log, stdin)
    except (OSError, LookupError) as exc:
        print(f"pushsidecar trace: {exc}", file=sys.stderr)
        return 2
    try:
        entries = entries_for_call(lines, args.call_id)
    finally:
        if isinstance(lines, io.IOBase) and lines is not (stdin or sys.stdin):
            lines.close()
    render_story(args.call_id, entries, out)
    return 0 if entries else 1


def add_trace_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``trace CALL-ID [--log FILE]`` to the CLI; sets ``func`` and ``handler`` to :func:`run_trace`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trace",
        help="print the story of one call's pushes from the log",
        description=(
            "Print, in time order, every push of one call: where it came from, each "
            "device, each attempt and the outcome.  Reads --log FILE, else the log piped "
            "on stdin, else journalctl -u pushsidecar."
        ),
    )
    parser.add_argument("call_id", metavar="CALL-ID", help="the SIP Call-ID")
    parser.add_argument("--log", metavar="FILE", help="log file to read ('-' for stdin)")
    parser.set_defaults(func=run_trace, handler=run_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m sidecar.observe.trace``)."""
    parser = argparse.ArgumentParser(prog="pushsidecar")
    add_trace_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
