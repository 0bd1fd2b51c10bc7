"""POST /webhook-completed: send a finished request's completion email again."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Request

from services.upload.deps import ApiKey, GatewayDep, Owner
from services.upload.errors import ApiError, problem
from services.upload.openapi import RenotifyQueued, RenotifyRequest, errors
from shared.events import NotificationRequested
from shared.repository import FINAL_STATUSES

log = structlog.get_logger()
router = APIRouter(tags=["notifications"])


@router.post(
    "/webhook-completed",
    status_code=202,
    summary="Send the completion email again",
    response_model=RenotifyQueued,
    responses=errors(400, 401, 404, 409, 429, 503),
    dependencies=[ApiKey],
    openapi_extra={
        "parameters": [
            {"name": "request_id", "in": "query", "required": False, "schema": {"type": "string"}}
        ],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": RenotifyRequest.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": RenotifyRequest.model_json_schema()},
            },
        },
    },
)
async def webhook_completed(request: Request, gateway: GatewayDep, owner: Owner) -> dict[str, Any]:
    """`request_id` as JSON, a form field or a query parameter. With keys on, an API key (no webhook
    signature: a webhook secret is its receiver's, not a credential for this API). With keys off (local
    mode), no credential, like every other route; at most one re-send per request per interval."""
    raw = await request.body()  # at most a few KiB (middleware.BodySizeLimit)
    request_id = await _request_id_from(request, raw)
    found = await gateway.request_or_404(request_id, owner, notifications=False)
    if found["status"] not in FINAL_STATUSES:
        raise ApiError(409, "the request is not complete yet; its notification goes out when it is")
    # At most one re-send per interval and request: each one is an email, and a record on the request.
    interval = gateway.runtime.settings.renotify_interval_seconds
    if not await gateway.runtime.repo.claim_renotify(request_id, timedelta(seconds=interval)):
        raise ApiError(
            429, "a re-send for this request was just queued; try again later", retry_after=int(interval)
        )
    try:
        await gateway.runtime.bus.publish(NotificationRequested(request_id=request_id))
    except Exception:  # not confirmed (down, refused, returned unroutable, not connected yet): not queued
        await gateway.runtime.repo.release_renotify(request_id)  # so the retry we ask for is not a 429
        raise ApiError(503, "the message broker is unavailable; try again shortly") from None
    log.info("renotify_requested", request_id=request_id)
    return {"request_id": request_id, "notification": "queued"}


async def _request_id_from(request: Request, raw: bytes) -> str:
    """From the query, a JSON body or a form."""
    request_id = request.query_params.get("request_id")
    content_type = request.headers.get("content-type", "")
    if not request_id and content_type.startswith("application/json") and raw:
        try:
            body = json.loads(raw)
            request_id = body.get("request_id") if isinstance(body, dict) else None
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
    elif not request_id and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("request_id")
        request_id = value.strip() if isinstance(value, str) else None
    if not request_id or not isinstance(request_id, str):
        raise ApiError(
            400, "request_id is required", [problem('send {"request_id": "..."}', field="request_id")]
        )
    return request_id
