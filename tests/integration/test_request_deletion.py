"""Deleting a request and retention, against the real database (and, for the API, the real broker)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.status.projection import StatusProjection
from services.upload import lifecycle
from shared.events import ImageCompressed
from shared.files import GRIDFS_CHUNK_BYTES, GridFsImageStore, ImageMeta, output_file_id
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository, OutcomeDoc, OutcomeStatus, RequestStatus, RowDoc
from shared.settings import Settings
from tests.conftest import eventually
from tests.fakes import RecordingPublisher, an_upload
from tests.integration.test_api import client_for

COLLECTIONS = ("requests", "rows", "images", "fs.files", "fs.chunks")


async def stored_request(
    repo: MongoRequestRepository, images: GridFsImageStore, request_id: str, total: int = 3, done: int = 3
) -> list[str]:
    """An accepted request of `total` images, `done` of them compressed and stored (3 GridFS chunks each);
    returns the stored images' file ids."""
    rows = [RowDoc(serial=str(i), name=f"p{i}", urls=[f"https://x/{i}.jpg"], cells=[]) for i in range(total)]
    await repo.add_rows(request_id, 0, 0, rows)
    await repo.create_request(request_id, {**an_upload(total), "total_products": total})
    await repo.accept_request(request_id)
    file_ids = []
    for index in range(done):
        file_id = output_file_id(request_id, index)
        await store_image(images, request_id, index)
        outcome = OutcomeDoc(
            request_id=request_id,
            index=index,
            url=f"https://x/{index}.jpg",
            status=OutcomeStatus.COMPRESSED,
            at=datetime.now(UTC),
            file_id=file_id,
        )
        await repo.record_outcomes(request_id, [outcome])
        file_ids.append(file_id)
    return file_ids


async def store_image(images: GridFsImageStore, request_id: str, index: int) -> str:
    meta = ImageMeta(
        contentType="image/jpeg", request_id=request_id, index=index, input_bytes=9, kept_original=False
    )
    file_id = output_file_id(request_id, index)
    await images.put(file_id, os.urandom(GRIDFS_CHUNK_BYTES * 2 + 1), filename="x.jpg", meta=meta)
    return file_id


async def left_of(mongo: Mongo, request_id: str, file_ids: list[str]) -> dict[str, int]:
    """What is stored of the request, per collection."""
    return {
        "requests": await mongo.requests.count_documents({"_id": request_id}),
        "rows": await mongo.rows.count_documents({"request_id": request_id}),
        "images": await mongo.images.count_documents({"request_id": request_id}),
        "fs.files": await mongo.files.count_documents({"metadata.request_id": request_id}),
        "fs.chunks": await mongo.chunks.count_documents({"files_id": {"$in": file_ids}}),
    }


NOTHING = dict.fromkeys(COLLECTIONS, 0)


@pytest.fixture
def images(mongo: Mongo) -> GridFsImageStore:
    return GridFsImageStore(mongo)


