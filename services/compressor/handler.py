"""Compress one requested image: fetch it, re-encode it off the event loop, store it, report the outcome."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import structlog
from prometheus_client import Counter, Histogram

from services.compressor.codec import CompressedImage, ImageRejected, compress
from services.compressor.fetch import FetchError
from shared.bus import HandlerMethods, Publisher
from shared.events import Event, ImageCompressed, ImageFailed, ImageRequested
from shared.files import ImageMeta, ImageStore
from shared.image_options import ImageOptions

log = structlog.get_logger()

IMAGES = Counter("imagepipe_compressor_images_total", "Images handled, by outcome", ["outcome"])
BYTES = Counter("imagepipe_compressor_bytes_total", "Image bytes, by direction", ["direction"])
SECONDS = Histogram("imagepipe_compressor_seconds", "Time per image, by stage", ["stage"])


class Fetcher(Protocol):
    async def fetch(self, url: str) -> bytes: ...


class Codec(Protocol):
    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage: ...


class CodecPool:
    """A pool of codec processes: decode/encode uses every core and never runs on the event loop.

    A worker that dies (a crash in a native decoder) breaks the whole pool; we replace it and let the
    message be retried, so one hostile file cannot take the service down.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, int) for _ in range(self._workers)))

    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, compress, data, quality, max_pixels, options
            )
        except BrokenProcessPool:
            if self._pool is pool:
                log.error("codec_pool_broken_replacing")
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Compressor:
    images: ImageStore
    publisher: Publisher
    fetcher: Fetcher
    codec: Codec
    quality: int
    max_pixels: int

    async def compress(self, event: ImageRequested) -> None:
        # A redelivery of work already stored: report it again rather than redo it. The file id is derived
        # from the request, the image and its options, so what is found was made as this event asks.
        stored = await self.images.info(event.file_id)
        if stored is not None:
            await self._compressed(event, stored.meta, stored.length)
            return

        with SECONDS.labels("fetch").time():
            try:
                original = await self.fetcher.fetch(event.url)
            except FetchError as exc:
                if exc.retryable:
                    raise  # the bus retries it with a delay, then parks it (see on_parked)
                await self._failed(event, exc.reason)
                return
        with SECONDS.labels("codec").time():
            try:
                image = await self.codec.compress(original, self.quality, self.max_pixels, event.options)
            except ImageRejected as exc:
                await self._failed(event, exc.reason)
                return
        meta = ImageMeta(
            contentType=image.content_type,
            request_id=event.request_id,
            index=event.index,
            input_bytes=len(original),
            kept_original=image.kept_original,
            width=image.width,
            height=image.height,
            quality=image.quality,
            score=image.score,
        )
        with SECONDS.labels("store").time():
            name = event.url.rsplit("/", 1)[-1][:200] or "image"
            await self.images.put(event.file_id, image.data, filename=name, meta=meta)
        BYTES.labels("in").inc(len(original))
        BYTES.labels("out").inc(len(image.data))
        await self._compressed(event, meta, len(image.data))

    async def on_parked(self, event: Event, reason: str) -> None:
        """Every retry failed: the image still needs an outcome, or its request would never complete."""
        if isinstance(event, ImageRequested):
            await self._failed(event, reason)

    async def _compressed(self, event: ImageRequested, meta: ImageMeta, output_bytes: int) -> None:
        IMAGES.labels("compressed").inc()
        await self.publisher.publish(
            ImageCompressed(
                request_id=event.request_id,
                index=event.index,
                url=event.url,
                file_id=event.file_id,
                content_type=meta["contentType"],
                input_bytes=meta["input_bytes"],
                output_bytes=output_bytes,
                kept_original=meta["kept_original"],
                width=meta.get("width"),
                height=meta.get("height"),
                quality=meta.get("quality"),
                score=meta.get("score"),
            )
        )
        log.info(
            "image_compressed", index=event.index, input_bytes=meta["input_bytes"], output_bytes=output_bytes
        )

    async def _failed(self, event: ImageRequested, reason: str) -> None:
        IMAGES.labels("failed").inc()
        await self.publisher.publish(
            ImageFailed(request_id=event.request_id, index=event.index, url=event.url, reason=reason)
        )
        log.warning("image_failed", index=event.index, url=event.url, reason=reason)


# Which handler takes which event: the compressor's subscriptions (the bus binds its queue to these).
ROUTES: HandlerMethods = {ImageRequested: Compressor.compress}
