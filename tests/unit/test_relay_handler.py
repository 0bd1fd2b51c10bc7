"""The outbox relay with fakes: every image published once, in order, metered per request, resuming where
it stopped."""

from __future__ import annotations

from datetime import timedelta

from services.upload.relay import OutboxRelay
from shared.events import ImageRequested
from shared.files import output_file_id
from shared.image_options import ImageOptions, OutputFormat
from shared.repository import OutcomeDoc, RowDoc, Upload
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
    await repo.accept_request(request_id)


def published(publisher: RecordingPublisher) -> list[tuple[str, int, str]]:
    return [(e.request_id, e.index, e.url) for e in publisher.events if isinstance(e, ImageRequested)]


async def finish_images(repo: FakeRequestRepository, request_id: str, indexes: range) -> None:
    """What the status service does as outcomes come in: it counts them on the request."""
    outcomes = [OutcomeDoc(request_id=request_id, index=i, url="", status="FAILED", at=None) for i in indexes]  # type: ignore[typeddict-item]
    await repo.record_outcomes(request_id, outcomes)


async def test_every_image_is_published_in_order_with_its_output_id() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a", "b"], ["c"]], [["d"]]])
    relay = OutboxRelay(repo, publisher)
    assert await relay.pass_once() == 4
    assert await relay.pass_once() == 0
    assert published(publisher) == [("r1", 0, "a"), ("r1", 1, "b"), ("r1", 2, "c"), ("r1", 3, "d")]
    assert all(e.file_id == output_file_id("r1", e.index) for e in publisher.events)  # type: ignore[attr-defined]
    assert "outbox_pending" not in repo.requests["r1"]
    assert (repo.requests["r1"]["published_images"], repo.requests["r1"]["published_chunks"]) == (4, 2)


async def test_every_image_carries_the_requests_options_and_its_output_id_depends_on_them() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    options = ImageOptions(max_width=800, format=OutputFormat.WEBP, quality="auto", target=70)
    await accepted(repo, "r1", [[["a", "b"]]], options)
    await OutboxRelay(repo, publisher).pass_once()
    events = [e for e in publisher.events if isinstance(e, ImageRequested)]
    assert [e.options for e in events] == [options, options]
    assert [e.version for e in events] == [2, 2]
    assert [e.file_id for e in events] == [output_file_id("r1", i, options) for i in (0, 1)]
    assert output_file_id("r1", 0, options) != output_file_id("r1", 0)
    # the defaults add nothing to the key: outputs of requests without options keep their ids
    assert output_file_id("r1", 0, ImageOptions()) == output_file_id("r1", 0)


async def test_a_request_is_metered_into_the_queue_a_window_at_a_time() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "big", [[[f"u{i}"] for i in range(5)], [[f"v{i}"] for i in range(5)]])
    relay = OutboxRelay(repo, publisher, window=4)

    assert await relay.pass_once() == 4
    assert await relay.pass_once() == 0, "the window is full until outcomes are counted"
    await finish_images(repo, "big", range(3))
    assert await relay.pass_once() == 3
    assert [i for _, i, _ in published(publisher)] == list(range(7))
    await finish_images(repo, "big", range(3, 10))
    assert await relay.pass_once() == 3
    assert [i for _, i, _ in published(publisher)] == list(range(10))
    assert "outbox_pending" not in repo.requests["big"]


async def test_a_small_request_is_not_queued_behind_a_large_one() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "a-large", [[[f"u{i}"] for i in range(500)]])
    await accepted(repo, "b-small", [[["s0", "s1", "s2"]]])
    relay = OutboxRelay(repo, publisher, window=8)

    await relay.pass_once()
    assert [(r, i) for r, i, _ in published(publisher)] == [
        *(("a-large", i) for i in range(8)),
        *(("b-small", i) for i in range(3)),
    ]


async def test_publishing_resumes_after_the_last_recorded_image() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a", "b", "c"]], [["d"]]])
    repo.requests["r1"]["published_images"] = 2  # a relay died after confirming two images
    await OutboxRelay(repo, publisher).pass_once()
    assert published(publisher) == [("r1", 2, "c"), ("r1", 3, "d")]


async def test_a_request_half_published_before_metering_resumes_from_its_chunk() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"], ["b"]], [["c"]]])
    del repo.requests["r1"]["published_images"]
    repo.requests["r1"]["published_chunks"] = 1  # the old relay recorded whole chunks only
    await OutboxRelay(repo, publisher).pass_once()
    assert published(publisher) == [("r1", 2, "c")]


async def test_a_request_leased_by_another_relay_is_left_alone() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"]]])
    assert await repo.claim_outbox("r1", "other-relay", timedelta(minutes=1)) is not None
    assert await OutboxRelay(repo, publisher).pass_once() == 0
    assert publisher.events == []


async def test_a_relay_whose_lease_was_taken_over_records_nothing() -> None:
    repo = FakeRequestRepository()
    await accepted(repo, "r1", [[["a", "b", "c", "d"]]])

    class TakenOverMidway(RecordingPublisher):
        async def publish_many(self, events):  # type: ignore[no-untyped-def]
            await super().publish_many(events)
            repo.leases["r1"] = ("other-relay", repo.leases["r1"][1])  # its lease expired meanwhile

    slow = OutboxRelay(repo, TakenOverMidway(), window=2)
    assert await slow.pass_once() == 2
    assert repo.requests["r1"]["published_images"] == 0, "a stale holder must not move the position"
    repo.leases.clear()  # the new holder's lease runs out in turn
    publisher = RecordingPublisher()
    await OutboxRelay(repo, publisher, window=2).pass_once()
    assert [i for _, i, _ in published(publisher)] == [0, 1], "the new holder starts from what was recorded"


async def test_a_request_without_rows_is_dropped() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a"]]])
    repo.chunks.clear()
    await OutboxRelay(repo, publisher).pass_once()
    assert publisher.events == [] and "outbox_pending" not in repo.requests["r1"]


async def test_every_occurrence_of_a_repeated_url_shares_the_first_ones_output() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    await accepted(repo, "r1", [[["a", "b"], ["a"]]])
    repo.chunks[("r1", 0)]["rows"][1]["duplicate_of"] = [0]
    await OutboxRelay(repo, publisher).pass_once()
    events = [e for e in publisher.events if isinstance(e, ImageRequested)]
    assert [(e.index, e.duplicate_of, e.file_id) for e in events] == [
        (0, None, output_file_id("r1", 0)),
        (1, None, output_file_id("r1", 1)),
        (2, 0, output_file_id("r1", 0)),
    ]


async def test_a_repeated_url_shares_the_id_its_first_occurrence_has_under_the_requests_options() -> None:
    repo, publisher = FakeRequestRepository(), RecordingPublisher()
    options = ImageOptions(max_width=400, quality="auto", target=60)
    await accepted(repo, "r1", [[["a"], ["a"]]], options)
    repo.chunks[("r1", 0)]["rows"][1]["duplicate_of"] = [0]
    await OutboxRelay(repo, publisher).pass_once()
    events = [e for e in publisher.events if isinstance(e, ImageRequested)]
    assert [(e.index, e.duplicate_of, e.file_id, e.options) for e in events] == [
        (0, None, output_file_id("r1", 0, options), options),
        (1, 0, output_file_id("r1", 0, options), options),
    ]
    assert output_file_id("r1", 0, options) != output_file_id("r1", 0)
