"""Compressor service: competing consumers of ImageRequested. Scale by running more of them."""

from __future__ import annotations

import os

from services.compressor.codec_pool import CodecPool, CodecThreads
from services.compressor.fetch import FetchPolicy, SafeFetcher
from services.compressor.handler import HOST_SLOT_WAIT_S, ROUTES, Compressor
from services.compressor.hosts import CircuitBreakers, HostLimiter
from services.compressor.wanted import WantedRequests
from shared.bus import bind
from shared.runtime import Runtime, main


async def start(rt: Runtime) -> None:
    s = rt.settings
    # Compression is throughput work that saturates every core. At a lower priority (inherited by the
    # codec processes) it leaves the latency-sensitive processes on the same host (the API, the broker,
    # the database) the CPU the moment they need it, and still gets every idle cycle.
    os.nice(s.compressor_nice)
    codec: CodecPool | CodecThreads
    if s.codec_isolation == "process":
        codec = CodecPool(s.codec_workers, s.codec_time_budget, s.max_frames)
    else:  # a thread over its budget stops the service, which then ends (exit_if_stuck) to be replaced
        codec = CodecThreads(s.codec_workers, s.codec_time_budget, s.max_frames, on_stuck=rt.stopping.set)
    await codec.warm_up()
    policy = FetchPolicy.from_settings(s)
    breakers = CircuitBreakers(s.host_failures_to_open, s.host_cooldown, trial_timeout=policy.total_timeout)
    fetcher = SafeFetcher(policy, breakers=breakers)
    hosts = HostLimiter(s.host_concurrency, wait=HOST_SLOT_WAIT_S)
    wanted = WantedRequests(rt.repo)
    compressor = Compressor(
        rt.images, rt.bus, fetcher, codec, s.quality, s.max_pixels, rt.repo, hosts, wanted
    )

    async def close() -> None:
        await fetcher.close()
        codec.close()
        if isinstance(codec, CodecThreads):
            codec.exit_if_stuck()

    rt.on_close.append(close)
    await rt.bus.subscribe(
        "compressor", bind(ROUTES, compressor), prefetch=s.max_in_flight, on_parked=compressor.on_parked
    )


if __name__ == "__main__":
    main("compressor", start)
