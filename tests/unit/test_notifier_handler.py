"""The notifier with fakes: one email (and webhook) per completion, again only when asked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from services.notifier.handler import Notifier
from shared.errors import ClaimHeld
from shared.events import NotificationRequested, RequestCompleted
from shared.image_options import ImageOptions
from shared.mongo import StorageUnavailable
from shared.repository import Claim, RowDoc, Upload
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
    await repo.accept_request("r1")
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


class SlowMailer(RecordingMailer):
    async def send(self, msg: EmailMessage) -> None:
        await asyncio.sleep(0.05)  # the other copies arrive while this one is sending
        await super().send(msg)


async def test_concurrent_copies_of_one_completion_send_once_and_the_others_wait(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    n.mailer = SlowMailer()
    copies = await asyncio.gather(*(n.notify(completed()) for _ in range(20)), return_exceptions=True)
    waited = [c for c in copies if c is not None]
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (1, 1)  # type: ignore[attr-defined]
    assert len(waited) == 19 and all(isinstance(c, ClaimHeld) for c in waited), waited
    # Retried by the bus once the sender is done: the results are there, nothing more is sent.
    await asyncio.gather(*(n.notify(completed()) for _ in range(19)))
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (1, 1)  # type: ignore[attr-defined]


async def test_a_claim_whose_holder_died_lapses_and_the_notification_still_goes_out(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    lapsed = timedelta(seconds=-1)  # claimed, then the claimant died: its lease has run out
    assert await n.repo.claim_notification("r1", "done-1", "email", "dead", lapsed) is Claim.CLAIMED
    await n.notify(completed())
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (1, 1)  # type: ignore[attr-defined]


async def test_a_live_claim_makes_a_copy_wait_instead_of_sending(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.repo.claim_notification("r1", "done-1", "email", "other", timedelta(minutes=5))
    with pytest.raises(ClaimHeld, match="email"):
        await n.notify(completed())
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (0, 1)  # type: ignore[attr-defined]


async def test_a_parked_completion_marks_its_unsent_channels_failed_with_the_reason(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    await n.on_parked(completed(), "gave up after 4 attempts: boom")
    request = n.repo.requests["r1"]  # type: ignore[attr-defined]
    assert request["notified"] == {"done-1": {"email": "failed", "webhook": "failed"}}
    assert all("boom" in a["detail"] for a in request["notifications"])
    assert (len(n.mailer.sent), len(n.webhooks.posted)) == (0, 0)  # type: ignore[attr-defined]


async def test_a_result_the_database_failed_to_record_is_recorded_on_redelivery_not_sent_again(
    tmp_path: Path,
) -> None:
    n = await notifier(tmp_path, webhook_url=None)
    mark = n.repo.mark_notified
    failures = [StorageUnavailable("NetworkTimeout: no reply")]

    async def flaky_mark(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        await mark(*args, **kwargs)

    n.repo.mark_notified = flaky_mark  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailable):
        await n.notify(completed())  # sent, but its result not recorded: the bus retries it
    await n.notify(completed())
    assert len(n.mailer.sent) == 1  # type: ignore[attr-defined]
    assert n.repo.requests["r1"]["notified"] == {"done-1": {"email": "sent"}}  # type: ignore[attr-defined]


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


@pytest.mark.parametrize(
    ("own", "legacy", "signed_with"),
    [
        ("whsec_b3du", "whsec_bGVnYWN5", "whsec_b3du"),  # its own secret, whatever else is configured
        (None, "whsec_bGVnYWN5", "whsec_bGVnYWN5"),  # a request from before: the legacy secret
        (None, None, None),  # ...or unsigned when there is none
    ],
)
async def test_a_webhook_is_signed_with_its_requests_own_secret(
    tmp_path: Path, own: str | None, legacy: str | None, signed_with: str | None
) -> None:
    n = await notifier(tmp_path)
    if own is not None:
        n.repo.requests["r1"]["webhook_secret"] = own  # type: ignore[attr-defined]
    n = Notifier(n.repo, n.mailer, n.webhooks, Settings(data_dir=tmp_path, webhook_secret=legacy))
    await n.notify(completed())
    assert n.webhooks.secrets == [signed_with]  # type: ignore[attr-defined]


async def test_an_output_over_the_attachment_limit_is_linked(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    n = Notifier(n.repo, n.mailer, n.webhooks, Settings(data_dir=tmp_path, mail_attach_max_bytes=10))
    await n.notify(completed())
    (mail,) = n.mailer.sent  # type: ignore[attr-defined]
    assert list(mail.iter_attachments()) == []
    assert f"{n.settings.base_url}/output/r1" in mail.get_body(("plain",)).get_content()


async def test_a_completion_of_a_deleted_request_is_dropped(tmp_path: Path) -> None:
    n = await notifier(tmp_path)
    assert await n.repo.purge("r1")
    await n.notify(completed())  # returns: acknowledged, nothing sent, nothing recreated
    assert (n.mailer.sent, n.webhooks.posted) == ([], [])  # type: ignore[attr-defined]
    assert await n.repo.get("r1") is None
