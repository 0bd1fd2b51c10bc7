"""The upload's outbox relay against the real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.upload.relay import OutboxRelay
from shared.events import ImageRequested
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository, OutcomeDoc, OutcomeStatus, row_chunk_key
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
            "no_img_compressed": 0,
            "no_img_failed": 0,
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

    await relay.pass_once()

    assert [(e.request_id, e.index) for e in publisher.events if isinstance(e, ImageRequested)] == [
        ("req-good", 0),
        ("req-good", 1),
    ]
    for request_id in ("req-broken", "req-good"):
        doc = await mongo.requests.find_one({"_id": request_id})
        assert doc is not None and "outbox_pending" not in doc


async def test_a_request_is_metered_by_the_outcomes_the_status_service_counts(
    mongo: Mongo, repo: MongoRequestRepository
) -> None:
    urls = [f"https://img.example.com/{n}.jpg" for n in range(6)]
    await pending_request(mongo, "req-metered", urls)
    publisher = RecordingPublisher()
    relay = OutboxRelay(repo, publisher, window=4)

    assert await relay.pass_once() == 4
    assert await relay.pass_once() == 0
    outcomes = [
        OutcomeDoc(
            request_id="req-metered", index=i, url=urls[i], status=OutcomeStatus.FAILED, at=datetime.now(UTC)
        )
        for i in range(2)
    ]
    await repo.record_outcomes("req-metered", outcomes)
    assert await relay.pass_once() == 2
    assert [e.index for e in publisher.events if isinstance(e, ImageRequested)] == list(range(6))
    doc = await mongo.requests.find_one({"_id": "req-metered"})
    assert doc is not None and "outbox_pending" not in doc and doc["published_images"] == 6


async def test_a_lease_taken_over_is_neither_renewed_nor_recorded_by_its_old_holder(
    mongo: Mongo, repo: MongoRequestRepository
) -> None:
    await pending_request(
        mongo, "req-lease", ["https://img.example.com/a.jpg", "https://img.example.com/b.jpg"]
    )
    assert await repo.claim_outbox("req-lease", "stalled-relay", timedelta(milliseconds=200)) is not None
    await asyncio.sleep(0.3)  # it stalls past its lease
    publisher = RecordingPublisher()
    assert await OutboxRelay(repo, publisher).pass_once() == 2  # another relay takes the request over

    assert not await repo.renew_outbox("req-lease", "stalled-relay", timedelta(seconds=6))
    assert not await repo.record_published("req-lease", "stalled-relay", 1, 0, timedelta(seconds=6))
    doc = await mongo.requests.find_one({"_id": "req-lease"})
    assert doc is not None and doc["published_images"] == 2 and "outbox_pending" not in doc
