"""Webhook and email delivery against real local servers: aiohttp.web and aiosmtpd on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from services.notifier.delivery import AttemptOutcome, AttemptRecord, deliver_with_retry
from services.notifier.mailer import (
    Attachment,
    FileMailer,
    MailError,
    SmtpMailer,
    attempt_email,
    build_completion_email,
)
from services.notifier.webhook import post_webhook
from shared.webhooks import verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAYLOAD = {"type": "request.completed", "request_id": "req-1", "compressed": 2, "failed": 1}
CSV = b"S. No.,Product Name,Input Image Urls,Output Image Urls\n1,Mug,https://x/a.jpg,http://o/a.jpg\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    # Nothing listens on it once the socket closes: good for "server down", and for aiosmtpd, which
    # cannot be given port 0 (its start-up probe connects to the configured port).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A webhook receiver: one route whose behaviour each test supplies; remembers every request."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = asyncio.Event()  # lets stalled handlers finish so shutdown is quick
        self.url = ""

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        assert self.handler is not None
        return await self.handler(request)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.dispatch)
    app.router.add_post("/elsewhere", rec.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# --- webhook -------------------------------------------------------------------------------------------


async def test_webhook_retried_until_the_receiver_accepts(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    verified: list[bool] = []

    async def flaky(request: web.Request) -> web.Response:
        verified.append(verify(SECRET, request.headers, await request.read()))
        if len(receiver.requests) <= 2:
            return web.Response(status=500, text="database on fire")
        return web.Response(status=200, text="thanks")

    receiver.handler = flaky
    records: list[AttemptRecord] = []

    async def record(entry: AttemptRecord) -> None:
        records.append(entry)

    ok = await deliver_with_retry(
        lambda: post_webhook(
            session, receiver.url, PAYLOAD, message_id="msg_req-1_completed", secret=SECRET, timeout=2.0
        ),
        attempts=5,
        backoff=0.01,
        record=record,
    )
    assert ok is True
    assert [(r.attempt, r.outcome, r.status) for r in records] == [
        (1, "retryable", 500),
        (2, "retryable", 500),
        (3, "ok", 200),
    ]
    assert "database on fire" in records[0].detail
    assert len(receiver.requests) == 3
    assert verified == [True, True, True]  # every attempt signed, each with its own timestamp
    assert {h["webhook-id"] for h, _ in receiver.requests} == {"msg_req-1_completed"}  # stable for dedup
    headers, body = receiver.requests[-1]
    assert json.loads(body) == PAYLOAD
    assert headers["Content-Type"] == "application/json"
    # The receiver's check is not a rubber stamp: the same request with another body fails it.
    assert not verify(SECRET, headers, body.replace(b"2", b"3"))


async def test_webhook_client_error_is_permanent(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no such hook")

    receiver.handler = gone
    records: list[AttemptRecord] = []

    async def record(entry: AttemptRecord) -> None:
        records.append(entry)

    ok = await deliver_with_retry(
        lambda: post_webhook(session, receiver.url, PAYLOAD, message_id="m", secret=SECRET, timeout=2.0),
        attempts=5,
        backoff=0.01,
        record=record,
    )
    assert ok is False
    assert [(r.outcome, r.status) for r in records] == [("permanent", 404)]
    assert "no such hook" in records[0].detail
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 502, 503])
async def test_webhook_retryable_statuses(
    receiver: Receiver, session: aiohttp.ClientSession, status: int
) -> None:
    async def busy(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Retry-After": "3"})

    receiver.handler = busy
    outcome = await post_webhook(session, receiver.url, PAYLOAD, message_id="m", secret=SECRET, timeout=2.0)
    assert (outcome.ok, outcome.retryable, outcome.status, outcome.retry_after) == (False, True, status, 3.0)


async def test_webhook_redirect_is_not_followed(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    async def moved(request: web.Request) -> web.Response:
        if request.path == "/hook":
            raise web.HTTPTemporaryRedirect(location="/elsewhere")
        return web.Response(status=200)

    receiver.handler = moved
    outcome = await post_webhook(session, receiver.url, PAYLOAD, message_id="m", secret=SECRET, timeout=2.0)
    assert (outcome.ok, outcome.retryable, outcome.status) == (False, False, 307)
    assert "redirect" in outcome.detail and "/elsewhere" in outcome.detail
    assert [h for h, _ in receiver.requests] and len(receiver.requests) == 1  # /elsewhere never reached


async def test_webhook_timeout_is_retryable(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    async def stall(_: web.Request) -> web.Response:
        await asyncio.wait_for(receiver.release.wait(), 5)
        return web.Response(status=200)

    receiver.handler = stall
    outcome = await post_webhook(session, receiver.url, PAYLOAD, message_id="m", secret=SECRET, timeout=0.2)
    assert (outcome.ok, outcome.retryable, outcome.status) == (False, True, None)
    assert "timed out" in outcome.detail


async def test_webhook_connection_refused_is_retryable(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    outcome = await post_webhook(session, url, PAYLOAD, message_id="m", secret=SECRET, timeout=2.0)
    assert (outcome.ok, outcome.retryable) == (False, True)
    assert "Connect" in outcome.detail


async def test_webhook_bad_url_is_permanent(session: aiohttp.ClientSession) -> None:
    outcome = await post_webhook(session, "not a url", PAYLOAD, message_id="m", secret=SECRET, timeout=2.0)
    assert (outcome.ok, outcome.retryable) == (False, False)


async def test_webhook_without_secret_is_unsigned(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    async def accept(_: web.Request) -> web.Response:
        return web.Response(status=204)

    receiver.handler = accept
    outcome = await post_webhook(session, receiver.url, PAYLOAD, message_id="m1", secret=None, timeout=2.0)
    assert (outcome.ok, outcome.status) == (True, 204)
    [(headers, _)] = receiver.requests
    assert headers["webhook-id"] == "m1"
    assert headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in {k.lower() for k in headers}


# --- email ---------------------------------------------------------------------------------------------


class SmtpSink:
    """aiosmtpd handler: keeps what it receives, or refuses recipients with a configured reply."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def completion_email(**overrides: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "to": "shop@example.com",
        "sender": "imagepipe@notify.example",
        "request_id": "req-1",
        "summary": {
            "total_images": 3,
            "compressed": 2,
            "failed": 1,
            "failures": [{"index": 2, "url": "https://x/c.jpg", "reason": "HTTP 404"}],
        },
        "attachment": Attachment(csv_bytes=CSV, link="http://api/output/req-1", limit=len(CSV)),
        "message_id": "req-1-completed",
    }
    args.update(overrides)
    return build_completion_email(**args)


