"""A host that accepts connections and never answers, through the real fetcher: the breaker opens, its
images fail fast with a reason, other hosts are untouched, and the host is tried again after the cooldown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from localrun.samples import photo
from services.compressor.fetch import FetchError, FetchPolicy, SafeFetcher
from services.compressor.hosts import CircuitBreakers
from tests.origin import Origin, SilentOrigin

POLICY = FetchPolicy(
    allow_private=True, connect_timeout=1.0, read_timeout=0.3, total_timeout=10.0, attempts=2, backoff=0.01
)


@pytest.fixture
async def dead() -> AsyncIterator[SilentOrigin]:
    origin = await SilentOrigin().start()
    yield origin
    await origin.stop()


@pytest.fixture
async def alive() -> AsyncIterator[Origin]:
    origin = await Origin().start()
    origin.images["a.jpg"] = photo(32, 32, seed=1)
    yield origin
    await origin.stop()


async def failure(fetcher: SafeFetcher, url: str) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(url)
    return info.value.reason, loop.time() - started


async def test_a_dead_hosts_images_fail_fast_once_its_breaker_opens(
    dead: SilentOrigin, alive: Origin
) -> None:
    async with SafeFetcher(POLICY, breakers=CircuitBreakers(failures_to_open=2, cooldown=0.5)) as fetcher:
        reason, took = await failure(fetcher, dead.url("1.jpg"))
        assert reason == "timed out after 2 attempts" and took >= 0.6
        assert dead.connections == 2

        reason, took = await failure(fetcher, dead.url("2.jpg"))
        assert reason.startswith("host unresponsive: 127.0.0.1:") and "2 times in a row" in reason
        assert took < 0.1 and dead.connections == 2, "an open breaker sends nothing to the host"
        assert await fetcher.fetch(alive.url("a.jpg")), "other hosts are not affected"

        await asyncio.sleep(0.6)  # the cooldown: one trial goes to the host, fails, and reopens it
        reason, _ = await failure(fetcher, dead.url("3.jpg"))
        assert dead.connections == 3
        reason, took = await failure(fetcher, dead.url("4.jpg"))
        assert reason.startswith("host unresponsive") and took < 0.1 and dead.connections == 3
