"""In-memory fakes of the ports handlers depend on, for unit tests of one handler at a time.

Each fake keeps the semantics its handlers rely on (idempotent outcomes, one completion, leases), in a few
dictionaries; the integration tests hold the real adapters to the same behaviour.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, cast

from services.compressor.codec import CompressedImage, ImageRejected
from services.compressor.fetch import FetchError
from services.compressor.handler import Compressor, Fetcher, Outcomes
from services.compressor.hosts import HostLimiter
from services.compressor.wanted import RequestStatuses, WantedRequests
from services.notifier.delivery import AttemptOutcome
from shared.bus import Publisher
from shared.events import Event
from shared.files import ImageDownload, ImageMeta, StoredImage
from shared.image_options import ImageOptions
from shared.repository import (
    COMPLETES_AS,
    FINAL_STATUSES,
    AttemptDoc,
    Claim,
    IdempotencyKey,
    OutboxEntry,
    OutcomeDoc,
    OutcomeStatus,
    RequestDoc,
    RequestPage,
    RequestPurged,
    RequestStatus,
    Row,
    RowChunkDoc,
    RowDoc,
    UnknownRequest,
    Upload,
    decode_cursor,
    encode_cursor,
    images_done,
    skipped_outcome,
)


def an_upload(total_images: int = 1, webhook_url: str | None = None) -> Upload:
    """What an upload of one product brings, for tests that store a request without a CSV."""
    return Upload(
        email="buyer@example.com",
        webhook_url=webhook_url,
        columns=["S. No.", "Product Name", "Input Image Urls"],
        total_products=1,
        total_images=total_images,
        row_chunks=1,
    )


class RecordingPublisher:
    """Stands in for the EventBus: records what would have been published, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    async def publish_many(self, events: Iterable[Event]) -> None:
        self.events.extend(events)


