"""POST /upload: a CSV of products and their image URLs in, a request id out."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from services.upload import idempotency
from services.upload.csv_input import CsvRejected
from services.upload.deps import ApiKey, Gateway, GatewayDep, Owner
from services.upload.errors import ApiError
from services.upload.intake import (
    ABANDONED_AFTER,
    JANITOR_INTERVAL_S,
    OutcomeUnknown,
    UploadFields,
    store_request,
    upload_fields,
)
from services.upload.openapi import (
    IDEMPOTENCY_KEY_PARAMETER,
    IN_PROGRESS,
    UploadAccepted,
    UploadForm,
    errors,
    multipart_body,
)
from shared.image_options import ImageOptions
from shared.mongo import StorageError
from shared.repository import RequestDoc, RequestRepository, RequestStatus, new_request_id

log = structlog.get_logger()
router = APIRouter(tags=["uploads"])

# The janitor (intake.py) settles an upload left RECEIVING within this long.
SETTLED_WITHIN_MIN = int((ABANDONED_AFTER.total_seconds() + JANITOR_INTERVAL_S) // 60) + 1
UPLOADS = Counter("imagepipe_upload_requests_total", "Upload attempts, by outcome", ["outcome"])
MAX_FORM_FIELDS = 16  # ours (UploadForm) and a few to spare; python-multipart refuses a form with more


@router.post(
    "/upload",
    status_code=202,
    dependencies=[ApiKey],
    summary="Upload a CSV of products",
    response_model=UploadAccepted,
    responses={**errors(400, 401, 413, 415, 422, 503), 409: IN_PROGRESS},
    openapi_extra={**multipart_body(UploadForm), "parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def upload(request: Request, gateway: GatewayDep, owner: Owner) -> JSONResponse:
    """Validates the whole CSV and the image options before accepting anything, then queues every image;
    answers at once with the `request_id` to follow. `email`, `webhook_url` and the image options may
    also be sent as query parameters. With a `webhook_url`, the answer holds its signing secret, once."""
    settings = gateway.runtime.settings
    key = idempotency.idempotency_key(request.headers.get(idempotency.HEADER))
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    try:
        fields = upload_fields(
            form,
            request.query_params,
            allow_private=settings.fetch_allow_private,
            max_csv_bytes=settings.max_csv_bytes,
        )
    except ApiError:
        UPLOADS.labels("rejected").inc()
        raise
    request_id = new_request_id()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    claimed = None
    if key is not None:
        claimed = Claimed(owner, key)
        body_hash = await idempotency.fingerprint(fields)
        earlier = await idempotency.claim(gateway.runtime.repo, claimed.owner, key, body_hash, request_id)
        if earlier is not None:
            UPLOADS.labels("replayed").inc()
            log.info("upload_replayed", earlier_request_id=earlier["_id"])
            return _answer(gateway, earlier, replayed=True)
    accepted = await _store(gateway, request_id, fields, owner, claimed)
    gateway.relay.kick()
    UPLOADS.labels("accepted").inc()
    log.info("upload_accepted", products=accepted["total_products"], images=accepted["total_images"])
    return _answer(gateway, accepted, replayed=False)


def _answer(gateway: Gateway, accepted: RequestDoc, *, replayed: bool) -> JSONResponse:
    """The 202: the same for a replay (the status it was accepted in, and the webhook secret)."""
    request_id = accepted["_id"]
    links = gateway.runtime.links
    body = UploadAccepted(
        request_id=request_id,
        status=RequestStatus.PENDING,
        status_url=links.status(request_id),
        output_csv_url=links.output(request_id),
        products=accepted["total_products"],
        images=accepted["total_images"],
        options=ImageOptions.from_stored(accepted.get("options")),
        webhook_secret=accepted.get("webhook_secret"),
    )
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=202, headers=headers)


@dataclass(frozen=True)
class Claimed:
    """The Idempotency-Key this upload holds, to give up if the upload is not accepted."""

    owner: str | None
    key: str


async def _store(
    gateway: Gateway, request_id: str, fields: UploadFields, owner: str | None, claimed: Claimed | None
) -> RequestDoc:
    """The accepted request, or the ApiError saying why not (and that nothing was queued)."""
    repo = gateway.runtime.repo
    try:
        return await store_request(repo, gateway.limits, request_id, fields, owner)
    except CsvRejected as exc:
        UPLOADS.labels("rejected").inc()
        await _not_accepted(repo, request_id, claimed)
        problems = [p.to_dict() for p in exc.problems]
        raise ApiError(exc.status_code, f"{exc}; nothing was queued", problems) from None
    except OutcomeUnknown:  # the key stays claimed: the request may yet turn out accepted
        UPLOADS.labels("unknown").inc()
        raise ApiError(
            503,
            f"storage is unavailable and did not confirm whether request {request_id} was accepted: "
            f"GET /status/{request_id} says within {SETTLED_WITHIN_MIN} minutes "
            "(404: it was not) before you upload it again",
        ) from None
    except StorageError as exc:
        UPLOADS.labels("unavailable").inc()
        log.error("upload_storage_failed", error=str(exc)[:200])
        await _not_accepted(repo, request_id, claimed)
        raise ApiError(503, "storage is unavailable; nothing was accepted, try again shortly") from None


async def _not_accepted(repo: RequestRepository, request_id: str, claimed: Claimed | None) -> None:
    """Certainly not accepted: remove what was stored, and free its Idempotency-Key for another try."""
    await repo.discard(request_id)
    if claimed is not None:
        await repo.release_idempotency_key(claimed.owner, claimed.key, request_id)
