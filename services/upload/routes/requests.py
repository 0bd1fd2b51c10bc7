"""A request's progress (GET /status/{id}), its output CSV (GET /output/{id}), and deleting it
(DELETE /requests/{id})."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from services.upload.deps import ApiKey, GatewayDep
from services.upload.errors import ApiError, problem
from services.upload.openapi import DeletionBody, Responses, StatusBody, errors, ok
from services.upload.status_view import View, render_status
from shared.output_csv import output_csv
from shared.repository import REQUEST_ID_PATTERN, RequestStatus

router = APIRouter(dependencies=[ApiKey], tags=["requests"])


@router.get(
    "/status/{request_id}",
    summary="A request's progress",
    response_model=None,
    responses=ok("The progress, and a page of products.", StatusBody) | errors(400, 401, 404, 503),
)
async def status(
    request_id: str, gateway: GatewayDep, offset: int = 0, limit: int = 20, view: View = "full"
) -> Response:
    """The request's progress, and a page of its products (`view=summary`: progress only, for pollers)."""
    if offset < 0 or not 1 <= limit <= 1000:
        raise ApiError(400, "invalid paging", [problem("offset >= 0 and 1 <= limit <= 1000", field="limit")])

    async def render() -> bytes:
        request = await gateway.request_or_404(request_id, notifications=view == "full")
        return await render_status(gateway.runtime.repo, request, gateway.runtime.links, offset, limit, view)

    body = await gateway.status_cache.get((request_id, offset, limit, view), render)
    return Response(body, media_type="application/json")


@router.get(
    "/output/{request_id}",
    summary="The output CSV",
    response_class=StreamingResponse,
    responses=ok("The input rows plus `Output Image Urls`.", media_type="text/csv")
    | errors(401, 404, 409, 503),
)
async def output(request_id: str, gateway: GatewayDep) -> StreamingResponse:
    request = await gateway.request_or_404(request_id, notifications=False)
    if request["status"] != RequestStatus.COMPLETED:
        raise ApiError(409, "the request is not complete yet; the output CSV exists once it is")
    return StreamingResponse(
        output_csv(gateway.runtime.repo, request, gateway.runtime.links),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="imagepipe-{request_id}.csv"'},
    )


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
async def delete(request_id: str, gateway: GatewayDep) -> DeletionBody:
    """Deletes the request, its rows and its outcomes before answering, and its stored images just after
    (about 1.5 ms an image). A running request stops: its remaining images are skipped. Repeating the
    call within the hour after answers 202 again, and finishes anything an interrupted deletion left."""
    if not REQUEST_ID_PATTERN.match(request_id) or not await gateway.deletions.start(request_id):
        raise ApiError(404, f"unknown request_id {request_id!r}")
    gateway.status_cache.forget(request_id)
    gateway.progress_cache.forget(request_id)
    return DeletionBody(request_id=request_id, deleted=True)
