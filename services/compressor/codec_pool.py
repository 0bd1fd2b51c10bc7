"""Where the codec runs: never on the event loop, on every core, and time-bounded. Two ways (`codec_isolation`):

* `thread` (the default): `CodecThreads`, worker threads of the compressor process itself. Pillow releases
  the GIL while it decodes and encodes, so the event loop and the codec share a process well, and an image's
  bytes never cross a process boundary (pickled, piped and polled for, they cost about a tenth of the CPU
  of the codec itself). A thread cannot be killed: an image over its budget fails all the same, at once,
  and the whole process is then replaced (`stuck`: the service stops, `exit_if_stuck` ends it with
  STUCK_EXIT_CODE and its supervisor starts a fresh one; its unacknowledged messages are redelivered). A
  crash in a native decoder takes the process down with it; the bus gives up on a message that keeps
  doing that (CRASH_LIMIT) and gives its image its failure.
* `process`: `CodecPool`, below, which kills only the runaway worker, at the cost of the copying.

In the pool:

Each image gets a wall-time budget in its worker (`time_budget`, counted from when the worker starts on
it, not while it waits for one; `quality=auto` adds AUTO_ALLOWANCE_S for its search). A worker still busy past it is killed and replaced, and the image fails
with that reason: a file that is merely slow to decode (a huge animation, a pathological PNG) costs at most
the budget, and never a worker for good. A worker that dies (a crash in a native decoder) is replaced as
well, and only its own image is affected; that image's message is retried by the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


STUCK_EXIT_CODE = 75  # a codec thread ran over its budget: the process ended to be replaced


class CodecCrashed(RuntimeError):
    """The worker died while handling this image (retried by the bus: it may have been something else)."""


def over_budget(budget: float, data: bytes) -> ImageRejected:
    log.warning("codec_over_budget_worker_replaced", budget_s=budget, input_bytes=len(data))
    return ImageRejected(f"took longer than {budget:g} s to decode and re-encode", "timeout")


class _Budgeted:
    time_budget: float

    def budget(self, options: ImageOptions) -> float:
        """Seconds one image may take in its worker with these options."""
        return self.time_budget + (AUTO_ALLOWANCE_S if options.auto else 0.0)


class CodecThreads(_Budgeted):
    """The codec on `workers` threads of this process (see the module's docstring)."""

    def __init__(
        self,
        workers: int,
        time_budget: float = 30.0,
        max_frames: int = MAX_FRAMES,
        on_stuck: Callable[[], None] = lambda: None,
    ) -> None:
        self.time_budget = time_budget
        self.max_frames = max_frames
        self.stuck = False
        self._on_stuck = on_stuck
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="codec", initializer=_name_thread)
        self._free = asyncio.Semaphore(workers)

    async def warm_up(self) -> None:
        return None

    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage:
        loop = asyncio.get_running_loop()
        # At most one image per thread at a time, so the budget counts from when a thread takes the image,
        # not while it waits for one; a thread's slot comes free when its image is done, not before (one
        # over its budget keeps it, so no image is timed while it waits behind that one).
        await self._free.acquire()
        done = loop.run_in_executor(
            self._threads, compress, data, quality, max_pixels, self.max_frames, options
        )
        done.add_done_callback(lambda _: self._free.release())
        budget = self.budget(options)
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(done)
        except TimeoutError:
            REPLACED.labels("over_budget").inc()
            if not self.stuck:
                self.stuck = True
                self._on_stuck()
            raise over_budget(budget, data) from None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def exit_if_stuck(self) -> None:
        """The last step of a stop: a thread still running an image over its budget would hold the process
        (and its CPU) until that image ends, so the process ends here instead."""
        if self.stuck:
            log.error("codec_thread_stuck_process_exits", exit_code=STUCK_EXIT_CODE)
            os._exit(STUCK_EXIT_CODE)


CODEC_THREAD = b"codec"  # the codec threads' name as the OS shows it (/proc/<pid>/task/<tid>/comm)


def _name_thread() -> None:
    """Name the thread for the OS as well, so that its CPU time can be told apart (bench/procstat.py)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, CODEC_THREAD, 0, 0, 0)  # 15: PR_SET_NAME (Linux)


class CodecPool(_Budgeted):
    def __init__(self, workers: int, time_budget: float = 30.0, max_frames: int = MAX_FRAMES) -> None:
        self._workers = workers
        self.time_budget = time_budget
        self.max_frames = max_frames
        self._pool = ProcessPool(workers, context=multiprocessing.get_context("spawn"))

    async def warm_up(self) -> None:
        await asyncio.gather(*(asyncio.wrap_future(self._pool.schedule(int)) for _ in range(self._workers)))

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
            raise over_budget(budget, data) from None
        except ProcessExpired as exc:
            REPLACED.labels("died").inc()
            log.error("codec_worker_died_replaced", exitcode=exc.exitcode)
            raise CodecCrashed(f"the codec process died (exit code {exc.exitcode})") from None

    def close(self) -> None:
        self._pool.stop()
