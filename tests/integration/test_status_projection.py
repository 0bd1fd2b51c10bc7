"""The status projection against the real database: idempotent counting, exactly-once completion."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from services.status.projection import StatusProjection
from shared.events import Event, ImageCompressed, ImageFailed, RequestCompleted
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository, UnknownRequest
from tests.fakes import RecordingPublisher


async def new_request(mongo: Mongo, request_id: str, total: int) -> None:
    await mongo.requests.insert_one(
        {
            "_id": request_id,
            "status": "PENDING",
            "total_images": total,
            "no_img_compressed": 0,
            "no_img_failed": 0,
            "created_at": datetime.now(UTC),
        }
    )


def compressed(request_id: str, index: int) -> ImageCompressed:
    return ImageCompressed(
        request_id=request_id,
        index=index,
        url=f"http://o/{index}.jpg",
        file_id=f"{index:032x}",
        content_type="image/jpeg",
        input_bytes=1000,
        output_bytes=400,
    )


async def test_a_redelivered_outcome_is_counted_once(mongo: Mongo) -> None:
    projection = StatusProjection(MongoRequestRepository(mongo), RecordingPublisher())
    await new_request(mongo, "req-dup", 3)

    await projection.record(compressed("req-dup", 0))
    await projection.record(compressed("req-dup", 0))
    await projection.record(ImageFailed(request_id="req-dup", index=1, url="http://o/1", reason="HTTP 404"))
    await projection.record(ImageFailed(request_id="req-dup", index=1, url="http://o/1", reason="HTTP 404"))

    doc = await mongo.requests.find_one({"_id": "req-dup"})
    assert doc is not None
    assert (doc["no_img_compressed"], doc["no_img_failed"], doc["status"]) == (1, 1, "PENDING")
    assert doc["bytes_in"] == 1000 and doc["bytes_out"] == 400
    assert doc["failures"] == [{"index": 1, "url": "http://o/1", "reason": "HTTP 404"}]


async def test_completion_fires_once_under_concurrent_duplicate_final_deliveries(mongo: Mongo) -> None:
    publisher = RecordingPublisher()
    projection = StatusProjection(MongoRequestRepository(mongo), publisher)
    await new_request(mongo, "req-race", 3)
    await projection.record(compressed("req-race", 0))

    # The last two images finish at once, and each of their deliveries is duplicated many times.
    finals = [compressed("req-race", 1), compressed("req-race", 2)] * 25
    await asyncio.gather(*(projection.record(e) for e in finals))

    completions = [e for e in publisher.events if isinstance(e, RequestCompleted)]
    assert len(completions) == 1
    assert (completions[0].total_images, completions[0].compressed, completions[0].failed) == (3, 3, 0)
    doc = await mongo.requests.find_one({"_id": "req-race"})
    assert doc is not None
    assert doc["status"] == "COMPLETED" and doc["no_img_compressed"] == 3
    assert "completion_pending" not in doc


async def test_a_completion_left_unpublished_by_a_crash_is_swept_with_the_same_event_id(mongo: Mongo) -> None:
    class CrashingPublisher(RecordingPublisher):
        async def publish(self, event: Event) -> None:
            raise ConnectionError("broker gone")

    await new_request(mongo, "req-crash", 1)
    with contextlib.suppress(ConnectionError):
        await StatusProjection(MongoRequestRepository(mongo), CrashingPublisher()).record(
            compressed("req-crash", 0)
        )
    doc = await mongo.requests.find_one({"_id": "req-crash"})
    assert doc is not None and doc["status"] == "COMPLETED" and doc["completion_pending"] is True

    publisher = RecordingPublisher()
    projection = StatusProjection(MongoRequestRepository(mongo), publisher)
    assert await projection.sweep_unpublished(older_than=timedelta(seconds=-1)) == 1
    assert await projection.sweep_unpublished(older_than=timedelta(seconds=-1)) == 0
    assert [e.event_id for e in publisher.events] == [doc["completion_event_id"]]


async def test_an_outcome_for_an_unknown_request_fails_so_it_is_retried(mongo: Mongo) -> None:
    projection = StatusProjection(MongoRequestRepository(mongo), RecordingPublisher())
    with pytest.raises(UnknownRequest):
        await projection.record(compressed("req-nobody", 0))
    # The transaction rolled back: the outcome was not kept, so a retry can record it once the request exists.
    assert await mongo.images.count_documents({"request_id": "req-nobody"}) == 0
