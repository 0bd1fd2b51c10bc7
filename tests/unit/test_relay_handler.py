"""The outbox relay with fakes: every image published once, in order, resuming where it stopped."""

from __future__ import annotations

from datetime import timedelta

from services.upload.relay import OutboxRelay
from shared.events import ImageRequested
from shared.files import output_file_id
from shared.image_options import ImageOptions, OutputFormat
from shared.repository import RowDoc, Upload
from tests.fakes import FakeRequestRepository, RecordingPublisher


async def accepted(
    repo: FakeRequestRepository,
    request_id: str,
    chunks: list[list[list[str]]],
    options: ImageOptions | None = None,
) -> None:
    first = 0
    for number, rows in enumerate(chunks):
        docs = [RowDoc(serial=str(i), name="P", urls=urls, cells=[]) for i, urls in enumerate(rows)]
        await repo.add_rows(request_id, number, first, docs)
        first += sum(len(urls) for urls in rows)
    upload = Upload(
        email="a@b.c",
        webhook_url=None,
        columns=[],
        total_products=0,
        total_images=first,
        row_chunks=len(chunks),
    )
    if options is not None:
        upload["options"] = options.stored()
    await repo.create_request(request_id, upload)


def published(publisher: RecordingPublisher) -> list[tuple[str, int, str]]:
    return [(e.request_id, e.index, e.url) for e in publisher.events if isinstance(e, ImageRequested)]


async def test_every_image_is_published_in_order_with_its_output_id() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a", "b"], ["c"]], [["d"]]])
    relay = OutboxRelay(repo, publisher)
    assert await relay.publish_next() is True
    assert await relay.publish_next() is False
    assert published(publisher) == [("r1", 0, "a"), ("r1", 1, "b"), ("r1", 2, "c"), ("r1", 3, "d")]
    assert all(e.file_id == output_file_id("r1", e.index) for e in publisher.events)  # type: ignore[attr-defined]
    assert "outbox_pending" not in repo.requests["r1"] and repo.requests["r1"]["published_chunks"] == 2


async def test_every_image_carries_the_requests_options_and_its_output_id_depends_on_them() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    options = ImageOptions(max_width=800, format=OutputFormat.WEBP, quality="auto", target=70)
    await accepted(repo, "r1", [[["a", "b"]]], options)
    await OutboxRelay(repo, publisher).publish_next()
    events = [e for e in publisher.events if isinstance(e, ImageRequested)]
    assert [e.options for e in events] == [options, options]
    assert [e.version for e in events] == [2, 2]
    assert [e.file_id for e in events] == [output_file_id("r1", i, options) for i in (0, 1)]
    assert output_file_id("r1", 0, options) != output_file_id("r1", 0)
    # the defaults add nothing to the key: outputs of requests without options keep their ids
    assert output_file_id("r1", 0, ImageOptions()) == output_file_id("r1", 0)


async def test_publishing_resumes_after_the_last_recorded_chunk() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"]], [["b"]]])
    repo.requests["r1"]["published_chunks"] = 1  # a relay died after the first chunk
    await OutboxRelay(repo, publisher).publish_next()
    assert published(publisher) == [("r1", 1, "b")]


async def test_a_request_leased_by_another_relay_is_left_alone() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"]]])
    assert await repo.claim_outbox("r1", "other-relay", timedelta(minutes=1)) is not None
    assert await OutboxRelay(repo, publisher).publish_next() is False
    assert publisher.events == []


async def test_a_request_without_rows_is_dropped() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"]]])
    repo.chunks.clear()
    await OutboxRelay(repo, publisher).publish_next()
    assert publisher.events == [] and "outbox_pending" not in repo.requests["r1"]
