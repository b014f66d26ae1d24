"""Logging: stderr (journald under systemd), an optional file, redaction.

Theory of operation: :func:`setup_logging` installs two handlers on the root
logger, so lines from libraries (httpx, hypercorn, h2, hpack) go the same
way as ours.  Every handler carries a :class:`RedactionFilter`: a secret
(APNs JWT, OAuth access token, bearer value, PEM private key, or any string
handed to :func:`register_secret`) is masked before a line is formatted,
whatever logger produced it, tracebacks included.

Push lines are ``key=value`` pairs (:func:`log_received`,
:func:`log_attempt`, :func:`log_outcome`) so that ``pushsidecar trace``
(:mod:`sidecar.observe.trace`) can read them back; values with spaces,
quotes or control characters are JSON-quoted, which also keeps a hostile
header or reason from forging a line.

Line format: ``LEVEL logger [call_id request_id] message``.  Under systemd
(``$JOURNAL_STREAM`` set) stderr lines carry no timestamp, journald adds
its own; elsewhere, and always in the file, lines start with a local
``YYYY-MM-DD HH:MM:SS.mmm`` timestamp.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any
from collections.abc import Iterable, MutableMapping

from ..model import Outcome, OutcomeKind, Push

PUSH_LOGGER = "sidecar.push"

# -- redaction ---------------------------------------------------------------------

MASK = "[REDACTED]"

# Patterns of things that are secrets whatever their context.  Each group 1,
# when present, is kept (the label in front of the secret).
_SECRET_PATTERNS = [
    # PEM private keys; an unterminated block (truncated message) is masked to the end.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    # JWTs: base64url('{"') is 'eyJ'; header.payload.signature
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    # Google OAuth2 access tokens and refresh tokens
    r"ya29\.[A-Za-z0-9._-]+",
    r"1//[A-Za-z0-9_-]{20,}",
    # "Bearer <x>", "bearer: <x>"
    r"(?i:(bearer[\s:=]+))(?!\[REDACTED)[^\s\"',;)\]}]+",
    # legacy FCM server keys ("key=AAAA....")
    r"(?i:(key=))AAAA[A-Za-z0-9_:-]{20,}",
    # an authorization header/field whatever its scheme (after "bearer" above)
    r"(?i:((?>authorization[\"']?\s*[:=,]\s*(?:b(?=[\"']))?[\"']?)))(?!(?i:bearer)|\[REDACTED)[^\s\"',;)\]}]+",
    # secret-looking JSON / key=value fields
    r"(?i:((?>[\"']?(?:access_token|refresh_token|id_token|private_key|client_secret|password)"
    r"[\"']?\s*[:=]\s*[\"']?)))(?!\[REDACTED|-----BEGIN)[^\s\"',;)\]}]+",
]
_SECRET_RE = re.compile("|".join(f"(?:{p})" for p in _SECRET_PATTERNS), re.DOTALL)
# Every pattern above needs one of these (lower-cased) strings: a line with
# none of them cannot match, so the costly regex is skipped (most push lines).
_SECRET_HINTS = (
    "-----begin", "eyj", "ya29.", "1//", "bearer", "key=", "authorization",
    "access_token", "refresh_token", "id_token", "private_key", "client_secret", "password",
)
# Shorter strings would mask ordinary words; secrets are long.
MIN_SECRET_LENGTH = 8
# Up to this many registered secrets, lines are tested with ``in`` first.
_FEW_SECRETS = 8


class SecretRegistry:
    """Strings (tokens, keys) that must never appear in a log line.

    Keeps the most recent ``capacity`` secrets: access tokens are renewed
    every hour, so old ones are forgotten instead of growing without bound
    (they are also matched by the patterns above).  Thread-safe, because
    logging may happen in threads (cassandra-driver).
    """

    def __init__(self, capacity: int = 256):
        self._capacity = capacity
        self._secrets: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        # Few secrets (the usual case): plain substring tests are cheaper
        # than scanning every line with the alternation regex.
        self._few: tuple[str, ...] | None = None

    def register(self, secret: str | bytes | None) -> None:
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", "replace")
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._secrets.pop(secret, None)
            self._secrets[secret] = None
            while len(self._secrets) > self._capacity:
                self._secrets.popitem(last=False)
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            self._few = tuple(ordered) if len(ordered) <= _FEW_SECRETS else None

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern = None
            self._few = None

    def redact(self, text: str) -> str:
        """Mask registered secrets and well-known secret shapes in ``text``."""
        pattern, few = self._pattern, self._few
        if pattern is not None:
            if few is None:
                text = pattern.sub(MASK, text)
            else:
                for secret in few:
                    if secret in text:
                        text = pattern.sub(MASK, text)
                        break
        lowered = text.lower()
        for hint in _SECRET_HINTS:
            if hint in lowered:
                return _SECRET_RE.sub(_mask_match, text)
        return text


def _mask_match(match: re.Match[str]) -> str:
    # Keep the label (group) in front of the secret, mask the rest.
    for label in match.groups():
        if label is not None:
            return label + MASK
    return MASK


#: The process-wide registry used by :func:`register_secret` and the filters.
secrets = SecretRegistry()


def register_secret(secret: str | bytes | None) -> None:
    """Never log ``secret`` (an access token, a key, a password) from now on."""
    secrets.register(secret)


def redact(text: str) -> str:
    """``text`` with every known secret masked."""
    return secrets.redact(text)


class RedactionFilter(logging.Filter):
    """Masks secrets in a record's message, arguments and traceback.

    Attach it to handlers (a logger's filters do not see records propagated
    from child loggers).  The record is rewritten in place once, so a second
    handler pays nothing.
    """

    def __init__(self, registry: SecretRegistry | None = None):
        super().__init__()
        self._registry = registry or secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: log what we can, still masked
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = self._registry.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._registry.redact(record.exc_text)
            # The formatter would re-format exc_info only when exc_text is empty.
        if record.stack_info:
            record.stack_info = self._registry.redact(record.stack_info)
        record._redacted = True
        return True


# -- format ------------------------------------------------------------------------


class ContextFormatter(logging.Formatter):
    """``[timestamp] LEVEL logger [call_id request_id] message``."""

    def __init__(self, *, timestamps: bool):
        fmt = "%(levelname)s %(name)s %(context)s%(message)s"
        if timestamps:
            fmt = "%(asctime)s.%(msecs)03d " + fmt
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")
        self._timestamps = timestamps
        # strftime of the last second seen: lines come many per second.
        self._last_time: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached_second, text = self._last_time
        if second != cached_second or datefmt != self.datefmt:
            text = super().formatTime(record, datefmt)
            if datefmt == self.datefmt:
                self._last_time = (second, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        # The same text as logging.Formatter.format with the format string
        # above, built directly (the push path logs two lines per push).
        # A second handler (stderr and file) with the same kind of formatter
        # reuses the first one's text.
        done: tuple[bool, str] | None = record.__dict__.get(_FORMATTED)
        if done is not None and done[0] == self._timestamps:
            return done[1]
        call_id = getattr(record, "call_id", None)
        if call_id is not None:
            context = f"[{call_id} {getattr(record, 'request_id', '-')}] "
        else:
            context = ""
        record.context = context
        record.message = message = record.getMessage()
        if self._timestamps:
            record.asctime = asctime = self.formatTime(record, self.datefmt)
            text = (f"{asctime}.{int(record.msecs):03d} {record.levelname} {record.name} "
                    f"{context}{message}")
        else:
            text = f"{record.levelname} {record.name} {context}{message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            if text[-1:] != "\n":
                text += "\n"
            text += record.exc_text
        if record.stack_info:
            if text[-1:] != "\n":
                text += "\n"
            text += self.formatStack(record.stack_info)
        record.__dict__[_FORMATTED] = (self._timestamps, text)
        return text


_FORMATTED = "_pushsidecar_formatted"


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate moved it.

    Unlike :class:`logging.handlers.WatchedFileHandler` it does not stat the
    file on every line; the service calls :meth:`reopen` on SIGHUP
    (logrotate's ``postrotate`` runs ``systemctl reload``).
    """

    def reopen(self) -> None:
        self.acquire()
        try:
            # Open the new file first: if that fails, keep writing to the old one.
            new_stream = self._open()
            old_stream, self.stream = self.stream, new_stream
            if old_stream is not None:
                try:
                    old_stream.flush()
                finally:
                    old_stream.close()
        finally:
            self.release()


