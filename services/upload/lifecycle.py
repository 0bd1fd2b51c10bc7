"""The end of a request's life: deleting it (DELETE /requests/{id}), and retention (the gateway's sweeper).

Deleting is one repository operation (`purge`: the request becomes unreachable first, then its rows and
outcomes go) and one image-store operation (its GridFS files and chunks). The API answers once the
first is done; the images, which take longest (about 1.5 ms each on SecantusDB), go in the background
(`Deletions`), and an interrupted deletion is finished by the sweep below. Work still in flight for a
deleted request is harmless: compressors skip it (wanted.py), the status service drops its outcomes
without recreating it, the relay finds nothing left to publish and the notifier drops its completion.

The purge stays recorded for PURGE_SETTLE; then the sweeper deletes the request's images and rows once
more (what a crash interrupted, or an image a compressor stored after the delete) and forgets the purge.
The same sweeper deletes requests that finished more than the retention period ago, in bounded batches.
It runs in every gateway replica: every step is idempotent, so two replicas purging one request at once
cost only a repeated delete.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from shared.files import ImageStore
from shared.repository import RequestRepository

log = structlog.get_logger()

# Longer than any work started before a delete can take to store its image (a download is at most
# FETCH_TOTAL_TIMEOUT, a codec run its time budget): whatever it leaves, the sweep then removes.
PURGE_SETTLE = timedelta(hours=1)
SWEEP_BATCH = 100  # requests deleted per batch; a round deletes batch after batch until none is left
SWEEP_INTERVAL_S = 60.0


async def delete_request(repo: RequestRepository, images: ImageStore, request_id: str) -> bool:
    """Delete the request, its rows, outcomes and images, all before returning; False if there is no such
    request."""
    if not await repo.purge(request_id):
        return False
    await _delete_images(images, request_id)
    return True


async def _delete_images(images: ImageStore, request_id: str) -> None:
    files = await images.purge(request_id)
    log.info("request_deleted", request_id=request_id, images=files)


class Deletions:
    """The API's deletions: the request is unreachable when `start` returns, its images go in the
    background (a gateway that stops meanwhile leaves them to the sweep)."""

    def __init__(self, repo: RequestRepository, images: ImageStore) -> None:
        self.repo, self.images = repo, images
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, request_id: str) -> bool:
        """False if there is no such request. A running request loses its remaining work (see above)."""
        # A running request is cancelled first: from then on nothing more of it is published, even by a
        # relay in the middle of a top-up. It is not left to settle: deleted, it gets no notifications.
        await self.repo.cancel_request(request_id)
        if not await self.repo.purge(request_id):
            return False
        task = asyncio.create_task(self._images(request_id), name=f"delete-images-{request_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    async def _images(self, request_id: str) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await _delete_images(self.images, request_id)
            except Exception as exc:  # an outage: the sweep finishes it
                log.warning("request_images_not_deleted", error=str(exc)[:200])

    async def settled(self) -> None:
        """Wait for the deletions under way (tests)."""
        await asyncio.gather(*self._running)


async def expire(repo: RequestRepository, images: ImageStore, retention: timedelta) -> int:
    """Delete every request that finished more than `retention` ago; returns how many were deleted."""
    deleted = 0
    while batch := [rid async for rid in repo.expired(datetime.now(UTC) - retention, SWEEP_BATCH)]:
        for request_id in batch:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                deleted += await delete_request(repo, images, request_id)
    if deleted:
        log.info("expired_requests_deleted", requests=deleted, retention_days=retention / timedelta(days=1))
    return deleted


async def finish_purges(repo: RequestRepository, images: ImageStore, settle: timedelta = PURGE_SETTLE) -> int:
    """Purge once more each request deleted more than `settle` ago, then forget its purge."""
    finished = 0
    while batch := [rid async for rid in repo.purges(settle, SWEEP_BATCH)]:
        for request_id in batch:
            await repo.purge(request_id)
            if leftovers := await images.purge(request_id):
                log.warning("deleted_request_leftovers_removed", request_id=request_id, images=leftovers)
            await repo.forget_purge(request_id)
            finished += 1
    return finished


async def sweep_forever(
    repo: RequestRepository,
    images: ImageStore,
    retention: timedelta | None,
    interval: float = SWEEP_INTERVAL_S,
) -> None:
    """The sweeper: expired requests (unless `retention` is None: kept forever), then settled purges."""
    while True:
        try:
            if retention is not None:
                await expire(repo, images, retention)
            await finish_purges(repo, images)
        except Exception as exc:  # an outage: next round
            log.warning("lifecycle_sweep_failed", error=str(exc)[:200])
        await asyncio.sleep(interval)
