"""Fairness between origin hosts in one compressor: a concurrency limit per host, and a circuit breaker.

* `HostLimiter`: at most `per_host` downloads from one origin (scheme, host and port) at once. A message
  whose host is saturated waits a moment for a slot, then is deferred (the handler puts it back at the end
  of the queue), so one slow or dead host can never hold all of a compressor's prefetch slots: the others
  stay free for other hosts' images.
* `CircuitBreakers`: after `failures_to_open` timeouts or connection failures in a row from one origin,
  its breaker opens and every further attempt fails at once with "host unresponsive", for `cooldown`
  seconds. Then one trial attempt is let through (half-open): an answer closes the breaker, another failure
  opens it for a new cooldown. Any HTTP answer, even an error status, counts as the host being alive.

Both are per compressor process: replicas learn about a dead host independently, each after a few
timeouts of its own, which costs little and needs no shared state.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from yarl import URL

log = structlog.get_logger()

KEPT_ORIGINS = 10_000  # breaker states remembered at most (failing hosts; a success forgets its host)


def origin_of(url: str | URL) -> str:
    """The origin a URL is fetched from, as "scheme://host:port" (lower case, default port made explicit)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        return f"{parsed.scheme.lower()}://{(parsed.host or '').lower()}:{parsed.port}"
    except (ValueError, TypeError):
        return str(url)


class HostSaturated(Exception):
    """Every download slot for this host stayed busy while the message waited: defer it."""


class HostLimiter:
    def __init__(self, per_host: int, wait: float) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self.wait = wait
        self._active: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    def active(self, origin: str) -> int:
        return self._active[origin]

    @asynccontextmanager
    async def slot(self, origin: str) -> AsyncIterator[None]:
        """Hold one of `origin`'s slots; HostSaturated if none frees up within `wait` seconds."""
        async with self._changed:
            if self._active[origin] >= self.per_host:
                try:
                    async with asyncio.timeout(self.wait):  # not wait_for: see shared.runtime.wait_until_set
                        await self._changed.wait_for(lambda: self._active[origin] < self.per_host)
                except TimeoutError:
                    raise HostSaturated(origin) from None
            self._active[origin] += 1
        try:
            yield
        finally:
            async with self._changed:
                self._active[origin] -= 1
                if self._active[origin] <= 0:
                    del self._active[origin]
                self._changed.notify_all()


class HostUnresponsive(Exception):
    """The origin's breaker is open. `reason` is meant for the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    trial_until: float | None = None  # a half-open trial is under way until then


class CircuitBreakers:
    def __init__(
        self,
        failures_to_open: int = 5,
        cooldown: float = 30.0,
        trial_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.trial_timeout = trial_timeout  # a trial that never reports back no longer blocks the next one
        self._clock = clock
        self._breakers: OrderedDict[str, _Breaker] = OrderedDict()

    def is_open(self, origin: str) -> bool:
        breaker = self._breakers.get(origin)
        return breaker is not None and breaker.opened_at is not None

    def check(self, origin: str) -> None:
        """Raise HostUnresponsive unless an attempt on `origin` may go ahead now."""
        breaker = self._breakers.get(origin)
        if breaker is None or breaker.opened_at is None:
            return
        now = self._clock()
        reopens = breaker.opened_at + self.cooldown
        if now >= reopens and (breaker.trial_until is None or now >= breaker.trial_until):
            breaker.trial_until = now + self.trial_timeout  # half-open: this attempt is the trial
            log.info("host_breaker_trial", origin=origin)
            return
        raise HostUnresponsive(
            f"host unresponsive: {_host(origin)} timed out or refused connections {breaker.failures} times "
            f"in a row; not tried again for {max(reopens - now, 0):.0f} s"
        )

    def succeeded(self, origin: str) -> None:
        """The host answered: its breaker closes and its failures are forgotten."""
        if self._breakers.pop(origin, None) is not None:
            log.info("host_breaker_closed", origin=origin)

    def failed(self, origin: str) -> None:
        """A timeout or connection failure."""
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = _Breaker()
            if len(self._breakers) > KEPT_ORIGINS:
                self._breakers.popitem(last=False)
        breaker.failures += 1
        half_open = breaker.opened_at is not None
        if half_open or breaker.failures >= self.failures_to_open:
            breaker.opened_at, breaker.trial_until = self._clock(), None
            log.warning(
                "host_breaker_opened", origin=origin, failures=breaker.failures, cooldown_s=self.cooldown
            )


def _host(origin: str) -> str:
    return origin.partition("://")[2] or origin
