"""The completion email: building it, and sending it by SMTP or (local mode) into .eml files."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
import structlog

from services.notifier.delivery import AttemptOutcome
from shared.image_options import ImageOptions
from shared.settings import Settings

log = structlog.get_logger()

REQUEST_ID_HEADER = "X-Imagepipe-Request-Id"
MAX_LISTED_FAILURES = 50  # the CSV has every row; the body only needs enough to see what went wrong
_MAX_FIELD_CHARS = 300
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class MailError(Exception):
    """Sending failed. `retryable`: a later try may succeed (4xx reply, network trouble, timeout)."""

    def __init__(self, reason: str, retryable: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.code = code


class Mailer(Protocol):
    async def send(self, msg: EmailMessage) -> None: ...


# --- building -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """The output CSV to attach, or (`csv_bytes` None: larger than `limit` bytes) the link to it instead."""

    csv_bytes: bytes | None
    link: str
    limit: int


def completion_message_id(message_id: str, sender: str) -> str:
    """A Message-ID derived only from the notification's id, so a re-send of it is recognisably the same."""
    domain = parseaddr(sender)[1].rpartition("@")[2]
    if not domain or _UNSAFE.sub("", domain) != domain:
        domain = "imagepipe.invalid"
    return f"<{_UNSAFE.sub('-', message_id) or 'notification'}@{domain}>"


def build_completion_email(
    *,
    to: str,
    sender: str,
    request_id: str,
    summary: Mapping[str, Any],
    attachment: Attachment,
    message_id: str,
) -> EmailMessage:
    """The "your request is done" email with the output CSV attached as `imagepipe-<request_id>.csv`, or,
    when it is over the attachment limit, a link to it: a large CSV would exceed common SMTP size limits.

    `summary` keys (all optional): `status` (CANCELLED says so, with the `skipped` count), `total_images`,
    `compressed`, `failed` (counts), `failures` (a list of
    mappings with `url`, `reason` and optionally `index`), `status_url` and `options` (the request's
    image options as stored).
    """
    total = int(summary.get("total_images", 0))
    compressed = int(summary.get("compressed", 0))
    failed = int(summary.get("failed", 0))
    filename = f"imagepipe-{_UNSAFE.sub('-', request_id)}.csv"

    msg = EmailMessage()  # default policy: refuses CR/LF in header values, so no header injection
    cancelled = summary.get("status") == "CANCELLED"
    skipped = f", {summary.get('skipped', 0)} skipped" if cancelled else ""
    msg["Subject"] = (
        f"imagepipe: request {request_id} {'cancelled' if cancelled else 'completed'} "
        f"({compressed} of {total} images compressed, {failed} failed{skipped})"
    )
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = completion_message_id(message_id, sender)
    msg[REQUEST_ID_HEADER] = request_id
    msg.set_content(_body(request_id, total, compressed, failed, summary, _where(attachment, filename)))
    if attachment.csv_bytes is not None:
        msg.add_attachment(attachment.csv_bytes, maintype="text", subtype="csv", filename=filename)
    return msg


def _where(attachment: Attachment, filename: str) -> list[str]:
    """Where the output CSV is: attached, or (too large to attach) behind its link, saying why."""
    if attachment.csv_bytes is not None:
        return [f"The output CSV is attached as {filename}."]
    return [  # lines under 76 characters: no soft breaks in the quoted-printable body
        f"The output CSV is larger than {_size(attachment.limit)}, too large to attach here.",
        "Download it (with your API key, if the service uses keys) from:",
        f"  {attachment.link}",
    ]


