"""GET /status: the request's progress and a page of its products, rendered once and briefly shared.

Clients poll status, often many at once; a rendering is served to every poll for `status_cache_seconds`
(1 s by default), and concurrent polls that miss share one rendering rather than each reading the
database. Progress is at most that much behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Any, Literal

from shared.read_model import image_url, iter_rows
from shared.storage import Doc, Store

View = Literal["full", "summary"]


async def render_status(
    store: Store, request: Doc, base_url: str, offset: int, limit: int, view: View
) -> bytes:
    request_id = request["_id"]
    done = request["no_img_compressed"] + request["no_img_failed"]
    body: dict[str, Any] = {
        "request_id": request_id,
        "status": request["status"],
        "progress": round(100 * done / request["total_images"], 1) if request["total_images"] else 100.0,
        "total_images": request["total_images"],
        "no_img_compressed": request["no_img_compressed"],
        "no_img_failed": request["no_img_failed"],
        "total_products": request["total_products"],
        "bytes_in": request.get("bytes_in", 0),
        "bytes_out": request.get("bytes_out", 0),
        "created_at": request["created_at"],
        "completed_at": request.get("completed_at"),
        "failures": request.get("failures", []),
        "output_csv_url": f"{base_url}/output/{request_id}" if request["status"] == "COMPLETED" else None,
    }
    if view == "full":
        body["product_details"] = [
            {
                "serial_number": row["serial"],
                "product_name": row["name"],
                "input_urls": row["urls"],
                "output_urls": [
                    image_url(base_url, o["file_id"]) if o and o["status"] == "COMPRESSED" else None
                    for o in outcomes
                ],
                "failed": [
                    {"url": o["url"], "reason": o["reason"]}
                    for o in outcomes
                    if o and o["status"] == "FAILED"
                ],
            }
            async for row, outcomes in iter_rows(store, request_id, offset, limit)
        ]
        body["page"] = {"offset": offset, "limit": limit, "total_products": request["total_products"]}
        body["notifications"] = request.get("notifications", [])
    # Serialised directly: FastAPI's generic encoder costs more than the rest of the request.
    return json.dumps(body, default=_json_default).encode()


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ShortLivedCache:
    """Keeps each rendering for `ttl` seconds; concurrent misses on one key share one rendering."""

    def __init__(self, ttl: float, max_entries: int = 512) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._rendering: dict[Hashable, asyncio.Future[bytes]] = {}

    async def get(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> bytes:
        if self.ttl <= 0:
            return await render()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        if key in self._rendering:  # someone is rendering it right now: wait for theirs
            return await asyncio.shield(self._rendering[key])
        rendering = asyncio.ensure_future(render())
        self._rendering[key] = rendering
        try:
            value = await asyncio.shield(rendering)
        finally:
            del self._rendering[key]
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value
