"""When to try again, and how long to wait first: the one home of both questions.

Used by the fetcher (image downloads), the notifier (webhooks, email), the services waiting for their
broker and database, and the local supervisor restarting a process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_DELAY_S = 60.0  # no single wait longer than this, whatever the backoff or a server's Retry-After

# HTTP answers worth asking again later: a timeout, "too early", rate limiting, and every server error.
RETRYABLE_4XX = frozenset({408, 425, 429})


def retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_4XX


def backoff_delay(
    retry: int,
    *,
    base: float,
    max_delay: float = MAX_DELAY_S,
    jitter: float = 1.0,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait before retry number `retry` (0 for the first retry): exponential, capped, jittered.

    The ceiling is min(max_delay, base * 2**retry); the wait is uniform in [(1 - jitter) * ceiling,
    ceiling]. Full jitter (1.0, the default) spreads the retries of many clients that failed together;
    0.0 gives the plain ceiling. A server's Retry-After is a floor, capped like everything else.
    """
    ceiling = min(max_delay, base * 2.0 ** min(retry, 62))  # the min() keeps 2**retry from overflowing
    delay = ceiling * (1.0 - jitter + jitter * rng())
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), max_delay))
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone accepts digits int() then refuses ("²")
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