def _size(limit: int) -> str:
    return f"{limit / 1024 / 1024:g} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def _body(
    request_id: str,
    total: int,
    compressed: int,
    failed: int,
    summary: Mapping[str, Any],
    output: list[str],
) -> str:
    cancelled = summary.get("status") == "CANCELLED"
    lines = [
        f"Your imagepipe request {request_id} {'was cancelled' if cancelled else 'has finished'}.",
        "",
        f"  Images:      {total}",
        f"  Compressed:  {compressed}",
        f"  Failed:      {failed}",
        *([f"  Skipped:     {summary.get('skipped', 0)} (cancelled before they were started)"] * cancelled),
        f"  Options:     {ImageOptions.from_stored(summary.get('options')).describe() or 'none (defaults)'}",
        "",
        *output,
    ]
    if status_url := summary.get("status_url"):
        lines.append(f"Status: {status_url}")
    failures: Sequence[Mapping[str, Any]] = summary.get("failures") or []
    if failures:
        shown = failures[:MAX_LISTED_FAILURES]
        lines += ["", f"Failed images ({len(shown)} of {max(failed, len(failures))} listed):"]
        for item in shown:
            index = item.get("index")
            where = _one_line(str(item.get("url", "?")))
            lines.append(f"  - {f'#{index} ' if index is not None else ''}{where}")
            lines.append(f"    {_one_line(str(item.get('reason', 'unknown reason')))}")
        if (rest := max(failed, len(failures)) - len(shown)) > 0:
            lines.append(f"  ... and {rest} more.")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    # Reasons and URLs come from the outside world: flatten them and keep them short.
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_FIELD_CHARS else flat[: _MAX_FIELD_CHARS - 3] + "..."


# --- sending --------------------------------------------------------------------------------------------


# CRLF line ends as on the wire, but headers folded only past RFC 5322's hard limit of 998: Python folds
# a long Subject onto a continuation line at 78, and its own parser then reads it with a leading space.
_WIRE_POLICY = policy.SMTP.clone(max_line_length=998)


def wire_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=_WIRE_POLICY)


class SmtpMailer:
    """Sends through one SMTP server. `timeout` bounds each SMTP operation (connect, each command)."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    async def send(self, msg: EmailMessage) -> None:
        sender = parseaddr(str(msg.get("From", "")))[1]
        # We flatten the message ourselves (see wire_bytes), so the envelope comes from To/Cc here.
        headers = [str(v) for name in ("To", "Cc") for v in msg.get_all(name, [])]
        recipients = [addr for _, addr in getaddresses(headers) if addr]
        if not recipients:
            raise MailError("the message has no recipient", retryable=False)
        try:
            await aiosmtplib.send(
                wire_bytes(msg),
                sender=sender,
                recipients=recipients,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=self.starttls,  # False: plain SMTP, never an opportunistic upgrade
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            reason = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            retryable = any(400 <= c < 500 for c in codes)
            raise MailError(f"recipients refused: {reason}", retryable, codes[0] if codes else None) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Before the generic connection errors: SMTPConnectResponseError is both, and its code decides.
            retryable = not 500 <= exc.code < 600
            raise MailError(f"SMTP {exc.code} {exc.message}", retryable, exc.code) from exc
        except (TimeoutError, ConnectionError, OSError) as exc:  # aiosmtplib's timeouts/disconnects too
            raise MailError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except (aiosmtplib.SMTPException, ValueError) as exc:
            # e.g. STARTTLS or AUTH not supported, no recipients: configuration, not weather.
            raise MailError(f"{type(exc).__name__}: {exc}", retryable=False) from exc


class FileMailer:
    """Local mode without SMTP: each email becomes `<directory>/<timestamp>-<request_id>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    async def send(self, msg: EmailMessage) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        request_id = _UNSAFE.sub("-", str(msg.get(REQUEST_ID_HEADER, "message")))
        target = self.directory / f"{stamp}-{request_id}.eml"
        data = wire_bytes(msg)
        try:
            await asyncio.to_thread(_write_atomically, target, data)
        except OSError as exc:
            raise MailError(f"cannot write {target}: {exc}", retryable=True) from exc
        log.info("mail.written", path=str(target))


def _write_atomically(target: Path, data: bytes) -> None:
    # A reader (or `make run` tailing the folder) never sees a half-written file.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mailer_from_settings(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_username,
            settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            settings.smtp_starttls,
            settings.notify_timeout,
        )
    return FileMailer(settings.data_dir / "mail")


async def attempt_email(mailer: Mailer, msg: EmailMessage) -> AttemptOutcome:
    """One try of the email channel, in the shape `deliver_with_retry` wants."""
    try:
        await mailer.send(msg)
    except MailError as exc:
        return AttemptOutcome(ok=False, retryable=exc.retryable, status=exc.code, detail=exc.reason)
    return AttemptOutcome(ok=True, detail="accepted")
