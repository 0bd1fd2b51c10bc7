"""Accepting an upload: check the form, then validate the CSV while storing it, request document last.

Nothing is visible (or published) unless the whole file is valid and stored: the rows are written as they
are validated, then the request document (RECEIVING: invisible, unpublished), and accepting it is the one
final step. A rejected file's rows are deleted.

An upload's outcome is certain before the client hears it. A failure before the accept was sent means
not accepted (the leftovers are invisible, and removed). But an accept reported as failed may still have
landed, so `accept_upload` then finds out: accepted after all (202), or removed in a way that no late
accept can undo (503). Only if the database stays silent for SETTLE_WITHIN_S is the answer "not known
yet" (`OutcomeUnknown`); the janitor then settles it (as not accepted, unless the accept had landed)
within ABANDONED_AFTER.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from email_validator import EmailNotValidError, validate_email
from starlette.datastructures import UploadFile

from services.upload.csv_input import CsvLimits, CsvReader
from services.upload.errors import ApiError, problem
from shared.image_options import FIELDS, ImageOptions, InvalidImageOptions, parse_image_options
from shared.mongo import StorageError, StorageUnavailable
from shared.netguard import BlockedAddressError, check_host_literal
from shared.repository import ROWS_PER_CHUNK, RequestDoc, RequestRepository, RowDoc, Upload
from shared.retry import backoff_delay
from shared.webhooks import new_secret

log = structlog.get_logger()

SETTLE_WITHIN_S = 20.0  # how long a failed upload waits for the database to say what became of it
ABANDONED_AFTER = timedelta(minutes=10)  # a request still RECEIVING this long is settled by the janitor
JANITOR_INTERVAL_S = 60.0


class OutcomeUnknown(Exception):
    """The accept step failed, and the database did not say within SETTLE_WITHIN_S whether it landed."""


@dataclass(frozen=True)
class UploadFields:
    """A checked upload form (the CSV's content is checked while it is stored)."""

    file: UploadFile
    email: str  # as it is sent: in ASCII (ascii_address)
    webhook_url: str | None
    options: ImageOptions


def upload_fields(
    form: Mapping[str, object], query: Mapping[str, str], *, allow_private: bool, max_csv_bytes: int
) -> UploadFields:
    """The form's fields (`email`, `webhook_url` and the image options may also be query parameters), or an
    ApiError naming every bad one: 400 without a file, 422 with one; 413 for a file over the limit."""
    file = form.get("file")
    email = _text(form.get("email")) or query.get("email", "").strip()
    webhook_url = _text(form.get("webhook_url")) or query.get("webhook_url", "").strip() or None
    problems = form_problems(file, email, webhook_url, allow_private=allow_private)
    options, option_problems = options_from_form(form, query)
    problems += option_problems
    if problems:
        raise ApiError(422 if file is not None else 400, "invalid form fields", problems)
    assert isinstance(file, UploadFile)
    if file.size is not None and file.size > max_csv_bytes:
        raise ApiError(
            413,
            f"CSV is larger than the {max_csv_bytes} byte limit",
            [problem(f"{file.size} bytes; the limit is {max_csv_bytes}", field="file")],
        )
    return UploadFields(file, ascii_address(email), webhook_url, options)  # valid: form_problems checked it


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def form_problems(
    file: object, email: str, webhook_url: str | None, *, allow_private: bool
) -> list[dict[str, Any]]:
    problems = []
    if not isinstance(file, UploadFile):
        problems.append(problem("a CSV file is required as the multipart field 'file'", field="file"))
    if not email:
        problems.append(
            problem("an email address is required (form field or query parameter 'email')", field="email")
        )
    else:
        try:
            ascii_address(email)
        except EmailNotValidError as exc:
            problems.append(problem(f"invalid email address: {exc}", field="email"))
    if webhook_url is not None:
        reason = webhook_url_problem(webhook_url, allow_private=allow_private)
        if reason:
            problems.append(problem(reason, field="webhook_url"))
    return problems


def ascii_address(email: str) -> str:
    """The address as it is sent: in ASCII, with an internationalised domain in its punycode form.

    A non-ASCII part before the @ is refused (EmailNotValidError): it can only be delivered over SMTPUTF8,
    which many relays lack, and the failure would show only when the batch is done and its email bounces.
    Refusing it at upload is an answer the user gets at once; an internationalised domain loses nothing."""
    return validate_email(email, check_deliverability=False, allow_smtputf8=False).ascii_email or email


def options_from_form(
    form: Mapping[str, object], query: Mapping[str, str]
) -> tuple[ImageOptions, list[dict[str, Any]]]:
    """The image options (form fields, or query parameters like `email`), or the problems, each naming
    its field. Values that are not text (a file sent as `quality`) are problems too."""
    values = {name: form.get(name, query.get(name)) for name in FIELDS}
    try:
        return parse_image_options(values), []
    except InvalidImageOptions as exc:
        return ImageOptions(), [problem(reason, field=field) for field, reason in exc.problems]


def webhook_url_problem(url: str, *, allow_private: bool) -> str | None:
    """Syntax, plus a refused address written as a literal; names are checked again at delivery time."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "webhook_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not host or len(url) > 2048:
        return "webhook_url must be an absolute http(s) URL of at most 2048 characters"
    try:
        check_host_literal(host, allow_private)
    except BlockedAddressError as exc:
        return f"webhook_url points at a {exc.reason} address, which is refused"
    return None


async def store_request(
    repo: RequestRepository,
    limits: CsvLimits,
    request_id: str,
    fields: UploadFields,
    owner: str | None = None,
) -> RequestDoc:
    """Raises CsvRejected (invalid file), StorageError (certainly not accepted; the caller discards what
    was stored) or OutcomeUnknown."""
    reader = CsvReader(fields.file.file, limits)
    chunks = reader.chunks(ROWS_PER_CHUNK)
    chunk_no = images = products = 0
    first_seen: dict[str, int] = {}  # URL -> index of its first occurrence: repeats are fetched once
    # Parsing is CPU work: each chunk is read in a thread, so the event loop keeps serving other requests.
    while (rows := await asyncio.to_thread(next, chunks, None)) is not None:
        if reader.problems:
            continue  # keep reading to report every problem, but store nothing more
        stored = []
        for r in rows:
            row = RowDoc(serial=r.serial, name=r.name, urls=list(r.urls), cells=list(r.cells))
            firsts = [first_seen.setdefault(url, images + i) for i, url in enumerate(r.urls)]
            if any(first != images + i for i, first in enumerate(firsts)):
                row["duplicate_of"] = [None if f == images + i else f for i, f in enumerate(firsts)]
            stored.append(row)
            images += len(r.urls)
        first_image = images - sum(len(r.urls) for r in rows)
        await repo.add_rows(request_id, chunk_no, first_image, stored, urls_column=reader.urls_column)
        chunk_no += 1
        products += len(rows)
    reader.raise_if_invalid()
    upload = Upload(
        email=fields.email,
        webhook_url=fields.webhook_url,
        columns=reader.columns,
        total_products=products,
        total_images=images,
        row_chunks=chunk_no,
    )
    if not fields.options.is_default():
        upload["options"] = fields.options.stored()
    if fields.webhook_url is not None:
        upload["webhook_secret"] = new_secret()  # its own: no other receiver can forge its webhooks
    await repo.create_request(request_id, upload, owner)
    return await accept_upload(repo, request_id)


async def accept_upload(repo: RequestRepository, request_id: str) -> RequestDoc:
    """The final step: the accepted request. If it fails, whether it landed is settled before returning
    (the request, accepted after all) or raising (StorageError: certainly not; OutcomeUnknown)."""
    try:
        accepted = await repo.accept_request(request_id)
    except StorageError as exc:
        log.error("upload_accept_failed_settling", error=str(exc)[:200])
        accepted = await settle_failed_upload(repo, request_id)
        if accepted is not None:
            log.warning("upload_accepted_after_all")
    if accepted is None:
        raise StorageError("the upload was not accepted: the database failed while accepting it")
    return accepted


async def settle_failed_upload(repo: RequestRepository, request_id: str) -> RequestDoc | None:
    """After a failed accept: the request if it was accepted after all, None if it certainly was not (and
    never will be). Raises OutcomeUnknown if the database does not say within SETTLE_WITHIN_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_WITHIN_S
    failures = 0
    while True:
        try:
            if await repo.settle_upload(request_id):
                return await repo.get(request_id, notifications=False)
            return None
        except StorageUnavailable as exc:
            delay = backoff_delay(failures, base=0.25, max_delay=2.0)
            if loop.time() + delay > deadline:
                raise OutcomeUnknown(str(exc)) from exc
            failures += 1
            await asyncio.sleep(delay)


async def settle_abandoned_uploads_forever(repo: RequestRepository) -> None:
    """The janitor: uploads left RECEIVING (their gateway died, or lost the database while settling)."""
    while True:
        try:
            async for request_id in repo.abandoned_uploads(ABANDONED_AFTER):
                accepted = await repo.settle_upload(request_id)
                log.warning("abandoned_upload_settled", request_id=request_id, accepted=accepted)
        except StorageError as exc:  # an outage: next round
            log.warning("abandoned_uploads_unsettled", error=str(exc)[:200])
        await asyncio.sleep(JANITOR_INTERVAL_S)
