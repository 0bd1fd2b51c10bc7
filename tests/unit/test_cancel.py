"""Cancelling a request, with fakes: the relay stops, the compressor skips unstarted images unfetched, the
status service skips never-published images in bulk and completes the request as CANCELLED once, and the
notifier says so."""

from __future__ import annotations

from pathlib import Path

from services.notifier.handler import Notifier
from services.status.projection import StatusProjection
from services.upload.relay import OutboxRelay
from shared.events import ImageCompressed, ImageRequested, ImageSkipped, RequestCompleted
from shared.links import Links
from shared.output_csv import output_csv
from shared.repository import OutcomeStatus, RequestStatus, RowDoc
from shared.settings import Settings
from tests.fakes import (
    FakeFetcher,
    FakeRequestRepository,
    RecordingMailer,
    RecordingPublisher,
    RecordingWebhooks,
    an_upload,
    watching_compressor,
)

IMAGES = 10


def url(index: int) -> str:
    return f"http://origin/{index}.jpg"


async def pending_request(repo: FakeRequestRepository) -> None:
    rows = [
        RowDoc(serial=str(i), name=f"P{i}", urls=[url(i)], cells=[str(i), f"P{i}", url(i)])
        for i in range(IMAGES)
    ]
    await repo.add_rows("r1", 0, 0, rows)
    await repo.create_request("r1", {**an_upload(IMAGES), "total_products": IMAGES}, owner="me")
    await repo.accept_request("r1")


def compressed(index: int) -> ImageCompressed:
    return ImageCompressed(
        request_id="r1",
        index=index,
        url=url(index),
        file_id="f" * 32,
        content_type="image/jpeg",
        input_bytes=10,
        output_bytes=4,
    )


async def test_a_cancel_stops_the_relay_and_settles_as_cancelled_once_in_flight_images_finish() -> None:
    repo, bus = FakeRequestRepository(), RecordingPublisher()
    await pending_request(repo)
    relay = OutboxRelay(repo, bus, window=4)
    await relay.pass_once()  # images 0-3 published
    projection = StatusProjection(repo, bus)
    await projection.record(compressed(0))

    assert await repo.cancel_request("r1")
    assert not await repo.cancel_request("r1"), "only a PENDING request is cancelled"
    await projection.record(compressed(1))  # frees room in the window: still, nothing more is published
    assert await relay.pass_once() == 0

    # Never-published images 4-9 are skipped in bulk; 2 and 3 are still in flight, so it is not done.
    assert await projection.settle_cancellations() == 0
    request = repo.requests["r1"]
    assert (request["status"], request["skipped_from"], request["no_img_skipped"]) == ("CANCELLING", 4, 6)
    assert not [e for e in bus.events if isinstance(e, RequestCompleted)]

    await projection.record(compressed(2))  # in flight: it finishes
    await projection.record(ImageSkipped(request_id="r1", index=3, url=url(3), reason="cancelled"))
    (completion,) = [e for e in bus.events if isinstance(e, RequestCompleted)]
    assert (completion.status, completion.compressed, completion.failed, completion.skipped) == (
        "CANCELLED",
        3,
        0,
        7,
    )
    assert repo.requests["r1"]["status"] == RequestStatus.CANCELLED
    assert await projection.settle_cancellations() == 0  # nothing is announced twice
    assert len([e for e in bus.events if isinstance(e, RequestCompleted)]) == 1


async def test_a_late_outcome_of_an_image_skipped_in_bulk_is_not_counted_again() -> None:
    repo, bus = FakeRequestRepository(), RecordingPublisher()
    await pending_request(repo)
    await repo.cancel_request("r1")  # nothing was published yet
    projection = StatusProjection(repo, bus)
    assert await projection.settle_cancellations() == 1
    await projection.record(compressed(5))  # say a relay's last top-up raced the cancel
    request = repo.requests["r1"]
    assert (request["no_img_compressed"], request["no_img_skipped"], request["status"]) == (
        0,
        10,
        "CANCELLED",
    )


async def test_the_output_csv_of_a_cancelled_request_says_which_images_were_skipped() -> None:
    repo = FakeRequestRepository()
    await pending_request(repo)
    await repo.record_outcomes(
        "r1",
        [
            {
                "request_id": "r1",
                "index": 0,
                "url": url(0),
                "status": OutcomeStatus.COMPRESSED,
                "at": repo.requests["r1"]["created_at"],
                "file_id": "a" * 32,
            }
        ],
    )
    repo.requests["r1"]["published_images"] = 1
    await repo.cancel_request("r1")
    assert await repo.settle_cancellation("r1")
    request = await repo.get("r1")
    assert request is not None
    text = b"".join([p async for p in output_csv(repo, request, Links("http://x"))]).decode("utf-8-sig")
    lines = text.splitlines()
    assert lines[1].endswith(f"http://x/image/{'a' * 32}")
    assert all(line.endswith("SKIPPED: cancelled before it was started") for line in lines[2:])
    assert len(lines) == 1 + IMAGES


async def test_the_compressor_reports_an_unstarted_image_of_a_cancelled_request_skipped_unfetched() -> None:
    repo, bus, fetcher = FakeRequestRepository(), RecordingPublisher(), FakeFetcher()
    await pending_request(repo)
    compressor = watching_compressor(bus, fetcher, repo, per_host=1, ttl=0)
    await repo.cancel_request("r1")
    await compressor.compress(ImageRequested(request_id="r1", index=2, url=url(2), file_id="f" * 32))
    (skipped,) = bus.events
    assert isinstance(skipped, ImageSkipped) and skipped.index == 2 and "cancelled" in skipped.reason
    assert fetcher.fetched == []

    await repo.settle_cancellation("r1")  # CANCELLED: a redelivery is only dropped, not reported again
    await compressor.compress(ImageRequested(request_id="r1", index=2, url=url(2), file_id="f" * 32))
    assert len(bus.events) == 1 and fetcher.fetched == []


async def test_the_email_and_webhook_of_a_cancelled_request_say_it_was_cancelled(tmp_path: Path) -> None:
    repo = FakeRequestRepository()
    await pending_request(repo)
    repo.requests["r1"]["webhook_url"] = "https://hooks.example.com/x"
    await repo.cancel_request("r1")
    await repo.settle_cancellation("r1")
    mailer, webhooks = RecordingMailer(), RecordingWebhooks()
    notifier = Notifier(repo, mailer, webhooks, Settings(data_dir=tmp_path, notify_attempts=1))
    event = RequestCompleted(
        request_id="r1", total_images=IMAGES, compressed=0, failed=0, status="CANCELLED", skipped=IMAGES
    )
    await notifier.notify(event)
    (mail,) = mailer.sent
    assert "cancelled" in mail["Subject"] and f"{IMAGES} skipped" in mail["Subject"]
    assert "was cancelled" in mail.get_body().get_content()  # type: ignore[union-attr]
    ((_, payload, _),) = webhooks.posted
    assert payload["data"]["status"] == "CANCELLED" and payload["data"]["skipped"] == IMAGES
