"""The retry loop with a fake clock, the email attempt adapter, and building the completion email."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.notifier.delivery import AttemptOutcome, AttemptRecord, deliver_with_retry
from services.notifier.mailer import (
    MAX_LISTED_FAILURES,
    Attachment,
    FileMailer,
    MailError,
    SmtpMailer,
    attempt_email,
    build_completion_email,
    mailer_from_settings,
)
from shared.retry import MAX_DELAY_S, backoff_delay
from shared.settings import Settings

RETRY = AttemptOutcome(ok=False, retryable=True, status=503, detail="HTTP 503")
FAIL = AttemptOutcome(ok=False, retryable=False, status=404, detail="HTTP 404")
OK = AttemptOutcome(ok=True, status=200, detail="HTTP 200")


class Harness:
    """Feeds scripted outcomes to the loop and remembers every sleep and record."""

    def __init__(self, outcomes: Iterable[AttemptOutcome]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.sleeps: list[float] = []
        self.records: list[AttemptRecord] = []

    async def attempt(self) -> AttemptOutcome:
        self.calls += 1
        return self.outcomes.pop(0)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def record(self, entry: AttemptRecord) -> None:
        self.records.append(entry)

    async def run(
        self, *, attempts: int, backoff: float = 1.0, rng: Callable[[], float] = lambda: 1.0
    ) -> bool:
        return await deliver_with_retry(
            self.attempt, attempts=attempts, backoff=backoff, record=self.record, sleep=self.sleep, rng=rng
        )


async def test_schedule_grows_exponentially_and_is_capped() -> None:
    h = Harness([RETRY] * 8)
    assert await h.run(attempts=8, backoff=2.0) is False
    assert h.calls == 8
    assert h.sleeps == [2.0, 4.0, 8.0, 16.0, 32.0, MAX_DELAY_S, MAX_DELAY_S]  # no sleep after the last try
    assert [r.next_delay_s for r in h.records] == [*h.sleeps, None]


async def test_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1234).random
    seen: list[list[float]] = []
    for _ in range(50):
        h = Harness([RETRY] * 6)
        await h.run(attempts=6, backoff=0.5, rng=rng)
        for n, delay in enumerate(h.sleeps):
            assert 0.0 <= delay <= min(MAX_DELAY_S, 0.5 * 2**n)
        seen.append(h.sleeps)
    # It really is jittered: the schedules differ, and some delays land well below their ceiling.
    assert len({tuple(s) for s in seen}) == len(seen)
    assert any(s[3] < 0.5 * 2**3 / 2 for s in seen)


async def test_jitter_scales_the_ceiling() -> None:
    h = Harness([RETRY] * 4)
    await h.run(attempts=4, backoff=1.0, rng=lambda: 0.25)
    assert h.sleeps == [0.25, 0.5, 1.0]


async def test_retry_after_is_a_capped_floor() -> None:
    outcomes = [
        AttemptOutcome(ok=False, retryable=True, status=429, retry_after=7.0),
        AttemptOutcome(ok=False, retryable=True, status=429, retry_after=10_000.0),
        AttemptOutcome(ok=False, retryable=True, status=503, retry_after=0.0),
        OK,
    ]
    h = Harness(outcomes)
    assert await h.run(attempts=5, backoff=1.0, rng=lambda: 0.0) is True
    assert h.sleeps == [7.0, MAX_DELAY_S, 0.0]
    # When the backoff is already longer than Retry-After, the backoff wins.
    assert backoff_delay(5, base=1.0, rng=lambda: 1.0, retry_after=3.0) == 32.0
    assert backoff_delay(0, base=1.0, rng=lambda: 0.0, retry_after=-4.0) == 0.0


async def test_permanent_failure_stops_at_once() -> None:
    h = Harness([FAIL, OK])
    assert await h.run(attempts=5) is False
    assert h.calls == 1
    assert h.sleeps == []
    [only] = h.records
    assert (only.attempt, only.outcome, only.status, only.detail, only.next_delay_s) == (
        1,
        "permanent",
        404,
        "HTTP 404",
        None,
    )


async def test_success_after_retries_records_every_attempt() -> None:
    h = Harness([RETRY, RETRY, OK, OK])
    before = datetime.now(UTC)
    assert await h.run(attempts=5, backoff=0.1) is True
    assert h.calls == 3
    assert [r.attempt for r in h.records] == [1, 2, 3]
    assert [r.outcome for r in h.records] == ["retryable", "retryable", "ok"]
    assert [r.status for r in h.records] == [503, 503, 200]
    assert [r.detail for r in h.records] == ["HTTP 503", "HTTP 503", "HTTP 200"]
    for r in h.records:
        assert r.started_at.tzinfo is not None and r.started_at >= before
        assert r.duration_s >= 0
    assert h.records[0].as_dict()["outcome"] == "retryable"


async def test_single_attempt_never_sleeps() -> None:
    h = Harness([RETRY])
    assert await h.run(attempts=1) is False
    assert (h.calls, h.sleeps, [r.outcome for r in h.records]) == (1, [], ["retryable"])


async def test_crashing_attempt_is_recorded_as_permanent() -> None:
    records: list[AttemptRecord] = []
    sleeps: list[float] = []

    async def boom() -> AttemptOutcome:
        raise RuntimeError("bug in channel")

    async def record(entry: AttemptRecord) -> None:
        records.append(entry)

    async def sleep(s: float) -> None:
        sleeps.append(s)

    assert await deliver_with_retry(boom, attempts=3, backoff=1, record=record, sleep=sleep) is False
    assert [(r.outcome, r.status) for r in records] == [("permanent", None)]
    assert "bug in channel" in records[0].detail
    assert sleeps == []


async def test_long_details_are_truncated() -> None:
    h = Harness([AttemptOutcome(ok=False, retryable=False, detail="x" * 10_000)])
    await h.run(attempts=1)
    assert 0 < len(h.records[0].detail) <= 500


async def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await Harness([]).run(attempts=0)


# --- the email channel through the same loop -----------------------------------------------------------


class ScriptedMailer:
    def __init__(self, errors: list[MailError | None]) -> None:
        self.errors = errors
        self.sent: list[EmailMessage] = []

    async def send(self, msg: EmailMessage) -> None:
        self.sent.append(msg)
        if error := self.errors.pop(0):
            raise error


def _attempt(mailer: ScriptedMailer, msg: EmailMessage) -> Callable[[], Awaitable[AttemptOutcome]]:
    return lambda: attempt_email(mailer, msg)


async def test_email_retries_through_the_same_loop() -> None:
    mailer = ScriptedMailer([MailError("SMTP 451 try later", True, 451), MailError("timeout", True), None])
    msg = EmailMessage()
    h = Harness([])
    ok = await deliver_with_retry(
        _attempt(mailer, msg), attempts=5, backoff=1.0, record=h.record, sleep=h.sleep, rng=lambda: 1.0
    )
    assert ok is True
    assert len(mailer.sent) == 3
    assert [(r.outcome, r.status, r.detail) for r in h.records] == [
        ("retryable", 451, "SMTP 451 try later"),
        ("retryable", None, "timeout"),
        ("ok", None, "accepted"),
    ]
    assert h.sleeps == [1.0, 2.0]


async def test_email_permanent_smtp_error_stops() -> None:
    mailer = ScriptedMailer([MailError("SMTP 550 no such user", False, 550), None])
    h = Harness([])
    ok = await deliver_with_retry(
        _attempt(mailer, EmailMessage()), attempts=5, backoff=1.0, record=h.record, sleep=h.sleep
    )
    assert ok is False
    assert [(r.outcome, r.status) for r in h.records] == [("permanent", 550)]
    assert len(mailer.sent) == 1


def test_mailer_from_settings(tmp_path: Path) -> None:
    local = mailer_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(local, FileMailer)
    assert local.directory == tmp_path / "mail"

    smtp = mailer_from_settings(
        Settings(
            smtp_host="mail.example",
            smtp_port=2525,
            smtp_username="u",
            smtp_password=SecretStr("p"),
            smtp_starttls=True,
            notify_timeout=3.0,
        )
    )
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port, smtp.username, smtp.password, smtp.starttls, smtp.timeout) == (
        "mail.example",
        2525,
        "u",
        "p",
        True,
        3.0,
    )


# --- building the completion email ---------------------------------------------------------------------


def attached(csv_bytes: bytes | None) -> Attachment:
    return Attachment(csv_bytes=csv_bytes, link="http://api/output/req42", limit=1024)


def _email(**summary: object) -> EmailMessage:
    return build_completion_email(
        to="shop@example.com",
        sender="imagepipe@notify.example",
        request_id="req42",
        summary=summary,
        attachment=attached("S. No.,Product Name,Input Image Urls\n1,Café,https://x/a.jpg\n".encode()),
        message_id="req42-completed",
    )


def test_completion_email_headers_and_body() -> None:
    msg = _email(
        total_images=3,
        compressed=2,
        failed=1,
        failures=[{"index": 2, "url": "https://x/c.jpg", "reason": "HTTP 404\nfrom origin"}],
        status_url="http://api/status/req42",
    )
    assert msg["Subject"] == "imagepipe: request req42 completed (2 of 3 images compressed, 1 failed)"
    assert msg["To"] == "shop@example.com"
    assert msg["From"] == "imagepipe@notify.example"
    assert msg["Message-ID"] == "<req42-completed@notify.example>"
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Compressed:  2" in text and "Failed:      1" in text
    assert "#2 https://x/c.jpg" in text
    assert "HTTP 404 from origin" in text  # flattened onto one line
    assert "http://api/status/req42" in text

    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "imagepipe-req42.csv"
    assert attachment.get_content_type() == "text/csv"
    assert (
        attachment.get_payload(decode=True)
        == "S. No.,Product Name,Input Image Urls\n1,Café,https://x/a.jpg\n".encode()
    )


def test_message_id_is_deterministic() -> None:
    assert _email()["Message-ID"] == _email()["Message-ID"]
    other = build_completion_email(
        to="a@b.c", sender="x@y.z", request_id="r", summary={}, attachment=attached(b""), message_id="another"
    )
    assert other["Message-ID"] == "<another@y.z>"


def test_failure_list_is_capped() -> None:
    failures = [{"index": i, "url": f"https://x/{i}.jpg", "reason": "boom"} for i in range(500)]
    text = _email(total_images=500, compressed=0, failed=500, failures=failures).get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert content.count("- #") == MAX_LISTED_FAILURES
    assert f"... and {500 - MAX_LISTED_FAILURES} more." in content
    assert "https://x/499.jpg" not in content


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        build_completion_email(
            to="a@b.c",
            sender="x@y.z",
            request_id="r\r\nBcc: evil@x",
            summary={},
            attachment=attached(b""),
            message_id="m",
        )


async def test_smtp_mailer_refuses_a_message_without_recipients() -> None:
    # Raised before any connection: the port is never used.
    with pytest.raises(MailError) as info:
        await SmtpMailer("127.0.0.1", 9, timeout=0.5).send(EmailMessage())
    assert info.value.retryable is False
