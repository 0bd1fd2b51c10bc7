"""Accepting an upload: check the form, then validate the CSV while storing it, request document last.

Nothing is visible (or published) unless the whole file is valid and stored: the rows are written as they
are validated, and the request document, which the outbox relay and the status endpoint look for, comes
only at the end. A rejected file's rows are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from starlette.datastructures import UploadFile

from services.upload.csv_input import CsvLimits, CsvReader
from services.upload.errors import problem
from shared.image_options import FIELDS, ImageOptions, InvalidImageOptions, parse_image_options
from shared.netguard import BlockedAddressError, check_host_literal
from shared.repository import ROWS_PER_CHUNK, RequestDoc, RequestRepository, RowDoc, Upload


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
            validate_email(email, check_deliverability=False)
        except EmailNotValidError as exc:
            problems.append(problem(f"invalid email address: {exc}", field="email"))
    if webhook_url is not None:
        reason = webhook_url_problem(webhook_url, allow_private=allow_private)
        if reason:
            problems.append(problem(reason, field="webhook_url"))
    return problems


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
    file: UploadFile,
    email: str,
    webhook_url: str | None,
    options: ImageOptions | None = None,
) -> RequestDoc:
    """Raises CsvRejected (invalid file) or StorageError (storage down); the caller then discards it."""
    reader = CsvReader(file.file, limits)
    chunks = reader.chunks(ROWS_PER_CHUNK)
    chunk_no = images = products = 0
    # Parsing is CPU work: each chunk is read in a thread, so the event loop keeps serving other requests.
    while (rows := await asyncio.to_thread(next, chunks, None)) is not None:
        if reader.problems:
            continue  # keep reading to report every problem, but store nothing more
        stored = [RowDoc(serial=r.serial, name=r.name, urls=list(r.urls), cells=list(r.cells)) for r in rows]
        await repo.add_rows(request_id, chunk_no, images, stored)
        chunk_no += 1
        products += len(rows)
        images += sum(len(r.urls) for r in rows)
    reader.raise_if_invalid()
    upload = Upload(
        email=email,
        webhook_url=webhook_url,
        columns=reader.columns,
        total_products=products,
        total_images=images,
        row_chunks=chunk_no,
    )
    if options is not None and not options.is_default():
        upload["options"] = options.stored()
    return await repo.create_request(request_id, upload)
