"""The short-lived cache behind GET /status."""

from __future__ import annotations

import asyncio

import pytest

from services.upload.status_view import ShortLivedCache


class Renderer:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(0.01)
        return f"rendering {self.calls}".encode()


async def test_a_rendering_serves_every_poll_until_it_expires() -> None:
    cache, render = ShortLivedCache(ttl=0.1), Renderer()
    assert await cache.get("k", render) == b"rendering 1"
    assert await cache.get("k", render) == b"rendering 1"
    assert render.calls == 1


async def test_concurrent_misses_share_one_rendering() -> None:
    cache, render = ShortLivedCache(ttl=1.0), Renderer()
    results = await asyncio.gather(*(cache.get("k", render) for _ in range(50)))
    assert render.calls == 1 and set(results) == {b"rendering 1"}


async def test_keys_are_separate_and_the_cache_is_bounded() -> None:
    cache, render = ShortLivedCache(ttl=1.0, max_entries=2), Renderer()
    for key in ("a", "b", "c"):
        await cache.get(key, render)
    assert render.calls == 3
    await cache.get("a", render)  # evicted as the oldest
    assert render.calls == 4


async def test_failures_are_not_cached() -> None:
    cache, calls = ShortLivedCache(ttl=1.0), 0

    async def missing() -> bytes:
        nonlocal calls
        calls += 1
        raise LookupError("unknown request")

    for _ in range(2):
        with pytest.raises(LookupError):
            await cache.get("k", missing)
    assert calls == 2


async def test_a_zero_ttl_disables_it() -> None:
    cache, render = ShortLivedCache(ttl=0), Renderer()
    await cache.get("k", render)
    await cache.get("k", render)
    assert render.calls == 2


async def test_an_expired_rendering_is_served_while_it_refreshes() -> None:
    cache, render = ShortLivedCache(ttl=0.05), Renderer()
    await cache.get("k", render)
    await asyncio.sleep(0.06)
    assert await cache.get("k", render) == b"rendering 1"  # stale, answered at once
    await asyncio.sleep(0.03)  # the background refresh lands
    assert await cache.get("k", render) == b"rendering 2"
    assert render.calls == 2


async def test_a_rendering_too_old_to_serve_is_waited_for() -> None:
    cache, render = ShortLivedCache(ttl=0.01), Renderer()
    await cache.get("k", render)
    await asyncio.sleep(0.01 * ShortLivedCache.STALE_FACTOR + 0.01)
    assert await cache.get("k", render) == b"rendering 2"


async def test_the_cache_is_bounded_in_bytes() -> None:
    cache, render = ShortLivedCache(ttl=1.0, max_bytes=25), Renderer()  # each rendering is 11 bytes
    for key in ("a", "b", "c"):
        await cache.get(key, render)
    await cache.get("a", render)  # "a" was evicted to keep the total under 25 bytes
    assert render.calls == 4
