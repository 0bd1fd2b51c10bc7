"""Compress one requested image: fetch it, re-encode it off the event loop, store it, report the outcome."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import Counter, Histogram

from services.compressor.codec import CompressedImage, ImageRejected
from services.compressor.fetch import FetchError
from services.compressor.hosts import HostLimiter, HostSaturated, origin_of
from services.compressor.wanted import WantedRequests
from shared.bus import HandlerMethods, Publisher, repeat_delivery
from shared.events import Event, ImageCompressed, ImageFailed, ImageRequested, ImageSkipped
from shared.files import ImageMeta, ImageStore, StoredImage
from shared.image_options import ImageOptions
from shared.repository import OutcomeDoc, OutcomeStatus

log = structlog.get_logger()

IMAGES = Counter("imagepipe_compressor_images_total", "Images handled, by outcome", ["outcome"])
BYTES = Counter("imagepipe_compressor_bytes_total", "Image bytes, by direction", ["direction"])
SECONDS = Histogram(
    "imagepipe_compressor_stage_duration_seconds",
    "Time one image spends in each stage",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEFERRED = Counter("imagepipe_compressor_deferred_total", "Images put back at the end of the queue", ["why"])
# How long an image waits, holding its prefetch slot, before it is put back at the end of the queue: for a
# download slot of its host (short, so a dead host's images cycle past quickly to reach other hosts'), and
# for the outcome of its URL's first occurrence.
HOST_SLOT_WAIT_S = 0.25
DEFER_WAIT_S = 1.0


class Fetcher(Protocol):
    async def fetch(self, url: str) -> bytes: ...


class Codec(Protocol):
    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage: ...


class Outcomes(Protocol):
    """The outcomes recorded so far (the status service's read model): a repeated URL copies its first's."""

    async def outcome(self, request_id: str, index: int) -> OutcomeDoc | None: ...


@dataclass
class Compressor:
    images: ImageStore
    publisher: Publisher
    fetcher: Fetcher
    codec: Codec
    quality: int
    max_pixels: int
    outcomes: Outcomes
    hosts: HostLimiter = field(default_factory=lambda: HostLimiter(per_host=4, wait=HOST_SLOT_WAIT_S))
    wanted: WantedRequests | None = None  # asked before any work; None: every request is wanted

    async def compress(self, event: ImageRequested) -> None:
        if self.wanted is not None and (unwanted := await self.wanted.unwanted(event.request_id)):
            if await self.wanted.skips(event.request_id):  # cancelled: skipped unfetched, but reported
                IMAGES.labels("skipped").inc()
                skipped = ImageSkipped(
                    request_id=event.request_id, index=event.index, url=event.url, reason=unwanted
                )
                await self.publisher.publish(skipped)
            else:
                IMAGES.labels("dropped").inc()
            log.info("image_dropped", index=event.index, reason=unwanted)
            return
        # A redelivery of work already stored, or a repeated URL whose first occurrence is stored (they
        # share the output): report it again rather than redo it. A first delivery has nothing stored to
        # find (a republished copy may: storing it then finds the stored file and reports that one).
        look = repeat_delivery() or event.duplicate_of is not None
        stored = await self.images.info(event.file_id) if look else None
        if stored is not None:
            await self._report(event, stored)
            return
        if event.duplicate_of is not None:
            await self._copy_first_outcome(event, event.duplicate_of)
            return
        original = await self._fetch(event)
        if original is None:
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
            # what the outcome reports: stored with the file, so a redelivery reports it again
            width=image.width,
            height=image.height,
            quality=image.quality,
            score=image.score,
        )
        with SECONDS.labels("store").time():
            name = event.url.rsplit("/", 1)[-1][:200] or "image"
            stored = await self.images.put(event.file_id, image.data, filename=name, meta=meta)
        BYTES.labels("in").inc(len(original))
        BYTES.labels("out").inc(len(image.data))
        await self._report(event, stored)

    async def _fetch(self, event: ImageRequested) -> bytes | None:
        """The image's bytes; None once the image is failed or deferred.

        A failed fetch is final for the image: the fetcher already made every attempt its policy allows,
        and bus retries on top would multiply them. A host with every download slot busy gets the image
        back at the end of the queue, so its images never hold all of this compressor's prefetch slots."""
        try:
            async with self.hosts.slot(origin_of(event.url)):
                with SECONDS.labels("fetch").time():
                    return await self.fetcher.fetch(event.url)
        except HostSaturated:
            await self._defer(event, "host_saturated")
        except FetchError as exc:
            await self._failed(event, exc.reason)
        return None

    async def _copy_first_outcome(self, event: ImageRequested, first: int) -> None:
        """A URL repeated in its request is fetched once, for its first occurrence; the others copy its
        outcome (a compressed first one is stored, and found above, since they share the output id)."""
        outcome = await self.outcomes.outcome(event.request_id, first)
        if outcome is None:
            await asyncio.sleep(DEFER_WAIT_S)  # the first is still on its way: look again after the rest
            await self._defer(event, "first_occurrence_pending")
        elif outcome["status"] == OutcomeStatus.FAILED:
            await self._failed(event, outcome.get("reason", "failed"))
        else:
            meta = ImageMeta(
                contentType=outcome.get("content_type", "application/octet-stream"),
                request_id=event.request_id,
                index=first,
                input_bytes=outcome.get("input_bytes", 0),
                kept_original=outcome.get("kept_original", False),
                width=outcome.get("width"),
                height=outcome.get("height"),
                quality=outcome.get("quality"),
                score=outcome.get("score"),
            )
            file_id = outcome.get("file_id", event.file_id)
            await self._report(event, StoredImage(file_id, outcome.get("output_bytes", 0), meta))

    async def _defer(self, event: ImageRequested, why: str) -> None:
        """Back to the end of the queue (published again before this delivery is acknowledged)."""
        DEFERRED.labels(why).inc()
        await self.publisher.publish(event)
        log.debug("image_deferred", index=event.index, why=why)

    async def on_parked(self, event: Event, reason: str) -> None:
        """Every retry failed: the image still needs an outcome, or its request would never complete."""
        if isinstance(event, ImageRequested):
            await self._failed(event, reason)

    async def _report(self, event: ImageRequested, stored: StoredImage) -> None:
        """Publish the outcome of what is stored under the image's output id."""
        IMAGES.labels("compressed").inc()
        meta = stored.meta
        await self.publisher.publish(
            ImageCompressed(
                request_id=event.request_id,
                index=event.index,
                url=event.url,
                file_id=stored.file_id,
                content_type=meta["contentType"],
                input_bytes=meta["input_bytes"],
                output_bytes=stored.length,
                kept_original=meta["kept_original"],
                width=meta.get("width"),
                height=meta.get("height"),
                quality=meta.get("quality"),
                score=meta.get("score"),
            )
        )
        log.info(
            "image_compressed", index=event.index, input_bytes=meta["input_bytes"], output_bytes=stored.length
        )

    async def _failed(self, event: ImageRequested, reason: str) -> None:
        IMAGES.labels("failed").inc()
        await self.publisher.publish(
            ImageFailed(request_id=event.request_id, index=event.index, url=event.url, reason=reason)
        )
        log.warning("image_failed", index=event.index, url=event.url, reason=reason)


# Which handler takes which event: the compressor's subscriptions (the bus binds its queue to these).
ROUTES: HandlerMethods = {ImageRequested: Compressor.compress}
