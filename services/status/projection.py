"""Project image outcomes into the request read model, and announce completion exactly once.

Recording an outcome and counting it happen in one transaction, keyed by the image: a redelivered event
finds its image already recorded and changes nothing, so counters never double-count. The transaction that
records the last outcome also flips the request to COMPLETED and marks its completion as pending
publication; publishing happens after the commit, and a sweeper republishes any completion a crash left
unpublished. The completion's event_id is fixed when it is recorded, so a republished RequestCompleted is
recognisably the same one.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from pymongo.asynchronous.client_session import AsyncClientSession

from shared.events import Event, ImageCompressed, ImageFailed, RequestCompleted
from shared.storage import Store, image_key

log = structlog.get_logger()

PENDING, COMPLETED = "PENDING", "COMPLETED"
FAILURES_KEPT = 100  # failures listed on the request document itself; all of them are in `images`


class Publisher(Protocol):
    async def publish(self, event: Event) -> None: ...


class UnknownRequest(LookupError):
    pass


class StatusProjection:
    def __init__(self, store: Store, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher

    async def handle(self, event: Event) -> None:
        assert isinstance(event, ImageCompressed | ImageFailed)
        async with self.store.client.start_session() as session:
            completed = await session.with_transaction(lambda s: self._record(s, event))
        if completed:
            await self.publish_completion(event.request_id)

    async def _record(self, session: AsyncClientSession, event: ImageCompressed | ImageFailed) -> bool:
        """Returns True when this outcome completed the request."""
        now = datetime.now(UTC)
        outcome: dict[str, Any] = {
            "request_id": event.request_id,
            "index": event.index,
            "url": event.url,
            "at": now,
        }
        inc: dict[str, int] = {}
        push: dict[str, Any] = {}
        if isinstance(event, ImageCompressed):
            outcome |= {
                "status": "COMPRESSED",
                "file_id": event.file_id,
                "content_type": event.content_type,
                "input_bytes": event.input_bytes,
                "output_bytes": event.output_bytes,
                "kept_original": event.kept_original,
            }
            inc = {"no_img_compressed": 1, "bytes_in": event.input_bytes, "bytes_out": event.output_bytes}
        else:
            outcome |= {"status": "FAILED", "reason": event.reason}
            inc = {"no_img_failed": 1}
            failure = {"index": event.index, "url": event.url, "reason": event.reason}
            push = {"failures": {"$each": [failure], "$slice": FAILURES_KEPT}}

        recorded = await self.store.images.update_one(
            {"_id": image_key(event.request_id, event.index)},
            {"$setOnInsert": outcome},
            upsert=True,
            session=session,
        )
        if recorded.upserted_id is None:
            log.info("duplicate_outcome_ignored", index=event.index)
            return False

        update: dict[str, Any] = {"$inc": inc}
        if push:
            update["$push"] = push
        # update_one + find_one rather than find_one_and_update: SecantusDB answers the latter by a scan.
        counted = await self.store.requests.update_one({"_id": event.request_id}, update, session=session)
        if counted.matched_count != 1:
            raise UnknownRequest(f"no request {event.request_id}")
        request = await self.store.requests.find_one(
            {"_id": event.request_id},
            projection={"status": 1, "total_images": 1, "no_img_compressed": 1, "no_img_failed": 1},
            session=session,
        )
        assert request is not None
        done = request["no_img_compressed"] + request["no_img_failed"]
        if done < request["total_images"] or request["status"] != PENDING:
            return False
        await self.store.requests.update_one(
            {"_id": event.request_id, "status": PENDING},
            {
                "$set": {
                    "status": COMPLETED,
                    "completed_at": now,
                    "completion_event_id": uuid.uuid4().hex,
                    "completion_pending": True,
                }
            },
            session=session,
        )
        return True

    async def publish_completion(self, request_id: str) -> None:
        request = await self.store.requests.find_one({"_id": request_id})
        if request is None or not request.get("completion_pending"):
            return
        await self.publisher.publish(
            RequestCompleted(
                event_id=request["completion_event_id"],
                request_id=request_id,
                total_images=request["total_images"],
                compressed=request["no_img_compressed"],
                failed=request["no_img_failed"],
            )
        )
        await self.store.requests.update_one({"_id": request_id}, {"$unset": {"completion_pending": ""}})
        log.info("request_completed", request_id=request_id, failed=request["no_img_failed"])

    async def sweep_unpublished(self, older_than: timedelta = timedelta(seconds=10)) -> int:
        """Publish completions that a crash (or a broker outage) left unpublished."""
        cutoff = datetime.now(UTC) - older_than
        swept = 0
        # Only the indexed flag in the query (SecantusDB scans for anything richer); the age check is ours.
        async for request in self.store.requests.find(
            {"completion_pending": True}, projection={"_id": 1, "completed_at": 1}
        ):
            if request["completed_at"] >= cutoff:
                continue  # just completed: its own handler is publishing it
            with structlog.contextvars.bound_contextvars(request_id=request["_id"]):
                await self.publish_completion(request["_id"])
            swept += 1
        return swept

    async def sweep_forever(self, interval: float = 5.0) -> None:
        while True:
            try:
                await self.sweep_unpublished()
            except Exception as exc:  # an outage: try again next round
                log.warning("completion_sweep_failed", error=str(exc)[:200])
            await asyncio.sleep(interval)
