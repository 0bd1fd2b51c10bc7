"""The compressor's handler with a real origin, real codec processes and the real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from localrun.samples import photo
from services.compressor import codec_pool
from services.compressor.codec import ImageRejected
from services.compressor.codec_pool import CodecPool, CodecThreads
from services.compressor.fetch import FetchPolicy, SafeFetcher
from services.compressor.handler import Compressor
from shared.events import ImageCompressed, ImageFailed, ImageRequested
from shared.files import GridFsImageStore, output_file_id
from shared.image_options import ImageOptions, OutputFormat
from shared.mongo import Mongo
from shared.repository import MongoRequestRepository
from shared.settings import Settings
from tests.fakes import RecordingPublisher
from tests.images import varied_photo
from tests.origin import Origin


@pytest.fixture(scope="module")
def codec() -> CodecPool:
    pool = CodecPool(2)
    yield pool  # type: ignore[misc]
    pool.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    origin = await Origin().start()
    yield origin
    await origin.stop()


@pytest.fixture
async def compressor(settings: Settings, mongo: Mongo, codec: CodecPool) -> AsyncIterator[Compressor]:
    fetcher = SafeFetcher(FetchPolicy.from_settings(settings))
    yield Compressor(
        GridFsImageStore(mongo),
        RecordingPublisher(),
        fetcher,
        codec,
        quality=50,
        max_pixels=settings.max_pixels,
        outcomes=MongoRequestRepository(mongo),
    )
    await fetcher.close()


def requested(origin: Origin, name: str, index: int = 0, request_id: str = "req-c") -> ImageRequested:
    return ImageRequested(
        request_id=request_id, index=index, url=origin.url(name), file_id=output_file_id(request_id, index)
    )


async def test_a_redelivered_request_stores_one_file_and_reports_the_same_outcome(
    compressor: Compressor, origin: Origin, mongo: Mongo
) -> None:
    origin.images["a.jpg"] = photo(400, 300, seed=1)
    event = requested(origin, "a.jpg")

    await compressor.compress(event)
    await compressor.compress(event)

    published = compressor.publisher.events  # type: ignore[attr-defined]
    assert [type(e) for e in published] == [ImageCompressed, ImageCompressed]
    first, second = published
    assert (first.file_id, first.output_bytes, first.input_bytes) == (
        second.file_id,
        second.output_bytes,
        second.input_bytes,
    )
    assert origin.hits["a.jpg"] == 1, "the second delivery found the stored output and did not refetch"
    assert await mongo.files.count_documents({"_id": event.file_id}) == 1
    download = await compressor.images.open(event.file_id)
    assert download is not None
    stored = b"".join([chunk async for chunk in download.chunks])
    assert len(stored) == first.output_bytes < first.input_bytes


async def test_a_bad_url_fails_the_image_with_a_reason(compressor: Compressor, origin: Origin) -> None:
    await compressor.compress(requested(origin, "nope.jpg"))
    (failed,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(failed, ImageFailed) and "404" in failed.reason


async def test_a_slow_download_does_not_stall_other_images(compressor: Compressor, origin: Origin) -> None:
    origin.images["slow.jpg"] = photo(200, 200, seed=2)
    origin.delay["slow.jpg"] = 2.0
    for n in range(6):
        origin.images[f"fast{n}.jpg"] = photo(200, 200, seed=10 + n)
    loop = asyncio.get_running_loop()
    finished: dict[str, float] = {}
    start = loop.time()

    async def run(name: str, index: int) -> None:
        await compressor.compress(requested(origin, name, index))
        finished[name] = loop.time() - start

    await asyncio.gather(run("slow.jpg", 0), *(run(f"fast{n}.jpg", n + 1) for n in range(6)))
    assert max(v for k, v in finished.items() if k != "slow.jpg") < finished["slow.jpg"]
    assert finished["slow.jpg"] >= 2.0


def gif_of_tiny_frames(size: int) -> bytes:
    """An animated GIF of 1x1 frames, `size` bytes long: a 25 MiB one holds about 1.1 million frames, passes
    the pixel budget, and took ~45 s of CPU to re-encode before frames were capped."""
    head = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    head += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"
        + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"
        + b"\x02\x02\x44\x01\x00"
    )
    return head + frame * ((size - len(head) - 1) // len(frame)) + b"\x3b"


async def test_a_25_mib_gif_of_tiny_frames_fails_fast_on_its_frame_count(
    compressor: Compressor, origin: Origin
) -> None:
    origin.images["frames.gif"] = gif_of_tiny_frames(25 * 1024 * 1024 - 1024)
    started = asyncio.get_running_loop().time()
    await compressor.compress(requested(origin, "frames.gif"))
    (failed,) = compressor.publisher.events  # type: ignore[attr-defined]
    assert isinstance(failed, ImageFailed) and failed.reason == "animation has more than 2,000 frames"
    assert asyncio.get_running_loop().time() - started < 10


async def test_an_image_over_its_time_budget_fails_and_its_codec_worker_is_replaced(
    settings: Settings, mongo: Mongo, origin: Origin
) -> None:
    # A 16 MP photo takes about 0.25 s to decode and re-encode; the pool checks budgets every 0.1 s.
    slow = CodecPool(1, time_budget=0.001)
    await slow.warm_up()
    fetcher = SafeFetcher(FetchPolicy.from_settings(settings))
    compressor = Compressor(
        GridFsImageStore(mongo), RecordingPublisher(), fetcher, slow, 50, 10**8, MongoRequestRepository(mongo)
    )
    try:
        origin.images["huge.jpg"] = photo(4000, 4000, seed=3)
        await compressor.compress(requested(origin, "huge.jpg"))
        (failed,) = compressor.publisher.events  # type: ignore[attr-defined]
        assert isinstance(failed, ImageFailed)
        assert failed.reason == "took longer than 0.001 s to decode and re-encode"

        slow.time_budget = 30.0  # the replacement worker takes the next image
        origin.images["small.jpg"] = photo(64, 64, seed=4)
        await compressor.compress(requested(origin, "small.jpg", index=1))
        assert isinstance(compressor.publisher.events[-1], ImageCompressed)  # type: ignore[attr-defined]
    finally:
        await fetcher.close()
        slow.close()


async def test_options_reach_the_codec_processes_and_a_redelivery_reports_the_same_details(
    compressor: Compressor, origin: Origin, mongo: Mongo
) -> None:
    origin.images["o.jpg"] = varied_photo("detailed", 640, 480, seed=4)
    options = ImageOptions(max_width=320, format=OutputFormat.AVIF, quality="auto", target=60)
    event = ImageRequested(
        request_id="req-o",
        index=0,
        url=origin.url("o.jpg"),
        file_id=output_file_id("req-o", 0, options),
        options=options,
    )
    await compressor.compress(event)
    await compressor.compress(event)  # found in GridFS: reported from its stored details

    first, second = compressor.publisher.events  # type: ignore[attr-defined]
    assert (first.content_type, first.width, first.height) == ("image/avif", 320, 240)
    assert first.quality is not None and first.score is not None and first.score >= 60
    assert second.model_dump(exclude={"event_id", "occurred_at"}) == first.model_dump(
        exclude={"event_id", "occurred_at"}
    )
    assert origin.hits["o.jpg"] == 1


async def test_an_image_over_its_budget_on_a_codec_thread_fails_and_has_the_process_replaced(
    settings: Settings, mongo: Mongo, origin: Origin
) -> None:
    # A thread cannot be killed: the image fails at its budget all the same, and the process is to be
    # replaced (the service stops, then ends): asked once, however many images run over.
    stops: list[bool] = []
    threads = CodecThreads(1, time_budget=0.001, on_stuck=lambda: stops.append(True))
    fetcher = SafeFetcher(FetchPolicy.from_settings(settings))
    compressor = Compressor(
        GridFsImageStore(mongo),
        RecordingPublisher(),
        fetcher,
        threads,
        50,
        10**8,
        MongoRequestRepository(mongo),
    )
    try:
        origin.images["huge.jpg"] = photo(4000, 4000, seed=3)
        await compressor.compress(requested(origin, "huge.jpg"))
        await compressor.compress(requested(origin, "huge.jpg", index=1))
        failed = compressor.publisher.events  # type: ignore[attr-defined]
        assert [type(e) for e in failed] == [ImageFailed, ImageFailed]
        assert failed[0].reason == "took longer than 0.001 s to decode and re-encode"
        assert threads.stuck and stops == [True]
    finally:
        await fetcher.close()
        threads.close()


async def test_a_codec_thread_compresses_as_a_codec_process_does(codec: CodecPool) -> None:
    threads = CodecThreads(1)
    data = photo(640, 480, seed=6)
    try:
        assert await threads.compress(data, 50, 10**8, ImageOptions()) == await codec.compress(
            data, 50, 10**8, ImageOptions()
        )
    finally:
        threads.close()


async def test_quality_auto_gets_its_search_time_on_top_of_the_per_image_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The search encodes and scores a sample ~5 times (~0.17 s on an idle core, 20x a plain re-encode): more
    # than this budget, which the allowance covers. Load only makes the search slower, so the control holds.
    pool = CodecPool(1, time_budget=0.05)
    await pool.warm_up()
    data, auto = varied_photo("detailed", 1200, 900, seed=5), ImageOptions(quality="auto", target=60)
    try:
        image = await pool.compress(data, 50, 10**8, auto)
        assert image.quality is not None and image.score is not None and image.score >= 60
        monkeypatch.setattr(codec_pool, "AUTO_ALLOWANCE_S", 0.0)  # the control: without it, over budget
        with pytest.raises(ImageRejected, match=r"took longer than 0.05 s"):
            await pool.compress(data, 50, 10**8, auto)
    finally:
        pool.close()
