"""The upload's outbox: meters the ImageRequested events of accepted requests into the queue.

An accepted request is stored first (its rows and its request document, flagged `outbox_pending`), and
only then published. Publishing is metered, so that no request can starve another: each request has at
most `window` images queued or in progress (published, minus the outcomes the status service has counted),
and every pass tops up each pending request in turn. A 200,000-image upload therefore never puts more than
`window` messages in front of a 10-image upload made after it, the queue stays short, and dropping a
request's remaining work is cheap.

At-least-once: the relay records how far it got (`published_images`) only after the broker confirmed those
messages. If the broker is down or the process dies midway, the next pass resumes from the last recorded
position, so at most one top-up is published twice, which the idempotent consumers absorb. A lease keeps
two gateway replicas from topping up the same request at once; it is kept from one top-up to the next,
extended by every progress record and checked by it (a relay whose lease was taken over records nothing
and stops), so the lease of a gateway that died runs out within LEASE and any relay takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Counter, Gauge, Histogram

from shared.bus import Publisher
from shared.events import ImageRequested
from shared.files import output_file_id
from shared.image_options import ImageOptions
from shared.repository import OutboxEntry, RequestDoc, RequestRepository, RowChunkDoc
from shared.runtime import wait_until_set

log = structlog.get_logger()

PUBLISHED = Counter("imagepipe_relay_events_published_total", "ImageRequested events published")
BACKLOG = Gauge("imagepipe_relay_outbox_backlog_requests", "Accepted requests not wholly published yet")
PUBLISH_LAG = Histogram(
    "imagepipe_relay_publish_lag_seconds",
    "From a request's upload to the confirm of its last ImageRequested",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
LEASE = timedelta(seconds=6)  # extended by every progress record, and every LEASE/3 while publishing
MAX_RETRY_WAIT_S = 10.0  # between passes while they fail (an outage)
_EPOCH = datetime.fromtimestamp(0, UTC)
CACHED_CHUNKS = 8  # row chunks kept between passes: a request's next top-up usually reads the same one


class OutboxRelay:
    def __init__(
        self, repo: RequestRepository, publisher: Publisher, *, window: int = 256, interval: float = 0.5
    ) -> None:
        self.repo = repo
        self.publisher = publisher
        self.window = window
        self.interval = interval  # between passes: how soon a finished image's slot is refilled
        self.owner = uuid.uuid4().hex  # this relay's name on the leases it holds
        self._kick = asyncio.Event()
        self._chunks: OrderedDict[tuple[str, int], RowChunkDoc] = OrderedDict()

    def kick(self) -> None:
        """A request was just accepted: publish now rather than at the next tick."""
        self._kick.set()

    async def run_forever(self) -> None:
        failures = 0
        while True:
            self._kick.clear()
            try:
                await self.pass_once()
                failures = 0
            except Exception as exc:  # broker or database outage: the work stays pending; retry later
                failures += 1
                log.warning("outbox_publish_failed", error=str(exc)[:200], failures=failures)
            wait = min(self.interval * 2 ** min(failures, 6), MAX_RETRY_WAIT_S)  # back off while failing
            await wait_until_set(self._kick, wait)

    async def pass_once(self) -> int:
        """Top up every pending request whose window has room (a quarter of it, or what it has left), in
        turn; returns how many images were published."""
        published = pending = 0
        async for entry in self.repo.outbox_pending():
            pending += 1
            if self._room(entry) >= min(max(self.window // 4, 1), self._left(entry)):
                with structlog.contextvars.bound_contextvars(request_id=entry["_id"]):
                    published += await self._top_up(entry)
        BACKLOG.set(pending)  # as the pass began: every gateway replica reports the same backlog
        return published

    def _room(self, entry: OutboxEntry | RequestDoc) -> int:
        in_flight = entry.get("published_images", 0) - entry["no_img_compressed"] - entry["no_img_failed"]
        return min(self.window - in_flight, self._left(entry))

    @staticmethod
    def _left(entry: OutboxEntry | RequestDoc) -> int:
        return entry["total_images"] - entry.get("published_images", 0)

    async def _top_up(self, entry: OutboxEntry) -> int:
        request_id = entry["_id"]
        # Writes to the request document conflict with the status service's transactions on it, so a
        # relay keeps its lease from one top-up to the next (each progress record extends it) and claims
        # only when it does not hold it with time to spare: a top-up costs one write, not three.
        held = entry.get("lease_owner") == self.owner and entry.get("lease_until", _EPOCH) > _soon()
        request = (
            await self.repo.get(request_id, notifications=False)
            if held
            else await self.repo.claim_outbox(request_id, self.owner, LEASE)
        )
        if request is None:
            return 0  # another replica holds it
        renewing = asyncio.create_task(self._renew_lease(request_id))
        try:
            return await self._publish_window(request)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew_lease(self, request_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            with contextlib.suppress(Exception):  # a database blip: the next renewal may get through
                if not await self.repo.renew_outbox(request_id, self.owner, LEASE):
                    log.warning("outbox_lease_lost")
                    return

    async def _publish_window(self, request: RequestDoc) -> int:
        """Publish what the request's window has room for; returns how many images that was."""
        request_id = request["_id"]
        if "published_images" not in request:  # published chunk by chunk before metering existed
            request["published_images"] = await self._first_image(request, request["published_chunks"])
        start, room = request["published_images"], self._room(request)
        if room <= 0 < self._left(request):
            return 0
        events, chunks_done = await self._events(request, start, room)
        if events is None:
            # Only a request whose upload failed after its document was written (the client was told 503,
            # nothing accepted) lacks rows: it is not ours to publish, and must not block others.
            log.error("outbox_request_without_rows_dropped")
            await self.repo.finish_outbox(request_id, published=False)
            return 0
        await self.publisher.publish_many(events)
        PUBLISHED.inc(len(events))
        end = start + len(events)
        if not await self.repo.record_published(request_id, self.owner, end, chunks_done, LEASE):
            log.warning("outbox_lease_taken_over", published_to=end)
            return len(events)  # the new holder goes on from what was recorded
        if end >= request["total_images"]:
            await self.repo.finish_outbox(request_id, published=True)
            if (created := request.get("created_at")) is not None:  # a metric never fails a publish
                PUBLISH_LAG.observe((datetime.now(UTC) - created).total_seconds())
            log.info("request_published", images=request["total_images"])
        return len(events)

    async def _events(
        self, request: RequestDoc, start: int, count: int
    ) -> tuple[list[ImageRequested] | None, int]:
        """The events of images start .. start+count-1, and how many chunks are then wholly published;
        None if a chunk is missing."""
        request_id, end = request["_id"], start + count
        options = ImageOptions.from_stored(request.get("options"))
        events: list[ImageRequested] = []
        chunk_no = request["published_chunks"]
        while chunk_no < request["row_chunks"]:
            chunk = await self._chunk(request_id, chunk_no)
            if chunk is None:
                return None, chunk_no
            index = chunk["first_image"]
            for row in chunk["rows"]:
                firsts = row.get("duplicate_of") or [None] * len(row["urls"])
                for url, first in zip(row["urls"], firsts, strict=True):
                    if start <= index < end:
                        events.append(_image_request(request_id, index, url, first, options))
                    index += 1
            if index > end:
                break  # this chunk has images left for the next top-up
            chunk_no += 1
            self._chunks.pop((request_id, chunk_no - 1), None)
            if index == end:
                break
        return events, chunk_no

    async def _chunk(self, request_id: str, chunk_no: int) -> RowChunkDoc | None:
        key = (request_id, chunk_no)
        chunk = self._chunks.get(key)
        if chunk is None:
            chunk = await self.repo.row_chunk(request_id, chunk_no)
            if chunk is None:
                return None
            self._chunks[key] = chunk
            if len(self._chunks) > CACHED_CHUNKS:
                self._chunks.popitem(last=False)
        return chunk

    async def _first_image(self, request: RequestDoc, chunk_no: int) -> int:
        if chunk_no >= request["row_chunks"]:
            return request["total_images"]
        chunk = await self._chunk(request["_id"], chunk_no)
        return chunk["first_image"] if chunk is not None else 0


def _soon() -> datetime:
    """A held lease with less time than this left is claimed again before a top-up."""
    return datetime.now(UTC) + LEASE / 2


def _image_request(
    request_id: str, index: int, url: str, first: int | None, options: ImageOptions
) -> ImageRequested:
    # Every occurrence of a repeated URL shares its first occurrence's output id (made with the request's
    # options, like every id of the request): fetched once, and an occurrence handled by any compressor
    # finds (or, if it predates `duplicate_of`, writes) the same file.
    return ImageRequested(
        request_id=request_id,
        index=index,
        url=url,
        file_id=output_file_id(request_id, index if first is None else first, options),
        duplicate_of=first,
        options=options,
    )
