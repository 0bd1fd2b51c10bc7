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

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.errors


async def fixed_rate(http: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> LoadResult:
    result = LoadResult(rate, seconds)
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
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
