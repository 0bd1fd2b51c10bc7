"""The codec's processes: decode/encode uses every core, never runs on the event loop, and is time-bounded.

Each image gets a wall-time budget in its worker (`time_budget`, counted from when the worker starts on
it, not while it waits for one; `quality=auto` adds AUTO_ALLOWANCE_S for its search). A worker still busy past it is killed and replaced, and the image fails
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
from shared.image_options import ImageOptions

log = structlog.get_logger()

# quality=auto encodes and scores a sample of the image about five times (at most nine) before the final
# encode: ~1 CPU-s per image whatever its size (the sample is capped), ~2 s at worst. Wall time on a busy
# host (the compressors run niced) can be several times that, hence the margin.
AUTO_ALLOWANCE_S = 10.0

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

    def budget(self, options: ImageOptions) -> float:
        """Seconds one image may take in its worker with these options."""
        return self.time_budget + (AUTO_ALLOWANCE_S if options.auto else 0.0)

    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage:
        budget = self.budget(options)
        future = self._pool.schedule(
            compress, args=(data, quality, max_pixels, self.max_frames, options), timeout=budget
        )
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            REPLACED.labels("over_budget").inc()
            log.warning("codec_over_budget_worker_replaced", budget_s=budget, input_bytes=len(data))
            raise ImageRejected(f"took longer than {budget:g} s to decode and re-encode", "timeout") from None
        except ProcessExpired as exc:
            REPLACED.labels("died").inc()
            log.error("codec_worker_died_replaced", exitcode=exc.exitcode)
            raise CodecCrashed(f"the codec process died (exit code {exc.exitcode})") from None

    def close(self) -> None:
        self._pool.stop()
