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
from typing import Any, Iterable, MutableMapping

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

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern = None

    def redact(self, text: str) -> str:
        """Mask registered secrets and well-known secret shapes in ``text``."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        lowered = text.lower()
        if not any(hint in lowered for hint in _SECRET_HINTS):
            return text
        return _SECRET_RE.sub(_mask_match, text)


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

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        if call_id is not None:
            record.context = f"[{call_id} {getattr(record, 'request_id', '-')}] "
        else:
            record.context = ""
        return super().format(record)


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

    @property
    def log_file(self) -> Path | None:
        return Path(self.file_handler.baseFilename) if self.file_handler else None

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
) -> LogHandle:
    """Configure logging for the daemon; call again (e.g. after a reload) to
    replace the previous configuration.

    Args:
      debug: DEBUG level for everything but hpack; INFO otherwise.
      log_to_file: also write to ``log_file``.
      log_file: the file (its folder must exist).  Ignored unless ``log_to_file``.
      debug_hpack: let hpack's very verbose header coding through at DEBUG
        (its header lines are redacted like the rest).
      stream: where "stderr" lines go (default ``sys.stderr``; tests).
      registry: the secret registry (default: the process-wide one).

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
    # hpack logs every header it codes: only on request.
    logging.getLogger("hpack").setLevel(logging.DEBUG if debug_hpack else logging.WARNING)
    # httpx logs one INFO line per request: remote logging would double our volume.
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)
    return LogHandle(handlers, file_handler, previous_level)


# -- per-push context --------------------------------------------------------------


class PushLoggerAdapter(logging.LoggerAdapter):
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


def format_value(value: Any) -> str:
    """One value of a ``key=value`` line: bare when safe, else JSON-quoted."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        value = f"{value:.3f}"
    text = str(value)
    if text and _PLAIN_VALUE.fullmatch(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


def format_fields(fields: Iterable[tuple[str, Any]]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in fields)


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
        target.log(level, "%s", format_fields(fields),
                   extra={"call_id": push.call_id, "request_id": push.request_id})


def log_received(
    push: Push, source: str | None = None, peer: str | None = None, *, logger: logging.Logger | None = None
) -> None:
    """``event=received``: a push arrived (``source``: http, v2, zmq...; ``peer``: who sent it)."""
    _emit(logging.INFO, push, [
        ("event", "received"), *_push_fields(push),
        ("source", source or push.source), ("peer", peer),
        ("app", push.app_id), ("platform", push.platform), ("device", push.device_id),
        ("token", token_hint(push.token)), ("push_event", push.event.value),
        ("from", push.from_uri), ("to", push.to_uri),
    ], logger)


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
    fields = [
        ("event", "attempt"), *_push_fields(push), ("device", push.device_id),
        ("attempt", attempt), ("url", url), ("status", status), ("reason", reason),
    ]
    if verdict is not None:
        fields.append(("verdict", verdict))
    if seconds is not None:
        fields.append(("seconds", seconds))
    # A first attempt that delivered says nothing the outcome line does not
    # (url, status, attempts=1): keep it for debug and save a line per push.
    level = logging.DEBUG if attempt == 1 and status == 200 else logging.INFO
    _emit(level, push, fields, logger)


_QUIET_KINDS = {OutcomeKind.DELIVERED, OutcomeKind.TOKEN_DEAD}


def log_outcome(push: Push, outcome: Outcome, *, logger: logging.Logger | None = None) -> None:
    """``event=outcome``: the one final result of a push."""
    level = logging.INFO if outcome.kind in _QUIET_KINDS else logging.WARNING
    _emit(level, push, [
        ("event", "outcome"), *_push_fields(push),
        ("app", push.app_id), ("platform", push.platform), ("device", push.device_id),
        ("kind", outcome.kind.value), ("code", outcome.code), ("reason", outcome.reason),
        ("attempts", outcome.attempts), ("url", outcome.url or None),
    ], logger)


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
