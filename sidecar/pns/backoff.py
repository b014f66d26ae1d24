"""How long to wait before the next attempt: exponential backoff with jitter.

A pure function so the dispatcher, the HTTP/2 endpoint's reconnects and the
tests all share one rule, and tests can pin the randomness.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    retry_after: float | None,
    *,
    base: float = 0.2,
    cap: float = 10.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """The delay in seconds before retry number ``attempt``.

    The exponential step ``base * 2**(attempt - 1)`` is capped at ``cap``; the
    result is drawn uniformly from the upper half of that step ("equal
    jitter"), so retries of many pushes spread out but never come back
    immediately.  A server's ``Retry-After`` is a lower bound and is not
    capped: the caller's deadline decides whether waiting that long is still
    worth it.

    Args:
        attempt: how many attempts have failed so far (1 after the first
            failure); values below 1 count as 1.
        retry_after: seconds the server asked us to wait, or None.
        base: the first step in seconds.
        cap: the largest step in seconds.
        rng: returns a float in [0, 1); injectable for tests.

    Returns:
        A delay in seconds, never negative.
    """
    exponent = max(attempt, 1) - 1
    # Avoid float overflow for absurd attempt counts: the cap is reached long before.
    step = cap if exponent >= 64 else min(cap, base * 2.0**exponent)
    delay = step / 2 + rng() * step / 2
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return max(delay, 0.0)
