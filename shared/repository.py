"""The request read model: its documents, their statuses, and every query and update made on them.

Collections (per-request documents have ids "<request_id>:<n>" for idempotent writes, and carry `request_id`
and their position under a compound index, so a request's documents are read in order from the index):

    requests   one document per upload (`RequestDoc`): settings, counters, status, delivery bookkeeping
    rows       the uploaded CSV, ROWS_PER_CHUNK rows per document (`RowChunkDoc`), written once
    images     one outcome per image (`OutcomeDoc`), written once, by the status service
    purges     one document per deleted request (`purge`), until its deletion is finished for certain

Who writes which field is in docs/architecture.md. Services use `RequestRepository` (the port); the
database's rules behind these queries are in mongo.py; tests use an in-memory fake (tests/fakes.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NotRequired, Protocol, TypedDict, cast

import pymongo
import pymongo.errors
from prometheus_client import Counter
from pymongo import UpdateOne

from shared.mongo import Doc, Mongo, Session, adapts_driver_errors

ROWS_PER_CHUNK = 500
# A chunk is stored as one or more documents ("parts") of at most about this many bytes, far under the
# database's 16 MiB document limit whatever the rows hold (a row is at most 8 MiB: Settings.max_row_bytes).
PART_BYTES = 4 * 1024 * 1024
URL_SEPARATOR = ", "
INDEX_WIDTH = 7  # zero-padded positions in ids, so the lexical _id order is the CSV order
FAILURES_KEPT = 100  # failures listed on the request document itself; all of them are in `images`
ATTEMPTS_KEPT = 200  # notification attempts kept on the request document
RECENT_CHUNKS = 64  # row chunks cached per process for status pages (each <= PART_BYTES; typically ~100 KB)
_NEVER = datetime.fromtimestamp(0, UTC)

# The status service's (it alone records outcomes): deploy/prometheus/metrics.yml.
OUTCOMES_RECORDED = Counter(
    "imagepipe_status_outcomes_recorded_total", "Image outcomes recorded (new ones only)", ["outcome"]
)
TRANSACTION_RETRIES = Counter(
    "imagepipe_status_transaction_retries_total", "Outcome transactions run again after a conflict"
)


class RequestStatus(StrEnum):
    RECEIVING = "RECEIVING"  # stored, not yet accepted: invisible and never published (see accept_request)
    PENDING = "PENDING"  # accepted, until every image has an outcome
    COMPLETED = "COMPLETED"
    # Cancelled (POST /requests/{id}/cancel): nothing more is published, images not started are skipped,
    # those in flight may finish; CANCELLED once every image has its outcome (settle_cancellation).
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


# Nothing changes a request in these states any more: live progress streams end there, and the output CSV
# and the notifications are final.
FINAL_STATUSES = frozenset({RequestStatus.COMPLETED, RequestStatus.CANCELLED})


class Claim(StrEnum):
    """What claiming a side effect (one channel of one notification) came to."""

    CLAIMED = "claimed"  # ours to perform now
    HELD = "held"  # another copy is performing it; its claim has not expired
    DONE = "done"  # performed already (or finally failed)


class OutcomeStatus(StrEnum):
    COMPRESSED = "COMPRESSED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # its request was cancelled before it was started; never fetched


SKIPPED_REASON = "cancelled before it was started"


class RowDoc(TypedDict):
    serial: str
    name: str
    urls: list[str]
    cells: list[str]  # every cell of the row, in header order (extra columns included)
    # Only in a row with a URL seen earlier in the request: per URL, the index of its first occurrence
    # (None for a URL seen here first). That one is fetched; the others copy its outcome.
    duplicate_of: NotRequired[list[int | None]]


class RowChunkDoc(TypedDict):
    _id: str
    request_id: str
    chunk: int
    first_image: int  # index of the chunk's first image within the request
    rows: list[RowDoc]
    # As stored: a chunk too large for one document is split into parts 0, 1, ... (ids "<key>", "<key>.1",
    # ...), each with its own rows and first_image; and each row's URL cell is left blank (its URLs are in
    # `urls`), to be rebuilt on reading. Documents written before these existed have neither field.
    part: NotRequired[int]
    urls_column: NotRequired[int]


class FailureDoc(TypedDict):
    index: int
    url: str
    reason: str


class OutcomeDoc(TypedDict):
    request_id: str
    index: int
    url: str
    status: OutcomeStatus
    at: datetime
    # COMPRESSED
    file_id: NotRequired[str]
    content_type: NotRequired[str]
    input_bytes: NotRequired[int]
    output_bytes: NotRequired[int]
    kept_original: NotRequired[bool]
    width: NotRequired[int]  # of the output; these four are absent on outcomes from before image options
    height: NotRequired[int]
    quality: NotRequired[int]  # the encoder quality used
    score: NotRequired[float]  # quality=auto: the SSIMULACRA2 score measured for the chosen quality
    # FAILED, SKIPPED
    reason: NotRequired[str]


class AttemptDoc(TypedDict):
    channel: str  # "email" or "webhook"
    notification_id: str  # the id of the event that asked for the notification
    attempt: int
    started_at: datetime
    outcome: str  # "ok", "retryable" or "permanent"
    status: int | None
    detail: str
    duration_s: float
    next_delay_s: float | None


class Upload(TypedDict):
    """What an upload brings: who to tell, and what the CSV held (its rows are stored beside it)."""

    email: str
    webhook_url: str | None
    columns: list[str]  # the CSV's header, extra columns included
    total_products: int
    total_images: int
    row_chunks: int
    options: NotRequired[dict[str, Any]]  # ImageOptions.stored(): only what was given; absent = defaults
    # With a webhook_url: the secret its webhooks are signed with, told to the uploader once (in the 202
    # answer) and never shown again. Requests from before per-request secrets have none.
    webhook_secret: NotRequired[str]


class RequestDoc(Upload):
    _id: str
    status: RequestStatus
    owner: NotRequired[str | None]  # who created it: a hash of the API key (None when keys are off)
    no_img_compressed: int
    no_img_failed: int
    no_img_skipped: NotRequired[int]  # images a cancel skipped (absent: none)
    bytes_in: int
    bytes_out: int
    created_at: datetime
    completed_at: NotRequired[datetime]
    failures: NotRequired[list[FailureDoc]]  # the first FAILURES_KEPT
    # the notifier: every attempt, each channel's result per notification ("sent" or "failed"), and the
    # claims on channels being sent right now (owner and expiry, per notification and channel)
    notifications: NotRequired[list[AttemptDoc]]
    notified: NotRequired[dict[str, dict[str, str]]]
    sending: NotRequired[dict[str, dict[str, dict[str, object]]]]
    renotify_after: NotRequired[datetime]
    # the outbox (upload's relay): present while the request's ImageRequested events are being published
    outbox_pending: NotRequired[bool]
    published_images: NotRequired[int]  # images 0 .. n-1 are published (absent on requests before metering)
    published_chunks: int  # row chunks all of whose images are published
    lease_until: NotRequired[datetime]
    lease_owner: NotRequired[str]
    published_at: NotRequired[datetime]
    # the completion (status): its event id, fixed once, and a flag until RequestCompleted is published
    completion_event_id: NotRequired[str]
    completion_pending: NotRequired[bool]
    # a cancel: when it was asked for, and (set once, by the status service) the first image never
    # published; every image from there on without an outcome document is SKIPPED, counted in bulk
    cancelled_at: NotRequired[datetime]
    skipped_from: NotRequired[int]


class RequestPage(TypedDict):
    """A page of GET /requests: the caller's requests, newest first, and where the next page starts."""

    requests: list[RequestDoc]
    next_cursor: str | None


