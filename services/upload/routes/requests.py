"""A caller's requests (GET /requests), one's progress (GET /status/{id}), its output CSV (GET /output/{id}),
cancelling it (POST /requests/{id}/cancel) and deleting it (DELETE /requests/{id})."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from services.upload.deps import ApiKey, GatewayDep, Owner
from services.upload.errors import ApiError, problem
from services.upload.openapi import DeletionBody, RequestList, Responses, StatusBody, errors, ok
from services.upload.status_view import View, listed, render_status, summary
from shared.output_csv import output_csv
from shared.repository import FINAL_STATUSES, REQUEST_ID_PATTERN, InvalidCursor, RequestStatus

log = structlog.get_logger()
router = APIRouter(dependencies=[ApiKey], tags=["requests"])

MAX_LISTED = 100
CANCEL_ANSWERS: Responses = {
    202: {"model": StatusBody, "description": "Cancelling (or already cancelling): its summary."},
    200: {"model": StatusBody, "description": "Already cancelled: its summary."},
}


@router.get(
    "/requests",
    summary="Your requests, newest first",
    response_model=RequestList,
    responses=errors(400, 401, 503),
)
async def list_requests(
    gateway: GatewayDep,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED, description="Requests per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The `next_cursor` of the previous page.")
    ] = None,
) -> Response:
    """With API keys on, only the requests made with the caller's key. Follow `next_cursor` (null on the
    last page) for older ones."""
    try:
        page = await gateway.runtime.repo.list_requests(owner, limit, cursor)
    except InvalidCursor as exc:
        raise ApiError(400, "invalid cursor", [problem(str(exc), field="cursor")]) from None
    body = {"requests": [listed(r) for r in page["requests"]], "next_cursor": page["next_cursor"]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/status/{request_id}",
    summary="A request's progress",
    response_model=None,
    responses=ok("The progress, and a page of products.", StatusBody) | errors(400, 401, 404, 503),
)
async def status(
    request_id: str, gateway: GatewayDep, owner: Owner, offset: int = 0, limit: int = 20, view: View = "full"
) -> Response:
    """The request's progress, and a page of its products (`view=summary`: progress only, for pollers)."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise ApiError(400, "invalid paging", [problem("offset >= 0 and 1 <= limit <= 1000", field="limit")])

    async def render() -> bytes:
        request = await gateway.request_or_404(request_id, owner, notifications=view == "full")
        return await render_status(gateway.runtime.repo, request, gateway.runtime.links, offset, limit, view)

    # Keyed by the caller too: a rendering is only ever served to whom request_or_404 showed it.
    body = await gateway.status_cache.get((request_id, owner, offset, limit, view), render)
    return Response(body, media_type="application/json")


@router.get(
    "/output/{request_id}",
    summary="The output CSV",
    response_class=StreamingResponse,
    responses=ok(
        "The input rows plus `Output Image Urls` (a cancelled request's skipped images say `SKIPPED: ...`).",
        media_type="text/csv",
    )
    | errors(401, 404, 409, 503),
)
async def output(request_id: str, gateway: GatewayDep, owner: Owner) -> StreamingResponse:
    request = await gateway.request_or_404(request_id, owner, notifications=False)
    if request["status"] not in FINAL_STATUSES:
        raise ApiError(409, "the request is not complete yet; the output CSV exists once it is")
    return StreamingResponse(
        output_csv(gateway.runtime.repo, request, gateway.runtime.links),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="imagepipe-{request_id}.csv"'},
    )


@router.post(
    "/requests/{request_id}/cancel",
    status_code=202,
    summary="Cancel a request",
    response_model=None,
    responses=CANCEL_ANSWERS | errors(401, 404, 409, 503),
)
async def cancel(request_id: str, gateway: GatewayDep, owner: Owner) -> Response:
    """Images not started yet are skipped, never fetched; those in flight may finish. The request then ends
    `CANCELLED`, with its partial output CSV and the usual email and webhook. Cancelling again is harmless;
    a request already finished is a 409."""
    request = await gateway.request_or_404(request_id, owner, notifications=False)
    if request["status"] == RequestStatus.PENDING:
        if await gateway.runtime.repo.cancel_request(request_id):
            log.info("request_cancelled", done=request["no_img_compressed"] + request["no_img_failed"])
        request = await gateway.request_or_404(request_id, owner, notifications=False)
    if request["status"] == RequestStatus.COMPLETED:
        raise ApiError(409, "the request is already complete; there is nothing left to cancel")
    body: dict[str, Any] = summary(request, gateway.runtime.links)
    code = 200 if request["status"] == RequestStatus.CANCELLED else 202
    return Response(orjson.dumps(body), status_code=code, media_type="application/json")


DELETING: Responses = {
    202: {
        "description": "Deleted: its status, output and progress answer 404 from now on; its images are "
        "being removed (their URLs answer 404 within moments).",
        "model": DeletionBody,
    }
}


@router.delete(
    "/requests/{request_id}",
    summary="Delete a request, with its images",
    status_code=202,
    response_model=DeletionBody,
    responses=DELETING | errors(401, 404, 503),
)
async def delete(request_id: str, gateway: GatewayDep, owner: Owner) -> DeletionBody:
    """Deletes the request, its rows and its outcomes before answering, and its stored images just after
    (about 1.5 ms an image). A running request stops: its remaining images are skipped. Repeating the
    call within the hour after answers 202 again, and finishes anything an interrupted deletion left."""
    if not REQUEST_ID_PATTERN.match(request_id) or not await gateway.runtime.repo.was_purged(request_id):
        await gateway.request_or_404(request_id, owner, notifications=False)  # unknown, or another key's
    if not await gateway.deletions.start(request_id):
        raise ApiError(404, f"unknown request_id {request_id!r}")
    gateway.status_cache.forget(request_id)
    gateway.progress_cache.forget(request_id)
    return DeletionBody(request_id=request_id, deleted=True)
