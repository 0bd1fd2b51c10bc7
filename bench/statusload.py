"""Status reads at a fixed rate (open loop): a request is sent on schedule whether or not earlier ones have
answered, and its latency counts from when it was due, so a slow server cannot hide its queueing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    rate: float  # requests per second asked for
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, of the answers that were 200
    errors: int = 0
    response_bytes: int = 0  # size of the last body
    clients: int = 0  # closed loop: how many clients sent back to back (0: open loop)
    # Open loop: how late each request started, by our own event loop. If these are large, the load
    # generator (not the server) is the bottleneck, and the latencies overstate the server's.
    lags: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.errors


async def fixed_rate(http: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> LoadResult:
    result = LoadResult(rate, seconds)
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        result.lags.append(loop.time() - due)
        try:
            async with http.get(url) as response:
                body = await response.read()
            if response.status == 200:
                result.latencies.append(loop.time() - due)
                result.response_bytes = len(body)
            else:
                result.errors += 1
        except aiohttp.ClientError:
            result.errors += 1

    start = loop.time()
    tasks = []
    for n in range(round(rate * seconds)):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    result.seconds = loop.time() - start
    return result


async def closed_loop(http: aiohttp.ClientSession, url: str, concurrency: int, seconds: float) -> LoadResult:
    """`concurrency` clients each sending the next request as soon as the last is answered: the rate the
    server sustains (its capacity) and its service time at that load."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = LoadResult(0.0, seconds, clients=concurrency)

    async def client() -> None:
        while loop.time() - start < seconds:
            sent = loop.time()
            try:
                async with http.get(url) as response:
                    body = await response.read()
            except aiohttp.ClientError:
                result.errors += 1
                continue
            if response.status == 200:
                result.latencies.append(loop.time() - sent)
                result.response_bytes = len(body)
            else:
                result.errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = loop.time() - start
    result.rate = result.sent / result.seconds
    return result
