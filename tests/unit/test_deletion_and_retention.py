"""Deleting requests and retention, on the fakes: what goes, what stays, in which order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.compressor.wanted import WantedRequests
from services.upload import lifecycle
from services.upload.status_view import ShortLivedCache
from shared.files import ImageMeta
from shared.repository import OutcomeDoc, OutcomeStatus, RequestStatus, RowDoc
from shared.settings import Settings
from tests.fakes import FakeImageStore, FakeRequestRepository, an_upload


async def a_request(
    repo: FakeRequestRepository, images: FakeImageStore, request_id: str, *, done: bool = True
) -> None:
    await repo.add_rows(request_id, 0, 0, [RowDoc(serial="1", name="A", urls=["http://o/a"], cells=[])])
    await repo.create_request(request_id, an_upload())
    await repo.accept_request(request_id)
    meta = ImageMeta(
        contentType="image/jpeg", request_id=request_id, index=0, input_bytes=2, kept_original=False
    )
    await images.put(f"{request_id}-file", b"xy", filename="a.jpg", meta=meta)
    if done:
        outcome = OutcomeDoc(
            request_id=request_id,
            index=0,
            url="http://o/a",
            status=OutcomeStatus.COMPRESSED,
            at=datetime.now(UTC),
        )
        await repo.record_outcomes(request_id, [outcome])


async def test_deleting_removes_everything_of_the_request_and_nothing_else() -> None:
    repo, images = FakeRequestRepository(), FakeImageStore()
    await a_request(repo, images, "gone")
    await a_request(repo, images, "kept")
    assert await lifecycle.delete_request(repo, images, "gone")
    assert (await repo.get("gone"), await repo.row_chunk("gone", 0), await repo.outcome("gone", 0)) == (
        None,
    ) * 3
    assert list(images.files) == ["kept-file"]
    assert await repo.get("kept") is not None and await repo.outcome("kept", 0) is not None


async def test_the_api_deletion_makes_the_request_unreachable_before_its_images_go() -> None:
    repo, images = FakeRequestRepository(), FakeImageStore()
    await a_request(repo, images, "r1", done=False)
    deletions = lifecycle.Deletions(repo, images)
    assert await deletions.start("r1")
    assert await repo.get("r1") is None  # unreachable when start returns
    await deletions.settled()
    assert images.files == {}
    assert not await deletions.start("never")


async def test_a_compressor_stops_wanting_the_images_of_a_deleted_request() -> None:
    repo, images = FakeRequestRepository(), FakeImageStore()
    await a_request(repo, images, "r1", done=False)
    assert await WantedRequests(repo).unwanted("r1") is None
    await lifecycle.delete_request(repo, images, "r1")
    assert "does not exist" in (await WantedRequests(repo).unwanted("r1") or "")


async def test_the_sweep_finishes_settled_deletions_and_removes_late_images() -> None:
    repo, images = FakeRequestRepository(), FakeImageStore()
    await a_request(repo, images, "r1")
    assert await repo.purge("r1")  # the images were not deleted: a crash
    assert await lifecycle.finish_purges(repo, images, settle=timedelta(hours=1)) == 0
    assert await lifecycle.finish_purges(repo, images, settle=timedelta(0)) == 1
    assert images.files == {} and repo.purged == {}


async def test_retention_deletes_finished_requests_older_than_the_period_only() -> None:
    repo, images = FakeRequestRepository(), FakeImageStore()
    for request_id in ("old", "new"):
        await a_request(repo, images, request_id)
    await a_request(repo, images, "running", done=False)
    repo.requests["old"]["completed_at"] = datetime.now(UTC) - timedelta(days=2)
    assert await lifecycle.expire(repo, images, timedelta(days=1)) == 1
    assert set(repo.requests) == {"new", "running"}
    assert await lifecycle.expire(repo, images, timedelta(0)) == 1
    assert await repo.status_of("running") == RequestStatus.PENDING


def test_retention_days_zero_keeps_requests_forever() -> None:
    assert Settings(retention_days=0).retention is None
    assert Settings().retention == timedelta(days=30)
    assert Settings(retention_days=0.5).retention == timedelta(hours=12)


async def test_a_deleted_request_leaves_no_rendering_in_the_status_caches() -> None:
    cache = ShortLivedCache(ttl=60)

    async def render() -> bytes:
        return b"kept"

    await cache.get(("r1", 0, 20, "full"), render)
    await cache.get("r1", render)
    await cache.get(("r2", 0, 20, "full"), render)
    cache.forget("r1")
    assert list(cache._entries) == [("r2", 0, 20, "full")]
