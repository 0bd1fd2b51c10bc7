"""One retry loop for every notification channel (webhook, email).

A channel supplies an *attempt*: a coroutine function that tries once and reports an `AttemptOutcome`
instead of raising. `deliver_with_retry` calls it until it succeeds, fails permanently or runs out of
attempts, sleeping with exponential backoff and full jitter in between, and hands an `AttemptRecord` of
every attempt to `record` (the notifier stores them so the status API can show what happened).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from shared.retry import MAX_DELAY_S, backoff_delay

log = structlog.get_logger()

Outcome = Literal["ok", "retryable", "permanent"]

MAX_DETAIL_CHARS = 500  # details end up in MongoDB and in API responses: keep them short


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one try of one channel came to. `status` is the HTTP status or the SMTP reply code, if any."""

    ok: bool
    retryable: bool = False
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None  # seconds the receiver asked us to wait (HTTP Retry-After)

    @property
    def outcome(self) -> Outcome:
        if self.ok:
            return "ok"
        return "retryable" if self.retryable else "permanent"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt: int  # 1-based
    started_at: datetime  # UTC
    outcome: Outcome
    status: int | None
    detail: str
    duration_s: float
    next_delay_s: float | None  # the wait before the next attempt; None when this attempt was the last

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def deliver_with_retry(
    attempt: Callable[[], Awaitable[AttemptOutcome]],
    *,
    attempts: int,
    backoff: float,
    record: Callable[[AttemptRecord], Awaitable[None]],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    max_delay: float = MAX_DELAY_S,
) -> bool:
    """Try `attempt` up to `attempts` times; True as soon as one succeeds, False otherwise.

    Stops at once on a permanent failure. An exception escaping `attempt` is a bug in the channel, not a
    delivery problem: it is logged and recorded as a permanent failure rather than retried, so a broken
    channel cannot hammer a receiver. Exceptions from `record` propagate (the caller's storage is down).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for number in range(1, attempts + 1):
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        try:
            outcome = await attempt()
        except Exception as exc:
            log.exception("notify.attempt_crashed", attempt=number)
            outcome = AttemptOutcome(ok=False, retryable=False, detail=f"internal error: {exc!r}")
        duration = time.monotonic() - t0

        last = outcome.ok or not outcome.retryable or number == attempts
        delay = (
            None
            if last
            else backoff_delay(
                number - 1, base=backoff, rng=rng, retry_after=outcome.retry_after, max_delay=max_delay
            )
        )
        entry = AttemptRecord(
            attempt=number,
            started_at=started_at,
            outcome=outcome.outcome,
            status=outcome.status,
            detail=outcome.detail[:MAX_DETAIL_CHARS],
            duration_s=duration,
            next_delay_s=delay,
        )
        await record(entry)
        (log.info if outcome.ok else log.warning)(
            "notify.attempt",
            attempt=number,
            of=attempts,
            outcome=entry.outcome,
            status=entry.status,
            detail=entry.detail,
            duration_s=round(duration, 3),
            next_delay_s=None if delay is None else round(delay, 3),
        )
        if outcome.ok:
            return True
        if delay is None:
            return False
        await sleep(delay)
    return False  # unreachable: the last attempt always returns above