class LogHandle:
    """What :func:`setup_logging` installed; lets the service reopen and undo it."""

    def __init__(
        self,
        handlers: list[logging.Handler],
        file_handler: ReopenableFileHandler | None,
        previous_level: int,
    ):
        self.handlers = handlers
        self.file_handler = file_handler
        self._previous_level = previous_level

    def reopen(self) -> None:
        """Reopen the log file (after logrotate renamed it).  Never raises:
        a failure is logged to the other handlers and the old stream stays."""
        if self.file_handler is None:
            return
        try:
            self.file_handler.reopen()
        except OSError as exc:
            logging.getLogger("sidecar.log").error(
                "cannot reopen log file %s: %s", self.file_handler.baseFilename, exc
            )

    def close(self) -> None:
        """Remove and close the handlers (tests, or before a new setup)."""
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self._previous_level)
        self.handlers = []
        self.file_handler = None


_MARK = "_pushsidecar_handler"


def setup_logging(
    *,
    debug: bool,
    log_to_file: bool,
    log_file: Path | None,
    debug_hpack: bool,
    stream: Any = None,
    registry: SecretRegistry | None = None,
    debug_cassandra: bool = False,
) -> LogHandle:
    """Configure logging for the daemon; call again (e.g. after a reload) to
    replace the previous configuration.

    Args:
      debug: DEBUG level for everything but hpack; INFO otherwise.
      log_to_file: also write to ``log_file``.
      log_file: the file (its folder must exist).  Ignored unless ``log_to_file``.
      debug_hpack: let the HTTP/2 libraries' very verbose detail through at
        DEBUG (hpack, h2, hyperframe, httpcore, h11; their header lines are
        redacted like the rest); WARNING otherwise, even with ``debug``.
      stream: where "stderr" lines go (default ``sys.stderr``; tests).
      registry: the secret registry (default: the process-wide one).
      debug_cassandra: the Cassandra driver at DEBUG (``[Cassandra] debug``).

    Returns:
      The :class:`LogHandle`; call ``reopen()`` on SIGHUP.

    Raises:
      OSError: the log file cannot be opened.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()
    redaction = RedactionFilter(registry)
    handlers: list[logging.Handler] = []

    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    console = logging.StreamHandler(stream if stream is not None else sys.stderr)
    console.setFormatter(ContextFormatter(timestamps=not under_journald))
    handlers.append(console)

    file_handler: ReopenableFileHandler | None = None
    if log_to_file and log_file is not None:
        file_handler = ReopenableFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(ContextFormatter(timestamps=True))
        handlers.append(file_handler)

    previous_level = root.level
    for handler in handlers:
        handler.addFilter(redaction)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # HTTP/2 and HTTP/1 internals (every frame, every header coded, every
    # state change) would bury our own debug lines: only with debug_hpack.
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug_hpack else logging.WARNING)
    # httpx logs one INFO line per request: remote logging would double our volume.
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)
    # The Cassandra driver is chatty at DEBUG; [Cassandra] debug asks for it (as in Sylk).
    logging.getLogger("cassandra").setLevel(logging.DEBUG if debug_cassandra else logging.INFO)
    return LogHandle(handlers, file_handler, previous_level)


#: Libraries whose DEBUG lines are protocol detail, kept at WARNING unless debug_hpack.
PROTOCOL_LOGGERS = ("hpack", "h2", "hyperframe", "httpcore", "h11")


# -- per-push context --------------------------------------------------------------


class PushLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """Tags every line with the push's call_id and request_id."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def push_logger(push: Push, logger: logging.Logger | str | None = None) -> PushLoggerAdapter:
    """A logger whose lines carry ``[call_id request_id]`` of ``push``."""
    if logger is None or isinstance(logger, str):
        logger = logging.getLogger(logger or PUSH_LOGGER)
    return PushLoggerAdapter(logger, {"call_id": push.call_id, "request_id": push.request_id})