async def test_email_delivered_over_smtp(smtp: tuple[SmtpSink, int]) -> None:
    sink, port = smtp
    records: list[AttemptRecord] = []

    async def record(entry: AttemptRecord) -> None:
        records.append(entry)

    mailer = SmtpMailer("127.0.0.1", port, timeout=2.0)
    msg = completion_email()
    ok = await deliver_with_retry(lambda: attempt_email(mailer, msg), attempts=3, backoff=0.01, record=record)
    assert ok is True
    assert [r.outcome for r in records] == ["ok"]

    [(mail_from, rcpt_tos, raw)] = sink.messages
    assert (mail_from, rcpt_tos) == ("imagepipe@notify.example", ["shop@example.com"])
    received = message_from_bytes(raw, policy=policy.default)
    assert received["Subject"] == "imagepipe: request req-1 completed (2 of 3 images compressed, 1 failed)"
    assert received["Message-ID"] == "<req-1-completed@notify.example>"
    body = received.get_body(("plain",))
    assert body is not None
    assert "#2 https://x/c.jpg" in body.get_content()
    [attachment] = list(received.iter_attachments())
    assert attachment.get_filename() == "imagepipe-req-1.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == CSV


@pytest.mark.parametrize(
    ("reply", "retryable", "code"), [("450 mailbox busy", True, 450), ("550 no such user", False, 550)]
)
async def test_smtp_refusals_are_classified_by_code(
    smtp: tuple[SmtpSink, int], reply: str, retryable: bool, code: int
) -> None:
    sink, port = smtp
    sink.rcpt_reply = reply
    with pytest.raises(MailError) as info:
        await SmtpMailer("127.0.0.1", port, timeout=2.0).send(completion_email())
    assert (info.value.retryable, info.value.code) == (retryable, code)
    assert reply.split(" ", 1)[1] in info.value.reason
    assert sink.messages == []


async def test_smtp_server_down_is_retryable() -> None:
    mailer = SmtpMailer("127.0.0.1", free_port(), timeout=1.0)
    with pytest.raises(MailError) as info:
        await mailer.send(completion_email())
    assert info.value.retryable is True
    outcome = await attempt_email(mailer, completion_email())
    assert outcome == AttemptOutcome(ok=False, retryable=True, status=None, detail=outcome.detail)
    assert outcome.detail


async def test_file_mailer_writes_a_parseable_eml(tmp_path: Path) -> None:
    msg = completion_email()
    await FileMailer(tmp_path / "mail").send(msg)
    [path] = list((tmp_path / "mail").iterdir())  # exactly one file: no temp file left behind
    assert path.name.endswith("-req-1.eml")
    parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert parsed["Subject"] == msg["Subject"]
    assert parsed["Message-ID"] == "<req-1-completed@notify.example>"
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "imagepipe-req-1.csv"
    assert attachment.get_payload(decode=True) == CSV


async def test_file_mailer_unwritable_directory_is_a_mail_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MailError) as info:
        await FileMailer(blocker / "mail").send(completion_email())
    assert info.value.retryable
