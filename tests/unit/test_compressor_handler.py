"""The compressor's handler with fakes: what it publishes and stores for each kind of outcome."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.compressor import handler
from services.compressor.fetch import FetchError
from services.compressor.handler import Compressor
from services.compressor.hosts import HostLimiter, origin_of
from services.compressor.wanted import WantedRequests
from shared.events import ImageCompressed, ImageFailed, ImageRequested
from shared.files import ImageMeta
from shared.image_options import ImageOptions, OutputFormat
from shared.repository import OutcomeDoc, OutcomeStatus, RequestStatus
from tests.fakes import FakeFetcher, FakeImageStore, FakeRequestRepository, HalvingCodec, RecordingPublisher

URL = "https://img.example.com/a.jpg"


def requested(url: str = URL, duplicate_of: int | None = None) -> ImageRequested:
    return ImageRequested(request_id="r1", index=3, url=url, file_id="f" * 32, duplicate_of=duplicate_of)


@pytest.fixture
def compressor() -> Compressor:
    fetcher = FakeFetcher(bodies={URL: b"x" * 100})
    return Compressor(
        FakeImageStore(),
        RecordingPublisher(),
        fetcher,
        HalvingCodec(),
        quality=50,
        max_pixels=10**6,
        outcomes=FakeRequestRepository(),
        hosts=HostLimiter(per_host=1, wait=0.01),
    )


async def test_a_compressed_image_is_stored_then_reported(compressor: Compressor) -> None:
    await compressor.compress(requested())
    data, meta = compressor.images.files["f" * 32]  # type: ignore[attr-defined]
    assert (len(data), meta["input_bytes"], meta["index"]) == (50, 100, 3)
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageCompressed)
    assert (event.index, event.file_id, event.input_bytes, event.output_bytes) == (3, "f" * 32, 100, 50)


async def test_a_stored_output_is_reported_again_without_fetching(compressor: Compressor) -> None:
    meta = ImageMeta(contentType="image/webp", request_id="r1", index=3, input_bytes=900, kept_original=True)
    await compressor.images.put("f" * 32, b"y" * 40, filename="a.jpg", meta=meta)
    await compressor.compress(requested())
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageCompressed)
    assert (event.content_type, event.input_bytes, event.output_bytes, event.kept_original) == (
        "image/webp",
        900,
        40,
        True,
    )


async def test_the_requests_options_reach_the_codec_and_its_choices_are_reported_and_stored(
    compressor: Compressor,
) -> None:
    options = ImageOptions(max_width=8, format=OutputFormat.AVIF, quality="auto", target=70)
    event = ImageRequested(request_id="r1", index=3, url=URL, file_id="e" * 32, options=options)
    await compressor.compress(event)
    assert compressor.codec.options == [options]  # type: ignore[attr-defined]
    _, meta = compressor.images.files["e" * 32]  # type: ignore[attr-defined]
    assert (meta["contentType"], meta["width"], meta["quality"], meta["score"]) == ("image/avif", 8, 42, 61.5)
    (first,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert (first.content_type, first.width, first.height, first.quality, first.score) == (
        "image/avif", 8, 8, 42, 61.5,
    )  # fmt: skip

    await compressor.compress(event)  # a redelivery: found stored, reported the same
    second = compressor.publisher.events[1]  # type: ignore[attr-defined]
    assert second.model_dump(exclude={"event_id", "occurred_at"}) == first.model_dump(
        exclude={"event_id", "occurred_at"}
    )
    assert compressor.fetcher.fetched == [URL]  # type: ignore[attr-defined]


async def test_an_event_without_options_compresses_with_the_defaults(compressor: Compressor) -> None:
    await compressor.compress(requested())
    assert compressor.codec.options == [ImageOptions()]  # type: ignore[attr-defined]
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert (event.content_type, event.quality, event.score) == ("image/jpeg", 50, None)


async def test_a_final_fetch_failure_fails_the_image_with_its_reason(compressor: Compressor) -> None:
    compressor.fetcher.errors[URL] = FetchError("HTTP 404 from origin")  # type: ignore[attr-defined]
    await compressor.compress(requested())
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageFailed) and event.reason == "HTTP 404 from origin"


async def test_a_fetch_that_used_up_its_attempts_is_final_not_retried_by_the_bus(
    compressor: Compressor,
) -> None:
    compressor.fetcher.errors[URL] = FetchError("timed out after 3 attempts", retryable=True)  # type: ignore[attr-defined]
    await compressor.compress(requested())  # no exception: the bus would retry it, multiplying attempts
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageFailed) and event.reason == "timed out after 3 attempts"


async def test_an_image_whose_host_is_saturated_goes_back_to_the_queue(compressor: Compressor) -> None:
    event = requested()
    async with compressor.hosts.slot(origin_of(URL)):  # every slot of the host is busy
        await compressor.compress(event)
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    assert compressor.publisher.events == [event]  # type: ignore[attr-defined]


async def test_another_hosts_image_is_not_held_up_by_a_saturated_one(compressor: Compressor) -> None:
    other = "https://cdn.example.org/b.jpg"
    compressor.fetcher.bodies[other] = b"z" * 10  # type: ignore[attr-defined]
    async with compressor.hosts.slot(origin_of(URL)):
        await compressor.compress(requested(other))
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageCompressed)


def first_outcome(status: OutcomeStatus, **fields: object) -> OutcomeDoc:
    return OutcomeDoc(request_id="r1", index=1, url=URL, status=status, at=datetime.now(UTC), **fields)  # type: ignore[typeddict-item]


async def test_a_repeated_url_copies_its_first_occurrences_failure_without_fetching(
    compressor: Compressor,
) -> None:
    outcomes: FakeRequestRepository = compressor.outcomes  # type: ignore[assignment]
    outcomes.outcomes[("r1", 1)] = first_outcome(OutcomeStatus.FAILED, reason="HTTP 404 from origin")
    await compressor.compress(requested(duplicate_of=1))
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageFailed) and (event.index, event.reason) == (3, "HTTP 404 from origin")


async def test_a_repeated_url_reports_the_shared_output_its_first_occurrence_stored(
    compressor: Compressor,
) -> None:
    meta = ImageMeta(contentType="image/jpeg", request_id="r1", index=1, input_bytes=100, kept_original=False)
    await compressor.images.put("f" * 32, b"y" * 50, filename="a.jpg", meta=meta)
    await compressor.compress(requested(duplicate_of=1))
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageCompressed) and (event.index, event.output_bytes) == (3, 50)


async def test_a_repeated_url_copies_its_first_occurrences_output_with_its_details(
    compressor: Compressor,
) -> None:
    outcomes: FakeRequestRepository = compressor.outcomes  # type: ignore[assignment]
    details = {"width": 400, "height": 300, "quality": 61, "score": 60.4}
    outcomes.outcomes[("r1", 1)] = first_outcome(
        OutcomeStatus.COMPRESSED,
        file_id="a" * 32,
        content_type="image/webp",
        input_bytes=100,
        output_bytes=40,
        **details,
    )
    await compressor.compress(requested(duplicate_of=1))
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageCompressed)
    assert (event.index, event.file_id, event.content_type, event.output_bytes) == (
        3,
        "a" * 32,
        "image/webp",
        40,
    )
    assert (event.width, event.height, event.quality, event.score) == tuple(details.values())


async def test_a_repeated_url_waits_for_its_first_occurrence(
    compressor: Compressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler, "DEFER_WAIT_S", 0.0)
    event = requested(duplicate_of=1)
    await compressor.compress(event)
    assert compressor.fetcher.fetched == []  # type: ignore[attr-defined]
    assert compressor.publisher.events == [event]  # type: ignore[attr-defined]


async def test_an_image_the_codec_refuses_fails_and_nothing_is_stored(compressor: Compressor) -> None:
    compressor.fetcher.bodies[URL] = b"bad bytes"  # type: ignore[attr-defined]
    await compressor.compress(requested())
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageFailed) and "corrupt" in event.reason
    assert compressor.images.files == {}  # type: ignore[attr-defined]


async def test_a_parked_request_still_gets_an_outcome(compressor: Compressor) -> None:
    await compressor.on_parked(requested(), "gave up after 3 attempts: boom")
    (event,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(event, ImageFailed) and event.reason == "gave up after 3 attempts: boom"


class Statuses:
    def __init__(self, **statuses: RequestStatus) -> None:
        self.statuses: dict[str, RequestStatus] = dict(statuses)
        self.reads = 0

    async def status_of(self, request_id: str) -> RequestStatus | None:
        self.reads += 1
        return self.statuses.get(request_id)


async def test_work_for_a_request_that_is_gone_is_dropped_before_fetching(compressor: Compressor) -> None:
    compressor.wanted = WantedRequests(Statuses())
    await compressor.compress(requested())
    assert (compressor.fetcher.fetched, compressor.publisher.events) == ([], [])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "wanted"),
    [
        (RequestStatus.PENDING, True),
        (RequestStatus.COMPLETED, False),
        (RequestStatus.RECEIVING, False),
        (RequestStatus.CANCELLING, False),
        (RequestStatus.CANCELLED, False),
    ],
)
async def test_only_a_pending_request_wants_its_images(status: RequestStatus, wanted: bool) -> None:
    assert (await WantedRequests(Statuses(r1=status)).unwanted("r1") is None) is wanted


async def test_the_answer_is_cached_for_a_few_seconds_per_request() -> None:
    now = [0.0]
    statuses = Statuses(r1=RequestStatus.PENDING)
    wanted = WantedRequests(statuses, ttl=5.0, clock=lambda: now[0])
    for _ in range(100):
        assert await wanted.unwanted("r1") is None
    assert statuses.reads == 1
    del statuses.statuses["r1"]  # removed: noticed once the answer is older than the TTL
    now[0] = 5.1
    assert "does not exist" in (await wanted.unwanted("r1") or "")
    assert statuses.reads == 2
