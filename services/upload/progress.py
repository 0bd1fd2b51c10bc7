"""Live progress, as the web page and the CLI follow it: GET /status/{id}/events (Server-Sent Events).

Cheap however many watch: every subscriber of a request reads the same rendering, made at most once per
`events_interval_seconds` (a ShortLivedCache of its own), so a hundred open pages cost one database read
per interval, not a hundred. A stream sends a `progress` event whenever that rendering changed and ends
right after sending a final state; sse-starlette keeps idle streams alive with comment pings and closes
them when the server shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog

from services.upload.errors import ApiError
from services.upload.status_view import output_details, summary
from shared.links import Links
from shared.mongo import StorageError
from shared.repository import FINAL_STATUSES, OutcomeDoc, RequestDoc, RequestRepository, RowDoc

log = structlog.get_logger()

IMAGES_SHOWN = 24  # before/after pairs in a snapshot: the request's first images, in CSV order
RECONNECT_MS = 3000  # how long EventSource waits before reconnecting after a dropped stream

Render = Callable[[], Awaitable[bytes]]


async def render_progress(repo: RequestRepository, request: RequestDoc, links: Links) -> bytes:
    images: list[dict[str, Any]] = []
    async for row, outcomes in repo.rows_with_outcomes(request["_id"], 0, IMAGES_SHOWN):
        for url, outcome in zip(row["urls"], outcomes, strict=True):
            images.append(_image(row, url, outcome, links))
    return orjson.dumps({**summary(request, links), "images": images[:IMAGES_SHOWN]})


def _image(row: RowDoc, url: str, found: OutcomeDoc | None, links: Links) -> dict[str, Any]:
    outcome: dict[str, Any] = dict(found or {})
    file_id = outcome.get("file_id")
    return {
        "product": row["name"],
        "serial_number": row["serial"],
        "input_url": url,
        "status": outcome.get("status"),
        "output_url": links.image(file_id) if file_id else None,
        "input_bytes": outcome.get("input_bytes"),
        "output_bytes": outcome.get("output_bytes"),
        "kept_original": outcome.get("kept_original", False),
        "reason": outcome.get("reason"),
        "output_details": output_details(found),
    }


async def progress_events(render: Render, interval: float) -> AsyncIterator[dict[str, Any]]:
    """Each change of the (shared) rendering as a `progress` event, until a final state has been sent.

    A database outage pauses the stream (pings keep it open); a request that disappears ends it with an
    `gone` event."""
    last: bytes | None = None
    while True:
        try:
            body = await render()
        except StorageError:
            log.warning("progress_render_failed")
            await asyncio.sleep(interval)
            continue
        except ApiError as exc:
            yield {"event": "gone", "data": orjson.dumps({"error": exc.error}).decode()}
            return
        if body != last:
            yield {"event": "progress", "data": body.decode(), "retry": RECONNECT_MS}
            last = body
        if orjson.loads(body)["status"] in FINAL_STATUSES:
            return
        await asyncio.sleep(interval)