async def test_deleting_removes_the_request_its_rows_outcomes_files_and_chunks(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    file_ids = await stored_request(repo, images, "req-deleted-000001")
    kept_ids = await stored_request(repo, images, "req-kept-00000001")
    assert (await left_of(mongo, "req-deleted-000001", file_ids))["fs.chunks"] == 9

    assert await lifecycle.delete_request(repo, images, "req-deleted-000001")

    assert await left_of(mongo, "req-deleted-000001", file_ids) == NOTHING
    assert await images.open(file_ids[0]) is None
    assert await left_of(mongo, "req-kept-00000001", kept_ids) == {
        "requests": 1,
        "rows": 1,
        "images": 3,
        "fs.files": 3,
        "fs.chunks": 9,
    }


async def test_deleting_is_idempotent_and_an_unknown_or_unaccepted_request_is_not_deleted(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    file_ids = await stored_request(repo, images, "req-twice-0000001")
    assert await lifecycle.delete_request(repo, images, "req-twice-0000001")
    assert await lifecycle.delete_request(repo, images, "req-twice-0000001")  # settling: done again
    assert await left_of(mongo, "req-twice-0000001", file_ids) == NOTHING
    assert not await lifecycle.delete_request(repo, images, "req-never-0000001")

    await repo.create_request("req-receiving-001", an_upload())  # not accepted: the upload's to settle
    assert not await lifecycle.delete_request(repo, images, "req-receiving-001")
    assert await repo.status_of("req-receiving-001") == RequestStatus.RECEIVING


async def test_an_interrupted_deletion_is_finished_by_the_sweep_which_then_forgets_it(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    file_ids = await stored_request(repo, images, "req-crashed-00001")
    assert await repo.purge("req-crashed-00001")  # the process died before deleting the images
    assert await repo.get("req-crashed-00001") is None
    assert (await left_of(mongo, "req-crashed-00001", file_ids))["fs.chunks"] == 9

    assert await lifecycle.finish_purges(repo, images, settle=timedelta(hours=1)) == 0  # not settled yet
    assert await lifecycle.finish_purges(repo, images, settle=timedelta(0)) == 1

    assert await left_of(mongo, "req-crashed-00001", file_ids) == NOTHING
    assert not await repo.was_purged("req-crashed-00001")
    assert not await lifecycle.delete_request(repo, images, "req-crashed-00001")  # forgotten: unknown


async def test_the_queries_of_deletion_and_retention_are_served_by_indexes(mongo: Mongo) -> None:
    """SecantusDB scans a whole collection for a query no index serves: each of these must not."""
    queries = {
        "fs.files": {"metadata.request_id": "r"},
        "fs.chunks": {"files_id": {"$in": ["a", "b"]}},
        "requests": {"completed_at": {"$lt": datetime.now(UTC)}},
        "purges": {"at": {"$lt": datetime.now(UTC)}},
        "rows": {"request_id": "r"},
        "images": {"request_id": "r"},
    }
    for collection, query in queries.items():
        plan = await mongo.db.command("explain", {"find": collection, "filter": query})
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), collection


async def test_late_work_for_a_deleted_request_neither_resurrects_it_nor_lingers(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    """A compressor finishing an image after the delete: its outcome is dropped without recreating the
    request (and acknowledged: no retry), and its stored file goes with the next sweep."""
    await stored_request(repo, images, "req-running-00001", total=3, done=1)
    assert await lifecycle.delete_request(repo, images, "req-running-00001")

    late_file = await store_image(images, "req-running-00001", 1)
    projection = StatusProjection(repo, RecordingPublisher())
    event = ImageCompressed(
        request_id="req-running-00001",
        index=1,
        url="https://x/1.jpg",
        file_id=late_file,
        content_type="image/jpeg",
        input_bytes=9,
        output_bytes=5,
    )
    await projection.record(event)  # returns: the message is acknowledged, not retried

    assert await repo.get("req-running-00001") is None
    assert await mongo.images.count_documents({"request_id": "req-running-00001"}) == 0
    assert projection.publisher.events == []  # type: ignore[attr-defined]
    assert await lifecycle.finish_purges(repo, images, settle=timedelta(0)) == 1
    assert await left_of(mongo, "req-running-00001", [late_file]) == NOTHING


async def test_retention_deletes_only_requests_finished_longer_ago_than_the_period(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    old_ids = await stored_request(repo, images, "req-old-000000001")
    recent_ids = await stored_request(repo, images, "req-recent-000001")
    await stored_request(repo, images, "req-pending-00001", total=2, done=1)
    long_ago = datetime.now(UTC) - timedelta(days=31)
    await mongo.requests.update_one({"_id": "req-old-000000001"}, {"$set": {"completed_at": long_ago}})

    assert await lifecycle.expire(repo, images, timedelta(days=30)) == 1

    assert await left_of(mongo, "req-old-000000001", old_ids) == NOTHING
    assert (await left_of(mongo, "req-recent-000001", recent_ids))["fs.chunks"] == 9
    assert await repo.status_of("req-pending-00001") == RequestStatus.PENDING
    # A tiny period: the recent one goes too, the pending one never (it has not finished).
    assert await lifecycle.expire(repo, images, timedelta(seconds=0)) == 1
    assert await repo.status_of("req-pending-00001") == RequestStatus.PENDING


async def test_retention_deletes_in_bounded_batches_until_none_is_left(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "SWEEP_BATCH", 2)
    for n in range(5):
        await stored_request(repo, images, f"req-batch-{n:07d}", total=1, done=1)
    assert await lifecycle.expire(repo, images, timedelta(0)) == 5
    assert await mongo.requests.count_documents({}) == 0
    assert await mongo.files.count_documents({}) == 0


@pytest.fixture
async def api(settings: Settings, mongo: Mongo) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(settings):
        yield client


async def test_delete_answers_202_then_everything_of_the_request_answers_404(
    api: httpx.AsyncClient, mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    file_ids = await stored_request(repo, images, "req-api-delete-01")
    assert (await api.get("/status/req-api-delete-01")).status_code == 200  # now kept in the status cache
    assert (await api.get(f"/image/{file_ids[0]}")).status_code == 200

    deleted = await api.delete("/requests/req-api-delete-01")
    assert deleted.status_code == 202, deleted.text
    assert deleted.json() == {"request_id": "req-api-delete-01", "deleted": True}

    for path in (
        "/status/req-api-delete-01",
        "/output/req-api-delete-01",
        "/status/req-api-delete-01/events",
    ):
        gone = await api.get(path)  # at once
        assert gone.status_code == 404, path
        assert "req-api-delete-01" in gone.json()["error"]

    async def images_gone() -> bool:
        return all([(await api.get(f"/image/{file_id}")).status_code == 404 for file_id in file_ids])

    await eventually(images_gone)
    assert await left_of(mongo, "req-api-delete-01", file_ids) == NOTHING
    again = await api.delete("/requests/req-api-delete-01")  # a retry while the deletion settles
    assert again.status_code == 202
    unknown = await api.delete("/requests/req-api-unknown-01")
    assert unknown.status_code == 404 and "unknown request_id" in unknown.json()["error"]


async def test_the_sweeper_deletes_a_request_once_its_tiny_retention_has_passed(
    mongo: Mongo, repo: MongoRequestRepository, images: GridFsImageStore
) -> None:
    file_ids = await stored_request(repo, images, "req-swept-0000001")
    await stored_request(repo, images, "req-unfinished-01", total=2, done=1)
    sweeper = asyncio.create_task(lifecycle.sweep_forever(repo, images, timedelta(seconds=1), interval=0.1))
    try:

        async def swept() -> bool:
            return await left_of(mongo, "req-swept-0000001", file_ids) == NOTHING

        await eventually(swept)
        assert await repo.status_of("req-unfinished-01") == RequestStatus.PENDING
    finally:
        sweeper.cancel()
