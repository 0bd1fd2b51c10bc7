"""The notifier with fakes: one email (and webhook) per completion, again only when asked."""

from __future__ import annotations

from pathlib import Path

from services.notifier.handler import Notifier
from shared.events import NotificationRequested, RequestCompleted
from shared.image_options import ImageOptions
from shared.repository import RowDoc, Upload
from shared.settings import Settings
from tests.fakes import FakeRequestRepository, RecordingMailer, RecordingWebhooks


async def notifier(
    tmp_path: Path,
    webhook_url: str | None = "https://hooks.example.com/x",
    options: ImageOptions | None = None,
) -> Notifier:
    repo = FakeRequestRepository()
    await repo.add_rows(
        "r1", 0, 0, [RowDoc(serial="1", name="A", urls=["http://o/a.jpg"], cells=["1", "A", "x"])]
    )
    upload = Upload(
        email="buyer@example.com",
        webhook_url=webhook_url,
        columns=["S. No.", "Product Name", "Input Image Urls"],
        total_products=1,
        total_images=1,
        row_chunks=1,
    )
    if options is not None:
        upload["options"] = options.stored()
    await repo.create_request("r1", upload)
    settings = Settings(data_dir=tmp_path, notify_attempts=2, notify_backoff=0.0)
    return Notifier(repo, RecordingMailer(), RecordingWebhooks(), settings)


def completed() -> RequestCompleted:
    return RequestCompleted(event_id="done-1", request_id="r1", total_images=1, compressed=0, failed=0)


async def test_a_completion_sends_the_csv_by_email_and_calls_the_webhook(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.notify(completed())
    (mail,) = n.mailer.sent  # type: ignore[attr-defined]
    assert mail["To"] == "buyer@example.com"
    assert [a.get_filename() for a in mail.iter_attachments()] == ["imagepipe-r1.csv"]
    ((url, payload, message_id),) = n.webhooks.posted  # type: ignore[attr-defined]
    assert (url, payload["data"]["request_id"], message_id) == ("https://hooks.example.com/x", "r1", "done-1")
    attempts = n.repo.requests["r1"]["notifications"]  # type: ignore[attr-defined]
    assert [(a["channel"], a["outcome"]) for a in attempts] == [("email", "ok"), ("webhook", "ok")]


async def test_a_redelivered_completion_sends_nothing_twice(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.notify(completed())
    await n.notify(completed())
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (1, 1)  # type: ignore[attr-defined]


async def test_an_explicit_request_sends_the_email_again_but_not_the_webhook(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.notify(completed())
    await n.notify(NotificationRequested(request_id="r1"))
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (2, 1)  # type: ignore[attr-defined]


async def test_no_webhook_without_a_url(tmp_path: Path) -> None:
    n = await notifier(tmp_path, webhook_url=None)
    await n.notify(completed())
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (1, 0)  # type: ignore[attr-defined]


async def test_the_email_and_the_webhook_say_which_image_options_were_used(tmp_path: Path) -> None:
    options = ImageOptions(max_width=800, quality="auto", target=70)
    n = await notifier(tmp_path, options=options)
    await n.notify(completed())
    (mail,) = n.mailer.sent  # type: ignore[attr-defined]
    body = mail.get_body(("plain",)).get_content()
    assert "Options:     max_width=800; quality=auto; target=70" in body
    (csv_part,) = mail.iter_attachments()
    header, row = csv_part.get_content().lstrip("\ufeff").splitlines()
    assert header.endswith("Output Image Urls,Image Options") and row.endswith(
        ",max_width=800; quality=auto; target=70"
    )
    ((_, payload, _),) = n.webhooks.posted  # type: ignore[attr-defined]
    assert payload["data"]["options"] == {"max_width": 800, "quality": "auto", "target": 70.0}


async def test_without_options_the_email_says_defaults(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.notify(completed())
    (mail,) = n.mailer.sent  # type: ignore[attr-defined]
    assert "Options:     none (defaults)" in mail.get_body(("plain",)).get_content()