# -- key=value push lines (parsed back by observe.trace) ---------------------------

_PLAIN_VALUE = re.compile(r"[^\s\"'=\[\]\\]+")


_plain_match = _PLAIN_VALUE.fullmatch


def format_value(value: Any) -> str:
    """One value of a ``key=value`` line: bare when safe, else JSON-quoted."""
    if value.__class__ is str:  # most values: skip the type tests below
        text = value
    elif value is None:
        return "-"
    elif isinstance(value, bool):
        return "1" if value else "0"
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = str(value)
    if text and _plain_match(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


# format_value() of values that repeat from push to push (source, app id,
# platform, event, kind, device): strings or None only (1 == True would
# mix ints and booleans up).  Cleared when full, so it cannot grow unbounded.
_repeated: dict[str | None, str] = {}
_REPEATED_MAX = 1024


def _repeated_value(value: str | None) -> str:
    text = _repeated.get(value)
    if text is None:
        text = format_value(value)
        if value is None or value.__class__ is str:
            if len(_repeated) >= _REPEATED_MAX:
                _repeated.clear()
            _repeated[value] = text
    return text


def format_fields(fields: Iterable[tuple[str, Any]]) -> str:
    return " ".join([f"{key}={format_value(value)}" for key, value in fields])


def token_hint(token: str | None) -> str:
    """The first characters of a device token: enough to recognise it, not to use it."""
    if not token:
        return "-"
    return token[:8] + "..." if len(token) > 8 else token


def _push_fields(push: Push) -> list[tuple[str, Any]]:
    return [("call_id", push.call_id), ("request_id", push.request_id)]


_push_log = logging.getLogger(PUSH_LOGGER)


def _emit(level: int, push: Push, fields: list[tuple[str, Any]], logger: logging.Logger | None) -> None:
    target = logger or _push_log
    if target.isEnabledFor(level):
        _emit_text(target, level, push, format_fields(fields))


def _emit_text(target: logging.Logger, level: int, push: Push, text: str) -> None:
    """Log ``text`` (already enabled for ``level``) tagged with the push's ids.

    The record ``target.log(level, "%s", text, extra=...)`` would make, built
    without the caller lookup (a stack walk) and the ``extra`` merge: the
    caller is always this module.
    """
    # The text as the message, without arguments: the same getMessage(),
    # and LogRecord skips its costly "one mapping argument" test.
    record = _push_record(target, level, text)
    record.call_id = push.call_id
    record.request_id = push.request_id
    target.handle(record)


class _RecordTemplates:
    """LogRecords for the push lines, copied from one made the usual way.

    ``LogRecord.__init__`` spends most of its time on what is the same for
    every push line of a logger in a thread (path, module, function, thread,
    process names): about 12 µs of the 25 a line costs.  A new record here
    is a copy of the first one's attributes with the time, level and message
    set as ``LogRecord.__init__`` sets them, so handlers see the same record.
    Used only with the standard record factory; other threads or factories
    (tests' capture) get a record made the usual way.
    """

    def __init__(self) -> None:
        self._templates: dict[tuple[str, int], dict[str, Any]] = {}

    def make(self, target: logging.Logger, level: int, text: str) -> logging.LogRecord:
        if logging.getLogRecordFactory() is not logging.LogRecord:
            return target.makeRecord(target.name, level, _THIS_FILE, _RECORD_LINE, text, (), None,
                                     _RECORD_FUNCTION, None, None)
        key = (target.name, threading.get_ident())
        template = self._templates.get(key)
        if template is None:
            record = logging.LogRecord(target.name, level, _THIS_FILE, _RECORD_LINE, text, (), None,
                                       _RECORD_FUNCTION, None)
            if len(self._templates) >= 64:
                self._templates.clear()
            self._templates[key] = dict(record.__dict__)
            return record
        record = _LogRecord.__new__(_LogRecord)
        attributes = record.__dict__
        attributes.update(template)
        created = _time()
        attributes["created"] = created
        attributes["msecs"] = int((created - int(created)) * 1000) + 0.0
        attributes["relativeCreated"] = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
        attributes["levelno"] = level
        attributes["levelname"] = logging.getLevelName(level)
        attributes["msg"] = text
        return record


_LogRecord = logging.LogRecord
_time = __import__("time").time
_push_record = _RecordTemplates().make


# Where a push line's record says it was made (its pathname, lineno and
# funcName; no formatter of ours prints them): the function that makes it,
# named outright instead of found by a stack walk per line.
_THIS_FILE = _emit_text.__code__.co_filename
_RECORD_FUNCTION = _emit_text.__name__
_RECORD_LINE = _emit_text.__code__.co_firstlineno


def log_received(
    push: Push, source: str | None = None, peer: str | None = None, *, logger: logging.Logger | None = None
) -> None:
    """``event=received``: a push arrived (``source``: http, v2, zmq...; ``peer``: who sent it)."""
    target = logger or _push_log
    if not target.isEnabledFor(logging.INFO):
        return
    # format_fields() of the pairs, written out: two lines per push.
    value, same = format_value, _repeated_value
    _emit_text(target, logging.INFO, push, (
        f"event=received call_id={value(push.call_id)} request_id={value(push.request_id)} "
        f"source={same(source or push.source)} peer={value(peer or push.peer)} app={same(push.app_id)} "
        f"platform={same(push.platform)} device={same(push.device_id)} "
        f"token={value(token_hint(push.token))} push_event={same(push.event.value)} "
        f"from={value(push.from_uri)} to={value(push.to_uri)}"))


def log_attempt(
    push: Push,
    attempt: int,
    url: str | None,
    status: int,
    reason: str | None,
    *,
    seconds: float | None = None,
    verdict: str | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """``event=attempt``: one try at the push service (status 0: no answer)."""
    # A first attempt that delivered says nothing the outcome line does not
    # (url, status, attempts=1): keep it for debug and save a line per push.
    level = logging.DEBUG if attempt == 1 and status == 200 else logging.INFO
    if not (logger or _push_log).isEnabledFor(level):
        return
    fields = [
        ("event", "attempt"), *_push_fields(push), ("device", push.device_id),
        ("attempt", attempt), ("url", url), ("status", status), ("reason", reason),
    ]
    if verdict is not None:
        fields.append(("verdict", verdict))
    if seconds is not None:
        fields.append(("seconds", seconds))
    _emit(level, push, fields, logger)


_QUIET_KINDS = {OutcomeKind.DELIVERED, OutcomeKind.TOKEN_DEAD, OutcomeKind.SKIPPED}


def log_outcome(push: Push, outcome: Outcome, *, logger: logging.Logger | None = None) -> None:
    """``event=outcome``: the one final result of a push."""
    level = logging.INFO if outcome.kind in _QUIET_KINDS else logging.WARNING
    target = logger or _push_log
    if not target.isEnabledFor(level):
        return
    # format_fields() of the pairs, written out: two lines per push.
    value, same = format_value, _repeated_value
    _emit_text(target, level, push, (
        f"event=outcome call_id={value(push.call_id)} request_id={value(push.request_id)} "
        f"app={same(push.app_id)} platform={same(push.platform)} device={same(push.device_id)} "
        f"kind={same(outcome.kind.value)} code={value(outcome.code)} "
        f"reason={value(outcome.reason)} attempts={value(outcome.attempts)} "
        f"url={value(outcome.url or None)}"))


def parse_fields(text: str) -> dict[str, str]:
    """The ``key=value`` pairs of a line (quoted values decoded; ``-`` kept as is)."""
    fields: dict[str, str] = {}
    for match in _FIELD_RE.finditer(text):
        key, value = match.group(1), match.group(2)
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        fields.setdefault(key, value)
    return fields


_FIELD_RE = re.compile(r'(?:(?<=\s)|^)([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s]*)')


__all__ = [
    "LogHandle", "RedactionFilter", "SecretRegistry", "ContextFormatter", "ReopenableFileHandler",
    "setup_logging", "register_secret", "redact", "secrets", "push_logger",
    "log_received", "log_attempt", "log_outcome", "format_fields", "format_value",
    "parse_fields", "token_hint",
]
