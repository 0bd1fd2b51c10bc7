"""GET /status: the request's progress and a page of its products, rendered once and briefly shared.

Clients poll status, often many at once; a rendering is served to every poll for `status_cache_seconds`
(1 s by default) and then refreshed in the background, so polls never queue behind the database and
concurrent misses share one rendering. Progress shown is about a second behind at most.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Literal

import orjson

from shared.image_options import ImageOptions
from shared.links import Links
from shared.repository import (
    FINAL_STATUSES,
    OutcomeDoc,
    OutcomeStatus,
    RequestDoc,
    RequestRepository,
    RowDoc,
    images_done,
)

View = Literal["full", "summary"]


async def render_status(
    repo: RequestRepository, request: RequestDoc, links: Links, offset: int, limit: int, view: View
) -> bytes:
    request_id = request["_id"]
    body = summary(request, links)
    if view == "full":
        body["product_details"] = [
            _product(row, outcomes, links)
            async for row, outcomes in repo.rows_with_outcomes(request_id, offset, limit)
        ]
        body["page"] = {"offset": offset, "limit": limit, "total_products": request["total_products"]}
        body["notifications"] = request.get("notifications", [])
    # Serialised directly: FastAPI's generic encoder costs more than the rest of the request.
    return orjson.dumps(body)


def summary(request: RequestDoc, links: Links) -> dict[str, Any]:
    """The request's progress and counts, without its products (`view=summary`)."""
    request_id = request["_id"]
    finished = request["status"] in FINAL_STATUSES
    return {
        **listed(request),
        "total_products": request["total_products"],
        "bytes_in": request.get("bytes_in", 0),
        "bytes_out": request.get("bytes_out", 0),
        "failures": request.get("failures", []),
        "output_csv_url": links.output(request_id) if finished else None,
        "options": ImageOptions.from_stored(request.get("options")).model_dump(mode="json"),
    }


def listed(request: RequestDoc) -> dict[str, Any]:
    """A request as GET /requests lists it: its status, counts, progress and times."""
    return {
        "request_id": request["_id"],
        "status": request["status"],
        "progress": progress(request),
        "total_images": request["total_images"],
        "no_img_compressed": request["no_img_compressed"],
        "no_img_failed": request["no_img_failed"],
        "no_img_skipped": request.get("no_img_skipped", 0),
        "created_at": request["created_at"],
        "completed_at": request.get("completed_at"),
    }


def progress(request: RequestDoc) -> float:
    """Percent of the request's images with an outcome (skipped ones included)."""
    total = request["total_images"]
    return round(100 * images_done(request) / total, 1) if total else 100.0


def _product(row: RowDoc, outcomes: list[OutcomeDoc | None], links: Links) -> dict[str, Any]:
    return {
        "serial_number": row["serial"],
        "product_name": row["name"],
        "input_urls": row["urls"],
        "output_urls": [
            links.image(o.get("file_id", "")) if o and o["status"] == OutcomeStatus.COMPRESSED else None
            for o in outcomes
        ],
        "output_details": [output_details(o) for o in outcomes],
        "failed": [
            {"url": o["url"], "reason": o.get("reason", "")}
            for o in outcomes
            if o and o["status"] == OutcomeStatus.FAILED
        ],
        "skipped": [
            url
            for url, o in zip(row["urls"], outcomes, strict=True)
            if o and o["status"] == OutcomeStatus.SKIPPED
        ],
    }


def output_details(outcome: OutcomeDoc | None) -> dict[str, Any] | None:
    """What became of one image (aligned with `input_urls`): None until it is compressed, or if it failed.
    `quality` is the encoder quality used (`auto`'s choice included), `score` auto's SSIMULACRA2 score."""
    if outcome is None or outcome["status"] != OutcomeStatus.COMPRESSED:
        return None
    content_type = outcome.get("content_type", "")
    return {
        "format": content_type.removeprefix("image/") or None,
        "width": outcome.get("width"),
        "height": outcome.get("height"),
        "bytes": outcome.get("output_bytes"),
        "quality": outcome.get("quality"),
        "score": round(score, 1) if (score := outcome.get("score")) is not None else None,
        "kept_original": outcome.get("kept_original", False),
    }


class ShortLivedCache:
    """Keeps each rendering for `ttl` seconds, then refreshes it in the background.

    A poll never waits for the database while a rendering at most STALE_FACTOR x `ttl` old exists: it
    gets that rendering, and the first poll after it expires starts the refresh. Concurrent misses on one
    key share one rendering.
    """

    STALE_FACTOR = 5

    def __init__(self, ttl: float, max_entries: int = 512, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes  # a full page can be megabytes: bound the memory, not just the count
        self._bytes = 0
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = (
            OrderedDict()
        )  # key -> (rendered at, bytes)
        self._rendering: dict[Hashable, asyncio.Future[bytes]] = {}

    async def get(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> bytes:
        if self.ttl <= 0:
            return await render()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        rendering = self._rendering.get(key) or self._start(key, render)
        if entry is not None and now - entry[0] < self.ttl * self.STALE_FACTOR:
            return entry[1]  # slightly stale; the refresh is under way
        return await asyncio.shield(rendering)

    def forget(self, request_id: str) -> None:
        """Drop the renderings of a request (keyed by its id, or a tuple starting with it): it was deleted,
        so its next read must see that, not a rendering kept from before."""
        for key in [k for k in self._entries if request_id in (k, k[0] if isinstance(k, tuple) else None)]:
            self._bytes -= len(self._entries.pop(key)[1])

    def _start(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> asyncio.Future[bytes]:
        rendering = asyncio.ensure_future(render())
        self._rendering[key] = rendering

        def finished(done: asyncio.Future[bytes]) -> None:
            del self._rendering[key]
            old = self._entries.pop(key, None)  # never serve what could not be refreshed for long
            self._bytes -= len(old[1]) if old else 0
            if done.cancelled() or done.exception() is not None:
                return
            self._entries[key] = (time.monotonic(), done.result())
            self._bytes += len(done.result())
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

        rendering.add_done_callback(finished)
        return rendering