class FakeRequestRepository:
    """The read model in dictionaries (see shared.repository.RequestRepository for each operation)."""

    def __init__(self) -> None:
        self.requests: dict[str, RequestDoc] = {}
        self.chunks: dict[tuple[str, int], RowChunkDoc] = {}
        self.outcomes: dict[tuple[str, int], OutcomeDoc] = {}
        self.leases: dict[str, tuple[str, datetime]] = {}
        self.idempotency_keys: dict[tuple[str | None, str], tuple[IdempotencyKey, datetime]] = {}
        self.purged: dict[str, datetime] = {}  # request id -> when its purge was recorded

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
        key = f"{request_id}:{chunk}"
        self.chunks[(request_id, chunk)] = RowChunkDoc(
            _id=key, request_id=request_id, chunk=chunk, first_image=first_image, rows=list(rows)
        )

    async def create_request(self, request_id: str, upload: Upload, owner: str | None = None) -> RequestDoc:
        now = datetime.now(UTC)
        doc = RequestDoc(
            _id=request_id,
            status=RequestStatus.RECEIVING,
            owner=owner,
            **upload,
            no_img_compressed=0,
            no_img_failed=0,
            bytes_in=0,
            bytes_out=0,
            created_at=now.replace(microsecond=now.microsecond // 1000 * 1000),  # as the database keeps it
            published_images=0,
            published_chunks=0,
        )
        self.requests[request_id] = doc
        return copy.deepcopy(doc)

    async def accept_request(self, request_id: str) -> RequestDoc | None:
        request = self.requests.get(request_id)
        if request is None or request["status"] != RequestStatus.RECEIVING:
            return None
        request.update(status=RequestStatus.PENDING, outbox_pending=True)
        return copy.deepcopy(request)

    async def settle_upload(self, request_id: str) -> bool:
        request = self.requests.get(request_id)
        if request is not None and request["status"] != RequestStatus.RECEIVING:
            return True
        await self.discard(request_id)
        return False

    async def abandoned_uploads(self, older_than: timedelta) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        for request_id, doc in list(self.requests.items()):
            if doc["status"] == RequestStatus.RECEIVING and doc["created_at"] < cutoff:
                yield request_id

    async def discard(self, request_id: str) -> None:
        if request_id in self.requests and self.requests[request_id]["status"] == RequestStatus.RECEIVING:
            del self.requests[request_id]
        for key in [k for k in self.chunks if k[0] == request_id]:
            del self.chunks[key]

    # --- idempotency keys -----------------------------------------------------------------------------
    async def claim_idempotency_key(
        self, owner: str | None, key: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> IdempotencyKey:
        now = datetime.now(UTC)
        held = self.idempotency_keys.get((owner, key))
        if held is not None and held[1] > now:
            return held[0]
        self.idempotency_keys[(owner, key)] = (IdempotencyKey(request_id, fingerprint, now), now + ttl)
        return self.idempotency_keys[(owner, key)][0]

    async def reclaim_idempotency_key(
        self, owner: str | None, key: str, held_by: str, fingerprint: str, request_id: str, ttl: timedelta
    ) -> bool:
        held = self.idempotency_keys.get((owner, key))
        if held is None or held[0].request_id != held_by:
            return False
        now = datetime.now(UTC)
        self.idempotency_keys[(owner, key)] = (IdempotencyKey(request_id, fingerprint, now), now + ttl)
        return True

    async def release_idempotency_key(self, owner: str | None, key: str, request_id: str) -> None:
        held = self.idempotency_keys.get((owner, key))
        if held is not None and held[0].request_id == request_id:
            del self.idempotency_keys[(owner, key)]

    # --- reads ----------------------------------------------------------------------------------------
    async def get(self, request_id: str, *, notifications: bool = True) -> RequestDoc | None:
        found = copy.deepcopy(self.requests.get(request_id))
        if found is not None and not notifications:
            found.pop("notifications", None)
        return found

    async def status_of(self, request_id: str) -> RequestStatus | None:
        found = self.requests.get(request_id)
        return None if found is None else found["status"]

    async def rows_with_outcomes(
        self, request_id: str, first_row: int = 0, limit: int | None = None
    ) -> AsyncIterator[Row]:
        rows: list[Row] = []
        for (rid, _), chunk in sorted(self.chunks.items()):
            index = chunk["first_image"]
            for row in chunk["rows"] if rid == request_id else []:
                urls = range(index, index + len(row["urls"]))
                rows.append((row, [self._outcome(request_id, i) for i in urls]))
                index += len(row["urls"])
        for row_and_outcomes in rows[first_row : None if limit is None else first_row + limit]:
            yield row_and_outcomes

    def _outcome(self, request_id: str, index: int) -> OutcomeDoc | None:
        """Its outcome, or SKIPPED if a cancel skipped it in bulk (never published, so never recorded)."""
        request = self.requests.get(request_id)
        found = self.outcomes.get((request_id, index))
        if found is None and request is not None and index >= request.get("skipped_from", index + 1):
            return skipped_outcome(request_id, index, request["cancelled_at"])
        return found

    async def list_requests(self, owner: str | None, limit: int, cursor: str | None = None) -> RequestPage:
        after = decode_cursor(cursor) if cursor else None
        mine = [
            copy.deepcopy(r)
            for r in self.requests.values()
            if r.get("owner") == owner and r["status"] != RequestStatus.RECEIVING
        ]
        mine.sort(key=lambda r: (r["created_at"], r["_id"]), reverse=True)
        mine = [r for r in mine if after is None or (r["created_at"], r["_id"]) < after]
        for r in mine:
            r.pop("notifications", None)
        more = len(mine) > limit
        return RequestPage(
            requests=mine[:limit], next_cursor=encode_cursor(mine[limit - 1]) if more else None
        )

    # --- a cancel -------------------------------------------------------------------------------------
    async def cancel_request(self, request_id: str) -> bool:
        request = self.requests.get(request_id)
        if request is None or request["status"] != RequestStatus.PENDING:
            return False
        request.update(status=RequestStatus.CANCELLING, cancelled_at=datetime.now(UTC))
        request.pop("outbox_pending", None)
        self.leases.pop(request_id, None)
        return True

    async def cancelling_requests(self) -> AsyncIterator[str]:
        for request_id, doc in list(self.requests.items()):
            if doc["status"] == RequestStatus.CANCELLING:
                yield request_id

    async def settle_cancellation(self, request_id: str) -> bool:
        request = self.requests.get(request_id)
        if request is None or request["status"] != RequestStatus.CANCELLING:
            return False
        if "skipped_from" not in request:
            first = request.get("published_images", 0)
            recorded = sum(1 for (rid, i) in self.outcomes if rid == request_id and i >= first)
            request["skipped_from"] = first
            request["no_img_skipped"] = (
                request.get("no_img_skipped", 0) + request["total_images"] - first - recorded
            )
        return self._complete_if_done(request)

    def _complete_if_done(self, request: RequestDoc) -> bool:
        if images_done(request) < request["total_images"] or request["status"] not in COMPLETES_AS:
            return False
        request.update(
            status=COMPLETES_AS[request["status"]],
            completed_at=datetime.now(UTC),
            completion_event_id=f"completion-{request['_id']}",
            completion_pending=True,
        )
        return True

    # --- the outbox -----------------------------------------------------------------------------------
    async def outcome(self, request_id: str, index: int) -> OutcomeDoc | None:
        return copy.deepcopy(self.outcomes.get((request_id, index)))

    async def outbox_pending(self) -> AsyncIterator[OutboxEntry]:
        for request_id, doc in sorted(self.requests.items()):
            if doc.get("outbox_pending"):
                fields = ("total_images", "published_chunks", "no_img_compressed", "no_img_failed")
                entry = OutboxEntry(_id=request_id, **{f: doc[f] for f in fields})  # type: ignore[typeddict-item]
                if "published_images" in doc:
                    entry["published_images"] = doc["published_images"]
                if request_id in self.leases:
                    entry["lease_owner"], entry["lease_until"] = self.leases[request_id]
                yield entry

    async def claim_outbox(self, request_id: str, owner: str, lease: timedelta) -> RequestDoc | None:
        holder = self.leases.get(request_id)
        if holder is not None and holder[1] > datetime.now(UTC) and holder[0] != owner:
            return None
        self.leases[request_id] = (owner, datetime.now(UTC) + lease)
        return await self.get(request_id)

    async def renew_outbox(self, request_id: str, owner: str, lease: timedelta) -> bool:
        if self.leases.get(request_id, ("",))[0] != owner:
            return False
        self.leases[request_id] = (owner, datetime.now(UTC) + lease)
        return True

    async def row_chunk(self, request_id: str, chunk: int) -> RowChunkDoc | None:
        return self.chunks.get((request_id, chunk))

    async def record_published(
        self, request_id: str, owner: str, images: int, chunks: int, lease: timedelta
    ) -> bool:
        if self.leases.get(request_id, ("",))[0] != owner:
            return False
        self.requests[request_id].update(published_images=images, published_chunks=chunks)
        self.leases[request_id] = (owner, datetime.now(UTC) + lease)
        return True

    async def finish_outbox(self, request_id: str, *, published: bool) -> None:
        self.requests[request_id].pop("outbox_pending", None)
        self.leases.pop(request_id, None)
        if published:
            self.requests[request_id]["published_at"] = datetime.now(UTC)

    # --- outcomes and completion ----------------------------------------------------------------------
    async def record_outcomes(self, request_id: str, outcomes: Sequence[OutcomeDoc]) -> bool:
        request = self.requests.get(request_id)
        if request is None:
            raise (RequestPurged if request_id in self.purged else UnknownRequest)(request_id)
        skipped_from = request.get("skipped_from", request["total_images"])
        new = {
            (request_id, o["index"]): o
            for o in outcomes
            if (request_id, o["index"]) not in self.outcomes and o["index"] < skipped_from
        }
        self.outcomes.update(new)
        for outcome in new.values():
            if outcome["status"] == OutcomeStatus.COMPRESSED:
                request["no_img_compressed"] += 1
                request["bytes_in"] += outcome.get("input_bytes", 0)
                request["bytes_out"] += outcome.get("output_bytes", 0)
            elif outcome["status"] == OutcomeStatus.SKIPPED:
                request["no_img_skipped"] = request.get("no_img_skipped", 0) + 1
            else:
                request["no_img_failed"] += 1
                failure = {
                    "index": outcome["index"],
                    "url": outcome["url"],
                    "reason": outcome.get("reason", ""),
                }
                request.setdefault("failures", []).append(failure)  # type: ignore[arg-type]
        return bool(new) and self._complete_if_done(request)

    async def completion_to_publish(self, request_id: str) -> RequestDoc | None:
        request = await self.get(request_id)
        return request if request is not None and request.get("completion_pending") else None

    async def mark_completion_published(self, request_id: str) -> None:
        self.requests[request_id].pop("completion_pending", None)

    async def unpublished_completions(self, older_than: timedelta) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        for request_id, doc in list(self.requests.items()):
            if doc.get("completion_pending") and doc["completed_at"] < cutoff:
                yield request_id

    # --- notifications --------------------------------------------------------------------------------
    async def claim_notification(
        self, request_id: str, notification_id: str, channel: str, owner: str, lease: timedelta
    ) -> Claim:
        request, now = self.requests.get(request_id), datetime.now(UTC)
        if request is None:
            raise UnknownRequest(request_id)
        if channel in request.get("notified", {}).get(notification_id, {}):
            return Claim.DONE
        claims = request.setdefault("sending", {}).setdefault(notification_id, {})
        held = claims.get(channel)
        if held is not None and held["until"] > now:  # type: ignore[operator]
            return Claim.HELD
        claims[channel] = {"owner": owner, "until": now + lease}
        return Claim.CLAIMED

    async def record_attempt(self, request_id: str, attempt: AttemptDoc) -> None:
        self.requests[request_id].setdefault("notifications", []).append(attempt)

    async def mark_notified(self, request_id: str, notification_id: str, channel: str, ok: bool) -> None:
        notified = self.requests[request_id].setdefault("notified", {})
        notified.setdefault(notification_id, {})[channel] = "sent" if ok else "failed"
        self.requests[request_id].get("sending", {}).get(notification_id, {}).pop(channel, None)

    async def claim_renotify(self, request_id: str, interval: timedelta) -> bool:
        request, now = self.requests[request_id], datetime.now(UTC)
        if request.get("renotify_after", now) > now:
            return False
        request["renotify_after"] = now + interval
        return True

    async def release_renotify(self, request_id: str) -> None:
        self.requests[request_id].pop("renotify_after", None)

    # --- deletion and retention -----------------------------------------------------------------------
    async def purge(self, request_id: str) -> bool:
        request = self.requests.get(request_id)
        if request is None and request_id not in self.purged:
            return False
        if request is not None and request["status"] == RequestStatus.RECEIVING:
            return False
        self.purged.setdefault(request_id, datetime.now(UTC))
        self.requests.pop(request_id, None)
        self.leases.pop(request_id, None)
        for store in (self.chunks, self.outcomes):
            for key in [key for key in store if key[0] == request_id]:
                del store[key]  # type: ignore[attr-defined]
        return True

    async def was_purged(self, request_id: str) -> bool:
        return request_id in self.purged

    async def purges(self, older_than: timedelta, limit: int) -> AsyncIterator[str]:
        cutoff = datetime.now(UTC) - older_than
        for request_id in [r for r, at in self.purged.items() if at < cutoff][:limit]:
            yield request_id

    async def forget_purge(self, request_id: str) -> None:
        self.purged.pop(request_id, None)

    async def expired(self, completed_before: datetime, limit: int) -> AsyncIterator[str]:
        found = [
            request_id
            for request_id, doc in self.requests.items()
            if doc["status"] in FINAL_STATUSES
            and doc.get("completed_at", completed_before) < completed_before
        ]
        for request_id in found[:limit]:
            yield request_id


@dataclass
class FakeImageStore:
    files: dict[str, tuple[bytes, ImageMeta]] = field(default_factory=dict)

    async def put(self, file_id: str, data: bytes, *, filename: str, meta: ImageMeta) -> StoredImage:
        self.files.setdefault(file_id, (data, meta))  # the first complete write wins, as in GridFsImageStore
        stored = await self.info(file_id)
        assert stored is not None
        return stored

    async def info(self, file_id: str) -> StoredImage | None:
        if file_id not in self.files:
            return None
        data, meta = self.files[file_id]
        return StoredImage(file_id, len(data), meta)

    async def open(self, file_id: str) -> ImageDownload | None:
        if file_id not in self.files:
            return None
        data, meta = self.files[file_id]

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return ImageDownload(meta["contentType"], len(data), chunks())

    async def purge(self, request_id: str) -> int:
        gone = [file_id for file_id, (_, meta) in self.files.items() if meta["request_id"] == request_id]
        for file_id in gone:
            del self.files[file_id]
        return len(gone)


def watching_compressor(
    publisher: Publisher, fetcher: Fetcher, repo: Outcomes, *, per_host: int, ttl: float
) -> Compressor:
    """A compressor that asks `repo` whether each image is still wanted (answers kept `ttl` seconds), with
    fake storage and codec: for tests of what a cancel does to work not started."""
    return Compressor(
        FakeImageStore(),
        publisher,
        fetcher,
        HalvingCodec(),
        quality=50,
        max_pixels=10**6,
        outcomes=repo,
        hosts=HostLimiter(per_host=per_host, wait=0.25),
        wanted=WantedRequests(cast(RequestStatuses, repo), ttl=ttl),
    )


@dataclass
class FakeFetcher:
    """Serves `bodies` by URL; a URL in `errors` raises that FetchError instead."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, FetchError] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url in self.errors:
            raise self.errors[url]
        return self.bodies[url]


class HalvingCodec:
    """ "Compresses" by halving the bytes; refuses bodies that start with b"bad". Records the options it
    was given; reports a format and quality as they ask (`auto` is quality 42, scoring 61.5)."""

    def __init__(self) -> None:
        self.options: list[ImageOptions] = []

    async def compress(
        self, data: bytes, quality: int, max_pixels: int, options: ImageOptions
    ) -> CompressedImage:
        self.options.append(options)
        if data.startswith(b"bad"):
            raise ImageRejected("corrupt image data (fake)")
        fmt = options.format.value if options.format else "jpeg"
        chosen = 42 if options.auto else options.quality if isinstance(options.quality, int) else quality
        side = min(options.max_width or 10, 10)
        score = 61.5 if options.auto else None
        return CompressedImage(data[: len(data) // 2], f"image/{fmt}", False, side, side, chosen, score)


@dataclass
class RecordingMailer:
    sent: list[EmailMessage] = field(default_factory=list)

    async def send(self, msg: EmailMessage) -> None:
        self.sent.append(msg)


@dataclass
class RecordingWebhooks:
    posted: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    outcome: AttemptOutcome = field(default_factory=lambda: AttemptOutcome(ok=True, status=204))
    secrets: list[str | None] = field(default_factory=list)  # what each post was to be signed with

    async def post(
        self, url: str, payload: dict[str, Any], *, message_id: str, secret: str | None
    ) -> AttemptOutcome:
        self.posted.append((url, payload, message_id))
        self.secrets.append(secret)
        return self.outcome
