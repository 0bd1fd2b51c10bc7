"""The request read model: its documents, their statuses, and every query and update made on them.

Collections (per-request documents have ids "<request_id>:<n>" for idempotent writes, and carry `request_id`
and their position under a compound index, so a request's documents are read in order from the index):

    requests   one document per upload (`RequestDoc`): settings, counters, status, delivery bookkeeping
    rows       the uploaded CSV, ROWS_PER_CHUNK rows per document (`RowChunkDoc`), written once
    images     one outcome per image (`OutcomeDoc`), written once, by the status service

Who writes which field is in docs/architecture.md. Services use `RequestRepository` (the port); the
database's rules behind these queries are in mongo.py; tests use an in-memory fake (tests/fakes.py).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NotRequired, Protocol, TypedDict, cast

import pymongo
from pymongo import UpdateOne

from shared.mongo import Doc, Mongo, Session, adapts_driver_errors

ROWS_PER_CHUNK = 500
INDEX_WIDTH = 7  # zero-padded positions in ids, so the lexical _id order is the CSV order
FAILURES_KEPT = 100  # failures listed on the request document itself; all of them are in `images`
ATTEMPTS_KEPT = 200  # notification attempts kept on the request document
RECENT_CHUNKS = 64  # row chunks cached per process for status pages (up to ~64 MB; typically a few MB)
_NEVER = datetime.fromtimestamp(0, UTC)


class RequestStatus(StrEnum):
    PENDING = "PENDING"  # until every image has an outcome
    COMPLETED = "COMPLETED"


class OutcomeStatus(StrEnum):
    COMPRESSED = "COMPRESSED"
    FAILED = "FAILED"


class RowDoc(TypedDict):
    serial: str
    name: str
    urls: list[str]
    cells: list[str]  # every cell of the row, in header order (extra columns included)


class RowChunkDoc(TypedDict):
    _id: str
    request_id: str
    chunk: int
    first_image: int  # index of the chunk's first image within the request
    rows: list[RowDoc]


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
    # FAILED
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


class RequestDoc(Upload):
    _id: str
    status: RequestStatus
    no_img_compressed: int
    no_img_failed: int
    bytes_in: int
    bytes_out: int
    created_at: datetime
    completed_at: NotRequired[datetime]
    failures: NotRequired[list[FailureDoc]]  # the first FAILURES_KEPT
    # the notifier: every attempt, and each channel's result per notification ("sent" or "failed")
    notifications: NotRequired[list[AttemptDoc]]
    notified: NotRequired[dict[str, dict[str, str]]]
    renotify_after: NotRequired[datetime]
    # the outbox (upload's relay): present while the request's ImageRequested events are being published
    outbox_pending: NotRequired[bool]
    published_chunks: int
    lease_until: NotRequired[datetime]
    lease_owner: NotRequired[str]
    published_at: NotRequired[datetime]
    # the completion (status): its event id, fixed once, and a flag until RequestCompleted is published
    completion_event_id: NotRequired[str]
    completion_pending: NotRequired[bool]


class UnknownRequest(LookupError):
    """The request does not exist (never did, or was removed)."""


Row = tuple[RowDoc, list[OutcomeDoc | None]]  # a row, with the outcome of each of its images (or None)


REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_request_id() -> str:
    """128 random bits, URL-safe: unguessable, and never sequential or time-based."""
    return secrets.token_urlsafe(16)


def image_key(request_id: str, index: int) -> str:
    return f"{request_id}:{index:0{INDEX_WIDTH}d}"


def row_chunk_key(request_id: str, chunk: int) -> str:
    return f"{request_id}:{chunk:0{INDEX_WIDTH}d}"


class RequestRepository(Protocol):
    """The operations services perform on the read model."""

    # --- upload: rows first, the request document last (it is what makes a request visible) -------------
    async def add_rows(
        self, request_id: str, chunk: int, first_image: int, rows: Sequence[RowDoc]
    ) -> None: ...

    async def create_request(self, request_id: str, upload: Upload) -> RequestDoc: ...

    async def discard(self, request_id: str) -> None:
        """Undo a failed upload, best effort (never raises)."""

    # --- reads ----------------------------------------------------------------------------------------
    async def get(self, request_id: str, *, notifications: bool = True) -> RequestDoc | None: ...

    def rows_with_outcomes(
        self, request_id: str, first_row: int = 0, limit: int | None = None
    ) -> AsyncIterator[Row]:
        """Rows in CSV order with their outcomes; bounded memory however large the request."""
        ...

    # --- the outbox: publishing a request's ImageRequested events, chunk by chunk ----------------------
    def outbox_pending(self) -> AsyncIterator[str]: ...

    async def claim_outbox(self, request_id: str, owner: str, lease: timedelta) -> RequestDoc | None:
        """The request, if `owner` now holds its lease; None if someone else does or nothing is pending."""

    async def renew_outbox(self, request_id: str, owner: str, lease: timedelta) -> bool: ...

    async def release_outbox(self, request_id: str, owner: str) -> None: ...

    async def row_chunk(self, request_id: str, chunk: int) -> RowChunkDoc | None: ...

    async def record_published(self, request_id: str, owner: str, chunks: int, lease: timedelta) -> None: ...

    async def finish_outbox(self, request_id: str, *, published: bool) -> None: ...

    # --- outcomes and completion (status) --------------------------------------------------------------
    async def record_outcomes(self, request_id: str, outcomes: Sequence[OutcomeDoc]) -> bool:
        """Record new outcomes and count them, atomically; duplicates change nothing. True when these
        outcomes completed the request (it is then COMPLETED, with its completion pending publication).
        Raises UnknownRequest, recording nothing, when the request does not exist."""

    async def completion_to_publish(self, request_id: str) -> RequestDoc | None: ...

    async def mark_completion_published(self, request_id: str) -> None: ...

    def unpublished_completions(self, older_than: timedelta) -> AsyncIterator[str]: ...

    # --- notifications ---------------------------------------------------------------------------------
    async def record_attempt(self, request_id: str, attempt: AttemptDoc) -> None: ...

    async def mark_notified(self, request_id: str, notification_id: str, channel: str, ok: bool) -> None: ...

    async def claim_renotify(self, request_id: str, interval: timedelta) -> bool:
        """True if no re-send was claimed within `interval`: the caller may queue one now."""


@adapts_driver_errors
class MongoRequestRepository:
    def __init__(self, mongo: Mongo) -> None:
        self.mongo = mongo
        self._recent_chunks: OrderedDict[str, RowChunkDoc] = OrderedDict()

    # --- upload ---------------------------------------------------------------------------------------
    async def add_rows(self, request_id: str, chunk: int, first_image: int, rows: Sequence[RowDoc]) -> None:
        await self.mongo.rows.insert_one(
            {
                "_id": row_chunk_key(request_id, chunk),
                "request_id": request_id,
                "chunk": chunk,
                "first_image": first_image,
                "rows": list(rows),
            }
        )

    async def create_request(self, request_id: str, upload: Upload) -> RequestDoc:
        doc: RequestDoc = {
            "_id": request_id,
            "status": RequestStatus.PENDING,
            **upload,
            "no_img_compressed": 0,
            "no_img_failed": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "created_at": datetime.now(UTC),
            "outbox_pending": True,
            "published_chunks": 0,
            "lease_until": _NEVER,
        }
        await self.mongo.requests.insert_one(cast(Doc, doc))
        return doc

    async def discard(self, request_id: str) -> None:
        # The request document goes first: a write reported as failed may have landed, and the outbox must
        # not publish what the client was told was not accepted. Rows left behind without a request are
        # invisible, only wasted space (the relay also drops a request without rows).
        try:
            with pymongo.timeout(2.0):
                await self.mongo.requests.delete_one({"_id": request_id})
                await self.mongo.rows.delete_many({"request_id": request_id})
        except Exception:  # best effort: the caller is already reporting a failure
            return

    # --- reads ----------------------------------------------------------------------------------------
    async def get(self, request_id: str, *, notifications: bool = True) -> RequestDoc | None:
        projection = None if notifications else {"notifications": 0}
        return cast(RequestDoc | None, await self.mongo.requests.find_one({"_id": request_id}, projection))

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

    async def _outcomes(self, request_id: str, start: int, end: int) -> dict[int, OutcomeDoc]:
        cursor = self.mongo.images.find(
            {"request_id": request_id, "index": {"$gte": start, "$lt": end}}, projection={"_id": 0}
        )
        return {doc["index"]: cast(OutcomeDoc, doc) async for doc in cursor}

    async def _row_chunks(
        self, request_id: str, first_row: int, limit: int | None
    ) -> AsyncIterator[RowChunkDoc]:
        first_chunk = first_row // ROWS_PER_CHUNK
        if limit is None:  # the whole request, streamed once (the output CSV): straight from the database
            cursor = self.mongo.rows.find(
                {"request_id": request_id, "chunk": {"$gte": first_chunk}},
                sort=[("chunk", 1)],
                batch_size=2,  # a chunk is up to ~1 MB: fetch a couple at a time, never the whole request
            )
            async for streamed in cursor:
                yield cast(RowChunkDoc, streamed)
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
                self._recent_chunks[key] = chunk
                if len(self._recent_chunks) > RECENT_CHUNKS:
                    self._recent_chunks.popitem(last=False)
            else:
                self._recent_chunks.move_to_end(key)
            yield chunk

    async def row_chunk(self, request_id: str, chunk: int) -> RowChunkDoc | None:
        return cast(
            RowChunkDoc | None, await self.mongo.rows.find_one({"_id": row_chunk_key(request_id, chunk)})
        )

    # --- the outbox -----------------------------------------------------------------------------------
    async def outbox_pending(self) -> AsyncIterator[str]:
        async for doc in self.mongo.requests.find({"outbox_pending": True}, projection={"_id": 1}):
            yield doc["_id"]

    async def claim_outbox(self, request_id: str, owner: str, lease: timedelta) -> RequestDoc | None:
        now = datetime.now(UTC)
        claimed = await self.mongo.requests.update_one(
            {"_id": request_id, "outbox_pending": True, "lease_until": {"$lt": now}},
            {"$set": {"lease_until": now + lease, "lease_owner": owner}},
        )
        return await self.get(request_id, notifications=False) if claimed.modified_count == 1 else None

    async def renew_outbox(self, request_id: str, owner: str, lease: timedelta) -> bool:
        renewed = await self.mongo.requests.update_one(
            {"_id": request_id, "outbox_pending": True, "lease_owner": owner},
            {"$set": {"lease_until": datetime.now(UTC) + lease}},
        )
        return renewed.modified_count == 1

    async def release_outbox(self, request_id: str, owner: str) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id, "outbox_pending": True, "lease_owner": owner},
            {"$set": {"lease_until": _NEVER}},
        )

    async def record_published(self, request_id: str, owner: str, chunks: int, lease: timedelta) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id, "lease_owner": owner},
            {"$set": {"published_chunks": chunks, "lease_until": datetime.now(UTC) + lease}},
        )

    async def finish_outbox(self, request_id: str, *, published: bool) -> None:
        update: Doc = {"$unset": {"outbox_pending": "", "lease_until": "", "lease_owner": ""}}
        if published:
            update["$set"] = {"published_at": datetime.now(UTC)}
        await self.mongo.requests.update_one({"_id": request_id}, update)

    # --- outcomes and completion ----------------------------------------------------------------------
    async def record_outcomes(self, request_id: str, outcomes: Sequence[OutcomeDoc]) -> bool:
        async def record(session: Session) -> bool:
            return await self._record_outcomes(session, request_id, outcomes)

        return await self.mongo.transaction(record)

    async def _record_outcomes(
        self, session: Session, request_id: str, outcomes: Sequence[OutcomeDoc]
    ) -> bool:
        recorded = await self.mongo.images.bulk_write(
            [
                UpdateOne({"_id": image_key(request_id, o["index"])}, {"$setOnInsert": o}, upsert=True)
                for o in outcomes
            ],
            ordered=False,
            session=session,
        )
        new = [outcomes[i] for i in recorded.upserted_ids or {}]
        if not new:
            return False
        compressed = [o for o in new if o["status"] == OutcomeStatus.COMPRESSED]
        failures = [
            FailureDoc(index=o["index"], url=o["url"], reason=o.get("reason", ""))
            for o in new
            if o["status"] == OutcomeStatus.FAILED
        ]
        update: Doc = {
            "$inc": {
                "no_img_compressed": len(compressed),
                "no_img_failed": len(failures),
                "bytes_in": sum(o.get("input_bytes", 0) for o in compressed),
                "bytes_out": sum(o.get("output_bytes", 0) for o in compressed),
            }
        }
        if failures:
            update["$push"] = {"failures": {"$each": failures, "$slice": FAILURES_KEPT}}
        counted = await self.mongo.requests.update_one({"_id": request_id}, update, session=session)
        if counted.matched_count != 1:
            raise UnknownRequest(f"no request {request_id}")
        request = await self.mongo.requests.find_one(
            {"_id": request_id},
            projection={"status": 1, "total_images": 1, "no_img_compressed": 1, "no_img_failed": 1},
            session=session,
        )
        assert request is not None
        done = request["no_img_compressed"] + request["no_img_failed"]
        if done < request["total_images"] or request["status"] != RequestStatus.PENDING:
            return False
        await self.mongo.requests.update_one(
            {"_id": request_id, "status": RequestStatus.PENDING},
            {
                "$set": {
                    "status": RequestStatus.COMPLETED,
                    "completed_at": datetime.now(UTC),
                    "completion_event_id": uuid.uuid4().hex,
                    "completion_pending": True,
                }
            },
            session=session,
        )
        return True

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
    async def record_attempt(self, request_id: str, attempt: AttemptDoc) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id},
            {"$push": {"notifications": {"$each": [attempt], "$slice": -ATTEMPTS_KEPT}}},
        )

    async def mark_notified(self, request_id: str, notification_id: str, channel: str, ok: bool) -> None:
        await self.mongo.requests.update_one(
            {"_id": request_id},
            {"$set": {f"notified.{notification_id}.{channel}": "sent" if ok else "failed"}},
        )

    async def claim_renotify(self, request_id: str, interval: timedelta) -> bool:
        now = datetime.now(UTC)
        claimed = await self.mongo.requests.update_one(
            {"_id": request_id, "renotify_after": {"$not": {"$gt": now}}},
            {"$set": {"renotify_after": now + interval}},
        )
        return claimed.modified_count == 1
