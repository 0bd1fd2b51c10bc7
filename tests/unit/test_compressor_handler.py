"""The compressor's handler with fakes: what it publishes and stores for each kind of outcome."""

from __future__ import annotations

import pytest

from services.compressor.fetch import FetchError
from services.compressor.handler import Compressor
from shared.events import ImageCompressed, ImageFailed, ImageRequested
from shared.files import ImageMeta
from shared.image_options import ImageOptions, OutputFormat
from tests.fakes import FakeFetcher, FakeImageStore, HalvingCodec, RecordingPublisher

URL = "https://img.example.com/a.jpg"


def requested(url: str = URL) -> ImageRequested:
    return ImageRequested(request_id="r1", index=3, url=url, file_id="f" * 32)


@pytest.fixture
def compressor() -> Compressor:
    fetcher = FakeFetcher(bodies={URL: b"x" * 100})
    return Compressor(
        FakeImageStore(), RecordingPublisher(), fetcher, HalvingCodec(), quality=50, max_pixels=10**6
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


async def test_a_retryable_fetch_failure_is_left_to_the_bus(compressor: Compressor) -> None:
    compressor.fetcher.errors[URL] = FetchError("timed out", retryable=True)  # type: ignore[attr-defined]
    with pytest.raises(FetchError):
        await compressor.compress(requested())
    assert compressor.publisher.events == []  # type: ignore[attr-defined]


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
