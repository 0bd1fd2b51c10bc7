"""GET /status/{id}/events: a request's live progress, pushed as Server-Sent Events (see progress.py)."""

from __future__ import annotations

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from services.upload.deps import ApiKeyOrQuery, GatewayDep, Owner
from services.upload.openapi import errors, ok
from services.upload.progress import progress_events, render_progress

router = APIRouter(tags=["requests"])

PING_SECONDS = 15  # a comment line on an idle stream, so proxies do not close it

STREAM = ok(
    "`event: progress` lines whose `data` is a `ProgressSnapshot` (the summary of GET /status plus `images`, "
    "the first images with their before/after URLs, sizes and `output_details`): sent at once, then on every "
    "change; the stream ends after a final state (`COMPLETED` or `CANCELLED`). `event: gone` if the request disappears.",
    media_type="text/event-stream",
)


@router.get(
    "/status/{request_id}/events",
    summary="Live progress (Server-Sent Events)",
    dependencies=[ApiKeyOrQuery],
    response_class=EventSourceResponse,
    responses=STREAM | errors(401, 404, 503),
)
async def events(request_id: str, gateway: GatewayDep, owner: Owner) -> EventSourceResponse:
    """For browsers' `EventSource`, which cannot send headers, the API key may also be given as
    `?api_key=` on this route (and only this one)."""

    async def render() -> bytes:
        request = await gateway.request_or_404(request_id, owner, notifications=False)
        return await render_progress(gateway.runtime.repo, request, gateway.runtime.links)

    async def shared() -> bytes:
        return await gateway.progress_cache.get((request_id, owner), render)

    await shared()  # an unknown id is a plain 404 answer, before any stream starts
    interval = gateway.runtime.settings.events_interval_seconds
    return EventSourceResponse(progress_events(shared, interval), ping=PING_SECONDS)