class InvalidCursor(ValueError):
    """A paging cursor this repository did not hand out (or has been tampered with)."""


class OutboxEntry(TypedDict):
    """A request with images left to publish, its progress (what the relay meters by), and its lease."""

    _id: str
    total_images: int
    published_images: NotRequired[int]
    published_chunks: int
    no_img_compressed: int
    no_img_failed: int
    lease_owner: NotRequired[str]
    lease_until: NotRequired[datetime]


@dataclass(frozen=True)
class IdempotencyKey:
    """Who holds an Idempotency-Key: the upload it was claimed for, and what that upload's body was."""

    request_id: str
    fingerprint: str  # a hash of the upload's body (its CSV and every field)
    claimed_at: datetime


class UnknownRequest(LookupError):
    """The request does not exist (never did, or was removed)."""


class RequestPurged(UnknownRequest):
    """The request was deleted (its purge is recorded): work still arriving for it is dropped, not retried."""


Row = tuple[RowDoc, list[OutcomeDoc | None]]  # a row, with the outcome of each of its images (or None)


REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_request_id() -> str:
    """128 random bits, URL-safe: unguessable, and never sequential or time-based. Never starting with '-',
    which a command line would take for an option (`imagepipe status -hGf8...`)."""
    while (request_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return request_id


def image_key(request_id: str, index: int) -> str:
    return f"{request_id}:{index:0{INDEX_WIDTH}d}"


def row_chunk_key(request_id: str, chunk: int) -> str:
    return f"{request_id}:{chunk:0{INDEX_WIDTH}d}"


def images_done(request: RequestDoc) -> int:
    """How many of the request's images have an outcome (compressed, failed or skipped)."""
    return request["no_img_compressed"] + request["no_img_failed"] + request.get("no_img_skipped", 0)


def skipped_outcome(request_id: str, index: int, at: datetime) -> OutcomeDoc:
    """The outcome of an image a cancel skipped in bulk: never published, so it has no document."""
    return OutcomeDoc(
        request_id=request_id, index=index, url="", status=OutcomeStatus.SKIPPED, at=at, reason=SKIPPED_REASON
    )


# GET /requests: newest first, and what each entry shows.
LIST_ORDER = [("created_at", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
LISTED_FIELDS = dict.fromkeys(
    (
        "status",
        "total_images",
        "total_products",
        "no_img_compressed",
        "no_img_failed",
        "no_img_skipped",
        "created_at",
        "completed_at",
    ),
    1,
)
MAX_CURSOR_CHARS = 200
# How far back a page looks for requests, in turn until it is full: 1, 8, 64 minutes ... 182 days, then
# without a bound (a page reads at most about 8 times the requests it shows, however many the owner has).
LIST_SPANS = (*(timedelta(minutes=8**n) for n in range(7)), None)


def encode_cursor(last: RequestDoc) -> str:
    """Opaque to clients: where the next page starts (after this request, in LIST_ORDER)."""
    millis = (last["created_at"] - _NEVER) // timedelta(milliseconds=1)  # what the database keeps
    return (
        base64.urlsafe_b64encode(json.dumps([millis, last["_id"]], separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        millis, request_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(millis, int) or not isinstance(request_id, str):
            raise ValueError("not a cursor")
        return _NEVER + timedelta(milliseconds=millis), request_id
    except (ValueError, TypeError, OverflowError, OSError, binascii.Error):
        raise InvalidCursor("not a cursor this API handed out: pass a next_cursor as it came") from None


# What record_outcomes and a cancel read to tell whether a request is complete.
_COUNTED = dict.fromkeys(
    ("status", "total_images", "no_img_compressed", "no_img_failed", "no_img_skipped"), 1
)
# The final status each in-progress status completes to.
COMPLETES_AS = {
    RequestStatus.PENDING: RequestStatus.COMPLETED,
    RequestStatus.CANCELLING: RequestStatus.CANCELLED,
}


class RequestRepository(Protocol):
    """The operations services perform on the read model."""

    # --- upload: rows first, then the request document (RECEIVING), then accepting it -------------------
    async def add_rows(
        self,
        request_id: str,
        chunk: int,
        first_image: int,
        rows: Sequence[RowDoc],
        *,
        urls_column: int | None = None,
    ) -> None:
        """Store a chunk of rows; `urls_column` is the cell holding the URLs (stored once, in `urls`)."""

    async def create_request(self, request_id: str, upload: Upload, owner: str | None = None) -> RequestDoc:
        """The request document, RECEIVING: invisible and unpublished until `accept_request`. `owner`:
        who created it (a hash of the API key; None when keys are off)."""
        ...

    async def accept_request(self, request_id: str) -> RequestDoc | None:
        """RECEIVING -> PENDING, the one step that makes an upload accepted (visible, to be published).
        The request, or None if it was not RECEIVING (settled as not accepted meanwhile)."""
        ...

    async def settle_upload(self, request_id: str) -> bool:
        """After a failed step of an upload: True if it was accepted after all; else False, and it never
        will be (a late `accept_request` finds nothing to accept) and its leftovers are removed."""
        ...

    def abandoned_uploads(self, older_than: timedelta) -> AsyncIterator[str]:
        """Requests left RECEIVING longer than `older_than` (their gateway died or lost the database)."""
        ...

    async def discard(self, request_id: str) -> None:
        """Remove what a rejected or failed upload stored before it was accepted (never raises)."""

    # --- idempotency keys: one upload per key and caller, for `ttl` ------------------------------------
    async def claim_idempotency_key(
        self, owner: str | None, key: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> IdempotencyKey:
        """Claim `key` (of `owner`; None: keys are off) for the upload `request_id`, atomically: of any
        number of concurrent claimants, one gets it. The key's holder: ours (its `request_id` is ours),
        or the earlier upload still holding it. An expired key is claimed afresh."""
        ...

    async def reclaim_idempotency_key(
        self, owner: str | None, key: str, held_by: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> bool:
        """Take `key` over from the upload `held_by` (which came to nothing); False if it no longer holds it."""
        ...

    async def release_idempotency_key(self, owner: str | None, key: str, request_id: str) -> None:
        """The upload `request_id` was not accepted: its key may be used again (never raises)."""

    # --- reads ----------------------------------------------------------------------------------------
    async def get(self, request_id: str, *, notifications: bool = True) -> RequestDoc | None: ...

    async def status_of(self, request_id: str) -> RequestStatus | None:
        """The request's status alone (cheap); None if there is no such request."""
        ...

    def rows_with_outcomes(
        self, request_id: str, first_row: int = 0, limit: int | None = None
    ) -> AsyncIterator[Row]:
        """Rows in CSV order with their outcomes; bounded memory however large the request."""
        ...

    async def outcome(self, request_id: str, index: int) -> OutcomeDoc | None: ...

    async def list_requests(self, owner: str | None, limit: int, cursor: str | None = None) -> RequestPage:
        """`owner`'s accepted requests (None: those made without an API key), newest first, without their
        notifications; `cursor` is a page's `next_cursor`. Raises InvalidCursor."""
        ...

    # --- a cancel: the gateway asks, the status service settles ------------------------------------------
    async def cancel_request(self, request_id: str) -> bool:
        """PENDING -> CANCELLING, and nothing more is published; False if it was not PENDING."""
        ...

    def cancelling_requests(self) -> AsyncIterator[str]: ...

    async def settle_cancellation(self, request_id: str) -> bool:
        """Skip, in bulk, every image of a CANCELLING request never published (once); True when that
        completed it (CANCELLED, its completion pending publication, as in `record_outcomes`)."""
        ...

    # --- the outbox: publishing a request's ImageRequested events, a window at a time -------------------
    def outbox_pending(self) -> AsyncIterator[OutboxEntry]: ...

    async def claim_outbox(self, request_id: str, owner: str, lease: timedelta) -> RequestDoc | None:
        """The request, if `owner` now holds its lease (newly, or renewed); None if someone else does or
        nothing is pending."""

    async def renew_outbox(self, request_id: str, owner: str, lease: timedelta) -> bool: ...

    async def row_chunk(self, request_id: str, chunk: int) -> RowChunkDoc | None: ...

    async def record_published(
        self, request_id: str, owner: str, images: int, chunks: int, lease: timedelta
    ) -> bool:
        """Record progress if `owner` still holds the lease (and extend it); False if it was taken over."""

    async def finish_outbox(self, request_id: str, *, published: bool) -> None: ...

    # --- outcomes and completion (status) --------------------------------------------------------------
    async def record_outcomes(self, request_id: str, outcomes: Sequence[OutcomeDoc]) -> bool:
        """Record new outcomes and count them, atomically; duplicates (and images a cancel skipped in
        bulk) change nothing. True when these outcomes completed the request (it is then COMPLETED, or
        CANCELLED if it was CANCELLING, with its completion pending publication). Raises UnknownRequest,
        recording nothing, when the request does not exist."""

    async def completion_to_publish(self, request_id: str) -> RequestDoc | None: ...

    async def mark_completion_published(self, request_id: str) -> None: ...

    def unpublished_completions(self, older_than: timedelta) -> AsyncIterator[str]: ...

    # --- notifications ---------------------------------------------------------------------------------
    async def claim_notification(
        self, request_id: str, notification_id: str, channel: str, owner: str, lease: timedelta
    ) -> Claim:
        """Claim one channel of one notification before sending it: of any number of concurrent
        claimants, one gets CLAIMED. A claim lapses after `lease` (its claimant died), so the
        notification is not lost. Raises UnknownRequest when the request does not exist."""
        ...

    async def record_attempt(self, request_id: str, attempt: AttemptDoc) -> None: ...

    async def mark_notified(self, request_id: str, notification_id: str, channel: str, ok: bool) -> None:
        """The channel's final result for this notification; its claim is given up."""
        ...

    async def claim_renotify(self, request_id: str, interval: timedelta) -> bool:
        """True if no re-send was claimed within `interval`: the caller may queue one now."""
        ...

    async def release_renotify(self, request_id: str) -> None:
        """The claimed re-send could not be queued: let the next one be claimed at once."""

    # --- deletion and retention ------------------------------------------------------------------------
    async def purge(self, request_id: str) -> bool:
        """Delete an accepted request: first make it unreachable (record the purge, then remove the request
        document), then remove its rows and outcomes. Idempotent and resumable: the purge record stays
        until `forget_purge`, so a sweep finishes what a crash interrupted and removes what late work
        stored. False if there is no such request and no purge of it is recorded."""
        ...

    async def was_purged(self, request_id: str) -> bool:
        """Whether the request's purge is recorded (it was deleted recently, or is being deleted)."""
        ...

    def purges(self, older_than: timedelta, limit: int) -> AsyncIterator[str]:
        """Requests whose purge was recorded more than `older_than` ago (at most `limit`)."""
        ...

    async def forget_purge(self, request_id: str) -> None:
        """The purge is finished for certain: drop its record."""

    def expired(self, completed_before: datetime, limit: int) -> AsyncIterator[str]:
        """Requests in a final status completed before `completed_before` (at most `limit`)."""
        ...


def _row_bytes(row: RowDoc) -> int:
    """About what `row` takes in a stored document (BSON adds a few bytes per string and key)."""
    texts = [*row["cells"], *row["urls"]]
    return 64 + sum(16 + (len(t) if t.isascii() else len(t.encode())) for t in texts)


def _parts(rows: Sequence[RowDoc], urls_column: int | None) -> list[list[RowDoc]]:
    """`rows` as stored (URL cell blanked), cut into parts of at most about PART_BYTES."""
    parts: list[list[RowDoc]] = [[]]
    size = 0
    for row in rows:
        if urls_column is not None and urls_column < len(row["cells"]):
            cells = list(row["cells"])
            cells[urls_column] = ""
            row = RowDoc(**{**row, "cells": cells})
        row_size = _row_bytes(row)
        if parts[-1] and size + row_size > PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(row)
        size += row_size
    return parts


def _restored(row: RowDoc, urls_column: int | None) -> RowDoc:
    """A stored row with its URL cell rebuilt: its URLs, joined the way the output CSV joins outputs."""
    if urls_column is not None and urls_column < len(row["cells"]):
        row["cells"][urls_column] = URL_SEPARATOR.join(row["urls"])
    return row


def _idempotency_id(owner: str | None, key: str) -> str:
    return f"{owner or ''}:{key}"  # owners are hex: the first colon ends the owner


def _key_claim(request_id: str, fingerprint: str, now: datetime, ttl: timedelta) -> Doc:
    return {"request_id": request_id, "fingerprint": fingerprint, "claimed_at": now, "expires_at": now + ttl}


def _held(doc: Doc) -> IdempotencyKey:
    return IdempotencyKey(doc["request_id"], doc["fingerprint"], doc["claimed_at"])


@adapts_driver_errors
class MongoRequestRepository:
    def __init__(self, mongo: Mongo) -> None:
        self.mongo = mongo
        self._recent_chunks: OrderedDict[str, RowChunkDoc] = OrderedDict()

    # --- upload ---------------------------------------------------------------------------------------
    async def add_rows(
        self,
        request_id: str,
        chunk: int,
        first_image: int,
        rows: Sequence[RowDoc],
        *,
        urls_column: int | None = None,
    ) -> None:
        key = row_chunk_key(request_id, chunk)
        parts = _parts(rows, urls_column)
        docs = []
        for number, part in enumerate(parts):
            doc: Doc = {
                "_id": key if number == 0 else f"{key}.{number}",
                "request_id": request_id,
                "chunk": chunk,
                "part": number,
                "first_image": first_image,
                "rows": part,
            }
            if urls_column is not None:
                doc["urls_column"] = urls_column
            docs.append(doc)
            first_image += sum(len(row["urls"]) for row in part)
        await self.mongo.rows.insert_many(docs)

    async def create_request(self, request_id: str, upload: Upload, owner: str | None = None) -> RequestDoc:
        doc: RequestDoc = {
            "_id": request_id,
            "status": RequestStatus.RECEIVING,
            "owner": owner,  # always present (null too): listing asks for it by equality, from an index
            **upload,
            "no_img_compressed": 0,
            "no_img_failed": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "created_at": datetime.now(UTC),
            "published_images": 0,
            "published_chunks": 0,
        }
        await self.mongo.requests.insert_one(cast(Doc, doc))
        return doc

    async def accept_request(self, request_id: str) -> RequestDoc | None:
        accepted = await self.mongo.requests.update_one(
            {"_id": request_id, "status": RequestStatus.RECEIVING},
            {"$set": {"status": RequestStatus.PENDING, "outbox_pending": True, "lease_until": _NEVER}},
        )
        return await self.get(request_id, notifications=False) if accepted.modified_count == 1 else None

    async def settle_upload(self, request_id: str) -> bool:
        # Removing it only while RECEIVING fences off an accept still on its way: it then finds nothing.
        receiving = {"_id": request_id, "status": RequestStatus.RECEIVING}
        while not (await self.mongo.requests.delete_one(receiving)).deleted_count:
            found = await self.mongo.requests.find_one({"_id": request_id}, projection={"status": 1})
            if found is None:
                break  # never stored (an insert still on its way lands RECEIVING: abandoned_uploads)
            if found["status"] != RequestStatus.RECEIVING:
                return True
        await self.mongo.rows.delete_many({"request_id": request_id})
        return False

    async def abandoned_uploads(self, older_than: timedelta) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        async for doc in self.mongo.requests.find(
            {"status": RequestStatus.RECEIVING}, projection={"created_at": 1}
        ):
            if doc["created_at"] < cutoff:
                yield doc["_id"]

    async def discard(self, request_id: str) -> None:
        # Never accepted, so only ever RECEIVING: whatever is left behind is invisible, and the janitor's.
        try:
            with pymongo.timeout(2.0):
                await self.mongo.requests.delete_one({"_id": request_id, "status": RequestStatus.RECEIVING})
                await self.mongo.rows.delete_many({"request_id": request_id})
        except Exception:  # best effort: the caller is already reporting a failure
            return

    # --- idempotency keys -----------------------------------------------------------------------------
    async def claim_idempotency_key(
        self, owner: str | None, key: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> IdempotencyKey:
        # The key is the document's _id: the unique index makes the insert the atomic claim.
        doc_id = _idempotency_id(owner, key)
        while True:
            now = datetime.now(UTC)
            claim: Doc = {"_id": doc_id, **_key_claim(request_id, fingerprint, now, ttl)}
            try:
                await self.mongo.idempotency_keys.insert_one(claim)
                return _held(claim)
            except pymongo.errors.DuplicateKeyError:
                pass
            held = await self.mongo.idempotency_keys.find_one({"_id": doc_id})
            if held is None:
                continue  # released meanwhile
            if held["expires_at"] > now:
                return _held(held)
            # Expired, not yet removed by the TTL monitor (it runs about once a minute): claim it afresh.
            if await self.reclaim_idempotency_key(
                owner, key, held["request_id"], fingerprint, request_id, ttl
            ):
                return IdempotencyKey(request_id, fingerprint, now)

    async def reclaim_idempotency_key(
        self, owner: str | None, key: str, held_by: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> bool:
        taken = await self.mongo.idempotency_keys.update_one(
            {"_id": _idempotency_id(owner, key), "request_id": held_by},
            {"$set": _key_claim(request_id, fingerprint, datetime.now(UTC), ttl)},
        )
        return taken.modified_count == 1

    async def release_idempotency_key(self, owner: str | None, key: str, request_id: str) -> None:
        try:
            with pymongo.timeout(2.0):
                await self.mongo.idempotency_keys.delete_one(
                    {"_id": _idempotency_id(owner, key), "request_id": request_id}
                )
        except Exception:  # best effort: a key left behind is taken over once its upload is known dead
            return

    # --- reads ----------------------------------------------------------------------------------------
    async def get(self, request_id: str, *, notifications: bool = True) -> RequestDoc | None:
        projection = None if notifications else {"notifications": 0}
        return cast(RequestDoc | None, await self.mongo.requests.find_one({"_id": request_id}, projection))

    async def status_of(self, request_id: str) -> RequestStatus | None:
        found = await self.mongo.requests.find_one({"_id": request_id}, projection={"status": 1})
        return None if found is None else RequestStatus(found["status"])

    async def rows_with_outcomes(
        self, request_id: str, first_row: int = 0, limit: int | None = None
    ) -> AsyncIterator[Row]:
        remaining = limit
        skip = first_row % ROWS_PER_CHUNK
        async for chunk in self._row_chunks(request_id, first_row, limit):
            rows = chunk["rows"]
            first_image = chunk["first_image"] + sum(len(r["urls"]) for r in rows[:skip])
            rows = rows[skip:] if remaining is None else rows[skip : skip + remaining]
            skip = 0
            end_image = first_image + sum(len(r["urls"]) for r in rows)
            outcomes = await self._outcomes(request_id, first_image, end_image)
            index = first_image
            for row in rows:
                yield row, [outcomes.get(i) for i in range(index, index + len(row["urls"]))]
                index += len(row["urls"])
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    break

    async def outcome(self, request_id: str, index: int) -> OutcomeDoc | None:
        found = await self.mongo.images.find_one({"_id": image_key(request_id, index)}, projection={"_id": 0})
        return cast(OutcomeDoc | None, found)

    async def _outcomes(self, request_id: str, start: int, end: int) -> dict[int, OutcomeDoc]:
        cursor = self.mongo.images.find(
            {"request_id": request_id, "index": {"$gte": start, "$lt": end}}, projection={"_id": 0}
        )
        found = {doc["index"]: cast(OutcomeDoc, doc) async for doc in cursor}
        if len(found) < end - start:  # some without an outcome: skipped in bulk by a cancel, perhaps
            request = await self.mongo.requests.find_one(
                {"_id": request_id}, projection={"skipped_from": 1, "cancelled_at": 1}
            )
            if request is not None and "skipped_from" in request:
                for index in range(max(start, request["skipped_from"]), end):
                    found.setdefault(index, skipped_outcome(request_id, index, request["cancelled_at"]))
        return found

    async def list_requests(self, owner: str | None, limit: int, cursor: str | None = None) -> RequestPage:
        after = decode_cursor(cursor) if cursor else None
        newest = after[0] if after is not None else None
        # SecantusDB finds an owner's requests from the (owner, created_at, _id) index but sorts them all
        # before the limit applies, so a page would cost every request the owner has. Looking back over
        # ever wider spans of time keeps it to about the requests made in the span a page needs.
        for span in LIST_SPANS:
            since = None if span is None else (newest or datetime.now(UTC)) - span
            found = await self._listed(owner, after, since, limit)
            if len(found) > limit:
                break
        more = len(found) > limit
        return RequestPage(
            requests=found[:limit], next_cursor=encode_cursor(found[limit - 1]) if more else None
        )

    async def _listed(
        self, owner: str | None, after: tuple[datetime, str] | None, since: datetime | None, limit: int
    ) -> list[RequestDoc]:
        """Up to limit + 1 of `owner`'s accepted requests, newest first, from before the cursor `after`
        and not older than `since`."""
        created: Doc = {}
        if after is not None:
            created["$lte"] = after[0]
        if since is not None:
            created["$gte"] = since
        query: Doc = {"owner": owner, **({"created_at": created} if created else {})}
        found: list[RequestDoc] = []
        async for doc in self.mongo.requests.find(
            query, projection=LISTED_FIELDS, sort=LIST_ORDER, batch_size=limit + 1
        ):
            request = cast(RequestDoc, doc)
            if after is not None and (request["created_at"], request["_id"]) >= after:
                continue  # on the cursor's own millisecond, and already listed
            if request["status"] != RequestStatus.RECEIVING:
                found.append(request)
            if len(found) > limit:
                break
        return found

    # --- a cancel -------------------------------------------------------------------------------------
    async def cancel_request(self, request_id: str) -> bool:
        # Unsetting the outbox flag and lease stops the relay: it neither finds nor records this one again.
        cancelled = await self.mongo.requests.update_one(
            {"_id": request_id, "status": RequestStatus.PENDING},
            {
                "$set": {"status": RequestStatus.CANCELLING, "cancelled_at": datetime.now(UTC)},
                "$unset": {"outbox_pending": "", "lease_until": "", "lease_owner": ""},
            },
        )
        return cancelled.modified_count == 1

    async def cancelling_requests(self) -> AsyncIterator[str]:
        async for doc in self.mongo.requests.find(
            {"status": RequestStatus.CANCELLING}, projection={"_id": 1}
        ):
            yield doc["_id"]

    async def settle_cancellation(self, request_id: str) -> bool:
        async def settle(session: Session) -> bool:
            request = await self.mongo.requests.find_one(
                {"_id": request_id}, projection=_COUNTED | {"published_images": 1}, session=session
            )
            if request is None or request["status"] != RequestStatus.CANCELLING:
                return False
            if "skipped_from" not in request:
                first = request.get("published_images", 0)
                # Outcomes of images past it already recorded (published, but not yet recorded as such,
                # when the cancel came) keep their own count.
                recorded = await self.mongo.images.count_documents(
                    {"request_id": request_id, "index": {"$gte": first}}, session=session
                )
                skipped = request["total_images"] - first - recorded
                await self.mongo.requests.update_one(
                    {"_id": request_id},
                    {"$set": {"skipped_from": first}, "$inc": {"no_img_skipped": skipped}},
                    session=session,
                )
                request["no_img_skipped"] = request.get("no_img_skipped", 0) + skipped
            return await self._complete_if_done(session, request)

        return await self.mongo.transaction(settle)

    async def _row_chunks(
        self, request_id: str, first_row: int, limit: int | None
    ) -> AsyncIterator[RowChunkDoc]:
        first_chunk = first_row // ROWS_PER_CHUNK
        if limit is None:  # the whole request, streamed once (the output CSV): a chunk at a time, uncached
            number = first_chunk
            while (streamed := await self.row_chunk(request_id, number)) is not None:
                yield streamed
                number += 1
            return
        # A page (the status endpoint, polled over and over): rows never change once stored, so recently
        # read chunks are kept in memory and a poll costs only the outcomes it shows.
        for number in range(first_chunk, (first_row + limit - 1) // ROWS_PER_CHUNK + 1):
            key = row_chunk_key(request_id, number)
            chunk = self._recent_chunks.get(key)
            if chunk is None:
                chunk = await self.row_chunk(request_id, number)
                if chunk is None:
                    return  # past the last row
                if sum(map(_row_bytes, chunk["rows"])) <= PART_BYTES:  # a rare huge chunk is not kept
                    self._recent_chunks[key] = chunk
                if len(self._recent_chunks) > RECENT_CHUNKS:
                    self._recent_chunks.popitem(last=False)
            else:
                self._recent_chunks.move_to_end(key)
            yield chunk

    async def row_chunk(self, request_id: str, chunk: int) -> RowChunkDoc | None:
        parts = [
            cast(RowChunkDoc, doc)
            async for doc in self.mongo.rows.find({"request_id": request_id, "chunk": chunk})
        ]
        if not parts:
            return None
        parts.sort(key=lambda part: part.get("part", 0))
        merged = parts[0]
        merged["rows"] = [_restored(row, part.get("urls_column")) for part in parts for row in part["rows"]]
        merged.pop("part", None)
        merged.pop("urls_column", None)
        return merged

    # --- the outbox -----------------------------------------------------------------------------------
    async def outbox_pending(self) -> AsyncIterator[OutboxEntry]:
        fields = (
            "total_images",
            "published_images",
            "published_chunks",
            "no_img_compressed",
            "no_img_failed",
            "lease_owner",
            "lease_until",
        )
        async for doc in self.mongo.requests.find(
            {"outbox_pending": True}, projection=dict.fromkeys(fields, 1)
        ):
            yield cast(OutboxEntry, doc)

    async def claim_outbox(self, request_id: str, owner: str, lease: timedelta) -> RequestDoc | None:
        now = datetime.now(UTC)
        claimed = await self.mongo.requests.update_one(
            {
                "_id": request_id,
                "outbox_pending": True,
                "$or": [{"lease_until": {"$lt": now}}, {"lease_owner": owner}],
            },
            {"$set": {"lease_until": now + lease, "lease_owner": owner}},
        )
        return await self.get(request_id, notifications=False) if claimed.modified_count == 1 else None

    async def renew_outbox(self, request_id: str, owner: str, lease: timedelta) -> bool:
        renewed = await self.mongo.requests.update_one(
            {"_id": request_id, "outbox_pending": True, "lease_owner": owner},
            {"$set": {"lease_until": datetime.now(UTC) + lease}},
        )
        return renewed.modified_count == 1

    async def record_published(
        self, request_id: str, owner: str, images: int, chunks: int, lease: timedelta
    ) -> bool:
        recorded = await self.mongo.requests.update_one(
            {"_id": request_id, "lease_owner": owner},
            {
                "$set": {
                    "published_images": images,
                    "published_chunks": chunks,
                    "lease_until": datetime.now(UTC) + lease,
                }
            },
        )
        return recorded.matched_count == 1

    async def finish_outbox(self, request_id: str, *, published: bool) -> None:
        update: Doc = {"$unset": {"outbox_pending": "", "lease_until": "", "lease_owner": ""}}
        if published:
            update["$set"] = {"published_at": datetime.now(UTC)}
        await self.mongo.requests.update_one({"_id": request_id}, update)

    # --- outcomes and completion ----------------------------------------------------------------------
    async def record_outcomes(self, request_id: str, outcomes: Sequence[OutcomeDoc]) -> bool:
        # Only the committed attempt's new outcomes are counted: the driver runs `record` again after a
        # conflict, and each run but the first is a retry.
        recorded: list[OutcomeDoc] = []
        runs = 0

        async def record(session: Session) -> bool:
            nonlocal runs
            runs += 1
            recorded.clear()
            return await self._record_outcomes(session, request_id, outcomes, recorded)

        try:
            completed = await self.mongo.transaction(record)
        except UnknownRequest:
            if await self.was_purged(request_id):
                raise RequestPurged(f"request {request_id} was deleted") from None
            raise
        finally:
            TRANSACTION_RETRIES.inc(max(runs - 1, 0))
        for outcome in recorded:
            OUTCOMES_RECORDED.labels(str(outcome["status"]).lower()).inc()
        return completed

    async def _record_outcomes(
        self, session: Session, request_id: str, outcomes: Sequence[OutcomeDoc], recorded: list[OutcomeDoc]
    ) -> bool:
        written = await self.mongo.images.bulk_write(
            [
                UpdateOne({"_id": image_key(request_id, o["index"])}, {"$setOnInsert": o}, upsert=True)
                for o in outcomes
            ],
            ordered=False,
            session=session,
        )
        new = [outcomes[i] for i in written.upserted_ids or {}]
        recorded.extend(new)
        if not new:
            return False
        request = await self.mongo.requests.find_one(
            {"_id": request_id}, projection=_COUNTED | {"skipped_from": 1}, session=session
        )
        if request is None:
            raise UnknownRequest(f"no request {request_id}")  # and the transaction records nothing
        if (skipped_from := request.get("skipped_from")) is not None:
            # A cancel counted these as skipped already: their late outcomes are not counted again.
            late = [o for o in new if o["index"] >= skipped_from]
            if late:
                keys = [image_key(request_id, o["index"]) for o in late]
                await self.mongo.images.delete_many({"_id": {"$in": keys}}, session=session)
                new = [o for o in new if o["index"] < skipped_from]
        counts = {f"no_img_{status.lower()}": 0 for status in OutcomeStatus}
        for o in new:
            counts[f"no_img_{o['status'].lower()}"] += 1
        compressed = [o for o in new if o["status"] == OutcomeStatus.COMPRESSED]
        failures = [
            FailureDoc(index=o["index"], url=o["url"], reason=o.get("reason", ""))
            for o in new
            if o["status"] == OutcomeStatus.FAILED
        ]
        update: Doc = {
            "$inc": {
                **counts,
                "bytes_in": sum(o.get("input_bytes", 0) for o in compressed),
                "bytes_out": sum(o.get("output_bytes", 0) for o in compressed),
            }
        }
        if failures:
            update["$push"] = {"failures": {"$each": failures, "$slice": FAILURES_KEPT}}
        await self.mongo.requests.update_one({"_id": request_id}, update, session=session)
        for field, added in counts.items():
            request[field] = request.get(field, 0) + added
        return await self._complete_if_done(session, request)

    async def _complete_if_done(self, session: Session, request: Doc) -> bool:
        """Complete the request (COMPLETED, or CANCELLED if it was CANCELLING) if every image has its
        outcome; True if this did."""
        if images_done(cast(RequestDoc, request)) < request["total_images"]:
            return False
        final = COMPLETES_AS.get(request["status"])
        if final is None:
            return False
        completed = await self.mongo.requests.update_one(
            {"_id": request["_id"], "status": request["status"]},
            {
                "$set": {
                    "status": final,
                    "completed_at": datetime.now(UTC),
                    "completion_event_id": uuid.uuid4().hex,
                    "completion_pending": True,
                }
            },
            session=session,
        )
        return completed.modified_count == 1

    async def completion_to_publish(self, request_id: str) -> RequestDoc | None:
        request = await self.get(request_id, notifications=False)
        return request if request is not None and request.get("completion_pending") else None

    async def mark_completion_published(self, request_id: str) -> None:
        await self.mongo.requests.update_one({"_id": request_id}, {"$unset": {"completion_pending": ""}})

    async def unpublished_completions(self, older_than: timedelta) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        # Only the indexed flag in the query; the age check is ours (see mongo.py).
        async for request in self.mongo.requests.find(
            {"completion_pending": True}, projection={"_id": 1, "completed_at": 1}
        ):
            if request["completed_at"] < cutoff:
                yield request["_id"]

    # --- notifications --------------------------------------------------------------------------------
    async def claim_notification(
        self, request_id: str, notification_id: str, channel: str, owner: str, lease: timedelta
    ) -> Claim:
        now = datetime.now(UTC)
        result = f"notified.{notification_id}.{channel}"
        claim = f"sending.{notification_id}.{channel}"
        claimed = await self.mongo.requests.update_one(
            {"_id": request_id, result: {"$exists": False}, f"{claim}.until": {"$not": {"$gt": now}}},
            {"$set": {claim: {"owner": owner, "until": now + lease}}},
        )
        if claimed.modified_count == 1:
            return Claim.CLAIMED
        found = await self.mongo.requests.find_one({"_id": request_id}, projection={result: 1})
        if found is None:
            raise UnknownRequest(f"no request {request_id}")
        return Claim.DONE if channel in found.get("notified", {}).get(notification_id, {}) else Claim.HELD

    async def record_attempt(self, request_id: str, attempt: AttemptDoc) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id},
            {"$push": {"notifications": {"$each": [attempt], "$slice": -ATTEMPTS_KEPT}}},
        )

    async def mark_notified(self, request_id: str, notification_id: str, channel: str, ok: bool) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id},
            {
                "$set": {f"notified.{notification_id}.{channel}": "sent" if ok else "failed"},
                "$unset": {f"sending.{notification_id}.{channel}": ""},
            },
        )

    async def claim_renotify(self, request_id: str, interval: timedelta) -> bool:
        now = datetime.now(UTC)
        claimed = await self.mongo.requests.update_one(
            {"_id": request_id, "renotify_after": {"$not": {"$gt": now}}},
            {"$set": {"renotify_after": now + interval}},
        )
        return claimed.modified_count == 1

    async def release_renotify(self, request_id: str) -> None:
        await self.mongo.requests.update_one({"_id": request_id}, {"$unset": {"renotify_after": ""}})

    # --- deletion and retention -----------------------------------------------------------------------
    async def purge(self, request_id: str) -> bool:
        # The order makes every step safe to interrupt: the purge record first (so the sweep resumes from
        # it), then the request document (from then on every read answers "unknown", no outcome can be
        # counted, nothing is published), then what only the request document made reachable.
        found = await self.mongo.requests.find_one({"_id": request_id}, projection={"status": 1})
        if found is None and not await self.was_purged(request_id):
            return False
        if found is not None and found["status"] == RequestStatus.RECEIVING:
            return False  # not accepted: the upload's own clean-up (settle_upload) owns it
        await self.mongo.purges.update_one(
            {"_id": request_id}, {"$setOnInsert": {"at": datetime.now(UTC)}}, upsert=True
        )
        await self.mongo.requests.delete_one({"_id": request_id, "status": {"$ne": RequestStatus.RECEIVING}})
        await self.mongo.rows.delete_many({"request_id": request_id})
        await self.mongo.images.delete_many({"request_id": request_id})
        return True

    async def was_purged(self, request_id: str) -> bool:
        return await self.mongo.purges.find_one({"_id": request_id}, projection={"_id": 1}) is not None

    async def purges(self, older_than: timedelta, limit: int) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        async for doc in self.mongo.purges.find({"at": {"$lt": cutoff}}, projection={"_id": 1}).limit(limit):
            yield doc["_id"]

    async def forget_purge(self, request_id: str) -> None:
        await self.mongo.purges.delete_one({"_id": request_id})

    async def expired(self, completed_before: datetime, limit: int) -> AsyncIterator[str]:
        # A range on the one indexed field; the status is checked here (see mongo.py). Only final
        # requests have a completion time, so this reads almost nothing else.
        async for doc in self.mongo.requests.find(
            {"completed_at": {"$lt": completed_before}}, projection={"status": 1}
        ).limit(limit):
            if doc["status"] in FINAL_STATUSES:
                yield doc["_id"]
