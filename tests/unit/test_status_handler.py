"""The status projection with fakes: counting, completion once, and the sweeper."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.status.projection import StatusProjection
from shared.events import Event, ImageCompressed, ImageFailed, RequestCompleted
from shared.repository import RequestStatus, UnknownRequest, Upload
from tests.fakes import FakeRequestRepository, RecordingPublisher


async def projection_with(total: int) -> StatusProjection:
    repo = FakeRequestRepository()
    upload = Upload(
        email="a@b.c", webhook_url=None, columns=[], total_products=1, total_images=total, row_chunks=1
    )
    await repo.create_request("r1", upload)
    await repo.accept_request("r1")
    return StatusProjection(repo, RecordingPublisher())


def compressed(index: int) -> ImageCompressed:
    return ImageCompressed(
        request_id="r1",
        index=index,
        url=f"http://o/{index}",
        file_id="f" * 32,
        content_type="image/jpeg",
        input_bytes=10,
        output_bytes=4,
    )


def failed(index: int) -> ImageFailed:
    return ImageFailed(request_id="r1", index=index, url=f"http://o/{index}", reason="HTTP 404")


async def test_outcomes_are_counted_once_each() -> None:
    projection = await projection_with(3)
    for event in (compressed(0), compressed(0), failed(1), failed(1)):
        await projection.record(event)
    request = projection.repo.requests["r1"]  # type: ignore[attr-defined]
    assert (request["no_img_compressed"], request["no_img_failed"], request["bytes_out"]) == (1, 1, 4)
    assert request["status"] == RequestStatus.PENDING
    assert projection.publisher.events == []  # type: ignore[attr-defined]


async def test_the_last_outcome_completes_the_request_and_announces_it_once() -> None:
    projection = await projection_with(2)
    await asyncio.gather(*(projection.record(e) for e in [compressed(0), failed(1)] * 10))
    (completed,) = projection.publisher.events  # type: ignore[attr-defined]
    assert isinstance(completed, RequestCompleted)
    assert (completed.total_images, completed.compressed, completed.failed) == (2, 1, 1)
    assert completed.event_id == "completion-r1"
    assert "completion_pending" not in projection.repo.requests["r1"]  # type: ignore[attr-defined]


async def test_a_completion_whose_publish_failed_is_swept_later() -> None:
    class Down(RecordingPublisher):
        async def publish(self, event: Event) -> None:
            raise ConnectionError("broker down")

    projection = await projection_with(1)
    projection.publisher = Down()
    await projection.record(compressed(0))  # recorded; the announcement waits
    projection.publisher = RecordingPublisher()
    assert await projection.sweep_unpublished(older_than=timedelta(seconds=-1)) == 1
    assert await projection.sweep_unpublished(older_than=timedelta(seconds=-1)) == 0
    assert [type(e) for e in projection.publisher.events] == [RequestCompleted]  # type: ignore[attr-defined]


async def test_an_outcome_of_an_unknown_request_raises_for_a_retry() -> None:
    projection = StatusProjection(FakeRequestRepository(), RecordingPublisher())
    with pytest.raises(UnknownRequest):
        await projection.record(compressed(0))


async def test_a_parked_outcome_still_counts_as_a_failure_so_the_request_completes() -> None:
    projection = await projection_with(total=2)
    await projection.record(compressed(0))
    await projection.on_parked(compressed(1), "gave up after 3 attempts: boom")
    request = projection.repo.requests["r1"]  # type: ignore[attr-defined]
    assert (request["status"], request["no_img_compressed"], request["no_img_failed"]) == (
        RequestStatus.COMPLETED,
        1,
        1,
    )
    assert "boom" in request["failures"][0]["reason"]
    (event,) = projection.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, RequestCompleted)


async def test_a_parked_outcome_of_an_unknown_request_is_dropped() -> None:
    projection = await projection_with(total=1)
    await projection.on_parked(failed(0).model_copy(update={"request_id": "gone"}), "UnknownRequest")
    assert projection.publisher.events == []  # type: ignore[attr-defined]


async def test_an_outcome_records_the_output_dimensions_quality_and_score() -> None:
    projection = await projection_with(2)
    detailed = compressed(0).model_copy(update={"width": 800, "height": 600, "quality": 37, "score": 61.2})
    await projection.record(detailed)
    await projection.record(compressed(1))  # from a compressor that predates them: nothing is made up
    outcomes = projection.repo.outcomes  # type: ignore[attr-defined]
    first, second = outcomes[("r1", 0)], outcomes[("r1", 1)]
    assert (first["width"], first["height"], first["quality"], first["score"]) == (800, 600, 37, 61.2)
    assert not {"width", "height", "quality", "score"} & second.keys()


async def test_outcomes_of_a_deleted_request_are_dropped_at_once_and_do_not_recreate_it() -> None:
    projection = await projection_with(total=2)
    await projection.record(compressed(0))
    assert await projection.repo.purge("r1")
    await projection.record(failed(1))  # returns: acknowledged, not retried
    assert await projection.repo.get("r1") is None
    assert projection.repo.outcomes == {}  # type: ignore[attr-defined]
    assert projection.publisher.events == []  # type: ignore[attr-defined]
