"""`Idempotency-Key` on POST /upload: a retried upload (say, after a network error) starts no second job.

The first upload with a key claims it (atomically, in the repository) for its request id and the hash of
its body: the CSV's bytes and every field. Within KEY_TTL, the same key (of the same caller, when API keys
are on) with the same body answers as that upload was answered; with another body, 422. While the first is
still being stored, a retry gets 409 and Retry-After. A key whose upload was not accepted (rejected, failed,
or abandoned by a gateway that died) may be used again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import IO

import orjson

from services.upload.errors import ApiError, problem
from services.upload.intake import ABANDONED_AFTER, UploadFields
from shared.repository import RequestDoc, RequestRepository, RequestStatus

HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
MAX_KEY_CHARS = 255
# Visible ASCII: a UUID, a ULID, base64 or any token a client makes; no spaces, no control characters.
KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_CHARS}}}")
IN_PROGRESS_RETRY_S = 5
_READ_BYTES = 1024 * 1024


def idempotency_key(value: str | None) -> str | None:
    """The header's key, None when it is absent; a 400 naming the header when it is malformed."""
    if value is None:
        return None
    if not KEY_PATTERN.fullmatch(value):
        reason = f"must be 1 to {MAX_KEY_CHARS} visible ASCII characters (no spaces), e.g. a UUID"
        raise ApiError(400, f"invalid {HEADER} header", [problem(reason, field=HEADER)])
    return value


async def fingerprint(fields: UploadFields) -> str:
    """A hash of everything the upload asks for: the CSV's bytes and every field, as they were checked."""
    digest = hashlib.sha256()
    form = {"email": fields.email, "webhook_url": fields.webhook_url, "options": fields.options.stored()}
    digest.update(orjson.dumps(form, option=orjson.OPT_SORT_KEYS) + b"\0")
    await asyncio.to_thread(_hash_file, fields.file.file, digest)  # up to max_csv_bytes: not on the loop
    return digest.hexdigest()


def _hash_file(file: IO[bytes], digest: hashlib._Hash) -> None:
    file.seek(0)
    while block := file.read(_READ_BYTES):
        digest.update(block)
    file.seek(0)  # the upload reads it next


async def claim(
    repo: RequestRepository, owner: str | None, key: str, body_hash: str, request_id: str
) -> RequestDoc | None:
    """None: the key is now this upload's (`request_id`), go ahead. Otherwise the request the same key and
    body made before, to answer with again. An ApiError if the key is in use with another body (422) or
    by an upload still being stored (409)."""
    while True:
        held = await repo.claim_idempotency_key(owner, key, body_hash, request_id, KEY_TTL)
        if held.request_id == request_id:
            return None
        if held.fingerprint != body_hash:
            raise ApiError(
                422,
                f"this {HEADER} was used for a different upload",
                [problem("reused with a different body (CSV or fields): use a new key for it", field=HEADER)],
            )
        earlier = await repo.get(held.request_id, notifications=False)
        if earlier is not None and earlier["status"] != RequestStatus.RECEIVING:
            return earlier  # accepted: the same answer again
        if earlier is None and held.claimed_at < datetime.now(UTC) - ABANDONED_AFTER:
            # Its upload came to nothing (its gateway died before storing the request): the key is free.
            if await repo.reclaim_idempotency_key(
                owner, key, held.request_id, body_hash, request_id, KEY_TTL
            ):
                return None
            continue  # someone else took it over first: see what they made of it
        raise ApiError(
            409,
            f"an upload with this {HEADER} is still being stored; retry to get its answer",
            [problem("in progress", field=HEADER)],
            retry_after=IN_PROGRESS_RETRY_S,
        )
