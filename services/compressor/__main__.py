"""Compressor service: competing consumers of ImageRequested. Scale by running more of them."""

from __future__ import annotations

import asyncio

from services.compressor.fetch import FetchPolicy, SafeFetcher
from services.compressor.handler import CodecPool, Compressor
from shared.runtime import Runtime, run_service


async def start(rt: Runtime) -> None:
    s = rt.settings
    codec = CodecPool(s.codec_workers, s.codec_nice)
    await codec.warm_up()
    fetcher = SafeFetcher(FetchPolicy.from_settings(s))
    compressor = Compressor(rt.store, rt.bus, fetcher, codec, s.quality, s.max_pixels)

    async def close() -> None:
        await fetcher.close()
        codec.close()

    rt.on_close.append(close)
    await rt.bus.consume(
        "compressor", compressor.handle, prefetch=s.max_in_flight, on_parked=compressor.on_parked
    )


if __name__ == "__main__":
    asyncio.run(run_service("compressor", start))
