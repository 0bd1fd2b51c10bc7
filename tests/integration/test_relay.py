"""The upload's outbox relay against the real database."""

from __future__ import annotations

from datetime import UTC, datetime

from services.upload.relay import OutboxRelay
from shared.events import ImageRequested
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository, row_chunk_key
from tests.fakes import RecordingPublisher


async def pending_request(mongo: Mongo, request_id: str, urls: list[str] | None) -> None:
    if urls is not None:
        await mongo.rows.insert_one(
            {
                "_id": row_chunk_key(request_id, 0),
                "request_id": request_id,
                "chunk": 0,
                "first_image": 0,
                "rows": [{"serial": "1", "name": "A", "urls": urls, "cells": ["1", "A", ", ".join(urls)]}],
            }
        )
    await mongo.requests.insert_one(
        {
            "_id": request_id,
            "total_images": len(urls or ["x"]),
            "row_chunks": 1,
            "published_chunks": 0,
            "outbox_pending": True,
            "lease_until": datetime.fromtimestamp(0, UTC),
        }
    )


async def test_a_request_without_rows_is_dropped_and_does_not_block_the_others(
    mongo: Mongo, repo: MongoRequestRepository
) -> None:
    await pending_request(mongo, "req-broken", None)  # its upload failed after the document was written
    await pending_request(
        mongo, "req-good", ["https://img.example.com/a.jpg", "https://img.example.com/b.jpg"]
    )
    publisher = RecordingPublisher()
    relay = OutboxRelay(repo, publisher)

    while await relay.publish_next():
        pass

    assert [(e.request_id, e.index) for e in publisher.events if isinstance(e, ImageRequested)] == [
        ("req-good", 0),
        ("req-good", 1),
    ]
    for request_id in ("req-broken", "req-good"):
        doc = await mongo.requests.find_one({"_id": request_id})
        assert doc is not None and "outbox_pending" not in doc
