"""The upload's outbox: publishes the ImageRequested events of accepted requests.

An accepted request is stored first (its rows and its request document, flagged `outbox_pending`), and
only then published, chunk by chunk, recording after each confirmed chunk how far it got. If the broker
is down or the process dies midway, the next pass (on start-up, then every few seconds) resumes from the
last recorded chunk; at most one chunk is published twice, which the idempotent consumers absorb.
A lease keeps two gateway replicas from publishing the same request at once. It is renewed while the
publishing goes on and given back if it fails, so a retry need not wait; the lease of a gateway that died
runs out within LEASE, and the next pass (its own restart, typically) takes the request over.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import structlog
from prometheus_client import Counter

from shared.bus import Publisher
from shared.events import ImageRequested
from shared.files import output_file_id
from shared.image_options import ImageOptions
from shared.repository import RequestDoc, RequestRepository, RowChunkDoc

log = structlog.get_logger()

PUBLISHED = Counter("imagepipe_upload_events_published_total", "ImageRequested events published")
LEASE = timedelta(seconds=6)  # renewed every LEASE/3 while publishing


class OutboxRelay:
    def __init__(self, repo: RequestRepository, publisher: Publisher, interval: float = 3.0) -> None:
        self.repo = repo
        self.publisher = publisher
        self.interval = interval
        self.owner = uuid.uuid4().hex  # this relay's name on the leases it holds
        self._kick = asyncio.Event()

    def kick(self) -> None:
        """A request was just accepted: publish now rather than at the next tick."""
        self._kick.set()

    async def run_forever(self) -> None:
        while True:
            self._kick.clear()
            try:
                while await self.publish_next():
                    pass
            except Exception as exc:  # broker or database outage: the work stays pending; retry next tick
                log.warning("outbox_publish_failed", error=str(exc)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)

    async def publish_next(self) -> bool:
        """Claim one pending request and publish the rest of its events. False when none is claimable."""
        async for request_id in self.repo.outbox_pending():
            request = await self.repo.claim_outbox(request_id, self.owner, LEASE)
            if request is None:
                continue  # another replica holds it
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    await self._publish_holding_lease(request)
                except Exception:
                    # Give the lease back, or the retry a few seconds from now would find it still held.
                    with contextlib.suppress(Exception):
                        await self.repo.release_outbox(request_id, self.owner)
                    raise
            return True
        return False

    async def _publish_holding_lease(self, request: RequestDoc) -> None:
        renewing = asyncio.create_task(self._renew_lease(request["_id"]))
        try:
            await self._publish(request)
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

    async def _publish(self, request: RequestDoc) -> None:
        request_id = request["_id"]
        for chunk_no in range(request["published_chunks"], request["row_chunks"]):
            chunk = await self.repo.row_chunk(request_id, chunk_no)
            if chunk is None:
                # Only a request whose upload failed after its document was written (the client was told
                # 503, nothing accepted) lacks rows: it is not ours to publish, and must not block others.
                log.error("outbox_request_without_rows_dropped", chunk=chunk_no)
                await self.repo.finish_outbox(request_id, published=False)
                return
            events = _image_requests(chunk, ImageOptions.from_stored(request.get("options")))
            await self.publisher.publish_many(events)
            PUBLISHED.inc(len(events))
            await self.repo.record_published(request_id, self.owner, chunk_no + 1, LEASE)
        await self.repo.finish_outbox(request_id, published=True)
        log.info("request_published", images=request["total_images"])


def _image_requests(chunk: RowChunkDoc, options: ImageOptions) -> list[ImageRequested]:
    request_id, index = chunk["request_id"], chunk["first_image"]
    events = []
    for row in chunk["rows"]:
        for url in row["urls"]:
            file_id = output_file_id(request_id, index, options)
            events.append(
                ImageRequested(request_id=request_id, index=index, url=url, file_id=file_id, options=options)
            )
            index += 1
    return events
