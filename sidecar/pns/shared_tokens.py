"""One credential token for every worker process: spool files changed under a lock.

With ``workers = N`` each worker has its own token caches, but Apple wants
one provider token per key (a new one at most every 20 minutes, or 429
TooManyProviderTokenUpdates) and one OAuth token per service account is
enough for Google.  So a worker that needs a new token takes an exclusive
``flock`` on a lock file in the spool folder, looks at what the others
stored, adopts a token that is fresh and not the one it is replacing, and
only otherwise makes one and stores it for them.

The files hold secrets: mode 0600 in the spool folder (itself 0700), and
their content never reaches a log line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable, Iterator

import trio

logger = logging.getLogger("sidecar.pns.shared_tokens")

OAUTH_FILE_NAME = "oauth-tokens.json"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600) for the block.

    Blocks the calling thread: only for a few milliseconds at a time (read,
    sign, write), once per token life.  Best effort, like the token files:
    a folder that cannot hold the lock file is logged and the block runs
    unlocked (a single process needs no lock).
    """
    descriptor = _open_lock(path)
    try:
        if descriptor is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _open_lock(path: Path) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        logger.warning("cannot lock %s (%s): going on without the lock", path, exc.strerror or exc)
        return None


@contextlib.asynccontextmanager
async def async_file_lock(path: Path):  # type: ignore[no-untyped-def]
    """:func:`file_lock` for a block that awaits (a network fetch): the wait
    for the lock happens in a thread, so the event loop keeps running."""
    descriptor = _open_lock(path)
    try:
        if descriptor is not None:
            await trio.to_thread.run_sync(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} if missing or unreadable (logged, no content)."""
    try:
        decoded = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable token file %s: %s", path,
                       getattr(exc, "strerror", None) or type(exc).__name__)
        return {}
    return decoded if isinstance(decoded, dict) else {}


def write_json(path: Path, entries: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``entries`` (0600); failures are logged."""
    data = json.dumps(entries, indent=1, sort_keys=True).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        logger.warning("cannot store tokens in %s: %s", path, exc.strerror or exc)


class SharedOAuthFetch:
    """Wraps an OAuth fetch so that the workers sharing ``folder`` share its tokens.

    Args:
        folder: the spool folder.
        name: the account's entry name (client email + key id + token URI).
        fetch: the real fetch, ``() -> (access_token, expires_in)``.
        min_remaining: a stored token with less life left than this is not adopted.
        wall_clock: UNIX seconds.
    """

    def __init__(self, folder: Path, name: str, fetch: Callable[[], Awaitable[tuple[str, float]]], *,
                 min_remaining: float = 600.0, wall_clock: Callable[[], float] = time.time):
        self.path = folder / OAUTH_FILE_NAME
        self.lock_path = folder / (OAUTH_FILE_NAME + ".lock")
        self.name = name
        self._fetch = fetch
        self._min_remaining = min_remaining
        self._wall_clock = wall_clock
        self._last: str | None = None  # what this process got last: the one being replaced
        self.adopted = 0

    async def __call__(self) -> tuple[str, float]:
        async with async_file_lock(self.lock_path):
            entry = read_json(self.path).get(self.name)
            now = self._wall_clock()
            if isinstance(entry, dict):
                token, expires_at = entry.get("token"), entry.get("expires_at")
                if (isinstance(token, str) and token and token != self._last
                        and isinstance(expires_at, (int, float))
                        and expires_at - now >= self._min_remaining):
                    self._last = token
                    self.adopted += 1
                    logger.info("OAuth token for %s: adopted the one another worker fetched", self.name)
                    return token, expires_at - now
            token, expires_in = await self._fetch()
            entries = read_json(self.path)
            entries[self.name] = {"token": token, "expires_at": now + expires_in}
            write_json(self.path, entries)
            self._last = token
            return token, expires_in
