"""The codec's processes: decode/encode uses every core, never runs on the event loop, and is time-bounded.

Each image gets a wall-time budget in its worker (`time_budget`, counted from when the worker starts on
it, not while it waits for one). A worker still busy past it is killed and replaced, and the image fails
with that reason: a file that is merely slow to decode (a huge animation, a pathological PNG) costs at most
the budget, and never a worker for good. A worker that dies (a crash in a native decoder) is replaced as
well, and only its own image is affected; that image's message is retried by the bus.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import TimeoutError as FutureTimeout

import structlog
from pebble import ProcessExpired, ProcessPool
from prometheus_client import Counter

from services.compressor.codec import MAX_FRAMES, CompressedImage, ImageRejected, compress

log = structlog.get_logger()

REPLACED = Counter("imagepipe_codec_workers_replaced_total", "Codec workers killed or lost", ["why"])


class CodecCrashed(RuntimeError):
    """The worker died while handling this image (retried by the bus: it may have been something else)."""


class CodecPool:
    def __init__(self, workers: int, time_budget: float = 30.0, max_frames: int = MAX_FRAMES) -> None:
        self._workers = workers
        self.time_budget = time_budget
        self.max_frames = max_frames
        self._pool = ProcessPool(workers, context=multiprocessing.get_context("spawn"))

    async def warm_up(self) -> None:
        await asyncio.gather(*(asyncio.wrap_future(self._pool.schedule(int)) for _ in range(self._workers)))

    async def compress(self, data: bytes, quality: int, max_pixels: int) -> CompressedImage:
        future = self._pool.schedule(
            compress, args=(data, quality, max_pixels, self.max_frames), timeout=self.time_budget
        )
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            REPLACED.labels("over_budget").inc()
            log.warning("codec_over_budget_worker_replaced", budget_s=self.time_budget, input_bytes=len(data))
            raise ImageRejected(
                f"took longer than {self.time_budget:g} s to decode and re-encode", "timeout"
            ) from None
        except ProcessExpired as exc:
            REPLACED.labels("died").inc()
            log.error("codec_worker_died_replaced", exitcode=exc.exitcode)
            raise CodecCrashed(f"the codec process died (exit code {exc.exitcode})") from None

    def close(self) -> None:
        self._pool.stop()
