"""What the notifier sends, end to end through its real parts: the read model on SecantusDB, the email over
SMTP (aiosmtpd) with the output CSV attached or linked, and webhooks to a real HTTP receiver, signed with
the request's own secret and verified by the reference implementation (the `standardwebhooks` package)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from services.notifier.handler import Notifier
from services.notifier.mailer import SmtpMailer
from services.notifier.webhook import HttpWebhooks
from shared.events import RequestCompleted
from shared.links import Links
from shared.netguard import guarded_session
from shared.output_csv import output_csv
from shared.repository import MongoRequestRepository, RowDoc, Upload
from shared.settings import Settings
from shared.webhooks import new_secret
from tests.integration.test_notifier_delivery import Receiver, SmtpSink, free_port


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    sink, port = SmtpSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, data_size_limit=64 * 1024 * 1024)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def accept(_: web.Request) -> web.Response:
        return web.Response(status=204)

    rec.handler = accept
    app = web.Application()
    app.router.add_post("/hook", rec.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    yield rec
    await runner.cleanup()


async def store_request(
    repo: MongoRequestRepository,
    request_id: str,
    rows: int,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> None:
    """A completed-looking request of `rows` products, one image each (no outcomes: they print empty)."""
    for chunk, first in enumerate(range(0, rows, 500)):
        batch = [
            RowDoc(serial=str(n), name=f"Product {n}", urls=[url], cells=[str(n), f"Product {n}", url])
            for n in range(first + 1, min(first + 500, rows) + 1)
            for url in [f"https://img.example.com/catalogue/2026/product-{n:06d}-front.jpg"]
        ]
        await repo.add_rows(request_id, chunk, first, batch, urls_column=2)
    upload = Upload(
        email="buyer@example.com",
        webhook_url=webhook_url,
        columns=["S. No.", "Product Name", "Input Image Urls"],
        total_products=rows,
        total_images=rows,
        row_chunks=(rows + 499) // 500,
    )
    if webhook_secret is not None:
        upload["webhook_secret"] = webhook_secret
    await repo.create_request(request_id, upload)
    assert await repo.accept_request(request_id) is not None


async def notify(settings: Settings, repo: MongoRequestRepository, port: int, request_id: str) -> None:
    async with guarded_session(
        allow_private=True, connect_timeout=2.0, read_timeout=3.0, total_timeout=3.0
    ) as http:
        mailer = SmtpMailer("127.0.0.1", port, timeout=30.0)
        notifier = Notifier(repo, mailer, HttpWebhooks(http, 3.0), settings)
        await notifier.notify(RequestCompleted(request_id=request_id, total_images=1, compressed=0, failed=0))


def received(sink: SmtpSink) -> tuple[EmailMessage, str]:
    [(_, _, raw)] = sink.messages
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    return message, body.get_content()


async def test_an_output_within_the_limit_is_attached(
    settings: Settings, repo: MongoRequestRepository, smtp: tuple[SmtpSink, int]
) -> None:
    sink, port = smtp
    await store_request(repo, "small-output-0000001", rows=3)
    await notify(settings, repo, port, "small-output-0000001")
    message, text = received(sink)
    [attachment] = list(message.iter_attachments())
    request = await repo.get("small-output-0000001")
    assert request is not None
    expected = b"".join([p async for p in output_csv(repo, request, Links(settings.base_url))])
    assert attachment.get_payload(decode=True) == expected
    assert "attached as imagepipe-small-output-0000001.csv" in text


async def test_an_output_over_the_limit_is_linked_and_says_why(
    settings: Settings, repo: MongoRequestRepository, smtp: tuple[SmtpSink, int]
) -> None:
    sink, port = smtp
    limited = settings.model_copy(update={"mail_attach_max_bytes": 200})
    await store_request(repo, "big-output-000000001", rows=3)  # a few hundred bytes: over 200
    await notify(limited, repo, port, "big-output-000000001")
    message, text = received(sink)
    assert list(message.iter_attachments()) == []
    assert f"{settings.base_url}/output/big-output-000000001" in text
    assert "larger than 200 bytes, too large to attach" in text


async def test_a_100000_row_output_goes_by_link_with_the_default_limit(
    settings: Settings, repo: MongoRequestRepository, smtp: tuple[SmtpSink, int]
) -> None:
    sink, port = smtp
    await store_request(repo, "huge-output-00000001", rows=100_000)
    request = await repo.get("huge-output-00000001")
    assert request is not None
    size = sum([len(p) async for p in output_csv(repo, request, Links(settings.base_url))])
    assert size > settings.mail_attach_max_bytes == 5 * 1024 * 1024  # the premise: too big to attach
    await notify(settings, repo, port, "huge-output-00000001")
    [(_, _, raw)] = sink.messages
    assert len(raw) < 64 * 1024  # the email is small...
    message, text = received(sink)
    assert list(message.iter_attachments()) == []
    assert "/output/huge-output-00000001" in text and "5 MiB" in text  # ...and says where the CSV is


async def test_webhooks_are_signed_with_each_requests_own_secret(
    settings: Settings, repo: MongoRequestRepository, smtp: tuple[SmtpSink, int], receiver: Receiver
) -> None:
    _, port = smtp
    secrets = {"hooked-request-00001": new_secret(), "hooked-request-00002": new_secret()}
    for request_id, secret in secrets.items():
        await store_request(repo, request_id, rows=1, webhook_url=receiver.url, webhook_secret=secret)
        await notify(settings, repo, port, request_id)
    assert len(receiver.requests) == 2
    for (headers, body), (request_id, secret) in zip(receiver.requests, secrets.items(), strict=True):
        payload = Webhook(secret).verify(body, headers)  # the reference implementation agrees
        assert payload["data"]["request_id"] == request_id
        other = next(s for s in secrets.values() if s != secret)
        with pytest.raises(WebhookVerificationError):  # and one receiver cannot pass for another
            Webhook(other).verify(body, headers)


@pytest.mark.parametrize("legacy", [None, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
async def test_a_request_from_before_per_request_secrets_keeps_its_old_signing(
    settings: Settings,
    repo: MongoRequestRepository,
    smtp: tuple[SmtpSink, int],
    receiver: Receiver,
    legacy: str | None,
) -> None:
    _, port = smtp
    configured = settings.model_copy(update={"webhook_secret": SecretStr(legacy) if legacy else None})
    await store_request(repo, "legacy-request-00001", rows=1, webhook_url=receiver.url)
    await notify(configured, repo, port, "legacy-request-00001")
    [(headers, body)] = receiver.requests
    if legacy is None:
        assert "webhook-signature" not in {k.lower() for k in headers}
    else:
        assert Webhook(legacy).verify(body, headers)["type"] == "request.completed"
